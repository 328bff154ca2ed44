"""What a scientist paints, as data: strokes on slices along any axis, and their classes.

Strokes are kept (not only their pixels) so undo, redo and a reload in another browser
all see the same editable annotation. One ordered list of strokes holds every plane
(z, y and x slices alike): a later stroke paints over an earlier one wherever the two
cross, whichever plane each was painted on. `to_mask` rasterises them into the int8
mask of the Tiled contract (labelled z slices; -1 unlabelled, 0..K-1 the classes in the
order of their ids): a stroke painted on a y or x slice labels a line on every z slice
it crosses, so jobs read one 3-D mask however it was painted.
"""

from __future__ import annotations

import hashlib
import json
from itertools import groupby
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlex_tomo.tiled_names import UNLABELLED
from segmentation.labels import label_problems

MAX_CLASSES = 254  # rasterised as class + 1 in an 8-bit image; 0 is the eraser, 255 untouched
UNTOUCHED = 255

PALETTE = ("#e6194b", "#3cb4e6", "#ffe119", "#3cb44b", "#f58231", "#911eb4", "#f032e6", "#bcf60c", "#fabebe")

Axis = Literal["z", "y", "x"]
AXES: tuple[Axis, ...] = ("z", "y", "x")
Point = tuple[float, float]  # (column, row) in pixels of the slice: (x, y) on z, (x, z) on y, (y, z) on x


class ClassInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=64)
    color: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")


class Stroke(BaseModel):
    """One drawing action on slice `index` along `axis`; later strokes paint over earlier ones, the eraser clears."""

    model_config = ConfigDict(extra="forbid")

    axis: Axis = "z"
    index: int = Field(ge=0)
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

    @property
    def plane(self) -> tuple[Axis, int]:
        return self.axis, self.index


class Annotations(BaseModel):
    """Everything painted on one scan, in the order it was painted."""

    model_config = ConfigDict(extra="forbid")

    scan: str
    volume_shape: tuple[int, int, int]  # (z, y, x)
    classes: dict[int, ClassInfo]
    strokes: list[Stroke] = []

    @model_validator(mode="before")
    @classmethod
    def _from_z_slices(cls, data: Any) -> Any:
        """Annotations saved before strokes had an axis: `slices` {z: strokes} and `slice_shape` (y, x).

        Their depth was not recorded: the deepest slice painted stands in for it until
        the app, which knows the volume, sets it (see `on_volume`).
        """
        if not isinstance(data, dict) or "slices" not in data:
            return data
        data = dict(data)
        slices = data.pop("slices") or {}
        strokes = [{**stroke, "axis": "z", "index": int(z)} for z, painted in slices.items() for stroke in painted]
        if "slice_shape" in data:
            depth = max((int(z) + 1 for z in slices), default=1)
            data["volume_shape"] = (depth, *data.pop("slice_shape"))
        return {**data, "strokes": [*strokes, *data.get("strokes", [])]}

    @model_validator(mode="after")
    def _strokes_fit(self) -> Annotations:
        if len(self.classes) > MAX_CLASSES:
            raise ValueError(f"at most {MAX_CLASSES} classes")
        unknown = {stroke.class_id for stroke in self.strokes} - set(self.classes) - {None}
        if unknown:
            raise ValueError(f"strokes use classes {sorted(unknown)} that are not defined")
        for stroke in self.strokes:
            extent = self.volume_shape[AXES.index(stroke.axis)]
            if stroke.index >= extent:
                raise ValueError(f"a stroke on {stroke.axis} = {stroke.index} is outside the volume (0..{extent - 1})")
        return self

    def on_volume(self, shape: tuple[int, int, int]) -> Annotations:
        """The annotations on a volume of this shape (an older record's depth made exact)."""
        if tuple(shape) == self.volume_shape:
            return self
        if tuple(shape[1:]) != self.volume_shape[1:]:
            raise ValueError(f"the annotations were painted on slices of {self.volume_shape[1:]}, the scan's are {tuple(shape[1:])}")
        return Annotations.model_validate({**self.model_dump(), "volume_shape": tuple(shape)})

    def painted_planes(self, axis: Axis | None = None) -> list[tuple[Axis, int]]:
        """The slices painted on (along `axis` only, when given), each once, sorted."""
        return sorted({stroke.plane for stroke in self.strokes if axis in (None, stroke.axis)})

    def plane(self, axis: Axis, index: int) -> NDArray[np.int8]:
        """The labels of one slice along any axis, strokes painted on crossing slices included."""
        reaching = self.model_copy(update={"strokes": self.strokes_reaching(axis, index)})
        return label_plane(painted_runs(reaching), self.volume_shape, axis, index)

    def strokes_reaching(self, axis: Axis, index: int) -> list[Stroke]:
        """The strokes that can label one slice, in order: its own, and those on slices along the other axes, which cross it."""
        return [stroke for stroke in self.strokes if stroke.plane == (axis, index) or stroke.axis != axis]

    def plane_digest(self, axis: Axis, index: int) -> str:
        """A hash of all that one slice's labels depend on: while it holds, so do they (and whatever was computed from them)."""
        reaching = [stroke.model_dump(mode="json") for stroke in self.strokes_reaching(axis, index)]
        text = json.dumps([self.class_index(), self.volume_shape, reaching], sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def class_index(self) -> dict[int, int]:
        """Class id -> its index 0..K-1 in the mask, in the order of the ids."""
        return {class_id: index for index, class_id in enumerate(sorted(self.classes))}

    def mask_id(self) -> str:
        """Content hash of what the mask depends on: identical annotations are stored once."""
        canonical = self.model_dump(mode="json", include={"scan", "volume_shape", "classes", "strokes"})
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def plane_shape(volume_shape: tuple[int, int, int], axis: Axis) -> tuple[int, int]:
    """(rows, columns) of a slice along `axis`: (y, x) on z, (z, x) on y, (z, y) on x."""
    rows, columns = (extent for position, extent in enumerate(volume_shape) if position != AXES.index(axis))
    return rows, columns


def rasterise(strokes: list[Stroke], shape: tuple[int, int], class_index: dict[int, int]) -> NDArray[np.int8]:
    """The strokes of one slice as labels: -1 where nothing is painted."""
    touched = _touched(strokes, shape, class_index)
    return np.where(touched == UNTOUCHED, UNLABELLED, touched.astype(np.int16) - 1).astype(np.int8)


def _touched(strokes: list[Stroke], shape: tuple[int, int], class_index: dict[int, int]) -> NDArray[np.uint8]:
    """Class + 1 where a stroke paints, 0 where the eraser clears, UNTOUCHED elsewhere."""
    height, width = shape
    canvas = Image.new("L", (width, height), UNTOUCHED)
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
    return np.asarray(canvas, dtype=np.uint8)


def _draw_line(draw: ImageDraw.ImageDraw, points: list[Point], diameter: float, value: int) -> None:
    """A round-capped, round-jointed line, as a brush leaves it."""
    radius = diameter / 2
    if len(points) > 1:
        draw.line(points, fill=value, width=max(1, round(diameter)), joint="curve")
    for x, y in (points[0], points[-1]) if len(points) > 1 else points:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=value)


