"""The embedded stack's supervisor and services, without starting them."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlex_tomo.settings import CONFIG_FILE_VARIABLE, load_settings
from stack.services import child_settings_path, embedded_services
from stack.supervisor import Stack


@dataclass
class Service:
    name: str


@dataclass
class RunningProcess:
    """Stands in for a ManagedProcess: still running until stopped, and says when it is."""

    name: str
    stopped: list[str]

    def exit_code(self) -> int | None:
        return 0 if self.name in self.stopped else None

    def stop(self) -> None:
        self.stopped.append(self.name)


def test_services_with_an_external_address_are_not_started(tmp_path):
    settings = load_settings(
        overrides={
            "data_dir": str(tmp_path),
            "broker": {"url": "stomp://broker.facility:61613"},
            "tiled": {"url": "http://tiled.facility:8000"},
        },
        environ={},
    )
    databases, servers, clients = embedded_services(settings)
    assert databases == [] and [service.name for service in servers] == ["prefect"]
    assert [service.name for service in clients] == ["worker", "ingester", "ui"]
    assert settings.broker.stomp_address == ("broker.facility", 61613)
    assert settings.tiled.base_url == "http://tiled.facility:8000"


def test_children_are_handed_absolute_paths_when_data_dir_is_relative(tmp_path, monkeypatch):
    """Flow runs work in Prefect's temporary folders: a relative data_dir would put models there."""
    monkeypatch.chdir(tmp_path)
    start = Path.cwd()
    settings = load_settings(overrides={"data_dir": "data", "broker": {"url": "stomp://127.0.0.1:1"}}, environ={})
    stack = Stack(settings, io.StringIO())
    _, _, clients = stack._prepare()
    monkeypatch.chdir("/")

    written = yaml.safe_load(child_settings_path(stack.settings).read_text())
    assert written["data_dir"] == str(start / "data")
    worker = next(service for service in clients if service.name == "worker")
    assert worker.env[CONFIG_FILE_VARIABLE] == str(start / "data" / "run" / "settings.yaml")


def test_a_vanished_terminal_does_not_interrupt_the_shutdown(tmp_path):
    """Progress lines to a closed pipe are dropped, so stopping goes on to the last service."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    gone = os.fdopen(write_end, "w")
    stack = Stack(load_settings(overrides={"data_dir": str(tmp_path)}, environ={}), gone)
    stopped: list[str] = []
    stack.running = [(Service(name), RunningProcess(name, stopped)) for name in ("broker", "tiled", "worker")]
    stack.stop()
    assert stopped == ["worker", "tiled", "broker"] and stack.running == []
    with contextlib.suppress(BrokenPipeError):  # what is still buffered cannot be flushed either
        gone.close()
