"""The score of a model on labelled pixels it never trained on.

A pixel looks almost like its neighbours, so a score on the pixels a model fitted, or on
random pixels between them, measures memory: a forest scores a mean IoU of 1 there
whatever it will do on the rest of the volume. A class's labels are held out in whole
square tiles of the labelled slices instead, so most held-out pixels lie away from every
training pixel of their class and the score says how the model does on strokes it has
not seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlex_tomo.tiled_names import UNLABELLED
from segmentation.metrics import iou_from_confusion

TILES_PER_SIDE = 8  # tiles along a slice's shorter side, within the edge limits below
MIN_TILE_EDGE = 16
MAX_TILE_EDGE = 64  # about the reach of the forest's widest filter, yet fine enough to share out strokes
MIN_HELD_OUT_PIXELS = 10  # of each class: with fewer, one pixel moves its score by over 10 %


@dataclass(frozen=True)
class HeldOutScore:
    """Intersection over union on the held-out pixels; `iou_per_class` is None for a class seen nowhere there."""

    mean_iou: float
    iou_per_class: list[float | None]
    pixels: int

    @classmethod
    def from_confusion(cls, confusion: NDArray[np.integer]) -> HeldOutScore:
        mean, per_class = iou_from_confusion(confusion)
        return cls(mean, [None if math.isnan(value) else value for value in per_class], int(np.sum(confusion)))


def held_out_metrics(score: HeldOutScore | None) -> dict[str, Any]:
    """The job's metric names; with no score, only `held_out_pixels: 0`, so nothing claims a score it lacks."""
    if score is None:
        return {"held_out_pixels": 0}
    return {
        "held_out_mean_iou": score.mean_iou,
        "held_out_iou_per_class": score.iou_per_class,
        "held_out_pixels": score.pixels,
    }


def hold_out_tiles(masks: NDArray[np.integer], fraction: float, seed: int) -> NDArray[np.bool_] | None:
    """True at the labelled pixels to hold out: each class's pixels in some tiles, about `fraction` of them.

    Each class is shared out on its own, tile by tile, so one class's share never forces
    another's pixels out; at least MIN_HELD_OUT_PIXELS and at most half of a class are
    held out, so every class keeps most of its labels for training. None when some class
    cannot spare MIN_HELD_OUT_PIXELS (a single short stroke, say): then no score is
    honest, and the model should train on every label.
    """
    masks = np.asarray(masks)
    count, height, width = masks.shape
    labelled = np.nonzero(masks != UNLABELLED)
    if fraction <= 0 or labelled[0].size == 0:
        return None
    labels = masks[labelled].astype(np.int64)
    num_classes = int(labels.max()) + 1
    edge = tile_edge(height, width)
    rows, columns = -(-height // edge), -(-width // edge)
    z, y, x = labelled
    tile_of_pixel = (z * rows + y // edge) * columns + x // edge
    num_tiles = count * rows * columns
    counts = np.bincount(tile_of_pixel * num_classes + labels, minlength=num_tiles * num_classes)
    counts = counts.reshape(num_tiles, num_classes)
    order = np.random.default_rng(seed).permutation(num_tiles)
    chosen = np.zeros((num_tiles, num_classes), bool)
    for label in np.flatnonzero(counts.any(axis=0)):
        tiles = order[counts[order, label] > 0]
        chosen[tiles, label] = choose_tiles(counts[tiles, label], fraction)
        if counts[chosen[:, label], label].sum() < MIN_HELD_OUT_PIXELS:
            return None
    held_out = np.zeros(masks.shape, bool)
    held_out[labelled] = chosen[tile_of_pixel, labels]
    return held_out


def choose_tiles(pixels: NDArray[np.int64], fraction: float) -> NDArray[np.bool_]:
    """Tiles (given by their pixel counts, in random order) holding about `fraction` of the pixels.

    Tiles that fit in the share come first, in their order; then the smallest that
    complete it, so the share is passed by as little as the tiles allow.
    """
    total = int(pixels.sum())
    share = max(fraction * total, MIN_HELD_OUT_PIXELS)
    chosen = np.zeros(pixels.size, bool)
    held = 0
    passes = [(np.arange(pixels.size), share), (np.argsort(pixels, kind="stable"), total / 2)]
    for candidates, limit in passes:
        for tile in candidates:
            if held < share and not chosen[tile] and held + pixels[tile] <= limit:
                chosen[tile], held = True, held + pixels[tile]
    return chosen


def tile_edge(height: int, width: int) -> int:
    return int(np.clip(min(height, width) // TILES_PER_SIDE, MIN_TILE_EDGE, MAX_TILE_EDGE))
