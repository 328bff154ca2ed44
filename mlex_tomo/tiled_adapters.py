"""Tiled adapters for registered volumes: files checked before every read, HDF5 read by selection.

Every adapter named in tiled_config/config.yml (`adapters_by_mimetype`) first checks
that what it is about to read lies under the readable roots (mlex_tomo/readable_files.py):
a registered file may have changed since registration, into a link or a dataset that
reads from elsewhere. TIFF is then served by Tiled's own adapters, Zarr by Tiled's own
array adapter over a store that checks each chunk it reads.

HDF5 gets its own: Tiled 0.2.18's HDF5 array adapter builds, for every request, a Dask
graph with one task per chunk of the whole dataset and reopens the file for each chunk
it reads: 92 ms for one 2048² plane of a 256-deep volume and 261 ms at 2048 deep,
against 3 ms with h5py (docs/benchmarks.md). Every client pays it: the web app's slice
viewer and the segmentation job's slab reads alike. This adapter answers the same
requests with one h5py read, and falls back to Tiled's own adapter for what it does not
cover: datasets spread over several files, sliced or squeezed registrations and object
dtypes.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr
from numpy.typing import NDArray
from tiled.adapters.array import ArrayAdapter
from tiled.adapters.hdf5 import SWMR_DEFAULT, HDF5Adapter, get_hdf5_attrs, h5open
from tiled.adapters.tiff import TiffAdapter, TiffSequenceAdapter
from tiled.adapters.zarr import ZarrAdapter, ZarrArrayAdapter
from tiled.ndslice import NDBlock, NDSlice
from tiled.structures.array import ArrayStructure
from tiled.structures.core import StructureFamily
from tiled.structures.data_source import DataSource, Management
from tiled.utils import path_from_uri
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore

from mlex_tomo.readable_files import OutsideRoots, check_registered_dataset, within_roots

BLOCK_BYTES = 64 * 2**20  # the most a strided read holds before striding it


READABLE_ROOTS_VARIABLE = "MLEX_TILED_READABLE_DIR"  # what tiled_config/config.yml serves registered files from


def readable_roots() -> list[Path]:
    """The folders registered files may read from, as the Tiled server was started with them."""
    value = os.environ.get(READABLE_ROOTS_VARIABLE, "")
    roots = [Path(part).resolve() for part in value.split(os.pathsep) if part]
    if not roots:
        raise OutsideRoots(f"{READABLE_ROOTS_VARIABLE} is not set: no registered file may be read")
    return roots


def check_hdf5_source(data_source: DataSource, dataset: str | list[str]) -> None:
    """Refuse to serve a registered HDF5 dataset that now reads from outside the roots (mlex_tomo.readable_files.py)."""
    dataset = dataset if isinstance(dataset, str) else "/".join(dataset)
    roots = readable_roots()
    for asset in data_source.assets:
        check_registered_dataset(Path(path_from_uri(asset.data_uri)), dataset, roots)


def check_external_files(data_source: DataSource) -> None:
    """Refuse to serve a registered file or folder that now resolves outside the roots, or is no longer a plain file."""
    if data_source.management != Management.external:
        return  # masks and results, written through Tiled into its own storage
    roots = readable_roots()
    for asset in data_source.assets:
        within_roots(Path(path_from_uri(asset.data_uri)), roots, directory=asset.is_directory)


class _CheckedFilesAdapter:
    """One of Tiled's adapters (`served_by`), behind the check of the registered files."""

    served_by: Any

    @classmethod
    def from_catalog(cls, data_source: DataSource, node: Any, /, **parameters: Any) -> Any:
        check_external_files(data_source)
        return cls.served_by.from_catalog(data_source, node, **parameters)


class TiffVolumeAdapter(_CheckedFilesAdapter):
    served_by = TiffAdapter


class TiffSequenceVolumeAdapter(_CheckedFilesAdapter):
    served_by = TiffSequenceAdapter


