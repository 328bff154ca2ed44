"""Segmentation models: accuracy from scribbles, and network training and inference speed.

    python -m benchmarks.segmentation accuracy [--size 256] [--device auto] [--models ...]
    python -m benchmarks.segmentation speed [--size 512] [--device auto] [--inference-size 2048]
    python -m benchmarks.segmentation_rf [--size 512]   # random forest on the CPU vs scikit-image

accuracy: a size^3 three-phase phantom as a beamline reconstructs it (projections with
Poisson noise and ring artefacts, then filtered back-projection); brush scribbles on 1 %
of the slices (at least 2); each model trains on them and segments the whole volume,
scored by mean IoU against the phantom's ground truth.

speed: a TUNet with DLSIA's defaults (depth 4, 32 base channels) trains on scribbles on
10 slices of a size^3 phantom for a fixed number of patches, then segments the volume
in memory, whole slices per batch, and again with the upstream job's 4x overlapping
64-pixel tiles (the baseline). With --inference-size, it also segments an N^3 volume
on disk (a Zarr array, one slice per chunk, the phantom tiled to fill it) into another
Zarr array: reading and writing included. Peak GPU memory is printed on CUDA.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from numpy.typing import NDArray

from benchmarks.common import NUM_CLASSES, machine, paint_scribbles, peak_memory
from mlex_tomo.phantom import PhantomSpec, generate_label_slab
from mlex_tomo.tomography import RealisticReconstruction
from segmentation.features import NUMPY_DEVICE
from segmentation.inference import segment_slices, segment_with_tiles
from segmentation.metrics import confusion_matrix, iou_from_confusion
from segmentation.models import (
    MSDNetParameters,
    RandomForestParameters,
    TUNet3PlusParameters,
    TUNetParameters,
)
from segmentation.normalization import normalize, robust_range
from segmentation.random_forest import train_random_forest
from segmentation.training import TrainedNetwork, train_network

SLAB_DEPTH = 32
# Shared by the networks here: the recipe that trains reliably from scribbles in the tests.
SCRIBBLE_TRAINING: dict[str, Any] = {
    "learning_rate": 0.01,
    "num_epochs": 40,
    "patch_size": 64,
    "batch_size_train": 16,
    "patches_per_epoch": 128,
    "early_stopping_patience": 15,
    "batch_size_inference": 8,
}
ACCURACY_MODELS = {
    "TUNet": TUNetParameters(depth=4, base_channels=16, **SCRIBBLE_TRAINING),
    "TUNet3+": TUNet3PlusParameters(depth=4, base_channels=16, carryover_channels=16, **SCRIBBLE_TRAINING),
    "MSDNet": MSDNetParameters(num_layers=20, layer_width=1, max_dilation=8, **SCRIBBLE_TRAINING),
    "RandomForest": RandomForestParameters(),
}


def reconstructed_phantom(size: int, seed: int) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
    spec = PhantomSpec(shape=(size, size, size), seed=seed)
    source = RealisticReconstruction(spec)
    image = np.empty(spec.shape, np.float32)
    for z_start, slab in source.iter_slabs(SLAB_DEPTH):
        image[z_start : z_start + len(slab)] = slab
    truth = generate_label_slab(spec, 0, size)
    return image, truth


def scribbles_on(truth: NDArray[np.uint8], count: int, seed: int) -> tuple[list[int], NDArray[np.int8]]:
    labelled = [int(z) for z in np.linspace(0, len(truth), count + 2, dtype=np.int64)[1:-1]]
    rng = np.random.default_rng(seed)
    return labelled, np.stack([paint_scribbles(truth[z], rng) for z in labelled])


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
    started = time.perf_counter()
    image, truth = reconstructed_phantom(arguments.size, arguments.seed)
    count = max(2, arguments.size // 100)
    labelled, masks = scribbles_on(truth, count, arguments.seed)
    low, high = robust_range(image)
    slices = normalize(image[labelled], low, high)
    print(
        f"{arguments.size}^3 reconstructed phantom in {time.perf_counter() - started:.0f} s; scribbles on "
        f"{count} of {arguments.size} slices ({100 * count / arguments.size:.2f} %), "
        f"{int(np.sum(masks >= 0))} labelled pixels; device {device}",
        flush=True,
    )
    for name in arguments.models:
        parameters = ACCURACY_MODELS[name]
        started = time.perf_counter()
        if isinstance(parameters, RandomForestParameters):
            forest_device = str(device) if device.type == "cuda" else NUMPY_DEVICE
            forest = train_random_forest(slices, masks, parameters, forest_device, normalisation=(low, high))
            trained = time.perf_counter()
            labels = np.empty(image.shape, np.uint8)
            for start, block, _ in forest.iter_predictions(normalize(image, low, high), forest_device):
                labels[start : start + len(block)] = block
            epochs = "-"
        else:
            network = train_network(slices, masks, parameters, NUM_CLASSES, device, normalization=(low, high))
            synchronize(device)
            trained = time.perf_counter()
            labels = segment_in_memory(network, image, device)
            epochs = str(len(network.history))
        finished = time.perf_counter()
        mean, per_class = iou_from_confusion(confusion_matrix(labels, truth, NUM_CLASSES))
        print(
            f"{name:<13} mean IoU {mean:.3f} ({', '.join(f'{value:.3f}' for value in per_class)})  "
            f"train {trained - started:6.1f} s ({epochs} epochs)  segment {finished - trained:6.1f} s",
            flush=True,
        )


def speed(arguments: argparse.Namespace) -> None:
    device = chosen_device(arguments.device)
    image, truth = reconstructed_phantom(arguments.size, arguments.seed)
    labelled, masks = scribbles_on(truth, 10, arguments.seed)
    low, high = robust_range(image)
    parameters = TUNetParameters(
        learning_rate=0.003,
        num_epochs=arguments.epochs,
        patch_size=128,
        batch_size_train=32,
        patches_per_epoch=256,
        early_stopping_patience=arguments.epochs,
        batch_size_inference=arguments.batch_size,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    network = train_network(
        normalize(image[labelled], low, high), masks, parameters, NUM_CLASSES, device, normalization=(low, high)
    )
    synchronize(device)
    training = time.perf_counter() - started
    print(f"TUNet (DLSIA defaults) on {device}: train {training:.1f} s, {len(network.history)} epochs x 256 patches of 128^2", flush=True)
    for name, tiles in (("whole slices", False), ("4x tiles", True)):
        segment_in_memory(network, image[: parameters.batch_size_inference], device, tiles)  # warm-up
        synchronize(device)
        started = time.perf_counter()
        labels = segment_in_memory(network, image, device, tiles)
        synchronize(device)
        elapsed = time.perf_counter() - started
        mean, _ = iou_from_confusion(confusion_matrix(labels, truth, NUM_CLASSES))
        print(f"inference {arguments.size}^3 in memory, {name:<12}: {elapsed:7.2f} s  mean IoU {mean:.3f}", flush=True)
    if arguments.inference_size:
        on_disk(network, image, arguments.inference_size, device)
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB", flush=True)


def on_disk(network: TrainedNetwork, image: NDArray[np.float32], size: int, device: torch.device) -> None:
    """Segment an N^3 Zarr volume into a Zarr label array, one slice per chunk, as a job streams Tiled."""
    with tempfile.TemporaryDirectory(prefix="segmentation-benchmark-") as folder:
        volume = zarr.create_array(Path(folder) / "volume.zarr", shape=(size, size, size), chunks=(1, size, size), dtype=np.float32)
        repeats = -(-size // image.shape[1])
        for start in range(0, size, SLAB_DEPTH):
            stop = min(start + SLAB_DEPTH, size)
            slab = np.stack([image[z % len(image)] for z in range(start, stop)])
            volume[start:stop] = np.tile(slab, (1, repeats, repeats))[:, :size, :size]
        labels = zarr.create_array(Path(folder) / "labels.zarr", shape=(size, size, size), chunks=(1, size, size), dtype=np.uint8)

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
    accuracy_parser = commands.add_parser("accuracy", help="mean IoU per model from scribbles on 1 %% of the slices")
    accuracy_parser.add_argument("--size", type=int, default=256)
    accuracy_parser.add_argument("--models", nargs="+", choices=list(ACCURACY_MODELS), default=list(ACCURACY_MODELS))
    speed_parser = commands.add_parser("speed", help="TUNet training and inference times, with the 4x-tile baseline")
    speed_parser.add_argument("--size", type=int, default=512)
    speed_parser.add_argument("--epochs", type=int, default=20)
    speed_parser.add_argument("--batch-size", type=int, default=16, help="whole slices per inference batch")
    speed_parser.add_argument("--inference-size", type=int, help="also segment an N^3 volume on disk")
    for sub in (accuracy_parser, speed_parser):
        sub.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sub.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    print(f"machine: {machine()}; torch {torch.__version__}, CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    if arguments.command == "accuracy":
        accuracy(arguments)
    else:
        speed(arguments)


if __name__ == "__main__":
    main()
