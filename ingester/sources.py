"""Work out what an announced file holds and how Tiled should serve it in place.

Reading only headers (HDF5 metadata, Zarr metadata, the first and last TIFF), this
turns a path into a `ScanDescription`: the arrays to register under `/recons/<scan>`,
each an externally managed Tiled data source pointing at the original files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tifffile
import zarr
from tiled.structures.array import ArrayStructure, BuiltinDtype
from tiled.structures.core import StructureFamily
from tiled.structures.data_source import Asset, DataSource, Management
from tiled.utils import ensure_uri

from ingester.errors import Rejected, Unreadable
from mlex_tomo.readable_files import OutsideRoots, check_folder, check_storage, external_link_on_the_way, locate_dataset, within_roots
from mlex_tomo.tiled_names import VOLUME_KEY

HDF5_SUFFIXES = {".nxs", ".h5", ".hdf5", ".hdf", ".nx5"}
TIFF_SUFFIXES = {".tif", ".tiff"}
SAVU_VOLUME = "entry/final_result_tomo/data"
SAVU_METADATA = "entry/final_result_tomo/meta_data"
NXTOMOPROC_VOLUME = "entry/data/data"
SAVU_SUFFIX = "_processed"
AXES_ZYX = ["z", "y", "x"]
# Savu's TiffSaver writes one image per y by default: XZ planes.
TIFF_SAVER_AXES = ["y", "z", "x"]
# How each of Tiled's adapters names its file argument(s).
ASSET_PARAMETER = {
    "application/x-hdf5": "data_uris",
    "multipart/related;type=image/tiff": "data_uris",
    "application/x-zarr": "data_uri",
    "image/tiff": "data_uri",
}
NUMERIC_KINDS = "iuf"  # signed and unsigned integers, floats: what the viewer windows and the models read
_NUMBERED = re.compile(r"^(.*?)(\d+)$")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ArraySource:
    """One array of a scan, described well enough for Tiled to serve it."""

    key: str
    data_source: DataSource
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def structure(self) -> ArrayStructure:
        return self.data_source.structure


@dataclass(frozen=True)
class ScanDescription:
    source_path: Path
    scan_id: str
    file_format: str
    arrays: list[ArraySource]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def volume(self) -> ArraySource:
        return self.arrays[0]


def describe(path: Path, roots: list[Path], hdf5_dataset: str | None = None) -> ScanDescription:
    """Describe the scan at `path` (already checked to exist and to lie in `roots`)."""
    description = _describe_format(path, roots, hdf5_dataset)
    for array in description.arrays:
        _check_servable(array.structure, f"{path} ({array.key})")
    return description


def _check_servable(structure: ArrayStructure, where: str) -> None:
    """Refuse what the stack can neither show nor segment, rather than fail on it later."""
    if 0 in structure.shape:
        raise Rejected(f"{where} is empty: its shape is {tuple(structure.shape)}")
    dtype = structure.data_type.to_numpy_dtype() if hasattr(structure.data_type, "to_numpy_dtype") else None
    if dtype is None or dtype.kind not in NUMERIC_KINDS:
        raise Rejected(f"{where} holds {dtype if dtype is not None else 'structured'} values, not numbers (integers or floats)")


def _describe_format(path: Path, roots: list[Path], hdf5_dataset: str | None) -> ScanDescription:
    if not (path.is_file() or path.is_dir()):  # a FIFO, a device: opening one can block for ever
        raise Rejected(f"{path} is not a regular file or a folder")
    try:
        if path.is_dir():
            if is_zarr_store(path):
                return _describe_zarr(path, roots)
            return _describe_tiff_stack(path, roots)
        suffix = path.suffix.lower()
        if suffix in HDF5_SUFFIXES:
            return _describe_hdf5(path, roots, hdf5_dataset)
        if suffix in TIFF_SUFFIXES:
            return _describe_multipage_tiff(within_roots(path, roots))
    except Rejected:
        raise
    except OutsideRoots as reason:
        raise Rejected(f"{path} reads from outside the data roots: {reason}") from None
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise Unreadable(f"cannot read {path}: {error}") from None
    raise Rejected(
        f"unsupported format {path.suffix or '(no suffix)'} for {path}; "
        "expected NeXus/HDF5, Zarr, a TIFF stack folder or a multi-page TIFF"
    )


def is_zarr_store(path: Path) -> bool:
    return path.is_dir() and (path.suffix == ".zarr" or (path / ".zarray").exists() or (path / "zarr.json").exists())


def scan_id_for(path: Path) -> str:
    """`k11-37086_processed.nxs` -> `k11-37086`; a folder keeps its name."""
    name = path.name if path.is_dir() and path.suffix != ".zarr" else path.stem
    name = name.removesuffix(SAVU_SUFFIX)
    return _KEY_UNSAFE.sub("_", name).strip("._") or "scan"


def _describe_hdf5(path: Path, roots: list[Path], hdf5_dataset: str | None) -> ScanDescription:
    """Every file the volume's bytes come from is checked (links, external storage, virtual sources) before anything is read."""
    try:
        if (savu := _locate(path, SAVU_VOLUME, roots)) is not None:
            file_format, dataset_path, located = "savu-nexus", SAVU_VOLUME, savu
        elif (nxtomoproc := _locate(path, NXTOMOPROC_VOLUME, roots)) is not None:
            file_format, dataset_path, located = "nxtomoproc", NXTOMOPROC_VOLUME, nxtomoproc
        else:
            with h5py.File(path, "r") as file:
                dataset_path = hdf5_dataset or _only_volume_dataset(file, path)
            file_format, located = "hdf5", _locate(path, dataset_path, roots)
            if located is None:
                raise Rejected(f"{path} has no dataset {dataset_path!r}")
        data_file, data_path = located
        check_storage(data_file, data_path, roots)
    except OutsideRoots as reason:
        raise Rejected(f"{path} reads from outside the data roots: {reason}") from None
    with h5py.File(path, "r") as file:
        metadata = _savu_metadata(file) if file_format == "savu-nexus" else {}
    data_path = data_path.lstrip("/")
    with h5py.File(data_file, "r") as file:
        dataset = file[data_path]
        if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 3:
            raise Rejected(f"{path}:{dataset_path} is not a 3-D dataset")
        structure = ArrayStructure.from_array(dataset)
    volume = ArraySource(
        key=VOLUME_KEY,
        data_source=_external_source(
            "application/x-hdf5", structure, [data_file], parameters={"dataset": data_path}
        ),
        metadata={"axes": AXES_ZYX, "source_dataset": f"{data_file}:{data_path}"},
    )
    arrays = [volume]
    if file_format == "savu-nexus":
        arrays += [_describe_tiff_saver(folder, roots) for folder in sorted(path.parent.glob("TiffSaver*")) if folder.is_dir()]
    return ScanDescription(path, scan_id_for(path), file_format, arrays, metadata)