class CheckedLocalStore(LocalStore):
    """A Zarr store on disk whose every key is checked as it is read.

    Walking a store's folder at each request would cost a listing of every chunk of a
    terabyte volume; checking the chunks read costs a path resolution each, and a chunk
    turned into a link out of the roots after registration is refused.
    """

    def __init__(self, root: Path, roots: list[Path]) -> None:
        super().__init__(root, read_only=True)
        self.roots = roots

    async def get(self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None) -> Buffer | None:
        within_roots(self.root / key, self.roots)
        return await super().get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            within_roots(self.root / key, self.roots)
        return await super().get_partial_values(prototype, key_ranges)


class ZarrVolumeAdapter:
    """A registered Zarr array (the ingester registers the array itself, also one inside a group), read through a CheckedLocalStore.

    Arrays written through Tiled (masks, results) live in its own storage and are served,
    and written, by Tiled's own adapter.
    """

    @classmethod
    def from_catalog(cls, data_source: DataSource, node: Any, /, **parameters: Any) -> Any:
        if data_source.management != Management.external:
            return ZarrAdapter.from_catalog(data_source, node, **parameters)
        check_external_files(data_source)
        store = CheckedLocalStore(Path(path_from_uri(data_source.assets[0].data_uri)), readable_roots())
        array = zarr.open_array(store=store, mode="r")
        return ZarrArrayAdapter(array, structure=data_source.structure, metadata=node.metadata_, specs=node.specs, **parameters)


class HDF5VolumeAdapter:
    """What tiled_config/config.yml maps `application/x-hdf5` to.

    Every file's sources are checked first, whichever adapter then serves it: a file
    can change after it was registered.
    """

    @classmethod
    def from_catalog(cls, data_source: DataSource, node: Any, /, **parameters: Any) -> Any:
        check_hdf5_source(data_source, parameters.get("dataset", "/"))
        if data_source.structure_family == StructureFamily.array:
            adapter = HDF5DatasetAdapter.from_catalog(data_source, node, **parameters)
            if adapter is not None:
                return adapter
        return HDF5Adapter.from_catalog(data_source, node, **parameters)


