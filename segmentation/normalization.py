"""Intensity normalisation from robust percentiles, computed once per volume.

Networks see intensities mapped to about [0, 1]. The range comes from percentiles of
the whole volume rather than of each slice or patch, so every slice is mapped alike and
training and inference agree. Percentiles ignore the rare hot or dead pixels that a
plain min/max would follow. Volumes larger than memory are sampled: a bounded number of
slices, and a bounded number of pixels from each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

DEFAULT_PERCENTILES = (0.5, 99.5)
DEFAULT_SAMPLE_SLICES = 32
DEFAULT_SAMPLE_PIXELS = 2_000_000


class LazyVolume(Protocol):
    """Anything indexed slice by slice without loading the rest: numpy, memmap, h5py, zarr, Tiled."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: int) -> object: ...


SliceReader = Callable[[int], NDArray[np.generic]]


def robust_range(
    volume: LazyVolume | SliceReader,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    *,
    num_slices: int | None = None,
    sample_slices: int = DEFAULT_SAMPLE_SLICES,
    sample_pixels: int = DEFAULT_SAMPLE_PIXELS,
    seed: int = 0,
) -> tuple[float, float]:
    """(low, high) intensities at `percentiles` of a random sample of the volume.

    `volume` is an array-like indexed by z (only the sampled slices are read), or a
    callable reading slice z, in which case `num_slices` is required. Exact when the
    volume holds no more than `sample_slices` slices and `sample_pixels` pixels.
    Non-finite values are ignored. `high` > `low` always, so a constant volume maps to 0.
    """
    low_percentile, high_percentile = percentiles
    if not 0 <= low_percentile < high_percentile <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if sample_slices < 1 or sample_pixels < 1:
        raise ValueError("sample_slices and sample_pixels must be positive")
    read_slice, num_slices = _slice_reader(volume, num_slices)

    rng = np.random.default_rng(seed)
    chosen = np.arange(num_slices)
    if num_slices > sample_slices:
        # Read in order, which is kinder to chunked and compressed files.
        chosen = np.sort(rng.choice(num_slices, sample_slices, replace=False))
    pixels_per_slice = max(1, sample_pixels // len(chosen))
    samples = []
    for z in chosen:
        values = np.asarray(read_slice(int(z))).ravel()
        if values.size > pixels_per_slice:
            values = values[rng.integers(0, values.size, pixels_per_slice)]
        values = values.astype(np.float64)
        samples.append(values[np.isfinite(values)])
    sample = np.concatenate(samples)
    if sample.size == 0:
        raise ValueError("the sampled slices hold no finite values")
    low, high = (float(value) for value in np.percentile(sample, [low_percentile, high_percentile]))
    if high <= low:
        high = low + 1.0
    return low, high


def normalize(slab: NDArray[np.generic], low: float, high: float) -> NDArray[np.float32]:
    """Map [low, high] to [0, 1] as float32, clipping outliers and zeroing non-finite values."""
    if high <= low:
        raise ValueError(f"high must exceed low, got low={low}, high={high}")
    normalized = np.asarray(slab, dtype=np.float32) - np.float32(low)
    normalized *= np.float32(1.0 / (high - low))
    np.clip(normalized, 0.0, 1.0, out=normalized)
    return np.nan_to_num(normalized, copy=False, nan=0.0)


def _slice_reader(
    volume: LazyVolume | SliceReader, num_slices: int | None
) -> tuple[SliceReader, int]:
    if hasattr(volume, "shape") and hasattr(volume, "__getitem__"):
        if len(volume.shape) < 2:
            raise ValueError(f"a volume needs at least two dimensions, got shape {volume.shape}")
        return (lambda z: np.asarray(volume[z])), int(volume.shape[0])
    if not callable(volume):
        raise TypeError("volume must be an array-like indexed by z or a callable reading slice z")
    if num_slices is None or num_slices < 1:
        raise ValueError("num_slices (positive) is required when volume is a slice-reading callable")
    return volume, num_slices
