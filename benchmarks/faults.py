"""Soak under faults: announcements through a broker crash, an ingester crash and a Tiled pause, poison mixed in.

    python -m benchmarks.faults [--valid 300] [--rate 5]

Starts `mlex-tomo up` in a temporary data directory on free ports, then publishes
`--valid` announcements of good scans at `--rate` per second, one poison message or
hostile file after every ninth, while:
- the embedded broker is killed (`kill -9`) at 20 % of the stream, and `up` restarts it;
- the ingester is killed (`kill -9`) at 45 %, and `up` restarts it;
- Tiled is paused (SIGSTOP) for 15 s at 70 %.
The publisher waits for the broker's receipt of each message and resends what got none
(as a producer with a persistent outbox does). Then it waits for the stream to drain
and prints: sent, registered, duplicated, lost; poison dead-lettered or parked, each
with a reason; the longest a valid message published right after a poison one took
to be readable, outside the fault windows, next to the median of all valid ones in
quiet times (the baseline of the same run); and whether any byte of a secret outside
the data roots was served. docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import httpx
import numpy as np
import psutil
import stomp

from benchmarks.ingest import free_ports
from mlex_tomo.settings import StackSettings, load_settings

VOLUME = np.arange(8 * 16 * 16, dtype=np.uint16).reshape(8, 16, 16)
SECRET = b"not-for-anyone-" * 256
TILED_PAUSE_SECONDS = 15
DRAIN_SECONDS = 240
FILE_WAIT_SECONDS = 5


@dataclass
class Published:
    key: str  # the scan key a valid message registers; empty for poison
    poison: str = ""
    sent_at: float = 0.0
    after_poison: bool = False
    refused_by_broker: bool = False


@dataclass
class Faults:
    windows: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each fault, monotonic

    def during(self, moment: float, slack: float = 5.0) -> bool:
        return any(start - slack <= moment <= end + slack for start, end in self.windows)


class Publisher:
    """Persistent sends, each confirmed by a broker receipt; a send that gets none is retried on a new connection."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.connection: stomp.Connection12 | None = None
        self.receipts: set[str] = set()
        self.arrived = threading.Condition()

    def send(self, body: str | bytes, attempts: int | None = None) -> bool:
        """True once the broker confirmed it; False after `attempts` unconfirmed tries (None: until confirmed)."""
        tried = 0
        while attempts is None or tried < attempts:
            tried += 1
            try:
                connection = self._connected()
                receipt = uuid.uuid4().hex
                connection.send(self.settings.ingester.destination, body, headers={"persistent": "true", "receipt": receipt})
                with self.arrived:
                    if self.arrived.wait_for(lambda: receipt in self.receipts, timeout=10):
                        return True
            except (stomp.exception.StompException, OSError):
                pass
            self._drop()
            time.sleep(0.5)
        return False

    def on_receipt(self, frame) -> None:
        with self.arrived:
            self.receipts.add(frame.headers.get("receipt-id", ""))
            self.arrived.notify_all()

    def _connected(self) -> stomp.Connection12:
        if self.connection is None or not self.connection.is_connected():
            broker = self.settings.broker
            connection = stomp.Connection12([broker.stomp_address], reconnect_attempts_max=1)
            listener = stomp.ConnectionListener()
            listener.on_receipt = self.on_receipt
            connection.set_listener("receipts", listener)
            connection.connect(broker.user, broker.password.get_secret_value() if broker.password else None, wait=True)
            self.connection = connection
        return self.connection

    def _drop(self) -> None:
        if self.connection is not None:
            try:
                self.connection.disconnect()
            except Exception:  # already gone with the broker
                pass
        self.connection = None


def write_scan(path: Path) -> None:
    with h5py.File(path, "w") as file:
        file["data"] = VOLUME


