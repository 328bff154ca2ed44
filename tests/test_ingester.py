"""The ingester against a real ActiveMQ broker and a real Tiled server."""

from __future__ import annotations

import json
import time
import os

import h5py
import numpy as np
import pytest

from ingester.dead_letters import list_dead_letters, replay_dead_letters
from mlex_tomo.phantom import PhantomSpec, generate
from mlex_tomo.scan_simulator import FORMATS, simulate_scan
from tests.services import Broker, Services, wait_for

pytestmark = pytest.mark.stack

SMALL = PhantomSpec(shape=(24, 32, 32), seed=3)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    running = Services(tmp_path_factory.mktemp("ingest"))
    try:
        running.start("broker")
        running.start("tiled")
        running.start("ingester")
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="module")
def broker(services) -> Broker:
    return Broker(services.settings)


def simulate(services, name: str, file_format: str = "savu", spec: PhantomSpec = SMALL, **options):
    ground_truth = services.settings.data_path / "ground_truth"
    return simulate_scan(services.recons_root, ground_truth, name, spec, file_format, **options)


def registered(services, key: str):
    return wait_for(lambda: services.recons().get(key), message=f"/recons/{key}")


@pytest.mark.parametrize("file_format", FORMATS)
def test_every_format_is_served_in_place(services, broker, file_format):
    name = f"fmt-{file_format}"
    scan = simulate(services, name, file_format)
    broker.announce(scan.announce_path, beamline="k11", visit="mg37376-1")

    metadata = registered(services, name)

    expected = generate(SMALL)[0]
    node = services.tiled()["recons"][name]
    np.testing.assert_array_equal(node["data"][7], expected[7])
    np.testing.assert_array_equal(node["data"][3:20:4, ::2, 5::3], expected[3:20:4, ::2, 5::3])  # what viewers ask
    assert metadata["shape"] == [24, 32, 32]
    assert metadata["source_path"] == str(scan.announce_path.resolve())
    assert metadata["beamline"] == "k11"
    assert metadata["producer_message"]["visit"] == "mg37376-1"
    assert "ingested_at" in metadata
    writable_storage = services.settings.writable_path
    assert not any(writable_storage.rglob("*")), "registration must not copy data"


def test_savu_tiff_saver_slices_are_registered_as_xz_planes(services, broker):
    scan = simulate(services, "savu-tiffs", "savu")
    broker.announce(scan.announce_path)
    registered(services, "savu-tiffs")

    node = services.tiled()["recons"]["savu-tiffs"]
    assert set(node) == {"data", "TiffSaver-tomo"}
    volume = generate(SMALL)[0]
    tiffs = node["TiffSaver-tomo"]
    assert tiffs.shape == (32, 24, 32)
    np.testing.assert_array_equal(tiffs[5], volume[:, 5, :])
    assert tiffs.metadata["axes"] == ["y", "z", "x"]


def test_the_same_file_twice_gives_one_node(services, broker):
    scan = simulate(services, "twice", "nxtomo")
    broker.announce(scan.announce_path)
    registered(services, "twice")
    broker.announce(scan.announce_path)
    result = services.cli("ingest", str(scan.announce_path))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unchanged")
    assert [key for key in services.recons() if key.startswith("twice")] == ["twice"]


def test_two_files_with_the_same_scan_id_get_distinct_nodes(services, broker):
    first = simulate(services, "sameid-a", "hdf5")
    other_folder = services.recons_root / "elsewhere"
    other_folder.mkdir()
    second = other_folder / first.announce_path.name
    second.write_bytes(first.announce_path.read_bytes())
    broker.announce(first.announce_path, second)

    def both_registered():
        keys = [key for key in services.recons() if key.startswith("sameid-a")]
        return keys if len(keys) == 2 else None

    keys = wait_for(both_registered, message="two nodes")
    sources = {services.recons()[key]["source_path"] for key in keys}
    assert sources == {str(first.announce_path), str(second)}


def test_only_final_statuses_are_ingested(services, broker):
    """A file announced while still being written is left alone; its final announcement registers it."""
    unfinished = simulate(services, "status-unfinished", "nxtomo")
    broker.announce(unfinished.announce_path, status="RUNNING")
    broker.announce(unfinished.announce_path, status="QUEUED")
    finished = simulate(services, "status-finished", "nxtomo")
    broker.announce(finished.announce_path, status="complete")
    registered(services, "status-finished")  # announced last: the messages before it are handled
    assert not any(key.startswith("status-unfinished") for key in services.recons())
    broker.announce(unfinished.announce_path, status="COMPLETE")
    registered(services, "status-unfinished")


