"""Segmentation models: accuracy from scribbles on many kinds of volume, and speed on a GPU.

    python -m benchmarks.segmentation accuracy [--size 160] [--seeds 3] [--families ...] [--models ...]
    python -m benchmarks.segmentation speed [--size 512] [--device auto] [--inference-size 2048]
    benchmarks/gpu.sh                                    # the speed run a lent GPU machine gets
    python -m benchmarks.segmentation_rf [--size 512]   # random forest on the CPU vs scikit-image

accuracy: for every family of `benchmarks.volumes` and every seed, a volume with its
ground truth; scribbles painted as a person would (`benchmarks.painting`: a few brush
strokes per class on about 1 % of the slices), once with every class on every
labelled slice and once "partial" (each class on only some of them). Each model, with
the parameters the web app preselects, trains on the scribbles and segments the whole
volume; so do the baselines (`benchmarks.baselines`: scikit-image's random forest on
its multiscale features, and Gaussian + multi-Otsu). Printed per volume: mean and
per-class IoU against the ground truth, the held-out score the job would report, train
and segment times and peak memory; then mean IoU per family (over seeds) and over
families, per model.

speed: a TUNet with DLSIA's defaults trains on scribbles of a size^3 phantom, then
segments the volume in memory, whole slices per batch (with --compare-tiles, also in
the upstream job's 4x overlapping 64-pixel tiles). With --inference-size, it also
segments an N^3 volume on disk (an uncompressed Zarr array, one slice per chunk, the
phantom tiled to fill it) into another Zarr array: reading and writing included. Peak
GPU memory is printed on CUDA.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from numpy.typing import NDArray

from benchmarks.baselines import otsu_segment, skimage_forest, skimage_segment
from benchmarks.common import NUM_CLASSES, SLAB_DEPTH, generate_volume, machine, peak_memory
from benchmarks.painting import Scribbles, Style, scribble
from benchmarks.volumes import FAMILIES, GeneratedVolume
from mlex_tomo.phantom import PhantomSpec
from segmentation.features import forest_device
from segmentation.inference import segment_slices, segment_with_tiles
from segmentation.metrics import confusion_matrix, iou_from_confusion
from segmentation.models import (
    MSDNetParameters,
    RandomForestParameters,
    TUNet3PlusParameters,
    TUNetParameters,
)
from segmentation.normalization import normalize, robust_range
from segmentation.pseudo_labels import context_indices
from segmentation.random_forest import train_random_forest
from segmentation.training import TrainedNetwork, train_network

STYLES: tuple[Style, ...] = ("full", "partial")


@dataclass(frozen=True)
class Outcome:
    labels: NDArray[np.uint8]
    train_seconds: float
    segment_seconds: float
    held_out_iou: float | None  # what the job reports; None where the method has no such score


Method = Callable[[GeneratedVolume, Scribbles, torch.device], Outcome]


def our_forest(volume: GeneratedVolume, scribbles: Scribbles, device: torch.device) -> Outcome:
    back_end = forest_device(device)
    low, high = robust_range(volume.image)
    started = time.perf_counter()
    forest = train_random_forest(
        normalize(volume.image[scribbles.slices], low, high), scribbles.masks, RandomForestParameters(), back_end
    )
    trained = time.perf_counter()
    labels = np.empty(volume.image.shape, np.uint8)
    for start, block, _ in forest.iter_predictions(normalize(volume.image, low, high), back_end):
        labels[start : start + len(block)] = block
    return Outcome(
        labels, trained - started, time.perf_counter() - trained, forest.held_out.mean_iou if forest.held_out else None
    )


def our_network(parameters: TUNetParameters | MSDNetParameters) -> Method:
    def run(volume: GeneratedVolume, scribbles: Scribbles, device: torch.device) -> Outcome:
        low, high = robust_range(volume.image)
        started = time.perf_counter()
        context = context_indices(len(volume.image), scribbles.slices, parameters.context_slices)
        network = train_network(
            normalize(volume.image[scribbles.slices], low, high),
            scribbles.masks,
            parameters,
            volume.num_classes,
            device,
            normalization=(low, high),
            context=normalize(volume.image[context], low, high),
        )
        synchronize(device)
        trained = time.perf_counter()
        labels = segment_in_memory(network, volume.image, device)
        return Outcome(
            labels, trained - started, time.perf_counter() - trained, network.held_out.mean_iou if network.held_out else None
        )

    return run


def skimage_baseline(volume: GeneratedVolume, scribbles: Scribbles, device: torch.device) -> Outcome:
    started = time.perf_counter()
    classifier = skimage_forest(volume.image, scribbles.slices, scribbles.masks)
    trained = time.perf_counter()
    labels = skimage_segment(volume.image, classifier)
    return Outcome(labels, trained - started, time.perf_counter() - trained, None)


def otsu_baseline(volume: GeneratedVolume, scribbles: Scribbles, device: torch.device) -> Outcome:
    started = time.perf_counter()
    labels = otsu_segment(volume.image, scribbles.slices, scribbles.masks, volume.num_classes)
    return Outcome(labels, 0.0, time.perf_counter() - started, None)


METHODS: dict[str, Method] = {
    "RandomForest": our_forest,
    "TUNet": our_network(TUNetParameters()),
    "TUNet3+": our_network(TUNet3PlusParameters()),
    "MSDNet": our_network(MSDNetParameters()),
    "skimage": skimage_baseline,
    "Gaussian+Otsu": otsu_baseline,
}


def segment_in_memory(network: TrainedNetwork, image: NDArray, device: torch.device, tiles: bool = False) -> NDArray[np.uint8]:
    labels = np.empty(image.shape, np.uint8)

    def write(start: int, block: NDArray[np.uint8]) -> None:
        labels[start : start + len(block)] = block

    method = segment_with_tiles if tiles else segment_slices
    method(network, lambda start, stop: image[start:stop], range(len(image)), write, device=device)
    return labels


def chosen_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def accuracy(arguments: argparse.Namespace) -> None:
    device = chosen_device(arguments.device)
    print(f"device {device}; models with the web app's preselected parameters; {len(arguments.seeds)} seeds per family", flush=True)
    scores: dict[tuple[str, str, str], list[float]] = defaultdict(list)  # (style, model, family) -> mean IoU per seed
    for family in arguments.families:
        for seed in arguments.seeds:
            started = time.perf_counter()
            volume = FAMILIES[family](arguments.size, seed)
            generated = time.perf_counter() - started
            for style in arguments.styles:
                scribbles = scribble(volume.truth, volume.num_classes, seed, style)
                print(
                    f"\n{volume.family}, seed {seed}, {style} scribbles: {volume.image.shape} in {generated:.1f} s; "
                    f"{len(scribbles.slices)} of {volume.image.shape[0]} slices labelled {scribbles.slices}, "
                    f"pixels per class {scribbles.pixels_per_class(volume.num_classes)}",
                    flush=True,
                )
                for name in arguments.models:
                    with peak_memory() as memory:
                        outcome = METHODS[name](volume, scribbles, device)
                    mean, per_class = iou_from_confusion(confusion_matrix(outcome.labels, volume.truth, volume.num_classes))
                    scores[(style, name, family)].append(mean)
                    held_out = "-" if outcome.held_out_iou is None else f"{outcome.held_out_iou:.3f}"
                    print(
                        f"  {name:<14} mean IoU {mean:.3f} ({', '.join(f'{value:.2f}' for value in per_class)})  "
                        f"held-out {held_out:>5}  train {outcome.train_seconds:6.1f} s  segment {outcome.segment_seconds:6.1f} s  "
                        f"peak RSS +{memory.increase_mib:5.0f} MiB",
                        flush=True,
                    )
    for style in arguments.styles:
        print_summary(style, scores, arguments.models, arguments.families)


def print_summary(style: str, scores: dict[tuple[str, str, str], list[float]], models: list[str], families: list[str]) -> None:
    """A Markdown table: mean IoU over seeds (with its spread) per family, then the mean over families."""
    print(f"\nmean IoU, {style} scribbles (mean over seeds, ± half the range)\n")
    print("| model | " + " | ".join(families) + " | mean |")
    print("|---|" + "---|" * (len(families) + 1))
    for name in models:
        cells, means = [], []
        for family in families:
            values = scores[(style, name, family)]
            means.append(float(np.mean(values)))
            cells.append(f"{np.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean(means):.3f} |")


def speed(arguments: argparse.Namespace) -> None:
    device = chosen_device(arguments.device)
    started = time.perf_counter()
    image, truth = generate_volume(PhantomSpec(shape=(arguments.size,) * 3, seed=arguments.seed))
    scribbles = scribble(truth, NUM_CLASSES, arguments.seed)
    low, high = robust_range(image)
    print(f"{arguments.size}^3 phantom in {time.perf_counter() - started:.1f} s; scribbles on {len(scribbles.slices)} slices", flush=True)
    parameters = TUNetParameters(num_epochs=arguments.epochs).for_device(device.type)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    network = train_network(
        normalize(image[scribbles.slices], low, high), scribbles.masks, parameters, NUM_CLASSES, device, normalization=(low, high)
    )
    synchronize(device)
    training = time.perf_counter() - started
    print(
        f"TUNet, the defaults for {device.type} (depth {parameters.depth}, {parameters.base_channels} base channels; "
        f"DLSIA's on cuda), on {device}: "
        f"train {training:.1f} s, {len(network.history)} epochs x {parameters.patches_per_epoch} patches of "
        f"{parameters.patch_size}^2",
        flush=True,
    )
    methods = [("whole slices", False), ("4x tiles", True)] if arguments.compare_tiles else [("whole slices", False)]
    for name, tiles in methods:
        segment_in_memory(network, image[: parameters.batch_size_inference], device, tiles)  # warm-up
        synchronize(device)
        started = time.perf_counter()
        labels = segment_in_memory(network, image, device, tiles)
        synchronize(device)
        elapsed = time.perf_counter() - started
        mean, _ = iou_from_confusion(confusion_matrix(labels, truth, NUM_CLASSES))
        print(f"segment {arguments.size}^3 in memory, {name:<12}: {elapsed:7.2f} s  mean IoU {mean:.3f}", flush=True)
    if arguments.inference_size:
        on_disk(network, image, arguments.inference_size, device)
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB", flush=True)


def on_disk(network: TrainedNetwork, image: NDArray[np.float32], size: int, device: torch.device) -> None:
    """Segment an N^3 Zarr volume into a Zarr label array, one slice per chunk, as a job streams Tiled."""
    with tempfile.TemporaryDirectory(prefix="segmentation-benchmark-") as folder:
        volume = zarr.create_array(
            Path(folder) / "volume.zarr", shape=(size,) * 3, chunks=(1, size, size), dtype=np.float32, compressors=None
        )
        repeats = -(-size // image.shape[1])
        for start in range(0, size, SLAB_DEPTH):
            stop = min(start + SLAB_DEPTH, size)
            slab = np.stack([image[z % len(image)] for z in range(start, stop)])
            volume[start:stop] = np.tile(slab, (1, repeats, repeats))[:, :size, :size]
        labels = zarr.create_array(
            Path(folder) / "labels.zarr", shape=(size,) * 3, chunks=(1, size, size), dtype=np.uint8, compressors=None
        )

        def write(start: int, block: NDArray[np.uint8]) -> None:
            labels[start : start + len(block)] = block

        with peak_memory() as memory:
            started = time.perf_counter()
            segment_slices(network, lambda start, stop: volume[start:stop], range(size), write, device=device)
            synchronize(device)
            elapsed = time.perf_counter() - started
        print(
            f"inference {size}^3 from and to Zarr on disk, whole slices: {elapsed:7.1f} s "
            f"({size / elapsed:.0f} slices/s), peak RSS +{memory.increase_mib:.0f} MiB",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    accuracy_parser = commands.add_parser("accuracy", help="mean IoU per model and family of volumes, from scribbles")
    accuracy_parser.add_argument("--size", type=int, default=160, help="edge of the volumes (default 160)")
    accuracy_parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    accuracy_parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    accuracy_parser.add_argument("--styles", nargs="+", choices=list(STYLES), default=list(STYLES))
    accuracy_parser.add_argument("--models", nargs="+", choices=list(METHODS), default=list(METHODS))
    speed_parser = commands.add_parser("speed", help="TUNet training and inference times, and peak GPU memory")
    speed_parser.add_argument("--size", type=int, default=512)
    speed_parser.add_argument("--epochs", type=int, help="training epochs (default: the model's default)")
    speed_parser.add_argument("--compare-tiles", action="store_true", help="also segment as the upstream job does, in 4x overlapping tiles")
    speed_parser.add_argument("--inference-size", type=int, help="also segment an N^3 volume on disk")
    speed_parser.add_argument("--seed", type=int, default=0)
    for sub in (accuracy_parser, speed_parser):
        sub.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    arguments = parser.parse_args()
    print(f"machine: {machine()}; torch {torch.__version__}, CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    if arguments.command == "accuracy":
        accuracy(arguments)
    else:
        speed(arguments)


if __name__ == "__main__":
    main()
