"""The live preview's model: a small random forest on the painted slices, at a reduced resolution.

The preview answers a stroke within about a second, so it works in 2-D, one slice at a
time, at one working resolution per scan: the volume's longest side brought to at most
PREVIEW_SIZE pixels by averaging square blocks of voxels (a coarser scan of the same
sample, not every n-th pixel, which would alias). Features are the job's ilastik
features at every scale, so a slice's features are computed once and serve every later
fit. A painted slice contributes its labelled pixels (a block is labelled when any of its
pixels is); the forest is smaller than the job's, since it is refitted on every stroke.

Its score comes from labelled pixels held out in whole tiles, as the job's does
(`segmentation.held_out`): a forest scored on pixels next to the ones it fitted would
report a perfect score whatever it does elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import RandomForestClassifier

from mlex_tomo.tiled_names import UNLABELLED
from segmentation.features import NUMPY_DEVICE, compute_features
from segmentation.held_out import HeldOutScore, hold_out_tiles
from segmentation.metrics import confusion_matrix
from segmentation.models import RandomForestParameters
from segmentation.random_forest import balanced_quotas, classify_pixels, fit_forest

PREVIEW_SIZE = 1024  # pixels along the longest side of a slice, about what a screen shows
HELD_OUT_FRACTION = 0.2
PREVIEW_PARAMETERS = RandomForestParameters(n_estimators=24, max_depth=10, max_training_pixels=40_000, selected_features=None)


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


def slice_features(image: NDArray[np.float32], parameters: RandomForestParameters = PREVIEW_PARAMETERS) -> NDArray[np.float32]:
    """(y, x, feature) of one reduced slice, on the CPU back end: the preview shares its node with the web app."""
    return compute_features(image[np.newaxis], parameters, NUMPY_DEVICE)[0]


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
    forest: RandomForestClassifier
    trained_pixels: int  # labelled preview pixels the forest was fitted on
    held_out: HeldOutScore | None  # None: too few labels to hold any out honestly

    def predict(self, features: NDArray[np.float32]) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        """Class and uncertainty (1 - the largest class probability) of every pixel of a slice's features."""
        height, width, count = features.shape
        labels, uncertainty = classify_pixels(self.forest, features.reshape(-1, count))
        return labels.reshape(height, width), uncertainty.reshape(height, width)


def fit_preview(
    painted: list[PaintedSamples], parameters: RandomForestParameters = PREVIEW_PARAMETERS, score: bool = True
) -> PreviewModel:
    """A forest on a class-balanced draw of every painted pixel; with `score`, first one without the held-out pixels, to score.

    Raises ValueError unless two classes are painted.
    """
    features = np.concatenate([samples.features for samples in painted]) if painted else np.empty((0, 0), np.float32)
    classes = np.concatenate([samples.classes for samples in painted]) if painted else np.empty(0, np.int8)
    held_out = np.concatenate([samples.held_out for samples in painted]) if painted else np.empty(0, bool)
    if np.unique(classes).size < 2:
        raise ValueError("paint at least two classes to see a preview")
    chosen = _balanced_draw(classes, parameters.max_training_pixels, parameters.seed)
    result = None
    if score and held_out[chosen].any() and np.unique(classes[chosen][~held_out[chosen]]).size >= 2:
        training, scored = chosen[~held_out[chosen]], chosen[held_out[chosen]]
        forest = fit_forest(features[training], classes[training].astype(np.uint8), parameters)
        predicted, _ = classify_pixels(forest, np.ascontiguousarray(features[scored]))
        truth = classes[scored].astype(np.int64)
        num_classes = int(max(truth.max(), predicted.max())) + 1
        result = HeldOutScore.from_confusion(confusion_matrix(predicted, truth, num_classes))
    forest = fit_forest(features[chosen], classes[chosen].astype(np.uint8), parameters)
    return PreviewModel(forest=forest, trained_pixels=int(chosen.size), held_out=result)


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
