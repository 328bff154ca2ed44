"""Random-forest segmentation of a whole phantom volume from scribbles, next to scikit-image's.

    python -m benchmarks.segmentation_rf [--size 512] [--labelled-slices N] [--device auto]

A size^3 three-phase phantom is generated slab by slab; a few slices (1 % by default)
get brush-stroke scribbles painted inside the ground-truth phases. Then, in one run:
- ours: `train_random_forest` on the scribbled slices, then `iter_predictions` over the
  whole volume, block by block;
- baseline: `skimage.feature.multiscale_basic_features` (its defaults) with
  `skimage.future.fit_segmenter` / `predict_segmenter`, slice by slice, with a
  RandomForestClassifier of the same n_estimators, max_depth, n_jobs and seed.
Each prints train and predict wall times, the peak resident memory above what the
process held before it started (the volume included in neither), and the mean IoU of
its labels against the ground truth. The baseline needs scikit-image, which the
segmentation job itself does not use.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numpy.typing import NDArray
from skimage.feature import multiscale_basic_features
from skimage.future import fit_segmenter, predict_segmenter
from sklearn.ensemble import RandomForestClassifier

from benchmarks.common import NUM_CLASSES, PeakMemory, generate_volume, machine, paint_scribbles, peak_memory
from mlex_tomo.phantom import PhantomSpec
from segmentation.features import feature_names, resolve_device
from segmentation.metrics import confusion_matrix, iou_from_confusion
from segmentation.models import RandomForestParameters
from segmentation.random_forest import train_random_forest

def report(name: str, train_s: float, predict_s: float, memory: PeakMemory, confusion: NDArray) -> None:
    mean, per_class = iou_from_confusion(confusion)
    classes = ", ".join(f"{value:.3f}" for value in per_class)
    print(
        f"{name:<9} train {train_s:7.1f} s  predict {predict_s:7.1f} s  total {train_s + predict_s:7.1f} s  "
        f"peak RSS +{memory.increase_mib:7.0f} MiB  mean IoU {mean:.3f} ({classes})",
        flush=True,
    )


def run_ours(
    image: NDArray[np.float32],
    truth: NDArray[np.uint8],
    labelled: NDArray[np.int64],
    masks: NDArray[np.int8],
    parameters: RandomForestParameters,
    device: str,
) -> None:
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    with peak_memory() as memory:
        started = time.perf_counter()
        forest = train_random_forest(image[labelled], masks, parameters, device)
        trained = time.perf_counter()
        for start, labels, _ in forest.iter_predictions(image, device):
            confusion += confusion_matrix(labels, truth[start : start + len(labels)], NUM_CLASSES)
        finished = time.perf_counter()
    report("ours", trained - started, finished - trained, memory, confusion)


def run_baseline(
    image: NDArray[np.float32],
    truth: NDArray[np.uint8],
    labelled: NDArray[np.int64],
    masks: NDArray[np.int8],
    parameters: RandomForestParameters,
) -> None:
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    with peak_memory() as memory:
        started = time.perf_counter()
        features = np.stack([multiscale_basic_features(image[z]) for z in labelled])
        classifier = RandomForestClassifier(
            n_estimators=parameters.n_estimators,
            max_depth=parameters.max_depth,
            n_jobs=-1,
            random_state=parameters.seed,
        )
        fit_segmenter(masks.astype(np.int16) + 1, features, classifier)  # skimage: 0 is unlabelled
        del features
        trained = time.perf_counter()
        for z in range(len(image)):
            labels = predict_segmenter(multiscale_basic_features(image[z]), classifier) - 1
            confusion += confusion_matrix(labels, truth[z], NUM_CLASSES)
        finished = time.perf_counter()
    report("skimage", trained - started, finished - trained, memory, confusion)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=512, help="edge of the cubic phantom (default 512)")
    parser.add_argument(
        "--labelled-slices", type=int, help="scribbled slices (default 1 %% of them, at least 1)"
    )
    parser.add_argument("--device", default="auto", help='"numpy", a torch device, or "auto" (default)')
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()

    size = arguments.size
    spec = PhantomSpec(shape=(size, size, size), seed=arguments.seed)
    count = arguments.labelled_slices or max(1, size // 100)
    labelled = np.linspace(0, size, count + 2, dtype=np.int64)[1:-1]
    parameters = RandomForestParameters(seed=arguments.seed)

    print(f"machine: {machine()}")
    started = time.perf_counter()
    image, truth = generate_volume(spec)
    rng = np.random.default_rng(arguments.seed)
    masks = np.stack([paint_scribbles(truth[z], rng) for z in labelled])
    print(
        f"phantom {size}^3 generated in {time.perf_counter() - started:.1f} s; "
        f"scribbles on {count} of {size} slices ({100 * count / size:.2f} %), "
        f"{int(np.sum(masks >= 0))} labelled pixels ({100 * np.mean(masks >= 0):.2f} % of those slices), "
        f"per class "
        f"{np.bincount(masks[masks >= 0], minlength=NUM_CLASSES).tolist()}"
    )
    print(
        f"ours: {len(feature_names(parameters))} features, scales {parameters.scales}, "
        f"back end {resolve_device(arguments.device)}; skimage: multiscale_basic_features defaults; "
        f"both: RandomForestClassifier(n_estimators={parameters.n_estimators}, "
        f"max_depth={parameters.max_depth}, n_jobs=-1)",
        flush=True,
    )
    run_ours(image, truth, labelled, masks, parameters, arguments.device)
    run_baseline(image, truth, labelled, masks, parameters)


if __name__ == "__main__":
    main()
