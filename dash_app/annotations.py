"""What a scientist paints, as data: strokes per slice and the classes they belong to.

Strokes are kept (not only their pixels) so undo, redo and a reload in another browser
all see the same editable annotation. `to_mask` rasterises them into the int8 mask of
the Tiled contract: -1 unlabelled, 0..K-1 the classes in the order of their ids.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, model_validator

UNLABELLED = -1
MAX_CLASSES = 254  # rasterised as class + 1 in an 8-bit image, 0 meaning unlabelled

PALETTE = ("#e6194b", "#3cb4e6", "#ffe119", "#3cb44b", "#f58231", "#911eb4", "#f032e6", "#bcf60c", "#fabebe")

Point = tuple[float, float]  # (x, y) in pixels of the slice


class ClassInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=64)
    color: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")


class Stroke(BaseModel):
    """One drawing action; later strokes paint over earlier ones, the eraser clears."""

    model_config = ConfigDict(extra="forbid")

    tool: Literal["brush", "eraser", "polygon", "rectangle"]
    class_id: int | None = None
    points: list[Point] = Field(min_length=1, max_length=100_000)
    width: float = Field(default=5.0, gt=0, le=1000, description="Brush and eraser diameter in pixels.")

    @model_validator(mode="after")
    def _shape_is_drawable(self) -> Stroke:
        if (self.tool == "eraser") != (self.class_id is None):
            raise ValueError("the eraser has no class; every other tool needs class_id")
        minimum = {"polygon": 3, "rectangle": 2}.get(self.tool, 1)
        if len(self.points) < minimum:
            raise ValueError(f"a {self.tool} needs at least {minimum} points")
        return self


class Annotations(BaseModel):
    """Everything painted on one scan's z slices."""

    model_config = ConfigDict(extra="forbid")

    scan: str
    slice_shape: tuple[int, int]  # (y, x)
    classes: dict[int, ClassInfo]
    slices: dict[int, list[Stroke]] = {}

    @model_validator(mode="after")
    def _classes_known(self) -> Annotations:
        if len(self.classes) > MAX_CLASSES:
            raise ValueError(f"at most {MAX_CLASSES} classes")
        for z, strokes in self.slices.items():
            unknown = {stroke.class_id for stroke in strokes} - set(self.classes) - {None}
            if unknown:
                raise ValueError(f"slice {z} uses classes {sorted(unknown)} that are not defined")
        return self

    def rasterise(self, z: int) -> NDArray[np.int8]:
        return rasterise(self.slices.get(z, []), self.slice_shape, self.class_index())

    def class_index(self) -> dict[int, int]:
        """Class id -> its index 0..K-1 in the mask, in the order of the ids."""
        return {class_id: index for index, class_id in enumerate(sorted(self.classes))}

    def mask_id(self) -> str:
        """Content hash of what the mask depends on: identical annotations are stored once."""
        canonical = self.model_dump(mode="json", include={"scan", "slice_shape", "classes", "slices"})
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def rasterise(strokes: list[Stroke], shape: tuple[int, int], class_index: dict[int, int]) -> NDArray[np.int8]:
    """The strokes of one slice as labels: -1 where nothing is painted."""
    height, width = shape
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in strokes:
        value = 0 if stroke.tool == "eraser" else class_index[stroke.class_id] + 1
        points = [(float(x), float(y)) for x, y in stroke.points]
        if stroke.tool in ("brush", "eraser"):
            _draw_line(draw, points, stroke.width, value)
        elif stroke.tool == "polygon":
            draw.polygon(points, fill=value, outline=value)
        else:
            (x0, y0), (x1, y1) = points[0], points[-1]
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=value)
    return (np.asarray(canvas, dtype=np.int16) - 1).astype(np.int8)


def _draw_line(draw: ImageDraw.ImageDraw, points: list[Point], diameter: float, value: int) -> None:
    """A round-capped, round-jointed line, as a brush leaves it."""
    radius = diameter / 2
    if len(points) > 1:
        draw.line(points, fill=value, width=max(1, round(diameter)), joint="curve")
    for x, y in (points[0], points[-1]) if len(points) > 1 else points:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=value)


def to_mask(annotations: Annotations) -> tuple[list[int], NDArray[np.int8], dict[str, dict[str, str]]]:
    """(mask_idx, labels (n, y, x), classes) as the Tiled contract stores a mask."""
    rasters = {z: annotations.rasterise(z) for z in sorted(annotations.slices)}
    indices = [z for z, raster in rasters.items() if (raster != UNLABELLED).any()]
    labels = np.stack([rasters[z] for z in indices]) if indices else np.empty((0, *annotations.slice_shape), np.int8)
    index = annotations.class_index()
    classes = {str(index[class_id]): info.model_dump() for class_id, info in annotations.classes.items()}
    return indices, labels, classes