def _only_volume_dataset(file: h5py.File, path: Path) -> str:
    volumes: list[str] = []

    def collect(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset) and item.ndim == 3:
            volumes.append(name)

    file.visititems(collect)
    if not volumes:
        raise Rejected(f"{path} holds no 3-D dataset")
    if len(volumes) > 1:
        raise Rejected(
            f"{path} holds several 3-D datasets ({', '.join(volumes)}); "
            "name one with the setting ingester.hdf5_dataset"
        )
    return volumes[0]


def _locate(path: Path, dataset_path: str, roots: list[Path]) -> tuple[Path, str] | None:
    """Where the dataset's bytes are, links followed and checked; None when the file has no such dataset."""
    try:
        return locate_dataset(path, dataset_path, roots)
    except KeyError:
        return None


def _savu_metadata(file: h5py.File) -> dict[str, Any]:
    """Read only through links within the file: metadata behind an external link is left out, not followed."""
    metadata: dict[str, Any] = {}
    try:
        if external_link_on_the_way(file, f"{SAVU_METADATA}/voxel_size") is not None:
            return metadata
    except KeyError:
        return metadata
    group = file.get(SAVU_METADATA)
    stored = group.get("voxel_size") if isinstance(group, h5py.Group) else None
    if isinstance(stored, h5py.Dataset) and stored.external is None and not stored.is_virtual:
        voxel_size = np.asarray(stored[()]).ravel()
        metadata["voxel_size"] = voxel_size.tolist() if voxel_size.size > 1 else float(voxel_size[0])
    return metadata


