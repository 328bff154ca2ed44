"""The scans in Tiled as the web app sees them: a list, and slices read once and cached.

Only the Dash server talks to Tiled; the browser asks the server for images. A slice is
read from Tiled already strided to the resolution the view needs (a quarter of the bytes
of a 2048² slice for a 1024-pixel view), kept in a memory-bounded cache, and the next
slices in the direction the user is moving are read in the background, so stepping and
scrubbing through a volume rarely wait on Tiled.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from cachetools import LRUCache
from numpy.typing import NDArray

from dash_app.imaging import ImageFormat, display_range, encode, histogram, stride_for, to_display
from mlex_tomo.tiled_http import Node, NodeNotFound, TiledHttpClient
from mlex_tomo.tiled_names import RECONS, volume_key

Axis = Literal["z", "y", "x"]
AXES: tuple[Axis, ...] = ("z", "y", "x")
PREFETCH_SLAB = 8  # slices read ahead in one request while stepping through z
JUMP_NEIGHBOURS = 1  # slices read on each side of a slice jumped to, in the same request
FIRST_SLAB = 2  # after a jump, read-ahead slabs start this small and double up to PREFETCH_SLAB
READ_AHEAD = 2 * PREFETCH_SLAB  # a slab is read once fewer slices than this are held ahead
IMAGE_SHARE = 4  # a quarter of the cache holds encoded images, the rest slices as read
SAMPLE_SLICES = 8
SAMPLE_MAX_SIZE = 512


class ScanNotFound(LookupError):
    pass


class InvalidSlice(ValueError):
    pass


class UnreadableScan(ValueError):
    """The scan's node in Tiled is not a 3-D volume the app can show."""


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


@dataclass(frozen=True)
class Rendering:
    """How a slice becomes an image: its contrast window and format."""

    low: float
    high: float
    image_format: ImageFormat


class SliceCache:
    """Least-recently-used slices (arrays or encoded images), bounded by their total size in bytes; thread-safe."""

    def __init__(self, capacity_bytes: int) -> None:
        self.entries: LRUCache[tuple, NDArray[Any] | bytes] = LRUCache(maxsize=capacity_bytes, getsizeof=_size)
        self.lock = threading.Lock()

    def get(self, key: tuple) -> Any:
        with self.lock:
            return self.entries.get(key)

    def put(self, key: tuple, value: NDArray[Any] | bytes) -> None:
        if _size(value) > self.entries.maxsize:
            return
        with self.lock:
            self.entries.setdefault(key, value)


def _size(value: NDArray[Any] | bytes) -> int:
    return value.nbytes if isinstance(value, np.ndarray) else len(value)


@dataclass(eq=False)
class _SlabRead:
    """z slices first..stop-1 read in the background in one request.

    `arrived` is set once their pixels are cached, before they are encoded, so a request
    waiting for one of them does not also wait for the encoding of the others.
    """

    first: int
    stop: int
    arrived: Future[None] = field(default_factory=Future)
    task: Future[None] = field(init=False)  # set once submitted


