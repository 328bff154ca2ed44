"""Turning slices of any dtype into the small 8-bit images a browser shows.

Plain functions on arrays: the web routes around them only read slices and send bytes.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

ImageFormat = Literal["png", "jpeg"]
DISPLAY_PERCENTILES = (1.0, 99.0)
HISTOGRAM_BINS = 128
JPEG_QUALITY = 90


def display_range(sample: NDArray[np.generic], percentiles: tuple[float, float] = DISPLAY_PERCENTILES) -> tuple[float, float]:
    """(low, high) at the percentiles of the finite values; high > low always."""
    values = np.asarray(sample, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(value) for value in np.percentile(values, percentiles))
    if high <= low:
        high = low + 1.0
    return low, high


def histogram(sample: NDArray[np.generic], bins: int = HISTOGRAM_BINS) -> tuple[list[float], list[int]]:
    """Bin centres and counts of the finite values, for the contrast panel."""
    values = np.asarray(sample, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [], []
    counts, edges = np.histogram(values, bins=bins)
    return ((edges[:-1] + edges[1:]) / 2).tolist(), counts.tolist()


def to_display(image: NDArray[np.generic], low: float, high: float) -> NDArray[np.uint8]:
    """Window [low, high] onto 0..255; values outside clip, non-finite values show black."""
    if high <= low:
        raise ValueError(f"the window's high ({high}) must exceed its low ({low})")
    scaled = (np.asarray(image, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    np.clip(scaled, 0, 255, out=scaled)
    return np.nan_to_num(scaled, nan=0.0).astype(np.uint8)


def stride_for(shape: tuple[int, ...], max_size: int) -> int:
    """Take every n-th pixel, n the smallest that brings the longer side to at most `max_size`."""
    return max(1, -(-max(shape) // max_size))


def downsample(image: NDArray[np.generic], max_size: int) -> NDArray[np.generic]:
    """Every n-th pixel so the longer side is at most `max_size`: fast, and exact at full size."""
    step = stride_for(image.shape, max_size)
    return image[::step, ::step] if step > 1 else image


def encode(image: NDArray[np.uint8], image_format: ImageFormat) -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(np.ascontiguousarray(image))
    if image_format == "jpeg":
        picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def colour_labels(labels: NDArray[np.integer], colours: dict[int, tuple[int, int, int]], hidden: set[int] = frozenset()) -> NDArray[np.uint8]:
    """RGBA overlay of a label slice: each shown class in its colour, the rest transparent."""
    overlay = np.zeros((*labels.shape, 4), np.uint8)
    for label, (red, green, blue) in colours.items():
        if label in hidden:
            continue
        overlay[labels == label] = (red, green, blue, 255)
    return overlay


def palette_png(labels: NDArray[np.integer], colours: dict[int, tuple[int, int, int]], hidden: set[int] = frozenset()) -> bytes:
    """The labels as a PNG of one byte a pixel: each shown class in its colour, the rest (and -1) transparent.

    What `colour_labels` shows, for a quarter of the bytes to compress: a 1024² slice
    encodes in about 6 ms rather than 75, which a preview after every stroke needs.
    """
    height, width = labels.shape
    palette = np.zeros((256, 3), np.uint8)
    opacity = np.zeros(256, np.uint8)
    for label, colour in colours.items():
        if label not in hidden:
            palette[label], opacity[label] = colour, 255
    picture = Image.frombytes("P", (width, height), np.ascontiguousarray(labels).astype(np.uint8).tobytes())
    picture.putpalette(palette.tobytes())
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1, transparency=opacity.tobytes())
    return buffer.getvalue()


def outline_labels(labels: NDArray[np.integer], overlay: NDArray[np.uint8], colour: tuple[int, int, int] = (255, 255, 255)) -> NDArray[np.uint8]:
    """The overlay with the rim of every shown labelled region drawn opaque in `colour`.

    Scribbles drawn over a prediction in the same class colour would vanish into it; a
    rim keeps them visible over any layer, as ilastik's outlined labels are. A region too
    thin to have an inside (a stroke painted on a crossing slice is a line one voxel wide
    here) keeps its colour: its rim would be all of it.
    """
    shown = overlay[..., 3] > 0
    rim = _differs_from_a_neighbour(labels)
    inside = shown & ~rim
    outlined = overlay.copy()
    outlined[shown & rim & _next_to(inside)] = (*colour, 255)
    return outlined


def _differs_from_a_neighbour(labels: NDArray[np.integer]) -> NDArray[np.bool_]:
    padded = np.pad(labels, 1, mode="edge")
    height, width = labels.shape
    differs = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy:dy + height, dx:dx + width] != labels
    return differs


def _next_to(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Pixels of `mask` and their eight neighbours."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    near = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            near |= padded[dy:dy + height, dx:dx + width]
    return near


def rgb(colour: str) -> tuple[int, int, int]:
    """`#rrggbb` as integers."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
