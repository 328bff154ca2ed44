"""The scans in Tiled as the web app sees them: a list, and slices read once and cached.

Only the Dash server talks to Tiled; the browser asks the server for images. Slices are
kept in a memory-bounded cache, and the neighbours of a requested slice are read in the
background, so scrubbing through a volume rarely waits on Tiled.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from dash_app.imaging import display_range, downsample, histogram
from mlex_tomo.tiled_layout import RECONS
from segmentation.tiled_io import TiledVolume

Axis = Literal["z", "y", "x"]
AXES: tuple[Axis, ...] = ("z", "y", "x")
PREFETCH_NEIGHBOURS = 2
SAMPLE_SLICES = 8
SAMPLE_MAX_SIZE = 512


class ScanNotFound(LookupError):
    pass


class InvalidSlice(ValueError):
    pass


@dataclass(frozen=True)
class ScanSummary:
    key: str
    shape: tuple[int, ...]
    dtype: str
    ingested_at: str | None
    format: str | None


@dataclass(frozen=True)
class DisplayDefaults:
    """What the contrast panel starts from, computed once per scan from a sample of slices."""

    low: float
    high: float
    minimum: float
    maximum: float
    bin_centres: list[float]
    counts: list[int]


class SliceCache:
    """Least-recently-used slices, bounded by their total size in bytes."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.entries: OrderedDict[tuple, NDArray[Any]] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    def get(self, key: tuple) -> NDArray[Any] | None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
            return entry

    def put(self, key: tuple, value: NDArray[Any]) -> None:
        if value.nbytes > self.capacity:
            return
        with self.lock:
            if key in self.entries:
                return
            self.entries[key] = value
            self.size += value.nbytes
            while self.size > self.capacity:
                _, evicted = self.entries.popitem(last=False)
                self.size -= evicted.nbytes


class ScanLibrary:
    """Scans under /recons, their slices and display defaults."""

    def __init__(self, connect: Callable[[], Any], cache_bytes: int) -> None:
        self.connect = connect
        self.cache = SliceCache(cache_bytes)
        self.volumes: dict[str, TiledVolume] = {}
        self.defaults: dict[str, DisplayDefaults] = {}
        self.lock = threading.Lock()
        self.prefetcher = ThreadPoolExecutor(2, thread_name_prefix="prefetch")
        self.prefetches: dict[tuple, Future[NDArray[Any]]] = {}

    def scans(self) -> list[ScanSummary]:
        summaries = []
        for key, node in self.connect()[RECONS].items():
            metadata = dict(node.metadata)
            shape = metadata.get("shape") or list(getattr(node, "shape", []) or [])
            summaries.append(
                ScanSummary(
                    key=key,
                    shape=tuple(int(extent) for extent in shape),
                    dtype=str(metadata.get("dtype", "")),
                    ingested_at=metadata.get("ingested_at"),
                    format=metadata.get("format"),
                )
            )
        return sorted(summaries, key=lambda scan: scan.ingested_at or "", reverse=True)

    def volume(self, scan: str) -> TiledVolume:
        with self.lock:
            if scan not in self.volumes:
                recons = self.connect()[RECONS]
                if scan not in recons:
                    raise ScanNotFound(f"no scan {scan!r} under /{RECONS}")
                self.volumes[scan] = TiledVolume(recons[scan])
            return self.volumes[scan]

    def slice(self, scan: str, axis: Axis, index: int) -> NDArray[Any]:
        volume = self.volume(scan)
        check_slice(volume.shape, axis, index)
        image = self._read(scan, axis, index)
        self._prefetch_neighbours(scan, axis, index, volume.shape)
        return image

    def display_defaults(self, scan: str) -> DisplayDefaults:
        if scan not in self.defaults:
            volume = self.volume(scan)
            depth = volume.shape[0]
            chosen = np.unique(np.linspace(0, depth - 1, min(SAMPLE_SLICES, depth)).round().astype(int))
            sample = np.stack([downsample(self._read(scan, "z", int(z)), SAMPLE_MAX_SIZE) for z in chosen])
            low, high = display_range(sample)
            centres, counts = histogram(sample)
            finite = sample[np.isfinite(sample)]
            self.defaults[scan] = DisplayDefaults(
                low, high, float(finite.min(initial=low)), float(finite.max(initial=high)), centres, counts
            )
        return self.defaults[scan]

    def _read(self, scan: str, axis: Axis, index: int) -> NDArray[Any]:
        """From the cache, else from the prefetch already reading it, else from Tiled."""
        key = (scan, axis, index)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        prefetch = self.prefetches.get(key)
        # A queued prefetch is dropped (read now, not after the queue); one under way is waited for
        # rather than read a second time, and read again here only if it failed.
        if prefetch is not None and not prefetch.cancel() and prefetch.exception() is None:
            return prefetch.result()
        return self._fetch(key)

    def _fetch(self, key: tuple) -> NDArray[Any]:
        scan, axis, index = key
        node = self.volume(scan).node
        selection = {"z": (index,), "y": (slice(None), index), "x": (slice(None), slice(None), index)}[axis]
        image = np.asarray(node[selection])
        self.cache.put(key, image)
        return image

    def _prefetch_neighbours(self, scan: str, axis: Axis, index: int, shape: tuple[int, ...]) -> None:
        if axis != "z":
            return  # y and x slices cross every chunk of a z-chunked volume: read them on demand only
        for offset in range(1, PREFETCH_NEIGHBOURS + 1):
            for neighbour in (index + offset, index - offset):
                key = (scan, axis, neighbour)
                if 0 <= neighbour < shape[0] and key not in self.prefetches and self.cache.get(key) is None:
                    prefetch = self.prefetcher.submit(self._fetch, key)
                    self.prefetches[key] = prefetch
                    prefetch.add_done_callback(lambda _, key=key: self.prefetches.pop(key, None))


def check_slice(shape: tuple[int, ...], axis: str, index: int) -> None:
    if axis not in AXES:
        raise InvalidSlice(f"axis must be one of {', '.join(AXES)}, not {axis!r}")
    extent = shape[AXES.index(axis)]
    if not 0 <= index < extent:
        raise InvalidSlice(f"{axis} index {index} is outside 0..{extent - 1}")
