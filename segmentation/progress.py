"""Progress as one JSON object per line on standard output, for the flow to parse.

Every line is strict JSON (NaN and infinities become null), written and flushed at
once, so a reader sees each event as it happens even through a container's pipe.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from typing import Any, TextIO


class JsonLinesProgress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()  # events also come from the write-behind thread

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(finite(event), allow_nan=False, default=str)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def finite(value: Any) -> Any:
    """The value with NaN and infinities replaced by None, through dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value
