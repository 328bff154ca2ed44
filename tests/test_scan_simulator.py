"""Simulated scans on disk: every format's layout, ground truth apart, streaming writers."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from mlex_tomo import volume_writers
from mlex_tomo.phantom import PhantomSpec, generate
from mlex_tomo.scan_simulator import FORMATS, SimulatedScan, simulate_scan
from mlex_tomo.tomography import AcquisitionParameters, RealisticReconstruction
from mlex_tomo.volume_writers import (
    PhantomSource,
    write_hdf5,
    write_multipage_tiff,
    write_nxtomoproc,
    write_savu_processed,
    write_tiff_stack,
    write_zarr,
)

# Uneven sides, so a swapped axis cannot go unnoticed.
SPEC = PhantomSpec(shape=(33, 40, 36), seed=12)


def read_savu(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as file:
        return file["entry/final_result_tomo/data"][()]


def read_nxtomo(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as file:
        return file["entry/data/data"][()]


def read_hdf5(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as file:
        return file["volume"][()]


def read_zarr(path: Path) -> np.ndarray:
    return zarr.open_array(path, mode="r")[:]


def read_tiff_stack(path: Path) -> np.ndarray:
    return np.stack([tifffile.imread(plane) for plane in sorted(path.glob("slice_*.tif"))])


READERS = {
    "savu": read_savu,
    "nxtomo": read_nxtomo,
    "hdf5": read_hdf5,
    "zarr2": read_zarr,
    "zarr3": read_zarr,
    "tiff-stack": read_tiff_stack,
    "tiff-multipage": tifffile.imread,
}


def stored_description(scan: SimulatedScan) -> dict[str, Any]:
    """The source description, wherever each format keeps it."""
    path = scan.announce_path
    match scan.file_format:
        case "savu":
            with h5py.File(path, "r") as file:
                return json.loads(
                    file["entry/final_result_tomo/meta_data"].attrs["source_description"]
                )
        case "nxtomo":
            with h5py.File(path, "r") as file:
                return json.loads(file.attrs["source_description"])
        case "hdf5":
            with h5py.File(path, "r") as file:
                return json.loads(file["volume"].attrs["source_description"])
        case "zarr2" | "zarr3":
            return zarr.open_array(path, mode="r").attrs["source_description"]
        case "tiff-stack":
            return json.loads((path / "source.json").read_text())
        case "tiff-multipage":
            with tifffile.TiffFile(path) as tiff:
                return tiff.shaped_metadata[0]["source_description"]
    raise AssertionError(scan.file_format)


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray]:
    return generate(SPEC)


@pytest.mark.parametrize("file_format", FORMATS)
def test_every_format_reads_back_the_phantom(tmp_path, phantom, file_format: str) -> None:
    recons_root, ground_truth_root = tmp_path / "recons", tmp_path / "ground_truth"
    image, labels = phantom

    scan = simulate_scan(recons_root, ground_truth_root, "scan_01", SPEC, file_format)

    assert scan.file_format == file_format
    assert scan.shape == SPEC.shape and scan.dtype == "float32"
    assert scan.announce_path.is_relative_to(recons_root / "scan_01")
    assert np.array_equal(READERS[file_format](scan.announce_path), image)
    description = stored_description(scan)
    assert description["kind"] == "phantom"
    assert PhantomSpec.model_validate(description["phantom_spec"]) == SPEC

    assert scan.ground_truth_path == ground_truth_root / "scan_01_labels.h5"
    assert not any(path.name.endswith("_labels.h5") for path in recons_root.rglob("*"))
    with h5py.File(scan.ground_truth_path, "r") as file:
        assert np.array_equal(file["labels"][()], labels)


@pytest.mark.parametrize(
    ("file_format", "relative_path"),
    [
        ("savu", "scan_01/scan_01_processed.nxs"),
        ("nxtomo", "scan_01/scan_01.nxs"),
        ("hdf5", "scan_01/scan_01.h5"),
        ("zarr2", "scan_01/scan_01.zarr"),
        ("zarr3", "scan_01/scan_01.zarr"),
        ("tiff-stack", "scan_01"),
        ("tiff-multipage", "scan_01/scan_01.tif"),
    ],
)
def test_announce_path_is_what_the_program_would_name(
    tmp_path, file_format: str, relative_path: str
) -> None:
    spec = PhantomSpec(shape=(16, 16, 16))
    scan = simulate_scan(tmp_path / "recons", tmp_path / "truth", "scan_01", spec, file_format)
    assert scan.announce_path == (tmp_path / "recons" / relative_path).resolve()
    assert scan.announce_path.exists()


def test_savu_folder_links_the_plugin_file_and_slices_xz(tmp_path, phantom, monkeypatch) -> None:
    image, _ = phantom
    scan = simulate_scan(tmp_path / "recons", tmp_path / "truth", "run7", SPEC, "savu")
    scan_dir = scan.announce_path.parent
    assert sorted(path.name for path in scan_dir.iterdir()) == [
        "2-AstraReconGpu-tomo.h5",
        "TiffSaver-tomo",
        "run7_processed.nxs",
    ]
    # The link is relative: it still resolves after the folder moves, from any directory.
    moved = scan_dir.rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "recons")

    with h5py.File(moved / "run7_processed.nxs", "r") as file:
        link = file.get("entry/final_result_tomo/data", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert (link.filename, link.path) == (
            "2-AstraReconGpu-tomo.h5",
            "/2-AstraReconGpu-tomo/data",
        )
        assert file["entry"].attrs["NX_class"] == "NXentry"
        result = file["entry/final_result_tomo"]
        assert result.attrs["NX_class"] == "NXdata"
        assert result.attrs["signal"] == "data"
        assert np.array_equal(result["data"][()], image)
        assert result["meta_data/voxel_size"][()] == pytest.approx(1e-6)
    with h5py.File(moved / "2-AstraReconGpu-tomo.h5", "r") as file:
        assert file["2-AstraReconGpu-tomo/data"].shape == SPEC.shape

    xz_slices = sorted((moved / "TiffSaver-tomo").glob("*.tif"))
    ny = SPEC.shape[1]
    assert [path.name for path in xz_slices] == [f"run7_processed_{y:05d}.tif" for y in range(ny)]
    for y, path in enumerate(xz_slices):
        assert np.array_equal(tifffile.imread(path), image[:, y, :]), y


def test_savu_without_tiff_saver_writes_no_tiffs(tmp_path) -> None:
    scan = simulate_scan(tmp_path / "r", tmp_path / "t", "s", SPEC, "savu", tiff_saver=False)
    assert not (scan.announce_path.parent / "TiffSaver-tomo").exists()


def test_tiff_saver_reads_the_volume_back_in_bounded_y_blocks(
    tmp_path, phantom, monkeypatch
) -> None:
    image, _ = phantom
    nz, _, nx = SPEC.shape
    monkeypatch.setattr(volume_writers, "_SLAB_VOXEL_BUDGET", 3 * nz * nx)

    write_savu_processed(tmp_path, "blocks", SPEC, slab_depth=5)

    with h5py.File(tmp_path / "2-AstraReconGpu-tomo.h5", "r") as file:
        assert file["2-AstraReconGpu-tomo/data"].chunks == (1, 3, nx)
    for y in range(SPEC.shape[1]):
        xz_slice = tifffile.imread(tmp_path / "TiffSaver-tomo" / f"blocks_processed_{y:05d}.tif")
        assert np.array_equal(xz_slice, image[:, y, :]), y


@pytest.mark.parametrize(
    ("file_format", "metadata_file"), [("zarr2", ".zarray"), ("zarr3", "zarr.json")]
)
def test_zarr_is_an_array_with_one_plane_per_chunk(
    tmp_path, file_format: str, metadata_file: str
) -> None:
    scan = simulate_scan(tmp_path / "recons", tmp_path / "truth", "z", SPEC, file_format)
    metadata_files = {".zarray", "zarr.json", ".zgroup"} & {
        p.name for p in scan.announce_path.iterdir()
    }
    assert metadata_files == {metadata_file}

    array = zarr.open(scan.announce_path, mode="r")
    assert isinstance(array, zarr.Array)
    assert array.metadata.zarr_format == int(file_format[-1])
    assert array.chunks == (1, 40, 36)


def test_zarr_folder_must_say_it_is_zarr(tmp_path) -> None:
    with pytest.raises(ValueError, match="must end in .zarr"):
        write_zarr(tmp_path / "volume", SPEC)


def test_multipage_tiff_has_one_page_per_plane(tmp_path, phantom) -> None:
    image, _ = phantom
    path = write_multipage_tiff(tmp_path / "volume.tif", SPEC, slab_depth=4)
    with tifffile.TiffFile(path) as tiff:
        assert len(tiff.pages) == SPEC.shape[0]
        assert tiff.pages[5].shape == SPEC.shape[1:]
        assert np.array_equal(tiff.pages[5].asarray(), image[5])
        assert tiff.series[0].shape == SPEC.shape


def test_realistic_scan_holds_the_reconstruction_and_the_phantom_labels(tmp_path, phantom) -> None:
    spec = SPEC.model_copy(update={"dtype": "uint16"})
    acquisition = AcquisitionParameters(seed=3)
    _, labels = phantom

    scan = simulate_scan(
        tmp_path / "r", tmp_path / "t", "real", spec, "hdf5", realistic=acquisition
    )

    expected = np.concatenate(
        [slab for _, slab in RealisticReconstruction(spec, acquisition).iter_slabs(64)]
    )
    assert scan.dtype == "uint16"
    assert np.array_equal(read_hdf5(scan.announce_path), expected)
    description = stored_description(scan)
    assert description["kind"] == "reconstructed phantom"
    assert description["acquisition"]["seed"] == 3
    assert description["acquisition"]["n_angles"] == 48
    with h5py.File(scan.ground_truth_path, "r") as file:
        assert np.array_equal(file["labels"][()], labels)


def test_ground_truth_inside_the_recons_root_is_refused(tmp_path) -> None:
    recons_root = tmp_path / "recons"
    for ground_truth_root in (recons_root / "truth", recons_root, recons_root / "a" / ".." / "b"):
        with pytest.raises(ValueError, match="inside the reconstruction root"):
            simulate_scan(recons_root, ground_truth_root, "scan", SPEC, "hdf5")
    assert not recons_root.exists()


@pytest.mark.parametrize(
    ("scan_name", "problem"),
    [
        ("", "empty"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", r"'\.\.'"),
        ("run..2", r"'\.\.'"),
        (".hidden", "starts with '.'"),
        ("scan 1", r"\[' '\]"),
        ("scan*", r"\['\*'\]"),
        ("café", r"\['é'\]"),
    ],
)
def test_bad_scan_names_are_refused(tmp_path, scan_name: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        simulate_scan(tmp_path / "recons", tmp_path / "truth", scan_name, SPEC, "hdf5")
    assert not (tmp_path / "recons").exists() and not (tmp_path / "truth").exists()


def test_unknown_format_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown file format 'mrc'"):
        simulate_scan(tmp_path / "recons", tmp_path / "truth", "scan", SPEC, "mrc")


def test_existing_scan_is_only_replaced_when_asked(tmp_path) -> None:
    recons_root, ground_truth_root = tmp_path / "recons", tmp_path / "truth"
    first = simulate_scan(recons_root, ground_truth_root, "scan", SPEC, "tiff-stack")
    other_spec = SPEC.model_copy(update={"seed": 13})

    with pytest.raises(ValueError, match="already exists"):
        simulate_scan(recons_root, ground_truth_root, "scan", other_spec, "hdf5")
    assert read_tiff_stack(first.announce_path).shape == SPEC.shape

    (recons_root / "scan").rename(tmp_path / "set_aside")
    with pytest.raises(ValueError, match="already exists"):  # its ground truth is still there
        simulate_scan(recons_root, ground_truth_root, "scan", other_spec, "hdf5")

    replaced = simulate_scan(
        recons_root, ground_truth_root, "scan", other_spec, "hdf5", overwrite=True
    )
    assert sorted(path.name for path in (recons_root / "scan").iterdir()) == ["scan.h5"]
    assert np.array_equal(read_hdf5(replaced.announce_path), generate(other_spec)[0])
    with h5py.File(replaced.ground_truth_path, "r") as file:
        assert np.array_equal(file["labels"][()], generate(other_spec)[1])


def test_a_failed_write_leaves_no_half_scan(tmp_path, monkeypatch) -> None:
    def fail_half_way(path: Path, source: Any) -> Path:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("mlex_tomo.scan_simulator.write_hdf5", fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        simulate_scan(tmp_path / "recons", tmp_path / "truth", "scan", SPEC, "hdf5")
    assert list((tmp_path / "recons").iterdir()) == []


class RecordingSource:
    """A phantom that notes the deepest slab asked for and the most planes alive at once."""

    def __init__(self, spec: PhantomSpec) -> None:
        self._phantom = PhantomSource(spec)
        self.largest_request = 0
        self.most_planes_alive = 0
        self._alive: dict[int, int] = {}

    shape = property(lambda self: self._phantom.shape)
    dtype = property(lambda self: self._phantom.dtype)
    description = property(lambda self: self._phantom.description)

    def iter_slabs(self, depth: int) -> Iterator[tuple[int, np.ndarray]]:
        self.largest_request = max(self.largest_request, depth)
        for z_start, slab in self._phantom.iter_slabs(depth):
            owned = slab.copy()
            self._alive[z_start] = len(owned)
            weakref.finalize(owned, self._alive.pop, z_start)
            self.most_planes_alive = max(self.most_planes_alive, sum(self._alive.values()))
            yield z_start, owned


WRITERS = {
    "nxtomoproc": lambda path, source, depth: write_nxtomoproc(path / "v.nxs", source, depth),
    "hdf5": lambda path, source, depth: write_hdf5(path / "v.h5", source, slab_depth=depth),
    "zarr": lambda path, source, depth: write_zarr(path / "v.zarr", source, slab_depth=depth),
    "tiff-stack": lambda path, source, depth: write_tiff_stack(path, source, depth),
    "tiff-multipage": lambda path, source, depth: write_multipage_tiff(
        path / "v.tif", source, depth
    ),
    "savu": lambda path, source, depth: write_savu_processed(path, "v", source, slab_depth=depth),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_writers_hold_one_slab_at_a_time(tmp_path, writer: str) -> None:
    source = RecordingSource(SPEC)
    WRITERS[writer](tmp_path, source, 4)
    assert source.largest_request == 4
    # The slab being made, and at most the previous one not yet released by the loop.
    assert 4 < source.most_planes_alive <= 2 * 4

    default_depth = RecordingSource(SPEC)
    WRITERS[writer](tmp_path, default_depth, None)
    assert default_depth.largest_request == volume_writers.default_slab_depth(SPEC)


class ShortSource(RecordingSource):
    def iter_slabs(self, depth: int) -> Iterator[tuple[int, np.ndarray]]:
        for z_start, slab in super().iter_slabs(depth):
            if z_start < 8:
                yield z_start, slab


def test_a_source_that_stops_early_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="stopped at z=8 of 33"):
        write_hdf5(tmp_path / "v.h5", ShortSource(SPEC), slab_depth=4)