def test_bad_input_is_dead_lettered_with_its_reason_while_good_input_flows(services, broker, tmp_path):
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as file:
        file["volume"] = np.zeros((4, 4, 4))
    link_inside = services.recons_root / "link-to-outside.h5"
    link_inside.symlink_to(outside)
    unsupported = services.recons_root / "notes.txt"
    unsupported.write_text("not a volume")
    corrupt = services.recons_root / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    flat = services.recons_root / "flat.h5"
    with h5py.File(flat, "w") as file:
        file["image"] = np.zeros((8, 8))
    many = services.recons_root / "many.h5"  # its reason names 300 datasets: longer than a broker takes in a header
    with h5py.File(many, "w") as file:
        for index in range(300):
            file.create_dataset(f"a_volume_with_a_rather_long_name_{index:03d}", (2, 2, 2), np.uint8)
    fifo = services.recons_root / "fifo.h5"  # opening it would block the ingester for ever
    os.mkfifo(fifo)
    root = services.recons_root
    good = [simulate(services, f"good-{index}", "nxtomo").announce_path for index in range(3)]

    bad_bodies = {
        "not json": "body is not JSON",
        json.dumps(["a", "list"]): "must be a JSON object",
        json.dumps({"status": "COMPLETE"}): "filePath",
        json.dumps({"filePath": str(outside)}): "outside the data roots",
        json.dumps({"filePath": f"{root}/../{root.name}/../../etc/passwd"}): "outside the data roots",
        json.dumps({"filePath": str(link_inside)}): "outside the data roots",
        json.dumps({"filePath": "relative/scan.nxs"}): "must be absolute",
        json.dumps({"filePath": str(root / "never-written.nxs")}): "does not exist",
        json.dumps({"filePath": str(unsupported)}): "unsupported format",
        json.dumps({"filePath": str(corrupt)}): "cannot read",
        json.dumps({"filePath": str(flat)}): "no 3-D dataset",
        json.dumps({"filePath": str(many)}): "holds several 3-D datasets (a_volume_with_a_rather_long_name_000, ",
        json.dumps({"filePath": str(fifo)}): "fifo.h5 is not a regular file or a folder",
    }
    bodies = list(bad_bodies)
    broker.publish([bodies[0], json.dumps({"filePath": str(good[0])}), *bodies[1:6]])
    broker.publish([json.dumps({"filePath": str(good[1])}), *bodies[6:], json.dumps({"filePath": str(good[2])})])

    dead = broker.collect(services.settings.ingester.dead_letter_destination, len(bad_bodies), timeout=60)

    reasons = {frame.body: frame.headers["mlex-reason"] for frame in dead}
    assert set(reasons) == set(bad_bodies)
    for body, expected in bad_bodies.items():
        assert expected in reasons[body], (body, reasons[body])
    assert all(frame.headers["mlex-original-destination"] == services.settings.ingester.destination for frame in dead)
    assert reasons[json.dumps({"filePath": str(many)})].endswith("more characters in the ingester's log)")
    assert max(len(reason) for reason in reasons.values()) < 1200
    for index in range(3):
        registered(services, f"good-{index}")


def test_a_message_the_broker_will_not_take_as_a_dead_letter_is_parked_and_the_queue_moves_on(services, broker):
    """A broker that refuses the dead-lettered copy drops the connection and redelivers: that must not loop for ever."""
    assert services.stop("ingester") == 0
    services.reconfigure(dead_letter_destination="/queue/" + "x" * 20_000)  # a header no broker takes
    poison = json.dumps({"filePath": "relative/scan.nxs", "beamline": "k11"})
    try:
        services.start("ingester")
        after = simulate(services, "after-the-poison", "hdf5").announce_path
        broker.publish([poison, json.dumps({"filePath": str(after)})])
        registered(services, "after-the-poison")
        parked_folder = services.settings.data_path / "ingester" / "parked"
        (parked,) = wait_for(lambda: list(parked_folder.glob("*.json")), message="a parked message")
        record = json.loads(parked.read_text())
        assert record["body"] == poison and "must be absolute" in record["reason"]
        assert oct(parked.stat().st_mode & 0o777) == "0o600"
        parked.unlink()  # replayed, it would only be dead-lettered again
    finally:
        services.stop("ingester")
        services.reconfigure(dead_letter_destination="/queue/mlex.ingest.dlq")
        services.start("ingester")


