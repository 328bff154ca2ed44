"""Soak under faults: announcements through a broker crash, an ingester crash and a Tiled pause, poison mixed in.

    python -m benchmarks.faults [--valid 450] [--rate 3] [--keep]

Starts `mlex-tomo up` in a temporary data directory on free ports, then publishes
`--valid` announcements of good scans at `--rate` per second, one poison message or
hostile file after every ninth, while:
- the embedded broker is killed (`kill -9`) at 20 % of the stream, and `up` restarts it;
- the ingester is killed (`kill -9`) at 45 %, and `up` restarts it;
- Tiled is paused (SIGSTOP) for 15 s at 70 %.
The publisher waits for the broker's receipt of each message and resends what got none
(as a producer with a persistent outbox does). Then it waits for the stream to drain
and prints: sent, registered, duplicated, lost; poison dead-lettered or parked, each
with a reason; each fault's window (until a message sent after it was readable); the
time to readable of valid messages outside and during those windows; how much longer
a valid message right behind a poison one took than the valid one right before it
(paired neighbours see the same backlog, so the difference is the poison's doing); and
whether any byte of a secret outside the data roots was served. docs/benchmarks.md
records the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import shutil
import statistics
import subprocess
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

from benchmarks.harness import start_stack
from mlex_tomo.settings import StackSettings

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
    refused_by_broker: bool = False


@dataclass
class Faults:
    """When each fault began and ended (monotonic); a fault's window lasts until the stack has recovered from it."""

    happened: list[tuple[float, float]] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)

    def close_windows(self, stream: list[Published], seen: dict[str, float]) -> None:
        """Recovered: the first valid message sent after the fault ended is readable."""
        for began, ended in self.happened:
            after = [seen[entry.key] for entry in stream if entry.key in seen and entry.sent_at >= ended]
            self.windows.append((began, min(after, default=float("inf"))))

    def during(self, moment: float) -> bool:
        return any(start <= moment <= end for start, end in self.windows)


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
    while not stop.is_set():
        try:
            url: str | None = f"{settings.tiled.base_url}/api/v1/search/recons?page[limit]=300&fields="
            while url is not None:  # Tiled's `meta.count` is an estimate past 100: follow the pages to the end
                page = httpx.get(url, timeout=5).json()
                now = time.monotonic()
                for key in (entry["id"] for entry in page["data"]):
                    if key in keys and key not in seen:
                        seen[key] = now
                    elif key.startswith("soak-") and key not in keys:
                        others.add(key)
                url = page["links"].get("next")
                url = url and f"{url}&fields="  # keys only: the poll must not load the stack it measures
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
    parser.add_argument("--valid", type=int, default=450, help="valid announcements")
    parser.add_argument("--rate", type=float, default=3.0, help="announcements per second (the ingester takes about 8 a second here)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs, broker store) and say where")
    arguments = parser.parse_args()
    logging.getLogger("stomp.py").setLevel(logging.CRITICAL)  # the publisher's refused connections while the broker is down

    data_dir = Path(tempfile.mkdtemp(prefix="mlex-faults-bench-"))
    outside = Path(tempfile.mkdtemp(prefix="mlex-faults-outside-"))
    stack, settings = start_stack(data_dir, "--ingester.file_wait_seconds", str(FILE_WAIT_SECONDS))
    stop_polling = threading.Event()
    try:
        root = settings.recons_path / "faults"
        root.mkdir(parents=True)
        poison = poison_kinds(root, outside)
        stream: list[Published] = []
        bodies: list[str | bytes] = []
        for index in range(arguments.valid):
            key = f"soak-{index:04d}"
            write_scan(root / f"{key}.h5")
            stream.append(Published(key))
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
            round(0.20 * len(stream)): ("broker", lambda: kill(process_of(stack, "activemq"), faults)),
            round(0.45 * len(stream)): ("ingester", lambda: kill(process_of(stack, "stack.cli", "ingester"), faults)),
            round(0.70 * len(stream)): ("tiled", lambda: pause(process_of(stack, "tiled_server"), faults)),
        }
        publisher = Publisher(settings)
        started = time.monotonic()
        for position, (entry, body) in enumerate(zip(stream, bodies)):
            if position in schedule:
                name, act = schedule[position]
                act()
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
        shutil.rmtree(outside, ignore_errors=True)
        if arguments.keep:
            print(f"data directory kept: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)

    faults.close_windows(stream, seen)
    valid = [entry for entry in stream if entry.key]
    poisons = [entry for entry in stream if entry.poison]
    registered = [entry for entry in valid if entry.key in seen]
    latency = {entry.key: seen[entry.key] - entry.sent_at for entry in registered}
    quiet = [latency[entry.key] for entry in registered if not faults.during(entry.sent_at)]
    reasons = [frame.headers.get("mlex-reason", "") for frame in letters]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"published {len(stream)} messages in {publishing_seconds:.0f} s: {len(valid)} valid, {len(poisons)} poison "
          f"({len({entry.poison for entry in poisons})} kinds), faults: broker kill -9, ingester kill -9, Tiled paused {TILED_PAUSE_SECONDS} s")
    print(f"registered {len(registered)} of {len(valid)}; lost {len(valid) - len(registered)}; "
          f"duplicated {len(duplicates)} (other soak- nodes in /recons)")
    refused = sum(entry.refused_by_broker for entry in poisons)
    print(f"poison: {len(letters)} dead-lettered ({sum(1 for reason in reasons if reason)} with a reason), {len(parked)} parked, "
          f"{refused} refused by the broker itself, of {len(poisons)}")
    during = [latency[entry.key] for entry in registered if faults.during(entry.sent_at)]
    for began, ended in faults.windows:
        print(f"fault window: {ended - began:.1f} s from the fault until a message sent after it was readable")
    if quiet:
        print(f"valid messages outside fault windows: median {statistics.median(quiet):.2f} s to readable, max {max(quiet):.2f} s (n={len(quiet)})")
    if during:
        print(f"valid messages sent during a fault: median {statistics.median(during):.2f} s to readable, max {max(during):.2f} s (n={len(during)})")
    added = poison_delays(stream, latency, faults)
    if added:
        worst = max(delay for delays in added.values() for delay in delays)
        print(f"delay a poison message added to the valid one behind it (its time to readable minus that of the valid one "
              f"before the poison), outside fault windows: max {worst:.2f} s; by kind:")
        for kind, delays in added.items():
            print(f"  {kind}: max {max(delays):.2f} s (n={len(delays)})")
    print(f"bytes of the secret outside the roots served: {'SOME' if served_secret else 'none'}")


def poison_delays(stream: list[Published], latency: dict[str, float], faults: Faults) -> dict[str, list[float]]:
    """Per poison kind: how much longer the valid message behind each took than the valid one before it.

    Paired neighbours, a fifth of a second apart, see the same backlog: what differs is the poison between them.
    """
    added: dict[str, list[float]] = {}
    for before, poison, after in zip(stream, stream[1:], stream[2:]):
        if poison.poison and before.key in latency and after.key in latency and not faults.during(before.sent_at) \
                and not faults.during(after.sent_at):
            added.setdefault(poison.poison, []).append(latency[after.key] - latency[before.key])
    return added


def kill(process: psutil.Process, faults: Faults) -> None:
    """`kill -9`; `up` restarts the part."""
    began = time.monotonic()
    process.kill()
    faults.happened.append((began, began))


def pause(process: psutil.Process, faults: Faults) -> None:
    """SIGSTOP now, SIGCONT after TILED_PAUSE_SECONDS, on a timer so the stream goes on."""
    process.suspend()
    began = time.monotonic()
    faults.happened.append((began, began + TILED_PAUSE_SECONDS))
    threading.Timer(TILED_PAUSE_SECONDS, process.resume).start()


if __name__ == "__main__":
    main()
