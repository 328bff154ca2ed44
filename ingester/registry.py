"""Register described scans under `/recons` in Tiled, in place and idempotently.

The common case costs two requests (create the scan container, register its array);
existing nodes are inspected only when Tiled answers 409, so re-delivered or repeated
messages end in the same single node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from ingester.errors import Rejected, TiledUnavailable
from ingester.sources import ArraySource, ScanDescription
from mlex_tomo.settings import StackSettings
from mlex_tomo.tiled_layout import ReconstructionMetadata, connect
from mlex_tomo.tiled_names import RECONS

CONFLICT = 409


@dataclass(frozen=True)
class Registration:
    key: str
    created: bool

    @property
    def path(self) -> str:
        return f"/{RECONS}/{self.key}"


class ScanRegistry:
    def __init__(self, recons: Any) -> None:
        self.recons = recons

    @classmethod
    def connect(cls, settings: StackSettings) -> ScanRegistry:
        with _tiled_errors():
            return cls(connect(settings, writable=True)[RECONS])

    def register(self, scan: ScanDescription, producer_message: dict[str, Any]) -> Registration:
        metadata = ReconstructionMetadata(
            scan_id=scan.scan_id,
            source_path=str(scan.source_path),
            format=scan.file_format,
            shape=list(scan.volume.structure.shape),
            dtype=scan.volume.structure.data_type.to_numpy_dtype().str,
            ingested_at=datetime.now(UTC),
            beamline=producer_message.get("beamline"),
            producer_message=producer_message,
            **scan.metadata,
        ).model_dump(mode="json", exclude_none=True)
        with _tiled_errors():
            for key in _candidate_keys(scan):
                node, created = self._create_or_open(key, metadata)
                if node is None:
                    continue
                added = [self._ensure_array(node, array) for array in scan.arrays]
                return Registration(key, created or any(added))
        raise AssertionError("unreachable: the hashed key is unique to the source path")

    def _create_or_open(self, key: str, metadata: dict[str, Any]) -> tuple[Any | None, bool]:
        """The scan's container, or None when the key belongs to another file."""
        try:
            return self.recons.create_container(key, metadata=metadata), True
        except httpx.HTTPStatusError as error:
            if error.response.status_code != CONFLICT:
                raise
        existing = self.recons[key]
        if existing.metadata.get("source_path") != metadata["source_path"]:
            return None, False
        return existing, False

    def _ensure_array(self, node: Any, array: ArraySource) -> bool:
        """Register the array; replace it if the file now holds a different structure."""
        try:
            node.new("array", [array.data_source], key=array.key, metadata=array.metadata)
            return True
        except httpx.HTTPStatusError as error:
            if error.response.status_code != CONFLICT:
                raise
        existing = node[array.key]
        if existing.shape == array.structure.shape and existing.dtype == array.structure.data_type.to_numpy_dtype():
            return False
        existing.delete()
        node.new("array", [array.data_source], key=array.key, metadata=array.metadata)
        return True


def _candidate_keys(scan: ScanDescription) -> Iterator[str]:
    """The scan id, then the scan id with a hash of the path when two files share an id."""
    yield scan.scan_id
    digest = hashlib.sha1(str(scan.source_path).encode()).hexdigest()[:8]
    yield f"{scan.scan_id}-{digest}"


@contextmanager
def _tiled_errors() -> Iterator[None]:
    """Tell "Tiled is down or misconfigured: retry" from "this scan is refused"."""
    try:
        yield
    except (httpx.TransportError, ConnectionError) as error:
        raise TiledUnavailable(f"Tiled unreachable: {error}") from None
    except httpx.HTTPStatusError as error:
        status = error.response.status_code
        detail = _detail(error.response)
        if status >= 500 or status in (401, 403, 429):
            raise TiledUnavailable(f"Tiled answered {status}: {detail}") from None
        raise Rejected(f"Tiled refused the scan ({status}): {detail}") from None


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))[:500]
    except ValueError:
        return response.text[:500]
