"""`mlex-tomo up` with real ActiveMQ, Tiled, Prefect server and worker."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import socket
import threading
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
import stomp
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from tiled.client import from_uri

from ingester.existing import register_existing
from tests.services import RunningStack, wait_for

pytestmark = pytest.mark.stack

SERVICES = ("broker", "tiled", "prefect", "worker", "ingester", "ui")
SAMPLES = Path(__file__).parents[1] / "data" / "tiled_storage" / "recons"
SAMPLE_SCANS = {"phantom_nxtomo_64", "phantom_tiff_64"}


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory) -> RunningStack:
    """A stack of this module's own, because the last test here shuts it down.

    Its data directory starts as a checkout's does: the sample scans, never announced,
    and beside them a file no reader can open.
    """
    data_dir = tmp_path_factory.mktemp("up")
    recons = data_dir / "tiled_storage" / "recons"
    for name in SAMPLE_SCANS:
        shutil.copytree(SAMPLES / name, recons / name)
    (recons / "broken").mkdir()
    (recons / "broken" / "broken.h5").write_bytes(b"not HDF5")
    with RunningStack(data_dir) as running:
        yield running


def test_status_reports_every_service_healthy(own_stack):
    result = own_stack.cli("status")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [[name, "up"] for name in SERVICES]


def test_scans_already_on_disk_are_registered_at_start_and_a_bad_file_is_skipped(own_stack):
    output = "".join(own_stack.output)
    assert "2 registered, 0 already registered, 1 skipped (reasons above)" in output
    assert "not registering " + str(own_stack.settings.recons_path / "broken" / "broken.h5") in output
    recons = from_uri(own_stack.settings.tiled.base_url)["recons"]
    assert SAMPLE_SCANS <= set(recons)
    assert recons["phantom_tiff_64"]["data"].shape == recons["phantom_nxtomo_64"]["data"].shape == (64, 64, 64)


def test_registering_the_scans_on_disk_again_adds_nothing(own_stack):
    """What the next `up` on this data directory does."""
    recons = from_uri(own_stack.settings.tiled.base_url)["recons"]
    before = set(recons)

    again = register_existing(own_stack.settings, report=lambda line: None)

    assert again.registered == [] and again.unchanged >= len(SAMPLE_SCANS) and again.skipped == 1
    assert set(recons) == before


def test_no_log_holds_a_secret_and_only_their_owner_reads_them(own_stack):
    """Tiled's own start-up banner printed `?api_key=<key>` into a world-readable log."""
    key = own_stack.settings.tiled.api_key.get_secret_value()
    logs = own_stack.data_dir / "logs"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    every_log = [path for path in own_stack.data_dir.rglob("*") if path.is_file() and (path.suffix == ".log" or path.parent == logs)]
    assert {path.name for path in every_log} >= {f"{name}.log" for name in SERVICES}
    for path in every_log:
        assert key not in path.read_text(errors="replace"), f"the Tiled API key is in {path}"
    for path in logs.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_crashed_part_is_restarted_and_the_rest_keep_running(own_stack):
    """`kill -9` of the ingester took the broker, Tiled and Prefect down with it."""
    started = re.compile(r"starting ingester \(pid (\d+),")
    before = [int(match.group(1)) for line in own_stack.output for match in [started.search(line)] if match]
    os.kill(before[-1], signal.SIGKILL)
    wait_for(lambda: "ingester stopped unexpectedly with code -9; restarting it" in "".join(own_stack.output), message="a restart")
    wait_for(lambda: own_stack.cli("status").returncode == 0, timeout=90, message="every service up again")
    after = [int(match.group(1)) for line in own_stack.output for match in [started.search(line)] if match]
    assert after[-1] != before[-1]
    assert all(f"stopping {name}" not in "".join(own_stack.output) for name in SERVICES)


def test_each_service_writes_its_log(own_stack):
    logs = own_stack.data_dir / "logs"
    for name in SERVICES:
        assert (logs / f"{name}.log").stat().st_size > 0, name


