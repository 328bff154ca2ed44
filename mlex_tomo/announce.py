"""Publish the message a reconstruction program sends when a volume is on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import stomp

from mlex_tomo.settings import StackSettings


def announce(settings: StackSettings, file_path: Path, **fields: Any) -> None:
    """Send `{"filePath": ..., **fields}` to the ingest destination, persistently."""
    broker = settings.broker
    connection = stomp.Connection12([broker.stomp_address])
    password = broker.password.get_secret_value() if broker.password else None
    connection.connect(broker.user, password, wait=True)
    try:
        body = json.dumps({"filePath": str(file_path), **fields})
        connection.send(
            settings.ingester.destination,
            body,
            content_type="application/json",
            headers={"persistent": "true"},
        )
    finally:
        connection.disconnect()
