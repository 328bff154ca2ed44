"""Sparse labels as a person paints them: a few short strokes per class on a few slices."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from mlex_tomo.tiled_names import UNLABELLED


def paint_scribbles(
    truth: NDArray[np.uint8],
    rng: np.random.Generator,
    num_classes: int = 3,
    strokes_per_class: int = 5,
    stroke_half_length: int = 8,
) -> NDArray[np.int8]:
    """Short straight strokes, one pixel wide, inside each class's regions of one slice.

    Regions are eroded by a pixel first, as a person keeps clear of edges; strokes go to
    distinct regions (pores, inclusions) before a region gets a second one.
    """
    mask = np.full(truth.shape, UNLABELLED, np.int8)
    for label in range(num_classes):
        regions, region_count = ndimage.label(ndimage.binary_erosion(truth == label))
        for region in np.resize(rng.permutation(region_count) + 1, strokes_per_class):
            ys, xs = np.nonzero(regions == region)
            start = rng.integers(ys.size)
            angle = rng.uniform(0, np.pi)
            for step in range(-stroke_half_length, stroke_half_length + 1):
                y = round(ys[start] + step * np.sin(angle))
                x = round(xs[start] + step * np.cos(angle))
                if 0 <= y < truth.shape[0] and 0 <= x < truth.shape[1] and regions[y, x] == region:
                    mask[y, x] = label
    return mask