class ScanLibrary:
    """Scans under /recons, their slices and display defaults."""

    def __init__(self, tiled: TiledHttpClient, cache_bytes: int) -> None:
        self.tiled = tiled
        self.images = SliceCache(cache_bytes // IMAGE_SHARE)
        self.cache = SliceCache(cache_bytes - cache_bytes // IMAGE_SHARE)
        self.volumes: dict[str, Node] = {}
        self.defaults: dict[str, DisplayDefaults] = {}
        self.lock = threading.Lock()
        self.prefetcher = ThreadPoolExecutor(2, thread_name_prefix="prefetch")
        self.prefetches: dict[tuple, _SlabRead] = {}
        self.last_index: dict[tuple, int] = {}
        self.slab_size: dict[tuple, int] = {}

    def scans(self) -> list[ScanSummary]:
        summaries = []
        for key, node in self.tiled.children(RECONS).items():
            metadata = node.metadata
            shape = metadata.get("shape") or node.structure.get("shape") or []
            summaries.append(
                ScanSummary(
                    key=key,
                    shape=tuple(int(extent) for extent in shape),
                    dtype=dtype_name(str(metadata.get("dtype", ""))),
                    ingested_at=metadata.get("ingested_at"),
                    format=metadata.get("format"),
                )
            )
        return sorted(summaries, key=lambda scan: scan.ingested_at or "", reverse=True)

    def volume(self, scan: str) -> Node:
        """The scan's 3-D array: `/recons/<scan>` itself, its `data`, or its only array, as jobs read it."""
        with self.lock:
            if scan not in self.volumes:
                try:
                    self.volumes[scan] = self._volume_array(f"{RECONS}/{scan}")
                except NodeNotFound:
                    raise ScanNotFound(f"no scan {scan!r} under /{RECONS}") from None
            return self.volumes[scan]

    def _volume_array(self, path: str) -> Node:
        node = self.tiled.node(path)
        if node.structure_family == "container":
            try:
                key = volume_key({key: child.is_array for key, child in self.tiled.children(path).items()})
            except ValueError as error:
                raise UnreadableScan(f"/{path} {error}") from None
            return self._volume_array(f"{path}/{key}")
        if not node.is_array or len(node.shape) != 3:
            raise UnreadableScan(f"/{path} is not a 3-D (z, y, x) array")
        return node

    def slice(self, scan: str, axis: Axis, index: int, max_size: int) -> NDArray[Any]:
        """The slice with every n-th pixel, n the smallest that fits its longer side in `max_size`."""
        shape, step = self._locate(scan, axis, index, max_size)
        self._prefetch_ahead(scan, axis, index, step, shape)
        return self._read((scan, axis, index, step))

    def full_plane(self, scan: str, axis: Axis, index: int) -> NDArray[Any]:
        """One slice at full resolution, read past the caches: the live preview keeps its features instead."""
        check_slice(self.volume(scan).shape, axis, index)
        return self._read_volume(scan, _plane_selection(axis, index, 1))

    def image(self, scan: str, axis: Axis, index: int, max_size: int, rendering: Rendering) -> bytes:
        """The slice windowed and encoded; the slices read ahead are encoded ahead the same way."""
        shape, step = self._locate(scan, axis, index, max_size)
        self._prefetch_ahead(scan, axis, index, step, shape, rendering)
        key = (scan, axis, index, step, rendering)
        body = self.images.get(key)
        if body is None:
            pixels = self._read((scan, axis, index, step))
            body = self.images.get(key) or self._encode(key, pixels)  # a prefetch may have encoded it meanwhile
        return body

    def voxel(self, scan: str, z: int, y: int, x: int) -> float:
        """One voxel's value: from a full-resolution slice already held, else read alone from Tiled."""
        shape = self.volume(scan).shape
        for axis, index in zip(AXES, (z, y, x)):
            check_slice(shape, axis, index)
        held = self.cache.get((scan, "z", z, 1))
        if held is not None:
            return float(held[y, x])
        return float(self._read_volume(scan, (slice(z, z + 1), slice(y, y + 1), slice(x, x + 1))).reshape(-1)[0])

    def _locate(self, scan: str, axis: Axis, index: int, max_size: int) -> tuple[tuple[int, ...], int]:
        """The volume's shape and the stride that fits the slice in `max_size`; refuses a slice outside it."""
        shape = self.volume(scan).shape
        check_slice(shape, axis, index)
        return shape, stride_for(slice_shape(shape, axis), max_size)

    def _encode(self, key: tuple, pixels: NDArray[Any]) -> bytes:
        rendering: Rendering = key[-1]
        body = encode(to_display(pixels, rendering.low, rendering.high), rendering.image_format)
        self.images.put(key, body)
        return body

    def display_defaults(self, scan: str) -> DisplayDefaults:
        if scan not in self.defaults:
            volume = self.volume(scan)
            depth = volume.shape[0]
            chosen = np.unique(np.linspace(0, depth - 1, min(SAMPLE_SLICES, depth)).round().astype(int))
            step = stride_for(volume.shape[1:], SAMPLE_MAX_SIZE)
            sample = np.stack([self._read((scan, "z", int(z), step)) for z in chosen])
            low, high = display_range(sample)
            centres, counts = histogram(sample)
            finite = sample[np.isfinite(sample)]
            self.defaults[scan] = DisplayDefaults(
                low, high, float(finite.min(initial=low)), float(finite.max(initial=high)), centres, counts
            )
        return self.defaults[scan]

    def _read(self, key: tuple) -> NDArray[Any]:
        """From the cache, else from the prefetch already reading it, else from Tiled."""
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        prefetch = self.prefetches.get(key)
        # A queued prefetch is dropped (read now, not after the queue); one under way is waited for
        # rather than read a second time, and read again here only if it failed.
        if prefetch is not None and not prefetch.task.cancel() and _arrives(prefetch):
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        return self._fetch(key)

    def _fetch(self, key: tuple) -> NDArray[Any]:
        scan, axis, index, step = key
        image = self._read_volume(scan, _plane_selection(axis, index, step))
        self.cache.put(key, image)
        return image

    def _read_volume(self, scan: str, selection: tuple) -> NDArray[Any]:
        """A read of the scan's array; a scan removed from Tiled since it was opened is forgotten and not found."""
        try:
            return self.tiled.read(self.volume(scan), selection)
        except NodeNotFound:
            with self.lock:
                self.volumes.pop(scan, None)
                self.defaults.pop(scan, None)
            raise ScanNotFound(f"no scan {scan!r} under /{RECONS}: it was removed from Tiled") from None

    def _fetch_slab(self, scan: str, first: int, stop: int, step: int) -> NDArray[Any]:
        """z slices first..stop-1 in one request (Tiled's cost is per request), each cached."""
        every = slice(None, None, step)
        slab = self._read_volume(scan, (slice(first, stop), every, every))
        for offset, pixels in enumerate(slab):
            self.cache.put((scan, "z", first + offset, step), pixels.copy())
        return slab

    def _prefetch_slab(self, read: _SlabRead, scan: str, step: int, rendering: Rendering | None, upwards: bool) -> None:
        """Read in the background; then encoded, in the direction of travel, when a rendering is given."""
        try:
            slab = self._fetch_slab(scan, read.first, read.stop, step)
        except BaseException as error:
            read.arrived.set_exception(error)
            raise
        read.arrived.set_result(None)
        if rendering is not None:
            for offset in range(len(slab)) if upwards else reversed(range(len(slab))):
                self._encode((scan, "z", read.first + offset, step, rendering), slab[offset])

    def _prefetch_ahead(
        self, scan: str, axis: Axis, index: int, step: int, shape: tuple[int, ...], rendering: Rendering | None = None,
    ) -> None:
        """Keep the next slices in the direction of travel read; after a jump, read the slice and one on each side.

        Ahead of a user stepping or scrubbing through z, a slab is read in one request
        whenever fewer than READ_AHEAD slices ahead are held or being read, so that a slab
        is ready before the user reaches it even while the reads share the machine with the
        browser. After a jump the slabs start at FIRST_SLAB slices and double up to
        PREFETCH_SLAB: a scrub's first steps wait on a small read, not on a large one. A
        jump also drops the prefetches still queued, so the user does not wait behind
        reads nobody will look at, and reads the slice with its neighbours at once, in one
        request: a read handed to the prefetch threads could wait behind one under way.
        """
        if axis != "z":
            return  # y and x slices cross every chunk of a z-chunked volume: read them on demand only
        view = (scan, axis, step)
        previous, self.last_index[view] = self.last_index.get(view), index
        moved = 0 if previous is None else index - previous
        if not 0 < abs(moved) <= PREFETCH_SLAB:
            for key, prefetch in list(self.prefetches.items()):
                if key[:2] == (scan, axis):
                    prefetch.task.cancel()
            self.slab_size[view] = FIRST_SLAB
            if not self._held(scan, index, step):
                self._fetch_slab(scan, max(index - JUMP_NEIGHBOURS, 0), min(index + JUMP_NEIGHBOURS + 1, shape[0]), step)
            return
        direction = 1 if moved > 0 else -1
        ahead = range(index + direction, index + direction * (READ_AHEAD + 1), direction)
        first_missing = next((z for z in ahead if 0 <= z < shape[0] and not self._held(scan, z, step)), None)
        if first_missing is None:
            return
        size = self.slab_size.get(view, PREFETCH_SLAB)
        self.slab_size[view] = min(2 * size, PREFETCH_SLAB)
        if direction > 0:
            self._prefetch(scan, first_missing, min(first_missing + size, shape[0]), step, rendering, upwards=True)
        else:
            self._prefetch(scan, max(first_missing - size + 1, 0), first_missing + 1, step, rendering, upwards=False)

    def _held(self, scan: str, z: int, step: int) -> bool:
        key = (scan, "z", z, step)
        return key in self.prefetches or self.cache.get(key) is not None

    def _prefetch(self, scan: str, first: int, stop: int, step: int, rendering: Rendering | None, upwards: bool) -> None:
        if all(self._held(scan, z, step) for z in range(first, stop)):
            return
        keys = [(scan, "z", z, step) for z in range(first, stop)]
        read = _SlabRead(first, stop)
        read.task = self.prefetcher.submit(self._prefetch_slab, read, scan, step, rendering, upwards)
        for key in keys:
            self.prefetches[key] = read
        read.task.add_done_callback(lambda _: self._forget(read, keys))

    def _forget(self, read: _SlabRead, keys: list[tuple]) -> None:
        read.arrived.cancel()  # a read dropped from the queue: nobody may wait for it
        for key in keys:
            if self.prefetches.get(key) is read:
                del self.prefetches[key]


def _arrives(read: _SlabRead) -> bool:
    """Wait for a read under way; whether its slices arrived."""
    try:
        read.arrived.result()
    except Exception:  # noqa: BLE001 - a failed or dropped read is read again by the caller
        return False
    return True


def dtype_name(text: str) -> str:
    """`float32`, not NumPy's `<f4`: what a scientist reads."""
    try:
        return np.dtype(text).name
    except TypeError:
        return text


def _plane_selection(axis: Axis, index: int, step: int) -> tuple[int | slice, ...]:
    """The slice `index` along `axis`, every `step`-th pixel of it."""
    every = slice(None, None, step)
    return {"z": (index, every, every), "y": (every, index, every), "x": (every, every, index)}[axis]


def slice_shape(shape: tuple[int, ...], axis: Axis) -> tuple[int, ...]:
    return tuple(extent for position, extent in enumerate(shape) if position != AXES.index(axis))


def check_slice(shape: tuple[int, ...], axis: str, index: int) -> None:
    if axis not in AXES:
        raise InvalidSlice(f"axis must be one of {', '.join(AXES)}, not {axis!r}")
    extent = shape[AXES.index(axis)]
    if not 0 <= index < extent:
        raise InvalidSlice(f"{axis} index {index} is outside 0..{extent - 1}")
