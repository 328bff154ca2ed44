"""Files under the data roots that would serve bytes from elsewhere: refused at registration and at every read."""

from __future__ import annotations

import os
import shutil

import h5py
import httpx
import numpy as np
import pytest
import tifffile
import zarr

from ingester.errors import Rejected
from ingester.file_reader import FileReader
from ingester.messages import IngestMessage
from ingester.processor import Processor
from ingester.sources import describe
from mlex_tomo.readable_files import OutsideRoots, check_folder, check_registered_dataset, check_storage, locate_dataset
from tests.services import Services

SHAPE = (4, 8, 8)
SECRET = (b"tiled-api-key-" * 1000)[: int(np.prod(SHAPE))]  # what must never be served


@pytest.fixture
def folders(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    with h5py.File(outside / "volume.h5", "w") as file:
        file["data"] = np.frombuffer(SECRET, np.uint8).reshape(SHAPE)
    return root.resolve(), outside.resolve()


def external_storage(path, target) -> None:
    with h5py.File(path, "w") as file:
        file.create_dataset("data", SHAPE, np.uint8, external=[(str(target), 0, len(SECRET))])


def virtual(path, source_file, source_dataset="data") -> None:
    layout = h5py.VirtualLayout(SHAPE, np.uint8)
    layout[:] = h5py.VirtualSource(str(source_file), source_dataset, SHAPE, np.uint8)
    with h5py.File(path, "w") as file:
        file.create_virtual_dataset("data", layout)


def plain(path, values=None) -> None:
    with h5py.File(path, "w") as file:
        file["data"] = np.zeros(SHAPE, np.uint8) if values is None else values


def test_external_raw_storage_outside_the_roots_or_named_relatively_is_refused(folders):
    root, outside = folders
    external_storage(root / "abs.h5", outside / "secret")
    with pytest.raises(OutsideRoots, match=r"stores its data in an external file: .*secret is outside the data roots"):
        check_storage(root / "abs.h5", "data", [root])
    external_storage(root / "relative.h5", "secret")
    with pytest.raises(OutsideRoots, match="named relative to the reading process's folder"):
        check_storage(root / "relative.h5", "data", [root])
    (root / "raw").write_bytes(bytes(len(SECRET)))
    external_storage(root / "inside.h5", root / "raw")
    assert check_storage(root / "inside.h5", "data", [root]) == 1


def test_a_virtual_dataset_is_checked_source_by_source_and_through_its_sources(folders):
    root, outside = folders
    virtual(root / "out.h5", outside / "volume.h5")
    with pytest.raises(OutsideRoots, match="volume.h5 is outside the data roots"):
        check_storage(root / "out.h5", "data", [root])
    external_storage(root / "leaky.h5", outside / "secret")
    virtual(root / "through.h5", "leaky.h5")  # a source under the roots that itself reads from outside
    with pytest.raises(OutsideRoots, match="stores its data in an external file"):
        check_storage(root / "through.h5", "data", [root])
    plain(root / "part.h5")
    virtual(root / "fine.h5", "part.h5")  # relative: beside the virtual file, as libhdf5 looks for it
    assert check_storage(root / "fine.h5", "data", [root]) == 2


def test_external_links_are_followed_only_within_the_roots(folders):
    root, outside = folders
    with h5py.File(root / "link.h5", "w") as file:
        file["entry/data"] = h5py.ExternalLink(str(outside / "volume.h5"), "/data")
        file["group"] = h5py.ExternalLink(str(outside / "volume.h5"), "/")  # an intermediate group
        file["soft"] = h5py.SoftLink("/group/data")
    for dataset in ("entry/data", "group/data", "soft"):
        with pytest.raises(OutsideRoots, match="volume.h5 is outside the data roots"):
            locate_dataset(root / "link.h5", dataset, [root])
    plain(root / "target.h5")
    with h5py.File(root / "savu.h5", "w") as file:
        file["entry/final_result_tomo/data"] = h5py.ExternalLink("target.h5", "/data")
    assert locate_dataset(root / "savu.h5", "entry/final_result_tomo/data", [root]) == (root / "target.h5", "/data")
    with pytest.raises(OutsideRoots, match="now goes through an external link"):
        check_registered_dataset(root / "savu.h5", "entry/final_result_tomo/data", [root])


def test_a_whole_file_registered_as_a_container_is_checked_member_by_member(folders):
    """As `tiled register` registers a file: the group "/", whose every dataset and link Tiled may serve."""
    root, outside = folders
    with h5py.File(root / "whole.h5", "w") as file:
        file["entry/volume"] = np.zeros(SHAPE, np.uint8)
        file["entry/again"] = h5py.SoftLink("/entry/volume")
    check_registered_dataset(root / "whole.h5", "/", [root])
    with h5py.File(root / "whole.h5", "a") as file:
        file.create_dataset("entry/stolen", SHAPE, np.uint8, external=[(str(outside / "secret"), 0, len(SECRET))])
    with pytest.raises(OutsideRoots, match="stores its data in an external file"):
        check_registered_dataset(root / "whole.h5", "/", [root])
    with h5py.File(root / "linking.h5", "w") as file:
        file["entry/elsewhere"] = h5py.ExternalLink(str(outside / "volume.h5"), "/data")
    with pytest.raises(OutsideRoots, match="volume.h5 is outside the data roots"):
        check_registered_dataset(root / "linking.h5", "/", [root])


def test_symlinks_and_fifos_are_refused_before_anything_is_opened(folders):
    root, outside = folders
    (root / "linked.h5").symlink_to(outside / "volume.h5")
    with pytest.raises(OutsideRoots, match="linked.h5 is outside the data roots"):
        check_registered_dataset(root / "linked.h5", "data", [root])
    os.mkfifo(root / "fifo.h5")  # opening it would block for ever
    with h5py.File(root / "to-fifo.h5", "w") as file:
        file["data"] = h5py.ExternalLink(str(root / "fifo.h5"), "/data")
    with pytest.raises(OutsideRoots, match="fifo.h5 is not a regular file"):
        locate_dataset(root / "to-fifo.h5", "data", [root])


def test_a_zarr_store_with_a_chunk_linked_out_of_the_roots_is_refused(folders):
    root, outside = folders
    store = root / "volume.zarr"
    zarr.create_array(str(store), shape=SHAPE, chunks=(1, 8, 8), dtype=np.uint8, compressors=None)[:] = 1
    check_folder(store, [root])
    chunk = next(path for path in store.rglob("*") if path.is_file() and "zarr.json" not in path.name)
    chunk.unlink()
    chunk.symlink_to(outside / "secret")
    with pytest.raises(OutsideRoots, match="secret|outside the data roots"):
        check_folder(store, [root])


def test_a_file_slower_to_read_than_the_bound_is_refused_and_the_next_one_reads(folders):
    root, outside = folders
    plain(root / "volume.h5")
    external_storage(root / "storage.h5", outside / "secret")
    with FileReader(seconds=60) as reader:
        assert reader.describe(str(root / "volume.h5"), [root], None) == describe(root / "volume.h5", [root])
        with pytest.raises(Rejected, match="secret is outside the data roots"):  # the reader's refusals come back as they are
            reader.describe(str(root / "storage.h5"), [root], None)
        reader.seconds = 1e-6
        with pytest.raises(Rejected, match=r"reading .*volume.h5 took longer than 1e-06 s \(ingester.file_read_seconds\)"):
            reader.describe(str(root / "volume.h5"), [root], None)
        reader.seconds = 60
        assert reader.describe(str(root / "volume.h5"), [root], None).file_format == "hdf5"  # read by a fresh reader


class ExitsWhereUnpickled:
    """Unpickled by the reader, it ends the reader's process mid-request: a crash as libhdf5's would be."""

    def __reduce__(self):
        return os._exit, (3,)


def test_a_reader_that_crashes_mid_read_rejects_that_file_and_the_next_one_reads(folders):
    root, _ = folders
    plain(root / "volume.h5")
    with FileReader(seconds=60) as reader:
        with pytest.raises(Rejected, match=r"reading .*volume.h5 crashed the reader \(exit code 3\)"):
            reader.describe(str(root / "volume.h5"), [root], ExitsWhereUnpickled())
        assert reader.describe(str(root / "volume.h5"), [root], None).file_format == "hdf5"


def test_a_reader_gone_while_idle_is_replaced(folders):
    root, _ = folders
    plain(root / "volume.h5")
    with FileReader(seconds=60) as reader:
        reader.describe(str(root / "volume.h5"), [root], None)
        process = reader._process
        process.kill()
        process.wait()
        assert reader.describe(str(root / "volume.h5"), [root], None).file_format == "hdf5"
        assert reader._process is not process


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    services = Services(tmp_path_factory.mktemp("hostile"))
    try:
        services.start("tiled")
        yield services
    finally:
        services.stop_all()


def anonymous_bytes(services, key: str) -> httpx.Response:
    url = f"{services.settings.tiled.base_url}/api/v1/array/full/recons/{key}/data"
    return httpx.get(url, params={"format": "application/octet-stream"}, timeout=30)


@pytest.mark.stack
def test_hostile_files_are_refused_with_their_reason_and_nothing_is_registered(tiled, tmp_path):
    root = tiled.recons_root.resolve()
    outside = tmp_path.resolve()
    (outside / "secret").write_bytes(SECRET)
    plain(outside / "volume.h5", np.frombuffer(SECRET, np.uint8).reshape(SHAPE))
    external_storage(root / "hostile-storage.h5", outside / "secret")
    virtual(root / "hostile-virtual.h5", outside / "volume.h5")
    with h5py.File(root / "hostile-link.h5", "w") as file:
        file["entry/data/data"] = h5py.ExternalLink(str(outside / "volume.h5"), "/data")
    tiffs = root / "hostile-tiffs"
    tiffs.mkdir()
    tifffile.imwrite(tiffs / "slice_0000.tif", np.zeros(SHAPE[1:], np.uint8))
    tifffile.imwrite(outside / "theirs.tif", np.full(SHAPE[1:], 9, np.uint8))
    (tiffs / "slice_0001.tif").symlink_to(outside / "theirs.tif")
    processor = Processor(tiled.settings)
    for name, reason in [
        ("hostile-storage.h5", "stores its data in an external file"),
        ("hostile-virtual.h5", "volume.h5 is outside the data roots"),
        ("hostile-link.h5", "volume.h5 is outside the data roots"),
        ("hostile-tiffs", "slice_0001.tif is outside the data roots"),
    ]:
        with pytest.raises(Rejected, match=reason):
            processor.process(IngestMessage(filePath=str(root / name)))
    assert not any(key.startswith("hostile") for key in tiled.tiled()["recons"])


@pytest.mark.stack
def test_a_registered_file_changed_to_read_from_outside_is_not_served(tiled, tmp_path):
    root = tiled.recons_root.resolve()
    (tmp_path / "secret").write_bytes(SECRET)
    changing = root / "changing.h5"
    plain(changing, np.full(SHAPE, 7, np.uint8))
    Processor(tiled.settings).process(IngestMessage(filePath=str(changing)))
    served = anonymous_bytes(tiled, "changing")
    assert served.status_code == 200 and served.content == bytes([7]) * len(SECRET)

    replacement = root / "replacement.h5"
    external_storage(replacement, tmp_path.resolve() / "secret")
    shutil.move(replacement, changing)  # the same registered path now stores its data outside
    refused = anonymous_bytes(tiled, "changing")
    assert refused.status_code >= 400 and SECRET[:64] not in refused.content


@pytest.mark.stack
def test_a_registered_tiff_replaced_by_a_link_out_of_the_roots_is_not_served(tiled, tmp_path):
    root = tiled.recons_root.resolve()
    tiffs = root / "turned"
    tiffs.mkdir()
    for index in range(2):
        tifffile.imwrite(tiffs / f"slice_{index:04d}.tif", np.full(SHAPE[1:], 3, np.uint8))
    Processor(tiled.settings).process(IngestMessage(filePath=str(tiffs)))
    assert anonymous_bytes(tiled, "turned").status_code == 200

    tifffile.imwrite(tmp_path / "theirs.tif", np.full(SHAPE[1:], 9, np.uint8))
    (tiffs / "slice_0001.tif").unlink()
    (tiffs / "slice_0001.tif").symlink_to(tmp_path / "theirs.tif")
    refused = anonymous_bytes(tiled, "turned")
    assert refused.status_code >= 400 and bytes([9]) * 8 not in refused.content


@pytest.mark.stack
def test_a_registered_zarr_chunk_replaced_by_a_link_out_of_the_roots_is_not_served(tiled, tmp_path):
    root = tiled.recons_root.resolve()
    store = root / "chunked.zarr"
    zarr.create_array(str(store), shape=SHAPE, chunks=(1, 8, 8), dtype=np.uint8, compressors=None)[:] = 5
    Processor(tiled.settings).process(IngestMessage(filePath=str(store)))
    served = anonymous_bytes(tiled, "chunked")
    assert served.status_code == 200 and served.content == bytes([5]) * len(SECRET)

    (tmp_path / "secret").write_bytes(SECRET[:64])  # one uncompressed chunk's worth
    chunk = next(path for path in store.rglob("*") if path.is_file() and "zarr.json" not in path.name)
    chunk.unlink()
    chunk.symlink_to(tmp_path / "secret")
    refused = anonymous_bytes(tiled, "chunked")
    assert refused.status_code >= 400 and SECRET[:32] not in refused.content


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (np.zeros((0, 16, 16), np.float32), r"is empty: its shape is \(0, 16, 16\)"),
        (np.zeros((2, 4, 4), [("a", "<i4"), ("b", "<f8")]), "not numbers"),
        (np.zeros((2, 4, 4), np.complex64), "holds complex64 values, not numbers"),
        (np.zeros((2, 4, 4), bool), "holds bool values, not numbers"),
    ],
    ids=["empty", "compound", "complex", "bool"],
)
def test_volumes_the_stack_cannot_show_or_segment_are_refused(folders, values, reason):
    root, _ = folders
    plain(root / "odd.h5", values)
    with pytest.raises(Rejected, match=reason):
        describe(root / "odd.h5", [root])
