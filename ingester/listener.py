"""The STOMP consumer: one message handled at a time, each acknowledged only once it is safe to.

A message is acknowledged after its scan is registered, or after it has been handed
to the dead-letter destination (confirmed by a broker receipt). A message whose file
is not there or not readable yet is set aside, unacknowledged, and tried again with
backoff for up to `ingester.file_wait_seconds` while the messages behind it go on (the
broker delivers up to PREFETCH_MESSAGES ahead). While Tiled is down
the message stays unacknowledged and is retried; if the broker connection drops, the
broker redelivers it to the next connection. Topics are consumed through a durable
subscription named by the client id, so nothing published while the ingester is down
is lost. A message whose dead-lettered copy the broker refuses again and again is
parked in a file instead (under `data_dir/ingester/parked`), so it cannot hold up the queue.

Every wait on the broker is bounded: a broker that accepts the connection but never
answers the CONNECT or the SUBSCRIBE (one still starting, or hung) costs a reconnect,
not a listener that waits forever on a connection that will never deliver.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stomp
from stomp.exception import StompException

from ingester.errors import Interrupted, Rejected, TiledUnavailable, Unreadable
from ingester.messages import IngestMessage
from ingester.processor import Outcome, Processor
from ingester.status import IngesterStatus
from mlex_tomo.backoff import Backoff
from mlex_tomo.settings import StackSettings

log = logging.getLogger("mlex_tomo.ingester")

SUBSCRIPTION_ID = "mlex-tomo-ingest"
ANSWER_TIMEOUT_SECONDS = 10.0
FIRST_RETRY_SECONDS = 0.5
FRAME_POLL_SECONDS = 0.5
MAX_REASON_CHARACTERS = 1024  # of the mlex-reason header: ActiveMQ drops a connection over a too-long header
DEAD_LETTER_ATTEMPTS = 3  # refusals of a dead-lettered copy before the message is parked on disk instead
# How many heart-beat intervals may pass without a frame from the broker before it counts
# as gone. ActiveMQ skips a heart-beat when it wrote anything during the interval before,
# so right after delivering a message its next heart-beat can come nearly two intervals
# later: stomp.py's default of 1.5 reconnected about 15 s after every message.
HEART_BEAT_TOLERANCE = 2.5
# Delivered ahead, unacknowledged: messages waiting for their file do not hold up the ones behind them.
PREFETCH_MESSAGES = 100
FIRST_FILE_RETRY_SECONDS = 0.05
LONGEST_FILE_RETRY_SECONDS = 2.0


@dataclass
class _Session:
    """One broker connection and what its receiver thread hands over."""

    connection: stomp.StompConnection12
    frames: queue.Queue = field(default_factory=queue.Queue)
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    receipts: dict[str, threading.Event] = field(default_factory=dict)


@dataclass(eq=False)
class _Waiting:
    """A delivered message, and when to give up waiting for its file."""

    frame: Any
    deadline: float
    received: float = field(default_factory=time.monotonic)
    next_try: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(FIRST_FILE_RETRY_SECONDS, LONGEST_FILE_RETRY_SECONDS))


class _SessionListener(stomp.ConnectionListener):
    def __init__(self, session: _Session) -> None:
        self.session = session

    def on_connected(self, frame) -> None:
        self.session.connected.set()

    def on_message(self, frame) -> None:
        self.session.frames.put(frame)

    def on_receipt(self, frame) -> None:
        arrived = self.session.receipts.get(frame.headers.get("receipt-id", ""))
        if arrived is not None:
            arrived.set()

    def on_error(self, frame) -> None:
        log.error("broker error: %s", frame.headers.get("message", frame.body))

    def on_disconnected(self) -> None:
        self.session.disconnected.set()

    def on_heartbeat_timeout(self) -> None:
        log.warning("broker heart-beat missed; reconnecting")
        self.session.disconnected.set()


class BrokerDidNotAnswer(StompException):
    """The broker kept the connection open but did not answer in time."""


class Listener:
    def __init__(self, settings: StackSettings, processor: Processor, status: IngesterStatus) -> None:
        self.settings = settings
        self.processor = processor
        self.status = status
        self.dead_letter_failures: dict[str, int] = {}  # message id -> refused dead-lettered copies
        self.waiting: list[_Waiting] = []  # messages whose file is not there or not readable yet

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, reconnecting forever with capped exponential backoff."""
        backoff = Backoff(FIRST_RETRY_SECONDS, self.settings.ingester.reconnect_max_seconds)
        host, port = self.settings.broker.stomp_address
        while not stop.is_set():
            try:
                session = self._open_session()
            except (StompException, OSError) as error:
                self.status.update(connected=False)
                delay = backoff.next()
                log.warning("broker %s:%s not available (%r); retrying in %.1f s", host, port, error, delay)
                stop.wait(delay)
                continue
            backoff.reset()
            self.status.update(connected=True)
            log.info("consuming %s on %s:%s", self.settings.ingester.destination, host, port)
            try:
                self._consume(session, stop)
            finally:
                self.status.update(connected=False)
                _close(session)

    def _open_session(self) -> _Session:
        broker, ingester = self.settings.broker, self.settings.ingester
        heartbeat = ingester.heartbeat_milliseconds
        connection = stomp.StompConnection12(
            [broker.stomp_address],
            heartbeats=(heartbeat, heartbeat),
            heart_beat_receive_scale=HEART_BEAT_TOLERANCE,
            reconnect_attempts_max=1,
            auto_decode=False,
            timeout=10,
        )
        session = _Session(connection)
        connection.set_listener("ingester", _SessionListener(session))
        password = broker.password.get_secret_value() if broker.password else None
        headers = {"activemq.prefetchSize": str(PREFETCH_MESSAGES)}
        if ingester.destination.startswith("/topic/"):
            headers["activemq.subscriptionName"] = ingester.client_id
        try:
            connection.connect(broker.user, password, wait=False, headers={"client-id": ingester.client_id})
            _wait_for(session, session.connected, "the CONNECT")
            _confirmed(
                session,
                "the SUBSCRIBE",
                lambda receipt: connection.subscribe(
                    ingester.destination, id=SUBSCRIPTION_ID, ack="client-individual",
                    headers=headers, receipt=receipt,
                ),
            )
        except BaseException:
            _close(session)
            raise
        return session

    def _consume(self, session: _Session, stop: threading.Event) -> None:
        self.waiting.clear()  # what the last connection left unacknowledged, the broker delivers again
        while not stop.is_set() and not session.disconnected.is_set():
            try:
                self._retry_waiting(session, stop)
                frame = session.frames.get(timeout=self._poll_seconds())
            except queue.Empty:
                continue
            except Interrupted as reason:
                log.info("left unacknowledged for redelivery: %s", reason)
                return
            try:
                self._handle(session, _Waiting(frame, time.monotonic() + self.settings.ingester.file_wait_seconds), stop)
            except Interrupted as reason:
                log.info("left unacknowledged for redelivery: %s", reason)
                return

    def _poll_seconds(self) -> float:
        """Until the next waiting file is due, at most FRAME_POLL_SECONDS."""
        due = min((entry.next_try for entry in self.waiting), default=math.inf)
        return max(0.0, min(FRAME_POLL_SECONDS, due - time.monotonic()))

    def _retry_waiting(self, session: _Session, stop: threading.Event) -> None:
        now = time.monotonic()
        due = [entry for entry in self.waiting if entry.next_try <= now]
        for entry in due:
            self.waiting.remove(entry)
            self._handle(session, entry, stop)

    def _handle(self, session: _Session, entry: _Waiting, stop: threading.Event) -> None:
        """Register, dead-letter, or set aside to wait for its file; acknowledge once done with it."""
        frame = entry.frame
        message_id = frame.headers.get("message-id", "?")
        try:
            message = IngestMessage.from_body(frame.body)
            outcome = self._process_until_tiled_answers(message, session, stop)
        except Unreadable as problem:
            if time.monotonic() < entry.deadline:
                self._wait_for_file(entry, problem)
                return
            self._reject(session, frame, f"{problem} (waited {self.settings.ingester.file_wait_seconds:g} s)")
        except Rejected as reason:
            self._reject(session, frame, str(reason))
        except (Interrupted, StompException, OSError):
            raise
        except Exception as error:  # a file we cannot make sense of must not stop the ingester
            log.exception("unexpected error on message %s", message_id)
            self._reject(session, frame, f"internal error: {type(error).__name__}: {error}")
        else:
            self.status.count(outcome.kind)
            log.info(
                "%s %s in %.0f ms (message %s)",
                outcome.kind, outcome.detail, 1000 * (time.monotonic() - entry.received), message_id,
            )
        with _broker_loss_interrupts("acknowledging"):
            session.connection.ack(frame.headers["ack"])

    def _wait_for_file(self, entry: _Waiting, problem: Unreadable) -> None:
        """The file may still be on its way: try again later, unacknowledged, while other messages go on."""
        if entry.backoff.attempts == 0:
            log.info("waiting up to %g s for %s (message %s)", self.settings.ingester.file_wait_seconds,
                     problem, entry.frame.headers.get("message-id", "?"))
        entry.next_try = min(time.monotonic() + entry.backoff.next(), entry.deadline)
        self.waiting.append(entry)

    def _reject(self, session: _Session, frame, reason: str) -> None:
        """Dead-letter the message; one whose dead-lettered copy the broker keeps refusing is parked on disk.

        A broker that refuses the copy drops the connection, and redelivers the message:
        without a last resort it would loop for ever, and hold up everything behind it.
        """
        message_id = frame.headers.get("message-id", "?")
        if self.dead_letter_failures.get(message_id, 0) >= DEAD_LETTER_ATTEMPTS:
            parked = park(self.settings.ingester_parked_path, frame, reason)
            del self.dead_letter_failures[message_id]
            self.status.count("parked")
            log.error(
                "parked message %s in %s: the broker refused its dead-lettered copy %d times; reason: %s",
                message_id, parked, DEAD_LETTER_ATTEMPTS, reason,
            )
            return
        try:
            with _broker_loss_interrupts("dead-lettering"):
                self._dead_letter(session, frame, reason)
        except Interrupted:
            self.dead_letter_failures[message_id] = self.dead_letter_failures.get(message_id, 0) + 1
            raise
        self.dead_letter_failures.pop(message_id, None)
        self.status.count("rejected")
        log.warning("rejected message %s: %s", message_id, reason)

    def _process_until_tiled_answers(
        self, message: IngestMessage, session: _Session, stop: threading.Event
    ) -> Outcome:
        backoff = Backoff(FIRST_RETRY_SECONDS, self.settings.ingester.reconnect_max_seconds)
        interrupted = lambda: stop.is_set() or session.disconnected.is_set()  # noqa: E731
        while True:
            try:
                return self.processor.process(message, should_stop=interrupted, wait_for_file=False)
            except TiledUnavailable as problem:
                self.processor.forget_connection()
                self.status.update(tiled_available=False)
                delay = backoff.next()
                log.warning("%s; keeping the message and retrying in %.1f s", problem, delay)
                if stop.wait(delay) or session.disconnected.is_set():
                    raise Interrupted("stopped while Tiled was unavailable") from None
            else:
                self.status.update(tiled_available=True)

    def _dead_letter(self, session: _Session, frame, reason: str) -> None:
        """Hand the original body on with the reason; return once the broker has it."""
        headers = {
            "mlex-reason": bounded_reason(reason),
            "mlex-original-destination": frame.headers.get("destination", ""),
            "mlex-original-message-id": frame.headers.get("message-id", ""),
            "persistent": "true",
        }
        if "content-type" in frame.headers:
            headers["content-type"] = frame.headers["content-type"]
        _confirmed(
            session,
            "the dead-lettered copy",
            lambda receipt: session.connection.send(
                self.settings.ingester.dead_letter_destination, frame.body, headers=headers, receipt=receipt
            ),
        )


