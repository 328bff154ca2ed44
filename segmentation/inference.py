"""Segmenting volumes with a trained network, streamed block by block.

The networks are fully convolutional, so `segment_slices` predicts whole slices in
batches: each pixel is computed once, with all the context a slice offers, and there
are no tile seams. Blocks of at most `batch_size` consecutive slices are read, predicted
and written in turn; reading the next block and writing the previous one overlap the
prediction, so at most three blocks are held and any volume fits in memory.

`segment_with_tiles` reproduces the upstream DLSIA job's 64-pixel tiles at a 32-pixel
step with averaged probabilities (each pixel predicted about four times), for benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from segmentation.networks import mixed_precision
from segmentation.normalization import normalize
from segmentation.training import ProgressCallback, TrainedNetwork

UPSTREAM_TILE_SIZE = 64
UPSTREAM_TILE_STEP = 32
DEFAULT_TILES_PER_BATCH = 64

SlabReader = Callable[[int, int], NDArray[Any]]
SlabWriter = Callable[[int, NDArray[Any]], None]
UncertaintyDtype = Literal["uint8", "float16"]
_BlockPredictor = Callable[[torch.Tensor], torch.Tensor]


def segment_slices(
    network: TrainedNetwork,
    read_slab: SlabReader,
    z_indices: Iterable[int],
    write_slab: SlabWriter,
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
    write_uncertainty: SlabWriter | None = None,
    uncertainty_dtype: UncertaintyDtype = "uint8",
) -> None:
    """Label the slices `z_indices` (e.g. a range) of a volume, whole slices at a time.

    `read_slab(start, stop)` returns slices start..stop-1 as (stop - start, y, x) in the
    volume's own intensities; `write_slab(start, labels)` receives their uint8 labels.
    Blocks are runs of consecutive indices of at most `batch_size` slices (default: the
    network's `batch_size_inference`). With `write_uncertainty`, it also receives
    1 - the largest class probability per pixel: uint8 scaled to 0..255, or float16.
    Reads and writes run on one worker thread each, in order, one call at a time.
    The network's module moves to `device` (default: where it is).
    """
    module, device = _prepared_module(network, device)

    def predict(images: torch.Tensor) -> torch.Tensor:
        with mixed_precision(device):
            return torch.softmax(module(images).float(), dim=1)

    _stream(
        network,
        predict,
        read_slab,
        z_indices,
        write_slab,
        batch_size or network.parameters.batch_size_inference,
        device,
        progress,
        write_uncertainty,
        uncertainty_dtype,
    )


def segment_with_tiles(
    network: TrainedNetwork,
    read_slab: SlabReader,
    z_indices: Iterable[int],
    write_slab: SlabWriter,
    *,
    tile_size: int = UPSTREAM_TILE_SIZE,
    tile_step: int = UPSTREAM_TILE_STEP,
    tiles_per_batch: int = DEFAULT_TILES_PER_BATCH,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
    write_uncertainty: SlabWriter | None = None,
    uncertainty_dtype: UncertaintyDtype = "uint8",
) -> None:
    """As `segment_slices`, but predicting overlapping tiles and averaging their probabilities.

    Tiles start every `tile_step` pixels, plus one flush with the far edge, so every
    pixel is covered; slices narrower than a tile are taken whole along that axis.
    """
    if tile_step < 1 or tile_size < 1 or tiles_per_batch < 1:
        raise ValueError("tile_size, tile_step and tiles_per_batch must be positive")
    module, device = _prepared_module(network, device)

    def predict(images: torch.Tensor) -> torch.Tensor:
        count, _, height, width = images.shape
        tile_height, tile_width = min(tile_size, height), min(tile_size, width)
        origins = [
            (index, top, left)
            for index in range(count)
            for top in tile_origins(height, tile_height, tile_step)
            for left in tile_origins(width, tile_width, tile_step)
        ]
        summed = torch.zeros((count, network.num_classes, height, width), device=device)
        coverage = torch.zeros((count, 1, height, width), device=device)
        for first in range(0, len(origins), tiles_per_batch):
            batch = origins[first : first + tiles_per_batch]
            tiles = torch.stack(
                [
                    images[index, :, top : top + tile_height, left : left + tile_width]
                    for index, top, left in batch
                ]
            )
            with mixed_precision(device):
                probabilities = torch.softmax(module(tiles).float(), dim=1)
            for (index, top, left), tile_probabilities in zip(batch, probabilities):
                summed[index, :, top : top + tile_height, left : left + tile_width] += tile_probabilities
                coverage[index, :, top : top + tile_height, left : left + tile_width] += 1
        return summed / coverage

    _stream(
        network,
        predict,
        read_slab,
        z_indices,
        write_slab,
        batch_size or network.parameters.batch_size_inference,
        device,
        progress,
        write_uncertainty,
        uncertainty_dtype,
    )


def tile_origins(length: int, tile: int, step: int) -> list[int]:
    """Start positions every `step`, plus a last tile flush with the end so nothing is missed."""
    origins = list(range(0, length - tile + 1, step))
    if origins[-1] + tile < length:
        origins.append(length - tile)
    return origins


def contiguous_blocks(z_indices: Iterable[int], batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) runs of consecutive sorted indices, each at most `batch_size` long."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    indices = sorted(set(int(z) for z in z_indices))
    if indices and indices[0] < 0:
        raise ValueError("z indices must not be negative")
    blocks: list[tuple[int, int]] = []
    for z in indices:
        if blocks and blocks[-1][1] == z and z - blocks[-1][0] < batch_size:
            blocks[-1] = (blocks[-1][0], z + 1)
        else:
            blocks.append((z, z + 1))
    return blocks


def uncertainty_from_probabilities(
    probabilities: torch.Tensor, dtype: UncertaintyDtype
) -> NDArray[np.uint8] | NDArray[np.float16]:
    """1 - the largest class probability: 0 where the network is sure, up to 1 - 1/classes."""
    uncertainty = 1.0 - probabilities.amax(dim=1)
    if dtype == "uint8":
        return torch.round(uncertainty * 255).to(torch.uint8).cpu().numpy()
    return uncertainty.to(torch.float16).cpu().numpy()


def _prepared_module(
    network: TrainedNetwork, device: torch.device | str | None
) -> tuple[torch.nn.Module, torch.device]:
    if network.num_classes > 256:
        raise ValueError("uint8 labels hold at most 256 classes")
    module = network.module
    if device is None:
        device = next(module.parameters()).device
    device = torch.device(device)
    return module.to(device).eval(), device


def _stream(
    network: TrainedNetwork,
    predict: _BlockPredictor,
    read_slab: SlabReader,
    z_indices: Iterable[int],
    write_slab: SlabWriter,
    batch_size: int,
    device: torch.device,
    progress: ProgressCallback | None,
    write_uncertainty: SlabWriter | None,
    uncertainty_dtype: UncertaintyDtype,
) -> None:
    """Read, predict and write block by block, reading ahead one block and writing behind one."""
    blocks = contiguous_blocks(z_indices, batch_size)
    total = sum(stop - start for start, stop in blocks)
    low, high = network.normalization
    started = time.perf_counter()
    done = 0

    def write(start: int, labels: NDArray[np.uint8], uncertainty: NDArray[Any] | None) -> None:
        write_slab(start, labels)
        if write_uncertainty is not None and uncertainty is not None:
            write_uncertainty(start, uncertainty)

    if not blocks:
        return
    with ThreadPoolExecutor(1, "read-slab") as reader, ThreadPoolExecutor(1, "write-slab") as writer:
        next_read: Future[NDArray[Any]] = reader.submit(read_slab, *blocks[0])
        last_write: Future[None] | None = None
        for block_index, (start, stop) in enumerate(blocks):
            slab = np.asarray(next_read.result())
            if block_index + 1 < len(blocks):
                next_read = reader.submit(read_slab, *blocks[block_index + 1])
            if slab.ndim != 3 or slab.shape[0] != stop - start:
                raise ValueError(f"read_slab({start}, {stop}) returned shape {slab.shape}")
            images = torch.from_numpy(normalize(slab, low, high)[:, None]).to(device)
            with torch.inference_mode():
                probabilities = predict(images)
                labels = probabilities.argmax(dim=1).to(torch.uint8).cpu().numpy()
                uncertainty = (
                    uncertainty_from_probabilities(probabilities, uncertainty_dtype)
                    if write_uncertainty is not None
                    else None
                )
            del probabilities
            if last_write is not None:
                last_write.result()
            last_write = writer.submit(write, start, labels, uncertainty)
            done += stop - start
            if progress is not None:
                elapsed = time.perf_counter() - started
                progress(
                    {
                        "event": "inference",
                        "stage": "segmenting",
                        "done": done,
                        "of": total,
                        "eta_seconds": elapsed / done * (total - done),
                    }
                )
        if last_write is not None:
            last_write.result()
