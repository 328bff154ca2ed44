"""Scribbles as a scientist paints them in the web app, simulated from ground truth.

A person picks a few slices spread through the volume (at most about 1 % of them),
and on each draws a few wobbly brush strokes (the web app's default brush is 5 pixels
wide) well inside regions of each class, the larger regions first, keeping clear of
edges. In the "partial" style a class is painted on only some of the labelled slices
although it is present on all of them, as happens when a person labels one class per
slice or forgets one: unlabelled is not absent, and a model must not read it so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from mlex_tomo.tiled_names import UNLABELLED

Style = Literal["full", "partial"]
STROKES_PER_CLASS = 3
SLICE_FRACTION = 0.01
TURN_PER_PIXEL = 0.12  # radians: how much a hand-drawn stroke wanders


@dataclass(frozen=True)
class Scribbles:
    slices: list[int]
    masks: NDArray[np.int8]  # (len(slices), y, x): -1 unlabelled, else the class

    @property
    def labelled_pixels(self) -> int:
        return int(np.sum(self.masks != UNLABELLED))

    def pixels_per_class(self, num_classes: int) -> list[int]:
        return np.bincount(self.masks[self.masks != UNLABELLED].astype(np.int64), minlength=num_classes).tolist()


def brush_radius(shape: tuple[int, int]) -> int:
    """The web app's default brush, 5 slice pixels wide (3 on tiny slices)."""
    return 2 if min(shape) >= 64 else 1


def choose_slices(truth: NDArray[np.uint8], num_classes: int, count: int, rng: np.random.Generator) -> list[int]:
    """`count` slices spread through the middle 80 % of the volume, where every class shows if possible."""
    depth = truth.shape[0]
    inner = np.arange(int(0.1 * depth), max(int(0.9 * depth), int(0.1 * depth) + 1))
    present = np.array([np.unique(truth[z]).size for z in inner])
    candidates = inner[present == present.max()]
    if count >= candidates.size:
        return sorted(candidates.tolist())
    bins = np.array_split(candidates, count)
    return sorted(int(rng.choice(group)) for group in bins)


def paint_slice(truth: NDArray[np.uint8], classes: list[int], rng: np.random.Generator, strokes_per_class: int = STROKES_PER_CLASS) -> NDArray[np.int8]:
    """Wobbly brush strokes inside each class's regions of one slice; larger regions are painted first."""
    height, width = truth.shape
    radius = brush_radius((height, width))
    brush = _disk(radius)
    mask = np.full(truth.shape, UNLABELLED, np.int8)
    for label in classes:
        inside = ndimage.binary_erosion(truth == label, iterations=radius + 1)
        regions, count = ndimage.label(inside)
        if count == 0:
            continue
        sizes = np.bincount(regions.ravel())[1:]
        order = np.argsort(-sizes, kind="stable")[:strokes_per_class]
        chosen = np.resize(order, strokes_per_class) + 1
        for region in chosen:
            centre_line = _stroke(regions == region, rng, length=rng.uniform(0.1, 0.25) * min(height, width))
            mask[ndimage.binary_dilation(centre_line, brush) & (truth == label)] = label
    return mask


def scribble(
    truth: NDArray[np.uint8], num_classes: int, seed: int, style: Style = "full", fraction: float = SLICE_FRACTION
) -> Scribbles:
    """Scribbles on about `fraction` of the slices (at least one; two for the partial style)."""
    rng = np.random.default_rng(seed)
    count = max(2 if style == "partial" else 1, round(fraction * truth.shape[0]))
    slices = choose_slices(truth, num_classes, count, rng)
    masks = np.stack([paint_slice(truth[z], list(range(num_classes)), rng) for z in slices])
    missing = [label for label in range(num_classes) if not np.any(masks == label)]
    for label in missing:  # a person scrolls on until the class shows, and paints it there
        where = [z for z in range(truth.shape[0]) if np.any(ndimage.binary_erosion(truth[z] == label, iterations=2))]
        if where:
            z = int(rng.choice(where))
            slices.append(z)
            masks = np.concatenate([masks, paint_slice(truth[z], [label], rng)[None]])
    order = np.argsort(slices)
    slices, masks = [slices[index] for index in order], masks[order]
    if style == "partial":
        masks = _paint_each_class_on_some_slices(masks, num_classes, rng)
    return Scribbles(slices, masks)


def _paint_each_class_on_some_slices(masks: NDArray[np.int8], num_classes: int, rng: np.random.Generator) -> NDArray[np.int8]:
    """Keep each class's strokes on about half of the slices that have them (at least one)."""
    masks = masks.copy()
    for label in range(num_classes):
        holding = [index for index in range(len(masks)) if np.any(masks[index] == label)]
        keep = set(rng.choice(holding, max(1, math.ceil(len(holding) / 2)), replace=False).tolist()) if holding else set()
        for index in set(holding) - keep:
            masks[index][masks[index] == label] = UNLABELLED
    return masks


def _stroke(region: NDArray[np.bool_], rng: np.random.Generator, length: float) -> NDArray[np.bool_]:
    """A hand-drawn line from a random point of the region, wandering, ending where it would leave the region."""
    points = np.argwhere(region)
    y, x = points[rng.integers(len(points))].astype(float)
    heading = rng.uniform(0, 2 * np.pi)
    line = np.zeros(region.shape, bool)
    line[int(y), int(x)] = True
    for _ in range(int(length)):
        heading += rng.normal(0, TURN_PER_PIXEL)
        next_y, next_x = y + math.sin(heading), x + math.cos(heading)
        row, column = round(next_y), round(next_x)
        if not (0 <= row < region.shape[0] and 0 <= column < region.shape[1] and region[row, column]):
            break
        y, x = next_y, next_x
        line[row, column] = True
    return line


def _disk(radius: int) -> NDArray[np.bool_]:
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2
