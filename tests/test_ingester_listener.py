"""The listener against a broker that accepts connections and never answers."""

from __future__ import annotations

import socket
import threading

from ingester import listener as listener_module
from ingester.listener import Listener
from ingester.processor import Processor
from ingester.status import IngesterStatus
from mlex_tomo.settings import load_settings


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

