"""Stream volumes to disk in the formats the ingester reads, one slab at a time.

A volume comes from a `VolumeSource`: a phantom (`PhantomSource`, or a bare
`PhantomSpec`) or a simulated reconstruction of one. Reconstructions go to NXtomoproc,
plain HDF5, Zarr (v2 or v3), TIFF stacks, multi-page TIFF or a Savu-like output
folder; ground truth (labels HDF5) always comes from the `PhantomSpec` and is written
to separate files, so it never travels with the data a segmentation model sees.

Every file records the source's description as JSON: `source_description`, plus the
phantom's spec alone as `phantom_spec` when there is one. HDF5 attributes hold JSON
strings; Zarr attributes and the multi-page TIFF's shaped metadata hold JSON objects;
a TIFF stack has `phantom.json` and `source.json` next to its planes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import h5py
import numpy as np
import tifffile
import zarr
from numpy.typing import NDArray

from mlex_tomo.phantom import (
    CLASS_NAMES,
    GENERATOR_VERSION,
    PhantomSpec,
    generate_label_slab,
    iter_slabs,
)

SPEC_ATTRIBUTE = "phantom_spec"
DESCRIPTION_ATTRIBUTE = "source_description"
CLASS_NAMES_ATTRIBUTE = "class_names"
TIFF_SIDECAR = "phantom.json"
DESCRIPTION_SIDECAR = "source.json"
NXTOMOPROC_DATA_PATH = "entry/data/data"
HDF5_DATASET = "volume"
LABELS_DATASET = "labels"

# Savu's output folder: the NeXus file links to the reconstruction plugin's own file.
SAVU_PLUGIN = "2-AstraReconGpu-tomo"
SAVU_PLUGIN_FILE = f"{SAVU_PLUGIN}.h5"
SAVU_PLUGIN_DATA_PATH = f"/{SAVU_PLUGIN}/data"
SAVU_RESULT_GROUP = "entry/final_result_tomo"
SAVU_TIFF_FOLDER = "TiffSaver-tomo"
DEFAULT_VOXEL_SIZE_M = 1e-6

# Slabs of about this many voxels keep memory bounded whatever the plane size.
_SLAB_VOXEL_BUDGET = 2**26
# Chunks hold one plane, tiled so that a chunk stays near 4 MB for very large planes.
_MAX_CHUNK_EDGE = 1024


@runtime_checkable
class VolumeSource(Protocol):
    """A (z, y, x) volume that can be produced a slab of planes at a time.

    `description` is JSON-able and stored with the data. The writers use its keys
    "kind", "program" and "version" where a format has room for them, and store
    "phantom_spec" (a `PhantomSpec` as JSON) on its own as well, when present.
    """

    @property
    def shape(self) -> tuple[int, int, int]: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def description(self) -> dict[str, Any]: ...

    def iter_slabs(self, depth: int) -> Iterator[tuple[int, NDArray[Any]]]:
        """(z_start, image) for consecutive slabs of at most `depth` planes."""
        ...


class PhantomSource:
    """A phantom's images, exactly as `phantom.iter_slabs` renders them."""

    def __init__(self, spec: PhantomSpec) -> None:
        self.spec = spec

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.spec.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.spec.dtype)

    @property
    def description(self) -> dict[str, Any]:
        return {
            "kind": "phantom",
            "program": "mlex_tomo.phantom",
            "version": GENERATOR_VERSION,
            "phantom_spec": self.spec.model_dump(mode="json"),
        }

    def iter_slabs(self, depth: int) -> Iterator[tuple[int, NDArray[Any]]]:
        for z_start, image, _ in iter_slabs(self.spec, depth):
            yield z_start, image


SourceLike = VolumeSource | PhantomSpec


def as_volume_source(source: SourceLike) -> VolumeSource:
    return PhantomSource(source) if isinstance(source, PhantomSpec) else source


