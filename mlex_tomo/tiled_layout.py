"""Working with the Tiled tree whose names mlex_tomo.tiled_names defines: connecting,
node URIs, the metadata models, the top-level containers and writing masks."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from mlex_tomo.settings import StackSettings
from mlex_tomo.tiled_http import TiledHttpClient
from mlex_tomo.tiled_names import MASK_KEY, MASKS, RECONS, RESULTS, TOP_LEVEL_CONTAINERS

if TYPE_CHECKING:
    from tiled.client.container import Container

CONTAINER_DESCRIPTIONS = {
    RECONS: "Reconstructed volumes, registered in place by the ingester.",
    MASKS: "Sparse label masks painted in the segmentation UI.",
    RESULTS: "Segmentation results written by segmentation jobs.",
}


class ReconstructionMetadata(BaseModel):
    """Metadata of `/recons/<scan>`, as the ingester writes it and the UI reads it."""

    model_config = ConfigDict(extra="forbid")

    scan_id: str
    source_path: str
    format: str
    shape: list[int]
    dtype: str
    ingested_at: datetime
    beamline: str | None = None
    voxel_size: float | list[float] | None = None
    producer_message: dict[str, Any] = {}


def node_uri(settings: StackSettings, path: str) -> str:
    """The URI by which jobs and flows name a node (`recons/<scan>`, `masks/...`)."""
    return f"{settings.tiled.base_url}/api/v1/metadata/{path.strip('/')}"


def connect(settings: StackSettings, *, writable: bool = False) -> Container:
    """Tiled's own client for the configured server; `writable` insists on the API key."""
    from tiled.client import from_uri

    return from_uri(settings.tiled.base_url, api_key=_api_key(settings, writable))


def connect_http(settings: StackSettings, *, writable: bool = False) -> TiledHttpClient:
    """The plain HTTP client (no Dask, xarray or pandas), for the web app."""
    return TiledHttpClient(settings.tiled.base_url, api_key=_api_key(settings, writable))


def check_writable(settings: StackSettings) -> None:
    if settings.tiled.api_key is None:
        raise RuntimeError(
            "writing to Tiled needs an API key: set MLEX_TOMO_TILED__API_KEY or tiled.api_key_file"
        )


def _api_key(settings: StackSettings, writable: bool) -> str | None:
    if writable:
        check_writable(settings)
    api_key = settings.tiled.api_key
    return api_key.get_secret_value() if api_key else None


def ensure_containers(client: Container) -> list[str]:
    """Create the top-level containers that do not exist yet; return their names."""
    created = []
    for name in TOP_LEVEL_CONTAINERS:
        if name not in client:
            client.create_container(name, metadata={"description": CONTAINER_DESCRIPTIONS[name]})
            created.append(name)
    return created


def write_mask(
    client: TiledHttpClient, scan: str, mask_idx: list[int], labels: Any, classes: dict[str, dict[str, str]],
    data_uri: str, created_by: str, mask_id: str | None = None, extra_metadata: dict[str, Any] | None = None,
) -> str:
    """Store `/masks/<scan>/<mask_id>/mask` once per content; return its node path.

    `mask_id` defaults to a hash of the labels, slice indices and classes, so the same
    mask written twice is stored once.
    """
    if mask_id is None:
        digest = hashlib.sha256(labels.tobytes())
        digest.update(repr((mask_idx, sorted(classes.items()), labels.shape)).encode())
        mask_id = digest.hexdigest()[:32]
    scan_path, mask_path = f"{MASKS}/{scan}", f"{MASKS}/{scan}/{mask_id}"
    if client.exists(f"{mask_path}/{MASK_KEY}"):
        return f"{mask_path}/{MASK_KEY}"
    if not client.exists(scan_path):
        client.create_container(MASKS, scan, {})
    created_at = datetime.now(timezone.utc).isoformat()
    metadata = {
        "data_uri": data_uri, "mask_idx": list(mask_idx), "classes": classes,
        "created_by": created_by, "created_at": created_at, **(extra_metadata or {}),
    }
    if not client.exists(mask_path):  # it may, from a save that failed after creating it
        client.create_container(scan_path, mask_id, {"created_at": created_at})
    return client.write_array(mask_path, MASK_KEY, labels, metadata).path
