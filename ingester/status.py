"""A small JSON status file, so `mlex-tomo status` can tell a connected ingester.

The ingester rewrites it every few seconds; a stale file means a hung or dead one.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REFRESH_SECONDS = 2.0


class IngesterStatus:
    def __init__(self, path: Path, destination: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._state: dict[str, Any] = {
            "pid": os.getpid(),
            "destination": destination,
            "connected": False,
            "tiled_available": True,
            "started_at": _now(),
        }

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._state.update(fields)
        self.write()

    def count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1
        self.write()

    def write(self) -> None:
        """Held under the lock throughout: the refresher and the listener share one temporary file."""
        with self._lock:
            document = {**self._state, "counts": dict(self._counts), "updated_at": _now()}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(document))
            os.replace(temporary, self.path)

    def keep_fresh(self, stop: threading.Event) -> None:
        """Rewrite the file periodically until `stop`; run in a daemon thread."""
        while not stop.wait(REFRESH_SECONDS):
            self.write()


def _now() -> str:
    return datetime.now(UTC).isoformat()
