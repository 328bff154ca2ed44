"""The HDF5 adapter the Tiled server uses for registered volumes: exactly numpy's answer, read in bounded blocks."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from tiled.utils import import_object

from mlex_tomo import tiled_adapters
from mlex_tomo.tiled_adapters import read_selection

SELECTIONS = [
    (), (3,), (-1,), (Ellipsis,), (Ellipsis, 2), (1, Ellipsis, 5),
    (slice(None, None, 2),), (5, slice(None, None, 2), slice(None, None, 2)),
    (slice(1, 12, 3), slice(2, None, 5), 4), (slice(None, None, -1),), (slice(10, 2, -3), slice(None), slice(7, 0, -2)),
    (slice(4, 4),), (slice(None), slice(3, 3, 2)), (slice(-5, None, 2), -2), (slice(100, 200, 2),),
]


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(0).integers(0, 60_000, (13, 17, 19), dtype=np.uint16)
    path = tmp_path / "volume.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("data", data=data, chunks=(1, 8, 8))
    with h5py.File(path, "r") as file:
        yield file["data"], data


@pytest.mark.parametrize("selection", SELECTIONS, ids=repr)
def test_a_selection_reads_what_numpy_would(volume, selection):
    dataset, data = volume
    read = read_selection(dataset, selection)
    np.testing.assert_array_equal(read, data[selection])
    assert read.dtype == data.dtype


@pytest.mark.parametrize("selection", [(slice(None, None, 2),), (slice(None, None, -3),), (slice(1, None, 1), slice(None, None, 4))], ids=repr)
def test_a_strided_read_goes_in_blocks_no_larger_than_the_budget(volume, selection, monkeypatch):
    dataset, data = volume
    row_bytes = 17 * 19 * 2
    monkeypatch.setattr(tiled_adapters, "BLOCK_BYTES", 3 * row_bytes)
    reads = []
    original = h5py.Dataset.__getitem__

    def recorded(self, key):
        result = original(self, key)
        reads.append(result.nbytes)
        return result

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recorded)
    np.testing.assert_array_equal(read_selection(dataset, selection), data[selection])
    assert len(reads) > 1
    assert max(reads) <= 3 * row_bytes


@pytest.mark.parametrize("selection", [(13,), (-14,), (0, 0, 0, 0), (Ellipsis, Ellipsis)], ids=repr)
def test_an_index_outside_the_volume_is_refused(volume, selection):
    dataset, _ = volume
    with pytest.raises(IndexError):
        read_selection(dataset, selection)


def test_the_tiled_server_reads_hdf5_volumes_with_this_adapter():
    config = yaml.safe_load((Path(__file__).parents[1] / "tiled_config" / "config.yml").read_text())
    (catalog,) = config["trees"]
    assert import_object(catalog["args"]["adapters_by_mimetype"]["application/x-hdf5"]) is tiled_adapters.HDF5VolumeAdapter
