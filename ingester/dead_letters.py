"""What the ingester could not ingest, for an operator: list it, and replay it once the cause is fixed.

Two places hold it: the dead-letter queue (`ingester.dead_letter_destination`, each
message with its reason in `mlex-reason`) and, for the rare message the broker would
not take there either, the files parked under `data_dir/ingester/parked`. Replaying
publishes each body to the ingest destination again, as the producer first did, and
only then removes it (acknowledged on the queue, the file deleted): nothing is lost if
a replay stops half-way, and ingest is idempotent.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import stomp

from mlex_tomo.settings import StackSettings

QUIET_SECONDS = 2.0  # the queue counts as drained once no message has come for this long


@dataclass(frozen=True)
class DeadLetter:
    where: str  # "queue", or the parked file
    reason: str
    body: str


def list_dead_letters(settings: StackSettings) -> list[DeadLetter]:
    """The dead-letter queue, browsed (left in place), then the parked files."""
    found = [DeadLetter("queue", frame.headers.get("mlex-reason", ""), frame.body) for frame in _browse(settings)]
    return found + [_parked(path) for path in _parked_files(settings)]


def replay_dead_letters(settings: StackSettings) -> int:
    """Publish every dead letter and parked message to the ingest destination again; how many."""
    replayed = 0
    for frame, acknowledge in _drain(settings):
        _publish(settings, frame.body)
        acknowledge()
        replayed += 1
    for path in _parked_files(settings):
        _publish(settings, _parked(path).body)
        path.unlink()
        replayed += 1
    return replayed


def _parked_files(settings: StackSettings) -> list[Path]:
    folder = settings.ingester_parked_path
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _parked(path: Path) -> DeadLetter:
    record = json.loads(path.read_text())
    return DeadLetter(str(path), record.get("reason", ""), record.get("body", ""))


def _connect(settings: StackSettings, listener: stomp.ConnectionListener | None = None) -> stomp.Connection12:
    broker = settings.broker
    connection = stomp.Connection12([broker.stomp_address])
    if listener is not None:
        connection.set_listener("dead-letters", listener)
    password = broker.password.get_secret_value() if broker.password else None
    connection.connect(broker.user, password, wait=True)
    return connection


def _publish(settings: StackSettings, body: str) -> None:
    connection = _connect(settings)
    try:
        connection.send(settings.ingester.destination, body, headers={"persistent": "true"})
    finally:
        connection.disconnect()


class _Collector(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.frames: list = []
        self.arrived = threading.Event()
        self.ended = threading.Event()

    def on_message(self, frame) -> None:
        if frame.headers.get("browser") == "end":
            self.ended.set()
        else:
            self.frames.append(frame)
        self.arrived.set()


def _browse(settings: StackSettings) -> list:
    """Every message on the dead-letter queue, left there (ActiveMQ's queue browser)."""
    collector = _Collector()
    connection = _connect(settings, collector)
    try:
        connection.subscribe(settings.ingester.dead_letter_destination, id="1", ack="auto", headers={"browser": "true"})
        while not collector.ended.is_set() and collector.arrived.wait(QUIET_SECONDS):
            collector.arrived.clear()
        return collector.frames
    finally:
        connection.disconnect()


def _drain(settings: StackSettings):
    """(frame, acknowledge) for each message on the dead-letter queue, one connection throughout."""
    collector = _Collector()
    connection = _connect(settings, collector)
    try:
        connection.subscribe(settings.ingester.dead_letter_destination, id="1", ack="client-individual")
        handed = 0
        while True:
            if handed == len(collector.frames) and not collector.arrived.wait(QUIET_SECONDS):
                return
            collector.arrived.clear()
            while handed < len(collector.frames):
                frame = collector.frames[handed]
                handed += 1
                yield frame, lambda frame=frame: connection.ack(frame.headers["ack"])
    finally:
        connection.disconnect()
