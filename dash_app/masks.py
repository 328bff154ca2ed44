"""Annotations in Tiled: `/masks/<scan>/<mask_id>/mask`, as the contract describes.

The mask node's metadata carries the strokes too, and the scan's container records
which mask is current: that is the annotation the app keeps editing after a reload.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

from cachetools import LRUCache

from dash_app.annotations import Annotations, Axis, to_mask
from dash_app.imaging import colour_labels, outline_labels, rgb
from mlex_tomo.tiled_http import NodeNotFound, TiledHttpClient
from mlex_tomo.tiled_layout import write_mask
from mlex_tomo.tiled_names import MASKS, MASK_KEY


CURRENT = "current_annotation"  # metadata key of /masks/<scan>: what the user last saw saved


def save_annotations(tiled: TiledHttpClient, annotations: Annotations, data_uri: str, created_by: str) -> str | None:
    """Store the mask (once per content), record it as the scan's current one, and return its node path.

    Masks are stored once per content, so undoing to an earlier state reuses an older
    node: which one is current is therefore recorded on the scan's container, not read
    from creation times. An annotation with nothing painted has no mask (None); it is
    recorded too, classes included, so a reload shows it empty.
    """
    mask_idx, labels, classes = to_mask(annotations)
    mask_id = annotations.mask_id() if mask_idx else None
    path = None
    if mask_id is not None:
        path = write_mask(
            tiled, annotations.scan, mask_idx, labels, classes, data_uri, created_by,
            mask_id=mask_id, extra_metadata={"annotations": annotations.model_dump(mode="json")},
        )
    elif not tiled.exists(f"{MASKS}/{annotations.scan}"):
        tiled.create_container(MASKS, annotations.scan, {})
    current = {
        "mask_id": mask_id,
        "saved_at": datetime.now(timezone.utc).isoformat(),
        "saved_by": created_by,
        "annotations": None if path else annotations.model_dump(mode="json"),
    }
    tiled.set_metadata(f"{MASKS}/{annotations.scan}", CURRENT, current)
    return path


def latest_annotations(tiled: TiledHttpClient, scan: str) -> tuple[str | None, Annotations] | None:
    """(mask node path or None when nothing is painted, annotations) as the scan's annotation was last saved."""
    try:
        container = tiled.node(f"{MASKS}/{scan}")
    except NodeNotFound:
        return None
    current = container.metadata.get(CURRENT)
    if current is not None:
        if current["mask_id"] is None:
            return None, Annotations.model_validate(current["annotations"])
        path = f"{MASKS}/{scan}/{current['mask_id']}/{MASK_KEY}"
        try:
            return path, Annotations.model_validate(tiled.node(path).metadata["annotations"])
        except NodeNotFound:
            pass  # removed by an operator: fall back to the newest mask left
    return _newest_mask(tiled, scan)


def _newest_mask(tiled: TiledHttpClient, scan: str) -> tuple[str, Annotations] | None:
    """The most recently created mask: for scans painted before the current one was recorded."""
    masks = tiled.children(f"{MASKS}/{scan}")
    for mask_id in sorted(masks, key=lambda mask_id: masks[mask_id].metadata.get("created_at", ""), reverse=True):
        path = f"{MASKS}/{scan}/{mask_id}/{MASK_KEY}"
        try:
            return path, Annotations.model_validate(tiled.node(path).metadata["annotations"])
        except NodeNotFound:
            continue  # a save that failed half-way left the container only
    return None


class MaskOverlays:
    """Coloured overlays of a saved mask's slices along any axis, drawn from its strokes.

    Masks never change (their id is a content hash), so each one's annotations are read
    from Tiled once and kept; a slice along y or x is drawn from the strokes that cross
    it, without reading the mask's z slices.
    """

    def __init__(self, tiled: TiledHttpClient, capacity: int = 64) -> None:
        self.tiled = tiled
        self.annotations: LRUCache[tuple[str, str], Annotations] = LRUCache(maxsize=capacity)
        self.lock = threading.Lock()

    def remember(self, mask_id: str, annotations: Annotations) -> None:
        """Annotations on their way to Tiled as mask `mask_id` (`annotations.mask_id()`): what is drawn from them next need not read them back."""
        with self.lock:
            self.annotations[(annotations.scan, mask_id)] = annotations

    def overlay(self, scan: str, mask_id: str, axis: Axis, index: int, volume_shape: tuple[int, int, int], hidden: set[int] = frozenset()) -> Any:
        annotations = self.annotations_of(scan, mask_id).on_volume(volume_shape)
        index_of = annotations.class_index()
        colours = {index_of[class_id]: rgb(info.color) for class_id, info in annotations.classes.items()}
        painted = annotations.plane(axis, index)
        return outline_labels(painted, colour_labels(painted, colours, hidden))

    def annotations_of(self, scan: str, mask_id: str) -> Annotations:
        """The annotations of a saved mask, read from Tiled once."""
        key = (scan, mask_id)
        with self.lock:
            if (cached := self.annotations.get(key)) is not None:
                return cached
        try:
            node = self.tiled.node(f"{MASKS}/{scan}/{mask_id}/{MASK_KEY}")
        except NodeNotFound:
            raise LookupError(f"no mask {mask_id!r} for scan {scan!r}") from None
        annotations = Annotations.model_validate(node.metadata["annotations"])
        with self.lock:
            self.annotations[key] = annotations
        return annotations
