"""Individual real services for tests that stop and restart them one at a time.

Built from the same service definitions `mlex-tomo up` uses, so the broker and Tiled
under test are configured exactly as in production.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import stomp

from mlex_tomo.settings import StackSettings, load_settings, secrets_as_environment
from mlex_tomo.stack.processes import ManagedProcess
from mlex_tomo.stack.services import (
    Service,
    broker_service,
    child_settings_path,
    tiled_service,
    write_child_settings,
)
from mlex_tomo.tiled_layout import connect, ensure_containers
from tests.conftest import clean_environment, free_ports

HEALTH_TIMEOUT_SECONDS = 120


class Services:
    """Broker, Tiled and an ingester in `data_dir`, each started and stopped at will."""

    def __init__(self, data_dir: Path, **ingester_settings) -> None:
        tiled, stomp_port, openwire = free_ports(3)
        self.settings: StackSettings = load_settings(
            overrides={
                "data_dir": str(data_dir),
                "tiled": {"port": tiled, "api_key": secrets.token_hex(32)},
                "broker": {"stomp_port": stomp_port, "openwire_port": openwire},
                "ingester": {"file_wait_seconds": 2, "reconnect_max_seconds": 2, **ingester_settings},
            },
            environ={},
        )
        for directory in ("logs", "tiled", "activemq", "tiled_storage/recons", "tiled_storage/writable"):
            (data_dir / directory).mkdir(parents=True, exist_ok=True)
        write_child_settings(self.settings)
        self.processes: dict[str, ManagedProcess] = {}

    @property
    def recons_root(self) -> Path:
        return self.settings.recons_path

    def start(self, name: str) -> None:
        service = self._service(name)
        process = ManagedProcess(name, service.command, self.settings.logs_path / f"{name}.log", env=service.env)
        process.start()
        self.processes[name] = process
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
        while not service.probe(self.settings).healthy:
            if process.exit_code() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {process.log_path}")
            time.sleep(0.3)
        if name == "tiled":
            ensure_containers(self.tiled(writable=True))

    def stop(self, name: str) -> int:
        """Stop one service; its exit code (negative: killed by that signal)."""
        process = self.processes.pop(name)
        process.stop()
        return process.process.returncode

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)

    def _service(self, name: str) -> Service:
        if name == "broker":
            return broker_service(self.settings)
        if name == "tiled":
            return tiled_service(self.settings)
        if name == "ingester":
            return Service(
                name="ingester",
                command=[sys.executable, "-m", "mlex_tomo.cli", "ingester", "--config", str(child_settings_path(self.settings))],
                probe=_ingester_connected,
                env={**clean_environment(), **secrets_as_environment(self.settings)},
            )
        raise ValueError(name)

    def tiled(self, writable: bool = False):
        return connect(self.settings, writable=writable)

    def recons(self) -> dict:
        """Scan key -> metadata, read fresh from Tiled."""
        return {key: dict(node.metadata) for key, node in self.tiled()["recons"].items()}

    def cli(self, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mlex_tomo.cli", *arguments, "--config", str(child_settings_path(self.settings))],
            env={**clean_environment(), **secrets_as_environment(self.settings)},
            capture_output=True, text=True, timeout=120,
        )


def _ingester_connected(settings: StackSettings):
    from mlex_tomo.stack.health import ingester_health

    return ingester_health(settings)


class Broker:
    """A STOMP client for tests: publish announcements, collect a destination."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings

    def publish(self, bodies: list[str | bytes], destination: str | None = None) -> None:
        connection = stomp.Connection12([self.settings.broker.stomp_address])
        connection.connect(wait=True)
        try:
            for body in bodies:
                connection.send(
                    destination or self.settings.ingester.destination, body, headers={"persistent": "true"}
                )
        finally:
            connection.disconnect()

    def announce(self, *paths: Path | str, **fields) -> None:
        self.publish([json.dumps({"filePath": str(path), **fields}) for path in paths])

    def collect(self, destination: str, count: int, timeout: float = 30) -> list:
        """Consume `count` frames from a queue (fewer if the timeout passes first)."""
        frames: list = []
        done = threading.Event()

        class Collector(stomp.ConnectionListener):
            def on_message(self, frame):
                frames.append(frame)
                if len(frames) >= count:
                    done.set()

        connection = stomp.Connection12([self.settings.broker.stomp_address])
        connection.set_listener("collector", Collector())
        connection.connect(wait=True)
        try:
            connection.subscribe(destination, id=uuid.uuid4().hex, ack="auto")
            done.wait(timeout)
        finally:
            connection.disconnect()
        return frames


def wait_for(condition, timeout: float = 60, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)