def test_tiled_serves_arrays_written_with_the_api_key(own_stack):
    settings = own_stack.settings
    writer = from_uri(settings.tiled.base_url, api_key=settings.tiled.api_key.get_secret_value())
    assert {"recons", "masks", "results"} <= set(writer)
    volume = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    key = f"roundtrip-{uuid.uuid4().hex[:8]}"
    writer["results"].write_array(volume, key=key, metadata={"written_by": "test"})

    reader = from_uri(settings.tiled.base_url)  # anonymous: may read, may not write
    node = reader["results"][key]
    np.testing.assert_array_equal(node.read(), volume)
    np.testing.assert_array_equal(node[2], volume[2])
    assert node.metadata["written_by"] == "test"
    with pytest.raises(Exception, match="401|403|Unauthorized|Forbidden|permission"):
        reader["results"].write_array(volume, key=f"{key}-anonymous")


def test_the_embedded_broker_takes_only_the_stacks_login(own_stack):
    """A local user could announce any file to an open broker."""
    broker = own_stack.settings.broker  # the login `up` generated, as every mlex-tomo command finds it
    assert broker.user == "mlex-tomo" and broker.password is not None
    assert stat.S_IMODE((own_stack.data_dir / "secrets" / "broker_password").stat().st_mode) == 0o600
    for user, password in [(None, None), ("mlex-tomo", "guess"), ("admin", "admin")]:
        stranger = stomp.Connection([broker.stomp_address])
        with pytest.raises(stomp.exception.ConnectFailedException):
            stranger.connect(user, password, wait=True)


def test_broker_delivers_stomp_messages(own_stack):
    broker = own_stack.settings.broker
    host, port = broker.stomp_address
    destination = f"/queue/mlex.test.{uuid.uuid4().hex[:8]}"
    received: list[str] = []
    arrived = threading.Event()

    class Listener(stomp.ConnectionListener):
        def on_message(self, frame):
            received.append(frame.body)
            arrived.set()

    connection = stomp.Connection([(host, port)])
    connection.set_listener("test", Listener())
    connection.connect(broker.user, broker.password.get_secret_value(), wait=True)
    try:
        connection.subscribe(destination, id="1", ack="auto")
        connection.send(destination, body='{"filePath": "/data/scan.nxs"}')
        assert arrived.wait(10), "message not delivered"
    finally:
        connection.disconnect()
    assert received == ['{"filePath": "/data/scan.nxs"}']


def test_a_deployed_flow_runs_through_the_worker(own_stack):
    with temporary_settings({PREFECT_API_URL: own_stack.settings.prefect.resolved_api_url}):
        flow_run = run_deployment("ping/ping", parameters={"message": "hello"}, timeout=120)
    assert flow_run.state.is_completed(), flow_run.state
    assert flow_run.parameters == {"message": "hello"}
    assert flow_run.work_pool_name == "segmentation"


def test_a_simulated_scan_is_ingested_and_browsable(own_stack):
    result = own_stack.cli("simulate-scan", "--name", "sim-001", "--size", "32", "--wait", "60", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "browsable at" in result.stdout

    node = from_uri(own_stack.settings.tiled.base_url)["recons"]["sim-001"]
    assert node.metadata["format"] == "savu-nexus"
    assert node["data"].shape == (32, 32, 32)
    ground_truth = own_stack.data_dir / "ground_truth" / "sim-001_labels.h5"
    assert ground_truth.is_file()
    assert not (own_stack.settings.recons_path / "sim-001" / ground_truth.name).exists()


def test_a_second_up_on_the_same_data_dir_is_refused(own_stack):
    result = own_stack.cli("up", timeout=60)
    assert result.returncode == 1
    assert "already running" in result.stdout + result.stderr


def test_closing_the_terminal_stops_every_process_it_started(own_stack):
    children = own_stack.descendants()
    assert len(children) >= len(SERVICES)

    assert own_stack.hang_up() == 0

    still_running = [child for child in children if alive(child)]
    assert still_running == []
    assert own_stack.cli("status").returncode == 1


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_missing_activemq_says_how_to_install_it(tmp_path):
    stack = RunningStack(tmp_path)
    stack.settings_arguments += ["--broker.activemq_home", str(tmp_path / "no-activemq")]
    result = stack.cli("up")
    assert result.returncode == 1
    assert "apt-get install -y activemq" in result.stdout + result.stderr
    assert "--broker.url" in result.stdout + result.stderr


def test_a_port_in_use_is_named_with_its_setting(tmp_path):
    stack = RunningStack(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack.settings_arguments += ["--tiled.port", str(port)]
        result = stack.cli("up")
    assert result.returncode == 1
    assert f"port {port}" in result.stdout and "--tiled.port" in result.stdout