def default_slab_depth(source: SourceLike) -> int:
    _, ny, nx = source.shape
    return max(1, _SLAB_VOXEL_BUDGET // (ny * nx))


def plane_chunks(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """One z-plane per chunk, so reading a slice touches no other plane."""
    _, ny, nx = shape
    return 1, min(ny, _MAX_CHUNK_EDGE), min(nx, _MAX_CHUNK_EDGE)


def source_attributes(description: Mapping[str, Any]) -> dict[str, str]:
    """The JSON string attributes HDF5 files carry; `phantom_spec` as `PhantomSpec` dumps it."""
    attributes = {DESCRIPTION_ATTRIBUTE: json.dumps(description, separators=(",", ":"))}
    if "phantom_spec" in description:
        attributes[SPEC_ATTRIBUTE] = json.dumps(description["phantom_spec"], separators=(",", ":"))
    return attributes


def stream_slabs(source: VolumeSource, depth: int) -> Iterator[tuple[int, NDArray[Any]]]:
    """The source's slabs, checked to tile the volume in order with the declared shape and dtype.

    A source that broke its promise would otherwise leave silent gaps or casts on disk.
    """
    nz, ny, nx = source.shape
    expected_start = 0
    for z_start, slab in source.iter_slabs(depth):
        if z_start != expected_start or slab.shape[1:] != (ny, nx) or not 1 <= len(slab) <= depth:
            raise ValueError(
                f"source gave a slab of shape {slab.shape} at z={z_start}; expected at most "
                f"{depth} planes of ({ny}, {nx}) at z={expected_start}"
            )
        if slab.dtype != source.dtype:
            raise ValueError(f"source declared {source.dtype} but gave {slab.dtype} at z={z_start}")
        expected_start += len(slab)
        yield z_start, slab
    if expected_start != nz:
        raise ValueError(f"source stopped at z={expected_start} of {nz}")


def stream_planes(source: VolumeSource, depth: int) -> Iterator[tuple[int, NDArray[Any]]]:
    """(z, plane) for every plane, holding one slab at a time."""
    for z_start, slab in stream_slabs(source, depth):
        for offset, plane in enumerate(slab):
            yield z_start + offset, plane


def write_nxtomoproc(
    path: str | Path,
    source: SourceLike,
    slab_depth: int | None = None,
    sample_name: str = "phantom",
    date: datetime | None = None,
) -> Path:
    """An NXtomoproc entry with the volume at entry/data/data, shaped (z, y, x).

    `date` is the reconstruction date NXtomoproc requires; pass a fixed one to get
    byte-identical files from repeated runs.
    """
    source = as_volume_source(source)
    description = source.description
    kind = description.get("kind", "volume")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        file.attrs["NX_class"] = "NXroot"
        file.attrs["default"] = "entry"
        file.attrs.update(source_attributes(description))

        entry = _nx_group(file, "entry", "NXentry")
        entry.attrs["default"] = "data"
        entry["title"] = f"Synthetic {kind} {sample_name}"
        entry["definition"] = "NXtomoproc"

        instrument_source = _nx_group(
            _nx_group(entry, "instrument", "NXinstrument"), "source", "NXsource"
        )
        instrument_source["type"] = "Synthetic"
        instrument_source["name"] = description.get("program", "unknown")
        instrument_source["probe"] = "x-ray"

        _nx_group(entry, "sample", "NXsample")["name"] = sample_name

        reconstruction = _nx_group(entry, "reconstruction", "NXprocess")
        reconstruction["program"] = description.get("program", "unknown")
        reconstruction["version"] = description.get("version", "unknown")
        reconstruction["date"] = (date or datetime.now(UTC)).isoformat()
        parameters = _nx_group(reconstruction, "parameters", "NXparameters")
        parameters["raw_file"] = f"none: synthetic {kind}, no projections"

        data_group = _nx_group(entry, "data", "NXdata")
        data_group.attrs["signal"] = "data"
        data_group.attrs["axes"] = ["z", "y", "x"]
        for index, (axis, size) in enumerate(zip("zyx", source.shape)):
            data_group.attrs[f"{axis}_indices"] = index
            data_group.create_dataset(axis, data=np.arange(size)).attrs["units"] = "pixel"
        volume = _write_dataset(data_group, "data", source, plane_chunks(source.shape), slab_depth)
        volume.attrs["units"] = "a.u."
    return path


def _write_dataset(
    group: h5py.Group,
    name: str,
    source: VolumeSource,
    chunks: tuple[int, int, int],
    slab_depth: int | None,
) -> h5py.Dataset:
    """Create the (z, y, x) dataset and fill it slab by slab."""
    volume = group.create_dataset(name, shape=source.shape, dtype=source.dtype, chunks=chunks)
    for z_start, slab in stream_slabs(source, slab_depth or default_slab_depth(source)):
        volume[z_start : z_start + len(slab)] = slab
    return volume


def write_hdf5(
    path: str | Path,
    source: SourceLike,
    dataset: str = HDF5_DATASET,
    slab_depth: int | None = None,
) -> Path:
    """One plain (z, y, x) dataset, its description in the dataset's attributes."""
    source = as_volume_source(source)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        volume = _write_dataset(file, dataset, source, plane_chunks(source.shape), slab_depth)
        volume.attrs.update(source_attributes(source.description))
    return path


def write_zarr(
    path: str | Path,
    source: SourceLike,
    zarr_format: Literal[2, 3] = 3,
    slab_depth: int | None = None,
) -> Path:
    """A Zarr array (not a group) at `path`, one plane per chunk, replacing what was there.

    The `.zarr` suffix is required: it is how readers tell the folder is one array.
    """
    source = as_volume_source(source)
    path = Path(path)
    if path.suffix != ".zarr":
        raise ValueError(f"a Zarr array's folder must end in .zarr, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    description = source.description
    attributes = {DESCRIPTION_ATTRIBUTE: description}
    if "phantom_spec" in description:
        attributes[SPEC_ATTRIBUTE] = description["phantom_spec"]
    volume = zarr.create_array(
        store=str(path),
        shape=source.shape,
        dtype=source.dtype,
        chunks=plane_chunks(source.shape),
        zarr_format=zarr_format,
        attributes=attributes,
        dimension_names=("z", "y", "x") if zarr_format == 3 else None,
        overwrite=True,
    )
    for z_start, slab in stream_slabs(source, slab_depth or default_slab_depth(source)):
        volume[z_start : z_start + len(slab)] = slab
    return path


def write_tiff_stack(
    directory: str | Path,
    source: SourceLike,
    slab_depth: int | None = None,
    prefix: str = "slice",
) -> Path:
    """One TIFF per z-plane, `<prefix>_00000.tif` onwards, with phantom.json and source.json.

    Planes left by an earlier, deeper stack of the same prefix are removed first, so
    the folder never mixes two volumes.
    """
    source = as_volume_source(source)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"{prefix}_*.tif"):
        stale.unlink()
    digits = max(5, len(str(source.shape[0] - 1)))
    for z, plane in stream_planes(source, slab_depth or default_slab_depth(source)):
        tifffile.imwrite(directory / f"{prefix}_{z:0{digits}d}.tif", plane)
    description = source.description
    if "phantom_spec" in description:
        (directory / TIFF_SIDECAR).write_text(
            json.dumps(description["phantom_spec"], indent=2) + "\n"
        )
    (directory / DESCRIPTION_SIDECAR).write_text(json.dumps(description, indent=2) + "\n")
    return directory


def write_multipage_tiff(
    path: str | Path, source: SourceLike, slab_depth: int | None = None
) -> Path:
    """One TIFF, one page per z-plane, read back by tifffile as a single (z, y, x) series.

    The description sits in tifffile's shaped metadata (the first page's ImageDescription).
    """
    source = as_volume_source(source)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    depth = slab_depth or default_slab_depth(source)
    description = source.description
    metadata = {DESCRIPTION_ATTRIBUTE: description}
    if "phantom_spec" in description:
        metadata[SPEC_ATTRIBUTE] = description["phantom_spec"]
    nbytes = int(np.prod(source.shape)) * source.dtype.itemsize
    with tifffile.TiffWriter(path, bigtiff=nbytes > 2**32 - 2**25) as writer:
        # Contiguous planes form one series; its metadata is kept from the first page only.
        for _, plane in stream_planes(source, depth):
            writer.write(plane, contiguous=True, photometric="minisblack", metadata=metadata)
    return path


def write_savu_processed(
    scan_dir: str | Path,
    scan_name: str,
    source: SourceLike,
    tiff_saver: bool = True,
    slab_depth: int | None = None,
    voxel_size_m: float = DEFAULT_VOXEL_SIZE_M,
) -> Path:
    """Savu's output folder; returns `<scan_name>_processed.nxs`.

    As Savu does, the NeXus file holds no data: entry/final_result_tomo/data is an
    external link (relative, so the folder can move) to the reconstruction plugin's
    file. With `tiff_saver`, TiffSaver-tomo/ gets one TIFF per y, each the (z, x)
    plane `volume[:, y, :]`, as Savu's TiffSaver slices by default.
    """
    source = as_volume_source(source)
    scan_dir = Path(scan_dir)
    scan_dir.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = source.shape
    rows_per_block = min(ny, max(1, _SLAB_VOXEL_BUDGET // (nz * nx)))
    plugin_path = scan_dir / SAVU_PLUGIN_FILE
    with h5py.File(plugin_path, "w") as file:
        group = _nx_group(file, SAVU_PLUGIN, "NXdata")
        group.attrs["signal"] = "data"
        # Chunk rows match the TiffSaver's y-blocks, so each block reads every chunk once.
        chunks = (1, min(rows_per_block, _MAX_CHUNK_EDGE), min(nx, _MAX_CHUNK_EDGE))
        _write_dataset(group, "data", source, chunks, slab_depth)

    nexus_path = scan_dir / f"{scan_name}_processed.nxs"
    with h5py.File(nexus_path, "w") as file:
        file.attrs["NX_class"] = "NXroot"
        file.attrs["default"] = "entry"
        entry = _nx_group(file, "entry", "NXentry")
        entry.attrs["default"] = "final_result_tomo"
        result = _nx_group(entry, "final_result_tomo", "NXdata")
        result.attrs["signal"] = "data"
        result["data"] = h5py.ExternalLink(SAVU_PLUGIN_FILE, SAVU_PLUGIN_DATA_PATH)
        meta_data = result.create_group("meta_data")
        meta_data.create_dataset("voxel_size", data=voxel_size_m).attrs["units"] = "m"
        meta_data.create_dataset("shape", data=np.array(source.shape, np.int64))
        meta_data.attrs.update(source_attributes(source.description))

    if tiff_saver:
        _write_xz_tiffs(plugin_path, scan_dir / SAVU_TIFF_FOLDER, scan_name, rows_per_block)
    return nexus_path


def _write_xz_tiffs(plugin_path: Path, folder: Path, scan_name: str, rows_per_block: int) -> None:
    """Read back the plugin file a block of y rows at a time, since each TIFF needs every z."""
    folder.mkdir(exist_ok=True)
    for stale in folder.glob(f"{scan_name}_processed_*.tif"):
        stale.unlink()
    with h5py.File(plugin_path, "r") as file:
        volume = file[SAVU_PLUGIN_DATA_PATH]
        ny = volume.shape[1]
        for y_start in range(0, ny, rows_per_block):
            block = volume[:, y_start : min(y_start + rows_per_block, ny), :]
            for offset in range(block.shape[1]):
                name = f"{scan_name}_processed_{y_start + offset:05d}.tif"
                tifffile.imwrite(folder / name, np.ascontiguousarray(block[:, offset, :]))


def write_labels(path: str | Path, spec: PhantomSpec, slab_depth: int | None = None) -> Path:
    """Ground-truth labels (uint8, gzip) at `labels`, with the spec and class names as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nz = spec.shape[0]
    depth = slab_depth or default_slab_depth(spec)
    with h5py.File(path, "w") as file:
        file.attrs[SPEC_ATTRIBUTE] = spec.model_dump_json()
        file.attrs[CLASS_NAMES_ATTRIBUTE] = json.dumps(CLASS_NAMES)
        labels = file.create_dataset(
            LABELS_DATASET,
            shape=spec.shape,
            dtype=np.uint8,
            chunks=plane_chunks(spec.shape),
            compression="gzip",
        )
        for z_start in range(0, nz, depth):
            z_stop = min(z_start + depth, nz)
            labels[z_start:z_stop] = generate_label_slab(spec, z_start, z_stop)
    return path


def _nx_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    return group
