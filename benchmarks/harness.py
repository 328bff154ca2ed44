"""`mlex-tomo up` for the benchmarks: in a data directory of their own, on free ports, without the caller's settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from mlex_tomo.settings import StackSettings, load_settings


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for probe in sockets:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def clean_environment() -> dict[str, str]:
    """This process's environment less any mlex-tomo, Prefect or Tiled setting that would steer the stack."""
    return {name: value for name, value in os.environ.items() if not name.startswith(("MLEX_TOMO_", "PREFECT_", "TILED_"))}


def start_stack(data_dir: Path, *arguments: str) -> tuple[subprocess.Popen, StackSettings]:
    """`mlex-tomo up` with `arguments` on top, once it says it is up, and the settings its clients need."""
    tiled_port, prefect_port, stomp_port, openwire_port, ui_port = free_ports(5)
    overrides = {
        "data_dir": str(data_dir),
        "tiled": {"port": tiled_port},
        "prefect": {"port": prefect_port},
        "broker": {"stomp_port": stomp_port, "openwire_port": openwire_port},
        "ui": {"port": ui_port},
    }
    command = [
        sys.executable, "-m", "stack.cli", "up",
        "--data-dir", str(data_dir), "--tiled.port", str(tiled_port), "--prefect.port", str(prefect_port),
        "--broker.stomp_port", str(stomp_port), "--broker.openwire_port", str(openwire_port), "--ui.port", str(ui_port),
        *arguments,
    ]
    stack = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_environment())
    for line in stack.stdout:
        if line.startswith("mlex-tomo is up"):
            threading.Thread(target=stack.stdout.read, daemon=True).start()  # keeps its pipe from filling up
            return stack, load_settings(overrides=overrides, environ={})
    raise SystemExit(f"mlex-tomo up failed; see {data_dir / 'logs'}")
