"""Ingest latency and throughput, next to `tiled register` of the same files.

    python -m benchmarks.ingest [--messages 200] [--burst 300]

Starts `mlex-tomo up` in a temporary data directory on free ports, then measures:
- latency: one announcement at a time, from publishing the message to the node's
  first slice read back through the official `tiled` client (p50, p95);
- throughput: a burst of announcements published at once, until the ingester has
  acknowledged every one (messages per second, acknowledgements included);
- baseline, same run, same Tiled: `tiled register` of single files (latency) and of a
  folder holding as many files as the burst (files per second).
Prints the figures and the machine; docs/benchmarks.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import httpx
import numpy as np
import stamina
from tiled.client import from_uri

from benchmarks.harness import clean_environment, start_stack
from mlex_tomo.announce import announce

VOLUME = np.zeros((16, 64, 64), np.uint16)


def write_scans(folder: Path, prefix: str, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        path = folder / f"{prefix}-{index:04d}.h5"
        with h5py.File(path, "w") as file:
            file.create_dataset("volume", data=VOLUME, chunks=(1, 64, 64))
        paths.append(path)
    return paths


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def wait_readable(container, key: str, array_key: str = "data", timeout: float = 30.0) -> None:
    """Poll every 5 ms; Tiled answers 500 for a few ms while it adds a node's data source.

    The ingester serves a scan's volume as `data`; `tiled register` serves an HDF5 file
    as a container of its datasets, here `volume`.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            container[key][array_key][0]
            return
        except (KeyError, httpx.HTTPError):
            if time.monotonic() > deadline:
                raise TimeoutError(key) from None
            time.sleep(0.005)


def ingester_count(status_path: Path) -> int:
    try:
        counts = json.loads(status_path.read_text())["counts"]
    except (OSError, ValueError, KeyError):
        return 0
    return counts.get("registered", 0) + counts.get("unchanged", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="announcements timed one by one")
    parser.add_argument("--burst", type=int, default=300, help="announcements published at once")
    parser.add_argument("--baseline-singles", type=int, default=20, help="single-file `tiled register` runs")
    arguments = parser.parse_args()
    stamina.set_active(False)  # the client's own back-off would hide when a node became readable

    data_dir = Path(tempfile.mkdtemp(prefix="mlex-ingest-bench-"))
    stack, settings = start_stack(data_dir)
    environment = clean_environment()
    try:
        api_key = settings.tiled.api_key.get_secret_value()
        recons = from_uri(settings.tiled.base_url)["recons"]
        root = settings.recons_path

        latency_paths = write_scans(root / "latency", "latency", arguments.messages)
        latencies = []
        for path in latency_paths:
            started = time.perf_counter()
            announce(settings, path)
            wait_readable(recons, path.stem)
            latencies.append(time.perf_counter() - started)

        burst_paths = write_scans(root / "burst", "burst", arguments.burst)
        before = ingester_count(settings.ingester_status_path)
        started = time.perf_counter()
        for path in burst_paths:
            announce(settings, path)
        while ingester_count(settings.ingester_status_path) < before + arguments.burst:
            time.sleep(0.01)
        burst_seconds = time.perf_counter() - started

        writer = from_uri(settings.tiled.base_url, api_key=api_key)
        writer.create_container("baseline")
        register_environment = {**environment, "TILED_API_KEY": api_key}
        single_paths = write_scans(root / "baseline-single", "single", arguments.baseline_singles)
        baseline_latencies = []
        for path in single_paths:
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "tiled", "register", settings.tiled.base_url, str(path), "--prefix", "/baseline"],
                check=True, env=register_environment, capture_output=True,
            )
            wait_readable(writer["baseline"], path.stem, array_key="volume")
            baseline_latencies.append(time.perf_counter() - started)
        folder = root / "baseline-burst"
        write_scans(folder, "folder", arguments.burst)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "tiled", "register", settings.tiled.base_url, str(folder), "--prefix", "/baseline/folder"],
            check=True, env=register_environment, capture_output=True,
        )
        baseline_burst_seconds = time.perf_counter() - started
        registered = len(writer["baseline"]["folder"])
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(120)
        shutil.rmtree(data_dir, ignore_errors=True)

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"mlex-tomo ingester, announcement -> first slice readable via tiled client, n={len(latencies)}:")
    print(f"  p50 {1000 * statistics.median(latencies):.0f} ms, p95 {1000 * percentile(latencies, 0.95):.0f} ms, max {1000 * max(latencies):.0f} ms")
    print(f"mlex-tomo ingester, burst of {arguments.burst} announcements acknowledged: {burst_seconds:.1f} s = {arguments.burst / burst_seconds:.1f} msg/s")
    print(f"baseline `tiled register FILE`, command start -> readable, n={len(baseline_latencies)}:")
    print(f"  p50 {1000 * statistics.median(baseline_latencies):.0f} ms, p95 {1000 * percentile(baseline_latencies, 0.95):.0f} ms")
    print(f"baseline `tiled register FOLDER` of {registered} files: {baseline_burst_seconds:.1f} s = {registered / baseline_burst_seconds:.1f} files/s")


if __name__ == "__main__":
    main()