PaintedRun = tuple[Axis, int, NDArray[np.uint8]]  # consecutive strokes on one slice, rasterised as `_touched`


def painted_runs(annotations: Annotations) -> list[PaintedRun]:
    """The strokes in painting order, grouped into runs on one slice each and rasterised once."""
    index = annotations.class_index()
    return [
        (axis, position, _touched(list(strokes), plane_shape(annotations.volume_shape, axis), index))
        for (axis, position), strokes in groupby(annotations.strokes, key=lambda stroke: stroke.plane)
    ]


def label_plane(runs: list[PaintedRun], volume_shape: tuple[int, int, int], axis: Axis, index: int) -> NDArray[np.int8]:
    """The labels of slice `index` along `axis`, the runs applied in order.

    A run on the same slice paints where it touched; a run on a slice along another axis
    crosses this one on a line (a row or a column of each), and paints along it.
    """
    labels = np.full(plane_shape(volume_shape, axis), UNLABELLED, np.int8)
    for run_axis, run_index, touched in runs:
        if run_axis == axis:
            if run_index != index:
                continue
            target, painted = labels, touched
        else:
            target = _line(labels, axis, run_axis, run_index)
            painted = _line(touched, run_axis, axis, index)
        changed = painted != UNTOUCHED
        target[changed] = painted[changed].astype(np.int16) - 1
    return labels


def _line(plane: NDArray[Any], plane_axis: Axis, crossing_axis: Axis, crossing_index: int) -> NDArray[Any]:
    """The line of a slice along `plane_axis` where the slice `crossing_index` along `crossing_axis` crosses it (a view)."""
    position = [axis for axis in AXES if axis != plane_axis].index(crossing_axis)
    return plane[crossing_index] if position == 0 else plane[:, crossing_index]


def to_mask(annotations: Annotations) -> tuple[list[int], NDArray[np.int8], dict[str, dict[str, str]]]:
    """(mask_idx, labels (n, y, x), classes) as the Tiled contract stores a mask: every z slice with a label."""
    runs = painted_runs(annotations)
    candidates = {index for axis, index, _ in runs if axis == "z"}
    for axis, _, touched in runs:
        if axis != "z":
            candidates.update(np.flatnonzero((touched != UNTOUCHED).any(axis=1)).tolist())  # rows of a y or x slice are z
    rasters = {z: label_plane(runs, annotations.volume_shape, "z", z) for z in sorted(candidates)}
    indices = [z for z, raster in rasters.items() if (raster != UNLABELLED).any()]
    labels = np.stack([rasters[z] for z in indices]) if indices else np.empty((0, *annotations.volume_shape[1:]), np.int8)
    index = annotations.class_index()
    classes = {str(index[class_id]): info.model_dump() for class_id, info in annotations.classes.items()}
    return indices, labels, classes


def training_problems(annotations: Annotations, volume_shape: tuple[int, int, int]) -> list[str]:
    """Why these labels cannot train a model of the scan as it is now; the job checks the same."""
    if tuple(annotations.volume_shape) != tuple(volume_shape):
        return [
            f"the labels were painted on a volume of shape {tuple(annotations.volume_shape)}, the scan now holds "
            f"{tuple(volume_shape)}: reload the page to start afresh"
        ]
    _, labels, classes = to_mask(annotations)
    return label_problems(labels, {int(index): info["label"] for index, info in classes.items()})