class HDF5DatasetAdapter(ArrayAdapter):
    """One dataset of one HDF5 file, opened for each read (cheap: about 1 ms) so no handle goes stale."""

    def __init__(self, path: Path, dataset: str, structure: ArrayStructure, open_options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(None, structure, **kwargs)
        self.path = path
        self.dataset = dataset
        self.open_options = open_options

    @classmethod
    def from_catalog(
        cls, data_source: DataSource, node: Any, /, dataset: str | list[str] = "/",
        slice: Any = None, squeeze: bool = False, swmr: bool = SWMR_DEFAULT, libver: str = "latest", locking: Any = None,
    ) -> HDF5DatasetAdapter | None:
        """The adapter, or None where Tiled's own adapter must serve the dataset."""
        dataset = dataset if isinstance(dataset, str) else "/".join(dataset)
        data_uris = [asset.data_uri for asset in data_source.assets if asset.parameter == "data_uris"]
        if len(data_uris) != 1 or slice or squeeze:
            return None
        path = Path(path_from_uri(data_uris[0]))
        open_options = {"swmr": swmr, "libver": libver, "locking": locking}
        structure = data_source.structure
        with h5open(path, dataset, **open_options) as opened:
            if not isinstance(opened, h5py.Dataset) or opened.dtype.kind == "O":
                return None
            if opened.dtype != structure.data_type.to_numpy_dtype() or opened.shape != tuple(structure.shape):
                raise ValueError(
                    f"{path}:{dataset} is {opened.dtype} {opened.shape}, registered as "
                    f"{structure.data_type.to_numpy_dtype()} {tuple(structure.shape)}"
                )
        metadata = copy.deepcopy(node.metadata_)
        metadata.update(get_hdf5_attrs(data_uris[0], dataset, **open_options))
        return cls(path, dataset, structure, open_options, metadata=metadata, specs=node.specs)

    def read(self, slice: NDSlice = NDSlice(...)) -> NDArray[Any]:
        check_registered_dataset(self.path, self.dataset, readable_roots())
        with h5open(self.path, self.dataset, **self.open_options) as opened:
            return read_selection(opened, tuple(slice) if slice else ())

    def read_block(self, block: NDBlock, slice: NDSlice = NDSlice(...)) -> NDArray[Any]:
        block_data = self.read(NDSlice(*block.slice_from_chunks(self._structure.chunks)))
        return block_data[tuple(slice)] if slice else block_data


def read_selection(dataset: h5py.Dataset, selection: tuple) -> NDArray[Any]:
    """`dataset[selection]` for integers, slices and an Ellipsis, with strides taken in NumPy.

    h5py's own strided read of a 2048² plane at step 2 takes about 150 ms, reading the
    covering box and striding it in NumPy about 20 ms. Along the first axis the read goes
    in blocks of at most BLOCK_BYTES, so a strided read of a whole volume stays bounded.
    """
    expanded = expand_selection(selection, dataset.shape)
    if all(isinstance(part, int) or part.step == 1 for part in expanded):
        return dataset[expanded]
    first, rest = expanded[0], expanded[1:]
    rest_covering = tuple(covering(part) for part in rest)
    rest_within = tuple(within(part) for part in rest if not isinstance(part, int))
    if isinstance(first, int):
        return dataset[(first, *rest_covering)][rest_within]
    rows = range(first.start, first.stop, first.step)
    if not rows:
        return dataset[(slice(0, 0), *rest_covering)][(slice(None), *rest_within)]
    row_bytes = dataset.dtype.itemsize * math.prod(part.stop - part.start for part in rest_covering if isinstance(part, slice))
    rows_per_read = max(1, (BLOCK_BYTES // max(row_bytes, 1) - 1) // abs(rows.step) + 1)
    parts = []
    for begin in range(0, len(rows), rows_per_read):
        chosen = rows[begin : begin + rows_per_read]
        some_rows = slice(chosen.start, chosen.stop, chosen.step)
        parts.append(dataset[(covering(some_rows), *rest_covering)][(within(some_rows), *rest_within)])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def expand_selection(selection: tuple, shape: tuple[int, ...]) -> tuple[int | slice, ...]:
    """One integer or normalised slice (start, stop, step within the extent) per axis."""
    if not isinstance(selection, tuple):
        selection = (selection,)
    ellipses = sum(part is Ellipsis for part in selection)
    if ellipses > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    explicit = len(selection) - ellipses
    if explicit > len(shape):
        raise IndexError(f"too many indices: {explicit} for an array of {len(shape)} dimensions")
    filled: list[Any] = []
    for part in selection:
        filled.extend([slice(None)] * (len(shape) - explicit) if part is Ellipsis else [part])
    filled.extend([slice(None)] * (len(shape) - len(filled)))
    expanded: list[int | slice] = []
    for part, extent in zip(filled, shape):
        if isinstance(part, slice):
            expanded.append(slice(*part.indices(extent)))
        else:
            index = int(part)
            if not -extent <= index < extent:
                raise IndexError(f"index {index} is out of bounds for an axis of size {extent}")
            expanded.append(index % extent)
    return tuple(expanded)


def covering(part: int | slice) -> int | slice:
    """What to read for one axis: the integer, or a step-1 slice over every index the slice picks."""
    if isinstance(part, int):
        return part
    chosen = range(part.start, part.stop, part.step)
    return slice(min(chosen), max(chosen) + 1) if chosen else slice(0, 0)


def within(part: slice) -> slice:
    """The slice that picks `part` out of what `covering(part)` read."""
    chosen = range(part.start, part.stop, part.step)
    if not chosen:
        return slice(None)
    stop = chosen.stop - min(chosen)
    return slice(chosen.start - min(chosen), stop if stop >= 0 else None, chosen.step)
