"""Random-forest segmentation of a whole phantom volume from scribbles, next to scikit-image's.

    python -m benchmarks.segmentation_rf [--size 512] [--labelled-slices N] [--device auto] [--levers ...]

A size^3 three-phase phantom is generated slab by slab; a few slices (1 % by default)
get brush-stroke scribbles painted inside the ground-truth phases. Then, in one run:
- ours, once per lever: `train_random_forest` on the scribbled slices, then
  `iter_predictions` over the whole volume, block by block. The levers add up: the
  ilastik set (all six feature kinds at ilastik's seven scales, the former default),
  the four middle scales, then the default (those scales, the 16 most important
  features alone computed over the volume);
- baseline: scikit-image's `multiscale_basic_features` with `fit_segmenter` /
  `predict_segmenter`, slice by slice, 50 trees of depth 10 (`benchmarks.baselines`).
Each prints train and predict wall times, the peak resident memory above what the
process held before it started (the volume included in neither), and the mean IoU of
its labels against the ground truth.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numpy.typing import NDArray

from benchmarks.baselines import SKIMAGE_DEPTH, SKIMAGE_TREES, skimage_forest, skimage_segment
from benchmarks.common import NUM_CLASSES, PeakMemory, generate_volume, machine, paint_scribbles, peak_memory
from mlex_tomo.phantom import PhantomSpec
from segmentation.features import resolve_device
from segmentation.metrics import confusion_matrix, iou_from_confusion
from segmentation.models import ILASTIK_SCALES, RandomForestParameters
from segmentation.random_forest import train_random_forest

LEVERS = {
    "ilastik set": RandomForestParameters(scales=list(ILASTIK_SCALES), selected_features=None),
    "4 scales": RandomForestParameters(selected_features=None),
    "default": RandomForestParameters(),
}


def report(name: str, train_s: float, predict_s: float, memory: PeakMemory, confusion: NDArray) -> None:
    mean, per_class = iou_from_confusion(confusion)
    classes = ", ".join(f"{value:.3f}" for value in per_class)
    print(
        f"{name:<12} train {train_s:7.1f} s  predict {predict_s:7.1f} s  total {train_s + predict_s:7.1f} s  "
        f"peak RSS +{memory.increase_mib:7.0f} MiB  mean IoU {mean:.3f} ({classes})",
        flush=True,
    )


def run_ours(
    name: str,
    image: NDArray[np.float32],
    truth: NDArray[np.uint8],
    labelled: list[int],
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
    report(f"{name} ({forest.feature_count})", trained - started, finished - trained, memory, confusion)


def run_baseline(
    image: NDArray[np.float32], truth: NDArray[np.uint8], labelled: list[int], masks: NDArray[np.int8], seed: int
) -> None:
    with peak_memory() as memory:
        started = time.perf_counter()
        classifier = skimage_forest(image, labelled, masks, seed)
        trained = time.perf_counter()
        labels = skimage_segment(image, classifier)
        finished = time.perf_counter()
    report("skimage", trained - started, finished - trained, memory, confusion_matrix(labels, truth, NUM_CLASSES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="edge of the cubic phantom (default 512)")
    parser.add_argument("--labelled-slices", type=int, help="scribbled slices (default 1 %% of them, at least 1)")
    parser.add_argument("--device", default="auto", help='"numpy", a torch device, or "auto" (default)')
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()

    size = arguments.size
    count = arguments.labelled_slices or max(1, size // 100)
    labelled = np.linspace(0, size, count + 2, dtype=np.int64)[1:-1].tolist()
    print(f"machine: {machine()}")
    started = time.perf_counter()
    image, truth = generate_volume(PhantomSpec(shape=(size, size, size), seed=arguments.seed))
    rng = np.random.default_rng(arguments.seed)
    masks = np.stack([paint_scribbles(truth[z], rng) for z in labelled])
    print(
        f"phantom {size}^3 generated in {time.perf_counter() - started:.1f} s; "
        f"scribbles on {count} of {size} slices ({100 * count / size:.2f} %), "
        f"{int(np.sum(masks >= 0))} labelled pixels, per class "
        f"{np.bincount(masks[masks >= 0], minlength=NUM_CLASSES).tolist()}"
    )
    print(
        f"ours: features computed over the volume in brackets, back end {resolve_device(arguments.device)}, "
        f"{RandomForestParameters().n_estimators} trees of depth {RandomForestParameters().max_depth}; "
        f"skimage: multiscale_basic_features defaults, {SKIMAGE_TREES} trees of depth {SKIMAGE_DEPTH}",
        flush=True,
    )
    for name in arguments.levers:
        parameters = LEVERS[name].model_copy(update={"seed": arguments.seed})
        run_ours(name, image, truth, labelled, masks, parameters, arguments.device)
    run_baseline(image, truth, labelled, masks, arguments.seed)


if __name__ == "__main__":
    main()
