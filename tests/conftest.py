"""Shared fixtures: a real `mlex-tomo up` stack in a temporary data directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from mlex_tomo.settings import StackSettings, load_settings, parse_dotted_overrides

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
    """`mlex-tomo up` as a user runs it, in the background, on free ports."""

    def __init__(self, data_dir: Path) -> None:
        tiled, prefect, stomp, openwire = free_ports(4)
        self.arguments = [
            "--data-dir", str(data_dir),
            "--tiled.port", str(tiled),
            "--prefect.port", str(prefect),
            "--broker.stomp_port", str(stomp),
            "--broker.openwire_port", str(openwire),
        ]
        self.data_dir = data_dir
        self.output: list[str] = []
        self.process: subprocess.Popen | None = None

    @property
    def settings(self) -> StackSettings:
        """Read fresh each time: the Tiled key file appears once the stack has started."""
        overrides = parse_dotted_overrides(self.arguments[2:])
        overrides["data_dir"] = str(self.data_dir)
        return load_settings(overrides=overrides, environ={})

    def cli(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mlex_tomo.cli", *command, *self.arguments],
            env=clean_environment(), capture_output=True, text=True, timeout=timeout,
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlex_tomo.cli", "up", *self.arguments],
            env=clean_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> RunningStack:
    """One stack for every test module that only uses it; stopped at the end of the session."""
    running = RunningStack(tmp_path_factory.mktemp("stack"))
    running.start()
    yield running
    running.stop()