def _describe_zarr(path: Path, roots: list[Path]) -> ScanDescription:
    check_folder(path, roots)  # a chunk linked to a file outside the roots would be served as the array's bytes
    array = zarr.open(str(path), mode="r")
    data_uri_path = path
    if isinstance(array, zarr.Group):
        volumes = [name for name, member in array.arrays() if member.ndim == 3]
        if len(volumes) != 1:
            found = ", ".join(volumes) or "none"
            raise Rejected(f"Zarr group {path} must hold exactly one 3-D array (found: {found})")
        array, data_uri_path = array[volumes[0]], path / volumes[0]
    if array.ndim != 3:
        raise Rejected(f"Zarr array {path} is {array.ndim}-D, not 3-D")
    structure = _structure(array.shape, array.dtype, array.chunks)
    volume = ArraySource(
        key=VOLUME_KEY,
        data_source=_external_source("application/x-zarr", structure, [data_uri_path], directory=True),
        metadata={"axes": AXES_ZYX, "zarr_format": array.metadata.zarr_format},
    )
    return ScanDescription(path, scan_id_for(path), "zarr", [volume])


def _describe_tiff_stack(folder: Path, roots: list[Path]) -> ScanDescription:
    source = _tiff_sequence(folder, roots, key=VOLUME_KEY, axes=AXES_ZYX)
    return ScanDescription(folder, scan_id_for(folder), "tiff-stack", [source])


def _describe_tiff_saver(folder: Path, roots: list[Path]) -> ArraySource:
    key = _KEY_UNSAFE.sub("_", folder.name)
    return _tiff_sequence(folder, roots, key=key, axes=TIFF_SAVER_AXES)


def _tiff_sequence(folder: Path, roots: list[Path], key: str, axes: list[str]) -> ArraySource:
    numbered = []
    for file in folder.iterdir():
        match = _NUMBERED.match(file.stem)
        if file.suffix.lower() in TIFF_SUFFIXES and match:
            numbered.append((int(match.group(2)), file))
    if not numbered:
        raise Rejected(f"{folder} holds no numbered TIFF files")
    files = [within_roots(file, roots) for _, file in sorted(numbered)]  # each one a plain file under the roots
    first, last = (_tiff_plane(file) for file in (files[0], files[-1]))
    if first != last:
        raise Rejected(f"TIFF files in {folder} differ in shape or type: {first} vs {last}")
    (height, width), dtype = first
    structure = _structure((len(files), height, width), dtype, (1, height, width))
    return ArraySource(
        key=key,
        data_source=_external_source("multipart/related;type=image/tiff", structure, files),
        metadata={"axes": axes, "source_folder": str(folder)},
    )


def _tiff_plane(file: Path) -> tuple[tuple[int, int], np.dtype]:
    with tifffile.TiffFile(file) as tiff:
        page = tiff.pages[0]
        if len(tiff.pages) != 1 or len(page.shape) != 2:
            raise Rejected(f"{file} is not a single 2-D image")
        return tuple(page.shape), page.dtype


def _describe_multipage_tiff(path: Path) -> ScanDescription:
    with tifffile.TiffFile(path) as tiff:
        series = tiff.series[0]
        shape, dtype = series.shape, series.dtype
    if len(shape) != 3:
        raise Rejected(f"{path} is a {len(shape)}-D image, not a volume of several pages")
    structure = _structure(shape, dtype, shape)
    volume = ArraySource(
        key=VOLUME_KEY,
        data_source=_external_source("image/tiff", structure, [path]),
        metadata={"axes": AXES_ZYX},
    )
    return ScanDescription(path, scan_id_for(path), "tiff", [volume])


def _structure(shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...]) -> ArrayStructure:
    return ArrayStructure(
        data_type=BuiltinDtype.from_numpy_dtype(np.dtype(dtype)),
        shape=tuple(shape),
        chunks=tuple(_chunk_sizes(extent, chunk) for extent, chunk in zip(shape, chunks)),
    )


def _chunk_sizes(extent: int, chunk: int) -> tuple[int, ...]:
    full, remainder = divmod(extent, chunk)
    return (chunk,) * full + ((remainder,) if remainder else ())


def _external_source(
    mimetype: str,
    structure: ArrayStructure,
    files: list[Path],
    *,
    parameters: dict[str, Any] | None = None,
    directory: bool = False,
) -> DataSource:
    parameter = ASSET_PARAMETER[mimetype]
    return DataSource(
        structure_family=StructureFamily.array,
        mimetype=mimetype,
        structure=structure,
        parameters=parameters or {},
        management=Management.external,
        assets=[
            Asset(
                data_uri=ensure_uri(str(file)),
                is_directory=directory,
                parameter=parameter,
                num=number if parameter == "data_uris" else None,
            )
            for number, file in enumerate(files)
        ],
    )