def test_dead_letters_are_listed_with_their_reasons_and_replayed_once_the_cause_is_fixed(services, broker):
    missing = services.recons_root / "fixed-later" / "fixed-later.h5"
    broker.announce(missing)
    (letter,) = wait_for(
        lambda: [letter for letter in list_dead_letters(services.settings) if "fixed-later.h5" in letter.body],
        message="the dead letter",
    )
    assert letter.where == "queue" and "does not exist" in letter.reason
    assert list_dead_letters(services.settings).count(letter) == 1  # listing leaves it in place

    assert simulate(services, "fixed-later", "hdf5").announce_path == missing  # the cause, fixed
    assert replay_dead_letters(services.settings) >= 1
    registered(services, "fixed-later")
    assert not [letter for letter in list_dead_letters(services.settings) if "fixed-later.h5" in letter.body]


def test_files_not_written_yet_do_not_hold_up_the_messages_behind_them(services, broker):
    """Waiting in place, 100 missing files would have held the queue for file_wait_seconds each."""
    assert services.stop("ingester") == 0
    services.reconfigure(file_wait_seconds=60)
    try:
        services.start("ingester")
        missing = [services.recons_root / f"missing-{index}" / f"missing-{index}.h5" for index in range(5)]
        broker.announce(*missing)
        ready = simulate(services, "behind-the-missing", "hdf5").announce_path
        announced = time.monotonic()
        broker.announce(ready)
        registered(services, "behind-the-missing")
        assert time.monotonic() - announced < 20, "the ready file waited behind the missing ones"
        for index in range(5):  # the missing files arrive: each is still registered
            assert simulate(services, f"missing-{index}", "hdf5").announce_path == missing[index]
        for index in range(5):
            registered(services, f"missing-{index}")
    finally:
        services.stop("ingester")
        services.reconfigure(file_wait_seconds=2)
        services.start("ingester")


def test_a_file_announced_before_it_is_written_is_waited_for(services, broker):
    late = services.recons_root / "late" / "late.h5"
    broker.announce(late)
    spec = PhantomSpec(shape=(16, 16, 16), seed=5)
    late.parent.mkdir()
    with h5py.File(late, "w") as file:
        file["volume"] = generate(spec)[0]
    assert registered(services, "late")["format"] == "hdf5"


def test_messages_published_while_the_ingester_is_down_are_not_lost(services, broker):
    assert services.stop("ingester") == 0, "SIGTERM must stop the ingester cleanly, not by SIGKILL"
    paths = [simulate(services, f"offline-{index}", "hdf5").announce_path for index in range(5)]
    broker.announce(*paths)
    services.start("ingester")
    for index in range(5):
        registered(services, f"offline-{index}")


def test_an_ingester_started_on_its_own_registers_the_scans_already_on_disk(services):
    """What the compose install's ingester does at start; `mlex-tomo up` does it itself, and reports it."""
    assert services.stop("ingester") == 0
    for name, file_format in (("on-disk-hdf5", "hdf5"), ("on-disk-zarr", "zarr3")):
        simulate(services, name, file_format)  # never announced
    services.reconfigure(register_existing=True)
    try:
        services.start("ingester")
        for name in ("on-disk-hdf5", "on-disk-zarr"):
            registered(services, name)
        log = (services.settings.logs_path / "ingester.log").read_text()
        assert "scans already in the data roots: 2 registered" in log
    finally:
        services.stop("ingester")
        services.reconfigure(register_existing=False)
        services.start("ingester")


def test_with_tiled_down_messages_wait_unacknowledged_until_it_is_back(services, broker):
    paths = [simulate(services, f"tiled-down-{index}", "hdf5").announce_path for index in range(3)]
    services.stop("tiled")
    broker.announce(*paths)
    leftover = broker.collect(services.settings.ingester.dead_letter_destination, 1, timeout=8)
    assert leftover == [], "a message was dead-lettered because Tiled was down"

    services.start("tiled")
    for index in range(3):
        registered(services, f"tiled-down-{index}")


def test_a_broker_restart_mid_stream_loses_and_duplicates_nothing(services, broker):
    count = 500
    folder = services.recons_root / "stream"
    folder.mkdir()
    volume = np.zeros((4, 8, 8), np.uint8)
    paths = []
    for index in range(count):
        path = folder / f"stream-{index:03d}.h5"
        with h5py.File(path, "w") as file:
            file["volume"] = volume
        paths.append(path)
    broker.announce(*paths)

    wait_for(lambda: sum(key.startswith("stream-") for key in services.recons()) >= 100, timeout=120, message="100 registered")
    services.stop("broker")
    services.start("broker")

    def all_registered():
        keys = [key for key in services.recons() if key.startswith("stream-")]
        return keys if len(keys) >= count else None

    keys = wait_for(all_registered, timeout=300, interval=1, message=f"{count} scans")
    assert sorted(keys) == [f"stream-{index:03d}" for index in range(count)]
