"""Segmentation results in Tiled (`/results/<job_id>/seg_result`) as the app shows them.

A result may cover the whole volume (far larger than memory), so an overlay reads only
the one slice it draws. A finished result never changes, so its description is kept;
a running one is read afresh each time.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from cachetools import LRUCache
from numpy.typing import NDArray
from pydantic import BaseModel

from dash_app.annotations import PALETTE
from dash_app.imaging import colour_labels, rgb
from dash_app.volumes import slice_shape
from mlex_tomo.tiled_http import Node, NodeNotFound, TiledHttpClient
from mlex_tomo.tiled_names import RESULT_KEY, RESULTS, UNLABELLED

COMPLETE = "complete"
FINISHED = (COMPLETE, "failed", "cancelled")


class ResultNotFound(LookupError):
    pass


class SliceUncertainty(BaseModel):
    """Each measured z slice's mean (1 - top class probability): the slices segmented, and those a train job surveyed."""

    slices: list[int] = []
    mean: list[float] = []


class ResultDescription(BaseModel):
    """What the Result panel says of a job's labels."""

    job_id: str
    status: str
    task: str | None = None
    model: str | None = None
    parameters: dict[str, Any] = {}
    data_uri: str | None = None
    mask_uri: str | None = None
    trained_job_id: str | None = None
    classes: dict[str, dict[str, str]] = {}
    slices: list[int] = []
    slice_uncertainty: SliceUncertainty = SliceUncertainty()  # empty for results written before it was measured
    metrics: dict[str, Any] = {}
    device: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class ResultOverlays:
    """Finished results' descriptions and label nodes, kept for the jobs most recently shown."""

    def __init__(self, tiled: TiledHttpClient, capacity: int = 256) -> None:
        self.tiled = tiled
        self.finished: LRUCache[str, ResultDescription] = LRUCache(maxsize=capacity)
        self.labels: LRUCache[str, Node] = LRUCache(maxsize=capacity)
        self.lock = threading.Lock()

    def describe(self, job_id: str) -> ResultDescription:
        with self.lock:
            if (known := self.finished.get(job_id)) is not None:
                return known
        try:
            metadata = self.tiled.node(f"{RESULTS}/{job_id}").metadata
        except NodeNotFound:
            raise ResultNotFound(f"no result {job_id!r} in Tiled") from None
        known = {name: metadata[name] for name in ResultDescription.model_fields if metadata.get(name) is not None}
        description = ResultDescription.model_validate({"status": "unknown", **known, "job_id": job_id})
        if description.finished:
            with self.lock:
                self.finished[job_id] = description
        return description

    def overlay(
        self, job_id: str, axis: str, index: int, volume_shape: tuple[int, int, int], hidden: set[int]
    ) -> tuple[NDArray[np.uint8], bool]:
        """(RGBA overlay of one slice of the volume along `axis`, whether it is final).

        Transparent where the job did not segment: the result holds only the z slices it
        lists, so a y or x plane shows those rows. Only a complete job's labels are shown:
        a running, failed or cancelled job's array holds zeros where nothing was written
        yet, which would read as a whole slice of class 0.
        """
        description = self.describe(job_id)
        plane_shape = slice_shape(volume_shape, axis)
        if description.status != COMPLETE or (axis == "z" and index not in description.slices):
            return colour_labels(np.full(plane_shape, UNLABELLED, np.int8), {}), description.finished
        colours = {
            int(label): rgb(info.get("color") or PALETTE[int(label) % len(PALETTE)])
            for label, info in description.classes.items()
        }
        with self.lock:
            node = self.labels.get(job_id)
        if node is None:
            node = self.tiled.node(f"{RESULTS}/{job_id}/{RESULT_KEY}")  # its shape and dtype never change
            with self.lock:
                self.labels[job_id] = node
        if axis == "z":
            return colour_labels(self.tiled.read(node, (description.slices.index(index),), compressed=True), colours, hidden), True
        rows = self.tiled.read(node, (slice(None), index) if axis == "y" else (slice(None), slice(None), index), compressed=True)
        plane = np.full(plane_shape, UNLABELLED, np.int16)
        plane[description.slices] = rows
        return colour_labels(plane, colours, hidden), True