def poison_kinds(root: Path, outside: Path) -> list[tuple[str, str | bytes]]:
    """(kind, body) of every bad message the stream carries in turn: malformed, refused and hostile."""
    (outside / "secret").write_bytes(SECRET)
    hostile_storage = root / "hostile-storage.h5"
    with h5py.File(hostile_storage, "w") as file:
        file.create_dataset("data", (4, 8, 8), np.uint8, external=[(str(outside / "secret"), 0, 256)])
    with h5py.File(outside / "volume.h5", "w") as file:
        file["data"] = np.frombuffer(SECRET[:256], np.uint8).reshape(4, 8, 8)
    hostile_link = root / "hostile-link.h5"
    with h5py.File(hostile_link, "w") as file:
        file["entry/data/data"] = h5py.ExternalLink(str(outside / "volume.h5"), "/data")
    fifo = root / "fifo.h5"
    os.mkfifo(fifo)
    empty = root / "empty.h5"
    with h5py.File(empty, "w") as file:
        file["data"] = np.zeros((0, 16, 16), np.uint16)
    compound = root / "compound.h5"
    with h5py.File(compound, "w") as file:
        file["data"] = np.zeros((4, 8, 8), [("a", np.int32), ("b", np.float32)])

    def announcement(path: Path | str, **fields) -> str:
        return json.dumps({"filePath": str(path), **fields})

    return [
        ("not JSON", b"\xff\xfe not json"),
        ("no filePath", json.dumps({"path": "/x"})),
        ("relative path", announcement("relative/scan.h5")),
        ("outside the roots", announcement(outside / "volume.h5")),
        ("external storage to a secret", announcement(hostile_storage)),
        ("external link out of the roots", announcement(hostile_link)),
        ("a FIFO", announcement(fifo)),
        ("an empty volume", announcement(empty)),
        ("compound values", announcement(compound)),
        ("20 KB filePath", announcement(root / ("x" * 20_000))),
        ("a file that never comes", announcement(root / "never-written.h5")),
        ("10 MiB field", announcement(root / "never-either.h5", extra="y" * (10 * 2**20))),
    ]


def process_of(stack: subprocess.Popen, *words: str) -> psutil.Process:
    for process in psutil.Process(stack.pid).children(recursive=True):
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if all(word in command for word in words):
            return process
    raise SystemExit(f"no process of the stack runs {' '.join(words)}")


def registered_at(settings: StackSettings, keys: set[str], seen: dict[str, float], others: set[str], stop: threading.Event) -> None:
    """Notes when each key becomes listed in /recons (polled every 0.2 s), and any other `soak-` node (a duplicate)."""
    url = f"{settings.tiled.base_url}/api/v1/search/recons"
    while not stop.is_set():
        try:
            offset = 0
            while True:
                page = httpx.get(url, params={"page[offset]": offset, "page[limit]": 300, "fields": ""}, timeout=5).json()
                found = [entry["id"] for entry in page["data"]]
                now = time.monotonic()
                for key in found:
                    if key in keys and key not in seen:
                        seen[key] = now
                    elif key.startswith("soak-") and key not in keys:
                        others.add(key)
                offset += len(found)
                if not found or offset >= page["meta"]["count"]:
                    break
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        stop.wait(0.2)


