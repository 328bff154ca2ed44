"""Real services for tests: the whole stack as `mlex-tomo up` runs it, or single services.

Single services are built from the same definitions `mlex-tomo up` uses, so the broker
and Tiled under test are configured exactly as in production, and a test can stop and
restart each one.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import stomp

from mlex_tomo.health import ingester_health
from mlex_tomo.settings import StackSettings, load_settings, parse_dotted_overrides, secrets_as_environment
from stack.processes import ManagedProcess
from stack.services import (
    Service,
    broker_service,
    child_settings_path,
    tiled_service,
    ui_service,
    write_child_settings,
)
from mlex_tomo.tiled_layout import connect, ensure_containers

HEALTH_TIMEOUT_SECONDS = 120
STARTUP_SECONDS = 300
READY_LINE = "mlex-tomo is up:"


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        sockets.append(probe)
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def clean_environment() -> dict[str, str]:
    """The test's own settings must not leak in from the developer's shell."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MLEX_TOMO_", "PREFECT_", "TILED_"))
    }


class RunningStack:
    """`mlex-tomo up` as a user runs it, in the background, on free ports.

    With a `checkout` instead of a `data_dir`, it runs as `make run` does: from that folder,
    with the default data directory (`data`, relative) and nothing passed but the ports.
    """

    def __init__(self, data_dir: Path | None = None, checkout: Path | None = None) -> None:
        tiled, prefect, stomp, openwire, ui = free_ports(5)
        self.checkout = checkout
        self.settings_arguments = [
            "--ui.port", str(ui),
            "--tiled.port", str(tiled),
            "--prefect.port", str(prefect),
            "--broker.stomp_port", str(stomp),
            "--broker.openwire_port", str(openwire),
        ]
        self.data_arguments = ["--data-dir", str(data_dir)] if data_dir is not None else []
        self.data_dir = data_dir if data_dir is not None else checkout / "data"
        self.output: list[str] = []
        self.process: subprocess.Popen | None = None

    @property
    def arguments(self) -> list[str]:
        return [*self.data_arguments, *self.settings_arguments]

    @property
    def settings(self) -> StackSettings:
        """Read fresh each time: the Tiled key file appears once the stack has started."""
        overrides = parse_dotted_overrides(self.settings_arguments)
        overrides["data_dir"] = str(self.data_dir)
        return load_settings(overrides=overrides, environ={})

    def cli(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "stack.cli", *command, *self.arguments],
            env=clean_environment(), capture_output=True, text=True, timeout=timeout, cwd=self.checkout,
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", "up", *self.arguments],
            env=clean_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.checkout,
        )
        ready = threading.Event()

        def collect() -> None:
            for line in self.process.stdout:
                self.output.append(line)
                if line.startswith(READY_LINE):
                    ready.set()

        threading.Thread(target=collect, daemon=True).start()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not ready.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("mlex-tomo up did not become ready:\n" + "".join(self.output))

    def __enter__(self) -> RunningStack:
        self.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop()

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def hang_up(self, timeout: float = 60) -> int:
        """What closing the terminal sends."""
        self.process.send_signal(signal.SIGHUP)
        return self.process.wait(timeout)


class Services:
    """Broker, Tiled and an ingester in `data_dir`, each started and stopped at will."""

    def __init__(self, data_dir: Path, **ingester_settings) -> None:
        tiled, stomp_port, openwire, ui = free_ports(4)
        self.settings: StackSettings = load_settings(
            overrides={
                "data_dir": str(data_dir),
                "ui": {"port": ui, "scan_refresh_seconds": 1},
                "tiled": {"port": tiled, "api_key": secrets.token_hex(32)},
                "broker": {"stomp_port": stomp_port, "openwire_port": openwire},
                "ingester": {"file_wait_seconds": 2, "reconnect_max_seconds": 2, "register_existing": False, **ingester_settings},
            },
            environ={},
        )
        for directory in ("logs", "tiled", "activemq", "tiled_storage/recons", "tiled_storage/writable"):
            (data_dir / directory).mkdir(parents=True, exist_ok=True)
        write_child_settings(self.settings)
        self.processes: dict[str, ManagedProcess] = {}

    def reconfigure(self, **ingester_settings) -> None:
        """New ingester settings for the ingester's next start."""
        ingester = self.settings.ingester.model_copy(update=ingester_settings)
        self.settings = self.settings.model_copy(update={"ingester": ingester})
        write_child_settings(self.settings)

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
        if name == "ui":
            return ui_service(self.settings)
        if name == "broker":
            return broker_service(self.settings)
        if name == "tiled":
            return tiled_service(self.settings)
        if name == "ingester":
            return Service(
                name="ingester",
                command=[sys.executable, "-m", "stack.cli", "ingester", "--config", str(child_settings_path(self.settings))],
                probe=ingester_health,
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
            [sys.executable, "-m", "stack.cli", *arguments, "--config", str(child_settings_path(self.settings))],
            env={**clean_environment(), **secrets_as_environment(self.settings)},
            capture_output=True, text=True, timeout=120,
        )


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
