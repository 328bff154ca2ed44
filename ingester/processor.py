"""From an announcement to a registered scan, independent of how the message arrived.

`mlex-tomo ingest PATH` and the STOMP listener both go through `Processor.process`, so
a file registered by hand ends up exactly as one announced on the broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ingester.errors import Interrupted, Rejected, Unreadable
from ingester.file_reader import FileReader
from ingester.messages import IngestMessage
from ingester.registry import Registration, ScanRegistry
from ingester.sources import ScanDescription
from mlex_tomo.settings import StackSettings

FIRST_FILE_POLL_SECONDS = 0.05
LONGEST_FILE_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Outcome:
    kind: Literal["registered", "unchanged", "skipped"]
    detail: str
    registration: Registration | None = None


class Processor:
    def __init__(
        self,
        settings: StackSettings,
        connect_registry: Callable[[StackSettings], ScanRegistry] = ScanRegistry.connect,
    ) -> None:
        self.settings = settings
        self.roots = settings.ingest_roots
        self._connect_registry = connect_registry
        self._registry: ScanRegistry | None = None
        self._reader = FileReader(settings.ingester.file_read_seconds)

    def process(
        self, message: IngestMessage, should_stop: Callable[[], bool] = lambda: False, wait_for_file: bool = True,
    ) -> Outcome:
        """Register the announced scan; raises Rejected or TiledUnavailable.

        Without `wait_for_file`, a file not there or not readable yet raises Unreadable
        at once: the listener waits for it without holding up the messages behind it.
        """
        ingester = self.settings.ingester
        if not message.is_final(ingester.accepted_statuses):
            return Outcome("skipped", f"status {message.status!r} does not mean the file is final")
        path = message.file_path
        scan = self._describe_when_written(path, should_stop) if wait_for_file else self._describe(path)
        registration = self.registry.register(scan, message.producer_fields())
        kind = "registered" if registration.created else "unchanged"
        return Outcome(kind, f"{scan.file_format} {scan.volume.structure.shape} at {registration.path}", registration)

    def _describe_when_written(self, path: str, should_stop: Callable[[], bool]) -> ScanDescription:
        """Writers announce files a little early at times: wait until the file exists and reads."""
        ingester = self.settings.ingester
        deadline = time.monotonic() + ingester.file_wait_seconds
        pause = FIRST_FILE_POLL_SECONDS
        while True:
            try:
                return self._describe(path)
            except Unreadable as problem:
                if should_stop():
                    raise Interrupted(f"stopped while waiting for {path}") from None
                if time.monotonic() >= deadline:
                    raise Rejected(f"{problem} (waited {ingester.file_wait_seconds:g} s)") from None
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_FILE_POLL_SECONDS)

    def _describe(self, path: str) -> ScanDescription:
        return self._reader.describe(path, self.roots, self.settings.ingester.hdf5_dataset)

    @property
    def registry(self) -> ScanRegistry:
        if self._registry is None:
            self._registry = self._connect_registry(self.settings)
        return self._registry

    def close(self) -> None:
        """Stop the file reader; a later file starts another."""
        self._reader.close()

    def __enter__(self) -> Processor:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def forget_connection(self) -> None:
        """After Tiled failed, connect afresh on the next attempt."""
        self._registry = None
