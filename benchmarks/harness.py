"""`mlex-tomo up` for the benchmarks: in a data directory of their own, on free ports, without the caller's settings."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from mlex_tomo.settings import StackSettings, load_settings
from tests.services import clean_environment, free_ports


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
