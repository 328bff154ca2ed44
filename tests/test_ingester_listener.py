"""The listener against a broker that accepts connections and never answers, and its heart-beats with a real one."""

from __future__ import annotations

import socket
import threading
import time

import h5py
import numpy as np
import psutil
import pytest

from ingester import listener as listener_module
from ingester.listener import Listener
from ingester.processor import Processor
from ingester.status import IngesterStatus
from mlex_tomo.settings import load_settings
from tests.services import Broker, Services, wait_for


def test_a_silent_broker_costs_reconnects_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(listener_module, "ANSWER_TIMEOUT_SECONDS", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent_broker:
        silent_broker.settimeout(20)
        settings = load_settings(
            overrides={
                "data_dir": str(tmp_path),
                "broker": {"host": "127.0.0.1", "stomp_port": silent_broker.getsockname()[1]},
                "ingester": {"reconnect_max_seconds": 0.5},
            },
            environ={},
        )
        status = IngesterStatus(tmp_path / "ingester.json", settings.ingester.destination)
        stop = threading.Event()
        consumer = threading.Thread(target=Listener(settings, Processor(settings), status).run, args=(stop,))
        consumer.start()
        try:
            first, _ = silent_broker.accept()
            second, _ = silent_broker.accept()  # only reached if the first CONNECT was given up on
            assert first.recv(4096).startswith(b"STOMP\n"), "the listener should have sent its STOMP (CONNECT) frame"
            first.close()
            second.close()
        finally:
            stop.set()
            consumer.join(timeout=10)
    assert not consumer.is_alive(), "the listener did not stop"



@pytest.mark.stack
def test_heart_beats_keep_the_connection_through_a_burst_a_hung_tiled_request_and_quiet(tmp_path):
    """The broker and the ingester exchange heart-beats every second here; none may be missed while all is well."""
    services = Services(tmp_path, heartbeat_milliseconds=1000)
    try:
        for name in ("broker", "tiled", "ingester"):
            services.start(name)
        broker = Broker(services.settings)
        folder = services.recons_root / "beats"
        folder.mkdir()
        paths = []
        for index in range(21):
            paths.append(folder / f"beat-{index:02d}.h5")
            with h5py.File(paths[-1], "w") as file:
                file["volume"] = np.zeros((4, 8, 8), np.uint8)
        broker.announce(*paths[:20])
        wait_for(lambda: sum(key.startswith("beat-") for key in services.recons()) == 20, message="the burst registered")
        time.sleep(6)  # quiet: ActiveMQ skips heart-beats right after it wrote, so the first gap is the longest

        tiled = psutil.Process(services.processes["tiled"].process.pid)
        tiled.suspend()  # a Tiled request that hangs while the message is in hand
        try:
            broker.announce(paths[20])
            time.sleep(6)
        finally:
            tiled.resume()
        wait_for(lambda: "beat-20" in services.recons(), message="the message held up by Tiled")
        time.sleep(3)
    finally:
        services.stop_all()
    log = (services.settings.logs_path / "ingester.log").read_text()
    assert "heart-beat missed" not in log and log.count("consuming ") == 1, log[-2000:]
