"""Stream phantoms to disk in the formats the ingester reads, one slab at a time.

Reconstructions (NXtomoproc HDF5, TIFF stacks) and ground truth (labels HDF5) are
written to separate files so that ground truth never travels with the data a
segmentation model sees. Every file records its `PhantomSpec` as JSON.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np
import tifffile

from mlex_tomo.phantom import (
    CLASS_NAMES,
    GENERATOR_VERSION,
    PhantomSpec,
    generate_label_slab,
    iter_slabs,
)

SPEC_ATTRIBUTE = "phantom_spec"
CLASS_NAMES_ATTRIBUTE = "class_names"
TIFF_SIDECAR = "phantom.json"
NXTOMOPROC_DATA_PATH = "entry/data/data"
LABELS_DATASET = "labels"

# Slabs of about this many voxels keep memory bounded whatever the plane size.
_SLAB_VOXEL_BUDGET = 2**26
# Chunks hold one plane, tiled so that a chunk stays near 4 MB for very large planes.
_MAX_CHUNK_EDGE = 1024


def default_slab_depth(spec: PhantomSpec) -> int:
    _, ny, nx = spec.shape
    return max(1, _SLAB_VOXEL_BUDGET // (ny * nx))


def plane_chunks(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """One z-plane per chunk, so reading a slice touches no other plane."""
    _, ny, nx = shape
    return 1, min(ny, _MAX_CHUNK_EDGE), min(nx, _MAX_CHUNK_EDGE)


def write_nxtomoproc(
    path: str | Path,
    spec: PhantomSpec,
    slab_depth: int | None = None,
    sample_name: str = "phantom",
    date: datetime | None = None,
) -> Path:
    """An NXtomoproc entry with the volume at entry/data/data, shaped (z, y, x).

    `date` is the reconstruction date NXtomoproc requires; pass a fixed one to get
    byte-identical files from repeated runs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = spec.shape
    with h5py.File(path, "w") as file:
        file.attrs["NX_class"] = "NXroot"
        file.attrs["default"] = "entry"
        file.attrs[SPEC_ATTRIBUTE] = spec.model_dump_json()

        entry = _nx_group(file, "entry", "NXentry")
        entry.attrs["default"] = "data"
        entry["title"] = f"Synthetic phantom {sample_name}"
        entry["definition"] = "NXtomoproc"

        source = _nx_group(_nx_group(entry, "instrument", "NXinstrument"), "source", "NXsource")
        source["type"] = "Synthetic"
        source["name"] = "mlex_tomo.phantom"
        source["probe"] = "x-ray"

        _nx_group(entry, "sample", "NXsample")["name"] = sample_name

        reconstruction = _nx_group(entry, "reconstruction", "NXprocess")
        reconstruction["program"] = "mlex_tomo.phantom"
        reconstruction["version"] = GENERATOR_VERSION
        reconstruction["date"] = (date or datetime.now(UTC)).isoformat()
        parameters = _nx_group(reconstruction, "parameters", "NXparameters")
        parameters["raw_file"] = "none: synthetic phantom, no projections"

        data_group = _nx_group(entry, "data", "NXdata")
        data_group.attrs["signal"] = "data"
        data_group.attrs["axes"] = ["z", "y", "x"]
        for index, (axis, size) in enumerate(zip("zyx", spec.shape)):
            data_group.attrs[f"{axis}_indices"] = index
            data_group.create_dataset(axis, data=np.arange(size)).attrs["units"] = "pixel"
        volume = data_group.create_dataset(
            "data", shape=(nz, ny, nx), dtype=spec.dtype, chunks=plane_chunks(spec.shape)
        )
        volume.attrs["units"] = "a.u."
        for z_start, image, _ in iter_slabs(spec, slab_depth or default_slab_depth(spec)):
            volume[z_start : z_start + len(image)] = image
    return path


def write_tiff_stack(
    directory: str | Path, spec: PhantomSpec, slab_depth: int | None = None, prefix: str = "slice"
) -> Path:
    """One TIFF per z-plane, `<prefix>_00000.tif` onwards, with the spec in phantom.json.

    Planes left by an earlier, deeper stack of the same prefix are removed first, so
    the folder never mixes two phantoms.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"{prefix}_*.tif"):
        stale.unlink()
    nz = spec.shape[0]
    digits = max(5, len(str(nz - 1)))
    for z_start, image, _ in iter_slabs(spec, slab_depth or default_slab_depth(spec)):
        for offset, plane in enumerate(image):
            tifffile.imwrite(directory / f"{prefix}_{z_start + offset:0{digits}d}.tif", plane)
    (directory / TIFF_SIDECAR).write_text(spec.model_dump_json(indent=2) + "\n")
    return directory


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