def dead_letters(settings: StackSettings, timeout: float = 20) -> list[stomp.utils.Frame]:
    frames, quiet = [], threading.Event()
    listener = stomp.ConnectionListener()
    listener.on_message = lambda frame: frames.append(frame)
    broker = settings.broker
    connection = stomp.Connection12([broker.stomp_address])
    connection.set_listener("collector", listener)
    connection.connect(broker.user, broker.password.get_secret_value() if broker.password else None, wait=True)
    connection.subscribe(settings.ingester.dead_letter_destination, id="faults", ack="auto")
    seen = -1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not quiet.is_set():  # until two seconds pass with nothing new
        if len(frames) == seen:
            quiet.set()
        seen = len(frames)
        time.sleep(2)
    connection.disconnect()
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--valid", type=int, default=300, help="valid announcements")
    parser.add_argument("--rate", type=float, default=5.0, help="announcements per second")
    arguments = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="mlex-faults-bench-"))
    outside = Path(tempfile.mkdtemp(prefix="mlex-faults-outside-"))
    tiled_port, prefect_port, stomp_port, openwire_port, ui_port = free_ports(5)
    overrides = [
        "--data-dir", str(data_dir), "--tiled.port", str(tiled_port), "--prefect.port", str(prefect_port),
        "--broker.stomp_port", str(stomp_port), "--broker.openwire_port", str(openwire_port), "--ui.port", str(ui_port),
        "--ingester.file_wait_seconds", str(FILE_WAIT_SECONDS),
    ]
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("MLEX_TOMO_", "PREFECT_", "TILED_"))}
    stack = subprocess.Popen(
        [sys.executable, "-m", "mlex_tomo.cli", "up", *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
    )
    stop_polling = threading.Event()
    try:
        for line in stack.stdout:
            if line.startswith("mlex-tomo is up"):
                break
        else:
            raise SystemExit("mlex-tomo up failed; see " + str(data_dir / "logs"))
        threading.Thread(target=lambda: [None for _ in stack.stdout], daemon=True).start()  # keep its pipe flowing
        settings = load_settings(overrides={
            "data_dir": str(data_dir), "tiled": {"port": tiled_port}, "broker": {"stomp_port": stomp_port},
        }, environ={})
        root = settings.recons_path / "faults"
        root.mkdir(parents=True)
        poison = poison_kinds(root, outside)
        stream: list[Published] = []
        bodies: list[str | bytes] = []
        for index in range(arguments.valid):
            key = f"soak-{index:04d}"
            write_scan(root / f"{key}.h5")
            stream.append(Published(key, after_poison=bool(stream) and bool(stream[-1].poison)))
            bodies.append(json.dumps({"filePath": str(root / f"{key}.h5"), "status": "COMPLETE"}))
            if index % 9 == 8:
                kind, body = poison[(index // 9) % len(poison)]
                stream.append(Published("", poison=kind))
                bodies.append(body)
        valid_keys = {entry.key for entry in stream if entry.key}
        seen: dict[str, float] = {}
        duplicates: set[str] = set()
        threading.Thread(target=registered_at, args=(settings, valid_keys, seen, duplicates, stop_polling), daemon=True).start()

        faults = Faults()
        schedule = {
            round(0.20 * len(stream)): ("broker", lambda: process_of(stack, "activemq").kill()),
            round(0.45 * len(stream)): ("ingester", lambda: process_of(stack, "mlex_tomo.cli", "ingester").kill()),
            round(0.70 * len(stream)): ("tiled", lambda: pause(process_of(stack, "tiled_server"), faults)),
        }
        publisher = Publisher(settings)
        started = time.monotonic()
        for position, (entry, body) in enumerate(zip(stream, bodies)):
            if position in schedule:
                name, act = schedule[position]
                began = time.monotonic()
                act()
                if name != "tiled":
                    faults.windows.append((began, began + 30))  # restart and reconnection
                print(f"fault: {name} at message {position}", flush=True)
            time.sleep(max(0.0, started + position / arguments.rate - time.monotonic()))
            send_began = time.monotonic()
            if entry.poison:
                entry.refused_by_broker = not publisher.send(body, attempts=3)  # a broker may refuse a frame outright
            else:
                publisher.send(body)
            entry.sent_at = send_began
        publishing_seconds = time.monotonic() - started

        drain_deadline = time.monotonic() + DRAIN_SECONDS
        while len(seen) < len(valid_keys) and time.monotonic() < drain_deadline:
            time.sleep(1)
        time.sleep(FILE_WAIT_SECONDS + 5)  # the last poison waits out its file
        stop_polling.set()

        served_secret = any(
            SECRET[:64] in httpx.get(f"{settings.tiled.base_url}/api/v1/array/full/recons/{key}/data",
                                     params={"format": "application/octet-stream"}, timeout=30).content
            for key in ("hostile-storage", "hostile-link")
        )
        letters = dead_letters(settings)
        parked = list(settings.ingester_parked_path.glob("*.json")) if settings.ingester_parked_path.exists() else []
    finally:
        stop_polling.set()
        stack.send_signal(signal.SIGTERM)
        stack.wait(120)
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)

    valid = [entry for entry in stream if entry.key]
    poisons = [entry for entry in stream if entry.poison]
    registered = [entry for entry in valid if entry.key in seen]
    latency = {entry.key: seen[entry.key] - entry.sent_at for entry in registered}
    quiet = [latency[entry.key] for entry in registered if not faults.during(entry.sent_at)]
    behind_poison = [latency[entry.key] for entry in registered if entry.after_poison and not faults.during(entry.sent_at)]
    reasons = [frame.headers.get("mlex-reason", "") for frame in letters]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"published {len(stream)} messages in {publishing_seconds:.0f} s: {len(valid)} valid, {len(poisons)} poison "
          f"({len({entry.poison for entry in poisons})} kinds), faults: broker kill -9, ingester kill -9, Tiled paused {TILED_PAUSE_SECONDS} s")
    print(f"registered {len(registered)} of {len(valid)}; lost {len(valid) - len(registered)}; "
          f"duplicated {len(duplicates)} (other soak- nodes in /recons)")
    refused = sum(entry.refused_by_broker for entry in poisons)
    print(f"poison: {len(letters)} dead-lettered ({sum(1 for reason in reasons if reason)} with a reason), {len(parked)} parked, "
          f"{refused} refused by the broker itself, of {len(poisons)}")
    if quiet:
        print(f"valid messages outside fault windows: median {statistics.median(quiet):.2f} s to readable, max {max(quiet):.2f} s")
    if behind_poison:
        print(f"valid messages right behind a poison one: max {max(behind_poison):.2f} s to readable (n={len(behind_poison)})")
    print(f"bytes of the secret outside the roots served: {'SOME' if served_secret else 'none'}")


def pause(process: psutil.Process, faults: Faults) -> None:
    """SIGSTOP now, SIGCONT after TILED_PAUSE_SECONDS, on a timer so the stream goes on."""
    process.suspend()
    began = time.monotonic()
    faults.windows.append((began, began + TILED_PAUSE_SECONDS + 30))
    threading.Timer(TILED_PAUSE_SECONDS, process.resume).start()


if __name__ == "__main__":
    main()
