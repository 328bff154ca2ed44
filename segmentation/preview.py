"""The live preview's model: a small random forest on the painted slices, at a reduced resolution.

The preview answers a stroke within about a second, so it works in 2-D, one slice at a
time, at one working resolution per scan: the volume's longest side brought to at most
PREVIEW_SIZE pixels by averaging square blocks of voxels (a coarser scan of the same
sample, not every n-th pixel, which would alias). Features are the job's ilastik
features at every scale, so a slice's features are computed once and serve every later
fit. A painted slice contributes its labelled pixels (a block is labelled when any of its
pixels is); the forest, refitted on every stroke, is smaller than the job's and of
extremely randomised trees (`fit_trees`).

Its score comes from labelled pixels held out in whole tiles, as the job's does
(`segmentation.held_out`): a forest scored on pixels next to the ones it fitted would
report a perfect score whatever it does elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import ExtraTreesClassifier

from mlex_tomo.tiled_names import UNLABELLED
from segmentation.features import NUMPY_DEVICE, compute_features, feature_names, filter_reach, worker_count
from segmentation.held_out import HeldOutScore, hold_out_tiles
from segmentation.metrics import confusion_matrix
from segmentation.models import RandomForestParameters
from segmentation.random_forest import balanced_quotas, classify_pixels

PREVIEW_SIZE = 1024  # pixels along the longest side of a slice, about what a screen shows
HELD_OUT_FRACTION = 0.2
BAND_ROWS = 256  # rows of a slice computed together: 1024 x 256 x 4 bytes stays in cache, a whole 1024² slice ran ~1.6x slower
SURVEY_GRID = 6  # tiles along each side of a slice whose uncertainty the survey estimates
SURVEY_TILE = 24  # preview pixels along each side of a survey tile: 20,736 of a 1024² slice's pixels
PREVIEW_PARAMETERS = RandomForestParameters(n_estimators=16, max_depth=10, max_training_pixels=40_000, selected_features=None)


def preview_stride(volume_shape: tuple[int, ...], size: int = PREVIEW_SIZE) -> int:
    """Voxels per preview pixel along each side, the same for every axis of a scan, so features keep one scale."""
    return max(1, -(-max(volume_shape) // size))


def reduce_image(image: NDArray[np.generic], stride: int) -> NDArray[np.float32]:
    """The mean of each stride x stride block; a partial block at the edge is filled out with its edge pixels."""
    image = np.asarray(image, dtype=np.float32)
    if stride == 1:
        return image
    return _blocks(np.pad(image, _edge_padding(image.shape, stride), mode="edge"), stride).mean(axis=(1, 3), dtype=np.float32)


def reduce_labels(labels: NDArray[np.integer], stride: int) -> NDArray[np.int8]:
    """Each block's label: the highest class painted in it, so a thin stroke survives; unlabelled where none is."""
    labels = np.asarray(labels, dtype=np.int8)
    if stride == 1:
        return labels
    return _blocks(np.pad(labels, _edge_padding(labels.shape, stride), constant_values=UNLABELLED), stride).max(axis=(1, 3))


