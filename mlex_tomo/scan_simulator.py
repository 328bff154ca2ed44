"""Simulate a beamline's reconstruction landing on disk, with its ground truth kept apart.

A scan is written the way a reconstruction program would leave it under the
reconstruction root, in any of the formats the ingester reads; `announce_path` is
what that program would then name in its message. Ground truth goes to a separate
root that must not lie inside the reconstruction root, so the served data never
include it.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from mlex_tomo.phantom import PhantomSpec
from mlex_tomo.tomography import AcquisitionParameters, RealisticReconstruction
from mlex_tomo.volume_writers import (
    PhantomSource,
    VolumeSource,
    write_hdf5,
    write_labels,
    write_multipage_tiff,
    write_nxtomoproc,
    write_savu_processed,
    write_tiff_stack,
    write_zarr,
)

FORMATS = ("savu", "nxtomo", "hdf5", "zarr2", "zarr3", "tiff-stack", "tiff-multipage")

_SCAN_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SimulatedScan:
    announce_path: Path
    ground_truth_path: Path
    file_format: str
    shape: tuple[int, int, int]
    dtype: str


def check_scan_name(scan_name: str) -> None:
    """Names become folder and file names; anything that could leave the root is refused."""
    if not scan_name:
        raise ValueError("scan name is empty")
    if "/" in scan_name or "\\" in scan_name:
        raise ValueError(f"scan name {scan_name!r} contains a path separator")
    if ".." in scan_name:
        raise ValueError(f"scan name {scan_name!r} contains '..'")
    if scan_name.startswith("."):
        raise ValueError(f"scan name {scan_name!r} starts with '.', which hides it")
    if not _SCAN_NAME.fullmatch(scan_name):
        bad = sorted({character for character in scan_name if not _SCAN_NAME.fullmatch(character)})
        raise ValueError(
            f"scan name {scan_name!r} contains {bad}; use letters, digits, '-', '_' and '.'"
        )


def simulate_scan(
    recons_root: Path,
    ground_truth_root: Path,
    scan_name: str,
    spec: PhantomSpec,
    file_format: str = "savu",
    realistic: AcquisitionParameters | None = None,
    tiff_saver: bool = True,
    overwrite: bool = False,
) -> SimulatedScan:
    """Write `recons_root/<scan_name>/...` and `ground_truth_root/<scan_name>_labels.h5`.

    `realistic` turns the phantom into a simulated acquisition and reconstruction
    (noise, rings); without it the phantom's own image is written. `tiff_saver` only
    matters for Savu. A scan folder that is left half-written by an error is removed.
    """
    check_scan_name(scan_name)
    if file_format not in FORMATS:
        raise ValueError(f"unknown file format {file_format!r}; expected one of {FORMATS}")
    recons_root, ground_truth_root = Path(recons_root).resolve(), Path(ground_truth_root).resolve()
    if ground_truth_root.is_relative_to(recons_root):
        raise ValueError(
            f"ground truth root {ground_truth_root} lies inside the reconstruction root "
            f"{recons_root}; ground truth must never be served with the data"
        )
    scan_dir = recons_root / scan_name
    ground_truth_path = ground_truth_root / f"{scan_name}_labels.h5"
    existing = [path for path in (scan_dir, ground_truth_path) if path.exists()]
    if existing and not overwrite:
        raise ValueError(f"scan {scan_name!r} already exists at {existing}; pass overwrite=True")
    if scan_dir.exists():
        shutil.rmtree(scan_dir)

    source: VolumeSource = (
        PhantomSource(spec) if realistic is None else RealisticReconstruction(spec, realistic)
    )
    try:
        announce_path = _write_volume(scan_dir, scan_name, source, file_format, tiff_saver)
    except BaseException:
        shutil.rmtree(scan_dir, ignore_errors=True)
        raise
    write_labels(ground_truth_path, spec)
    return SimulatedScan(
        announce_path=announce_path,
        ground_truth_path=ground_truth_path,
        file_format=file_format,
        shape=source.shape,
        dtype=source.dtype.name,
    )


def _write_volume(
    scan_dir: Path, scan_name: str, source: VolumeSource, file_format: str, tiff_saver: bool
) -> Path:
    match file_format:
        case "savu":
            return write_savu_processed(scan_dir, scan_name, source, tiff_saver=tiff_saver)
        case "nxtomo":
            return write_nxtomoproc(scan_dir / f"{scan_name}.nxs", source, sample_name=scan_name)
        case "hdf5":
            return write_hdf5(scan_dir / f"{scan_name}.h5", source)
        case "zarr2" | "zarr3":
            zarr_format = 2 if file_format == "zarr2" else 3
            return write_zarr(scan_dir / f"{scan_name}.zarr", source, zarr_format=zarr_format)
        case "tiff-stack":
            return write_tiff_stack(scan_dir, source)
        case "tiff-multipage":
            return write_multipage_tiff(scan_dir / f"{scan_name}.tif", source)
        case _:
            raise ValueError(f"unknown file format {file_format!r}; expected one of {FORMATS}")