def bounded_reason(reason: str) -> str:
    """The reason on one line, short enough for any broker's header limit; the log keeps it whole."""
    line = " ".join(reason.split())
    if len(line) <= MAX_REASON_CHARACTERS:
        return line
    return f"{line[:MAX_REASON_CHARACTERS]}... ({len(line) - MAX_REASON_CHARACTERS} more characters in the ingester's log)"


def park(folder: Path, frame, reason: str) -> Path:
    """Keep a message the broker would not take back on disk, owner-only, to be replayed by hand."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    message_id = frame.headers.get("message-id", "unknown")
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{re.sub(r'[^A-Za-z0-9._-]+', '_', message_id)[:100]}.json"
    body = frame.body if isinstance(frame.body, str) else frame.body.decode("utf-8", "replace")
    record = {"message_id": message_id, "destination": frame.headers.get("destination", ""), "reason": reason, "body": body}
    path = folder / name
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(record, file, indent=1)
    return path


def _confirmed(session: _Session, what: str, send: Callable[[str], None]) -> None:
    """Send a frame asking for a receipt; return once the broker has confirmed it."""
    receipt = uuid.uuid4().hex
    arrived = session.receipts[receipt] = threading.Event()
    try:
        send(receipt)
        _wait_for(session, arrived, what)
    finally:
        del session.receipts[receipt]


def _wait_for(session: _Session, answered: threading.Event, what: str) -> None:
    deadline = time.monotonic() + ANSWER_TIMEOUT_SECONDS
    while not answered.wait(0.1):
        if session.disconnected.is_set():
            raise BrokerDidNotAnswer(f"the broker closed the connection before answering {what}")
        if time.monotonic() > deadline:
            raise BrokerDidNotAnswer(f"the broker did not answer {what} within {ANSWER_TIMEOUT_SECONDS:g} s")


@contextmanager
def _broker_loss_interrupts(doing: str) -> Iterator[None]:
    """A connection lost mid-message is harmless: the broker redelivers, ingest is idempotent."""
    try:
        yield
    except (StompException, OSError) as error:
        detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise Interrupted(f"broker connection lost while {doing} ({detail})") from None


def _close(session: _Session) -> None:
    """Say goodbye if the broker is listening, then drop the socket whatever it answered."""
    try:
        if session.connection.is_connected():
            session.connection.disconnect()
    except (StompException, OSError):
        pass
    session.connection.transport.disconnect_socket()