def _edge_padding(shape: tuple[int, ...], stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """What brings each side up to a whole number of blocks."""
    height, width = shape
    return (0, -height % stride), (0, -width % stride)


def _blocks(padded: NDArray[np.generic], stride: int) -> NDArray[np.generic]:
    """(rows, stride, columns, stride): each block's pixels along axes 1 and 3."""
    height, width = padded.shape
    return padded.reshape(height // stride, stride, width // stride, stride)


class Scratch:
    """Memory the windows' features are computed in, reused from one slice to the next, by one caller at a time.

    Fresh memory costs page faults: on a VM, a 1024² slice's features took a median
    0.42 s (up to 0.87) in fresh memory and 0.29 s (up to 0.31) in reused memory.
    """

    def __init__(self) -> None:
        self._memory = np.empty(0, np.float32)

    def array(self, shape: tuple[int, ...]) -> NDArray[np.float32]:
        size = int(np.prod(shape))
        if self._memory.size < size:
            self._memory = np.empty(size, np.float32)
        return self._memory[:size].reshape(shape)


def slice_features(
    image: NDArray[np.float32], parameters: RandomForestParameters = PREVIEW_PARAMETERS, scratch: Scratch | None = None
) -> NDArray[np.float32]:
    """(y, x, feature) of one reduced slice, on the CPU back end: the preview shares its node with the web app.

    The back end gives each slice of a stack one thread, so the slice is cut into bands
    of at most BAND_ROWS rows (at least one per core), computed side by side
    (`_pieces_features`): on 2 cores, 0.29 s at 1024² against 0.46 s in one piece.
    """
    height, width = image.shape
    bands = min(max(worker_count(), -(-height // BAND_ROWS)), height // (2 * filter_reach(parameters) + 1))
    if bands <= 1:
        return compute_features(image[np.newaxis], parameters, NUMPY_DEVICE)[0]
    band = -(-height // bands)
    rows = [min(number * band, height - band) for number in range(bands)]  # the last band overlaps the one before it
    features = np.empty((height, width, len(feature_names(parameters))), np.float32)
    for row, piece in zip(rows, _pieces_features(image, [(row, 0) for row in rows], (band, width), parameters, scratch)):
        features[row : row + band] = piece
    return features


def survey_features(
    image: NDArray[np.float32], parameters: RandomForestParameters = PREVIEW_PARAMETERS, scratch: Scratch | None = None
) -> NDArray[np.float32]:
    """Features of SURVEY_GRID x SURVEY_GRID small tiles spread evenly over a reduced slice, stacked along the first axis
    (of a slice no larger than the tiles, the whole slice's).

    About a sixth of the work of the whole slice at 1024², which is what lets the survey
    run between strokes.
    """
    height, width = image.shape
    if SURVEY_GRID**2 * SURVEY_TILE**2 >= height * width or SURVEY_TILE > min(height, width):
        return slice_features(image, parameters, scratch)  # no larger than the tiles: surveyed whole
    tile = SURVEY_TILE
    corners = [(row, column) for row in _tile_starts(height, tile) for column in _tile_starts(width, tile)]
    window = tile + 2 * filter_reach(parameters)
    if len(corners) * window**2 >= height * width:  # the tiles with their margins would cover the slice
        whole = slice_features(image, parameters, scratch)
        return np.concatenate([whole[row : row + tile, column : column + tile] for row, column in corners])
    return np.concatenate(_pieces_features(image, corners, (tile, tile), parameters, scratch))


def _tile_starts(extent: int, tile: int) -> list[int]:
    return np.unique(np.linspace(0, extent - tile, SURVEY_GRID).round().astype(int)).tolist()


def _pieces_features(
    image: NDArray[np.float32], corners: list[tuple[int, int]], size: tuple[int, int], parameters: RandomForestParameters,
    scratch: Scratch | None,
) -> list[NDArray[np.float32]]:
    """The features of pieces of one size of a slice (given by their top-left corners), equal to the whole slice's there.

    Each is computed in a window reaching `filter_reach` beyond it, or to the slice's
    edge, which the filters mirror as they do the whole slice's. The windows are one
    stack, computed on as many threads as the back end has.
    """
    height, width = image.shape
    reach = filter_reach(parameters)
    window = (min(size[0] + 2 * reach, height), min(size[1] + 2 * reach, width))
    origins = [
        (min(max(row - reach, 0), height - window[0]), min(max(column - reach, 0), width - window[1])) for row, column in corners
    ]
    stack = np.stack([image[top : top + window[0], left : left + window[1]] for top, left in origins])
    out = None if scratch is None else scratch.array((*stack.shape, len(feature_names(parameters))))
    features = compute_features(stack, parameters, NUMPY_DEVICE, out=out)
    return [
        features[position, row - top : row - top + size[0], column - left : column - left + size[1]]
        for position, ((top, left), (row, column)) in enumerate(zip(origins, corners))
    ]


@dataclass(frozen=True)
class PaintedSamples:
    """The labelled pixels of one painted slice: their features and classes, and which are held out for the score."""

    features: NDArray[np.float32]  # (pixels, feature)
    classes: NDArray[np.int8]
    held_out: NDArray[np.bool_]

    @property
    def pixels(self) -> int:
        return int(self.classes.size)


def painted_samples(features: NDArray[np.float32], labels: NDArray[np.int8], seed: int = 0) -> PaintedSamples:
    """The samples of a slice whose reduced `labels` match its `features`' first two axes."""
    if features.shape[:2] != labels.shape:
        raise ValueError(f"labels {labels.shape} do not match the slice's features {features.shape[:2]}")
    labelled = labels != UNLABELLED
    held_out = hold_out_tiles(labels[np.newaxis], HELD_OUT_FRACTION, seed)
    return PaintedSamples(
        features=features[labelled],
        classes=labels[labelled],
        held_out=np.zeros(int(labelled.sum()), bool) if held_out is None else held_out[0][labelled],
    )


@dataclass(frozen=True)
class PreviewModel:
    forest: ExtraTreesClassifier
    trained_pixels: int  # labelled preview pixels the forest was fitted on

    def predict(self, features: NDArray[np.float32]) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        """Class and uncertainty (1 - the largest class probability) of every pixel of a slice's features."""
        height, width, count = features.shape
        labels, uncertainty = classify_pixels(self.forest, features.reshape(-1, count))
        return labels.reshape(height, width), uncertainty.reshape(height, width)


def fit_preview(painted: list[PaintedSamples], parameters: RandomForestParameters = PREVIEW_PARAMETERS) -> PreviewModel:
    """A forest on a class-balanced draw of every painted pixel.

    Raises ValueError unless two classes are painted.
    """
    drawn = _drawn(painted, parameters)
    return PreviewModel(forest=fit_trees(drawn.features, drawn.classes, parameters), trained_pixels=drawn.pixels)


def held_out_score(painted: list[PaintedSamples], parameters: RandomForestParameters = PREVIEW_PARAMETERS) -> HeldOutScore | None:
    """How a forest fitted on `fit_preview`'s draw less its held-out tiles labels those tiles; None: too few labels to hold any out.

    A second fit, as long as the first: the preview shows its prediction first and scores it after.
    Raises ValueError unless two classes are painted.
    """
    drawn = _drawn(painted, parameters)
    kept = ~drawn.held_out
    if not drawn.held_out.any() or np.unique(drawn.classes[kept]).size < 2:
        return None
    forest = fit_trees(drawn.features[kept], drawn.classes[kept], parameters)
    predicted, _ = classify_pixels(forest, np.ascontiguousarray(drawn.features[drawn.held_out]))
    truth = drawn.classes[drawn.held_out].astype(np.int64)
    num_classes = int(max(truth.max(), predicted.max())) + 1
    return HeldOutScore.from_confusion(confusion_matrix(predicted, truth, num_classes))


def _drawn(painted: list[PaintedSamples], parameters: RandomForestParameters) -> PaintedSamples:
    """The painted slices' samples pooled, then drawn down to the budget as evenly by class as they allow (the same draw every time)."""
    classes = np.concatenate([samples.classes for samples in painted]) if painted else np.empty(0, np.int8)
    if np.unique(classes).size < 2:
        raise ValueError("paint at least two classes to see a preview")
    chosen = _balanced_draw(classes, parameters.max_training_pixels, parameters.seed)
    return PaintedSamples(
        features=np.concatenate([samples.features for samples in painted])[chosen],
        classes=classes[chosen],
        held_out=np.concatenate([samples.held_out for samples in painted])[chosen],
    )


def fit_trees(features: NDArray[np.float32], classes: NDArray[np.int8], parameters: RandomForestParameters) -> ExtraTreesClassifier:
    """Extremely randomised trees, which draw their split thresholds instead of searching them.

    They fit 40,000 pixels about ten times faster than the job's random forest, and on the
    benchmark volumes segment as well (docs/decisions.md, "Live preview"): the difference
    between a preview that follows a stroke within a second and one that lags behind it.
    """
    trees = ExtraTreesClassifier(
        n_estimators=parameters.n_estimators, max_depth=parameters.max_depth, n_jobs=-1, random_state=parameters.seed
    )
    return trees.fit(features, classes.astype(np.uint8))


def _balanced_draw(classes: NDArray[np.int8], budget: int, seed: int) -> NDArray[np.int64]:
    """Sorted indices of at most `budget` samples, shared as evenly as the classes allow."""
    members = [np.flatnonzero(classes == label) for label in np.unique(classes)]
    quotas = balanced_quotas([member.size for member in members], budget)
    rng = np.random.default_rng(seed)
    chosen = [member if quota == member.size else rng.choice(member, quota, replace=False) for member, quota in zip(members, quotas)]
    return np.sort(np.concatenate(chosen))


def mean_uncertainty(uncertainty: NDArray[np.floating]) -> float:
    """A slice's mean uncertainty: where it is high, labels there would help the model most."""
    return float(np.mean(uncertainty, dtype=np.float64))
