"""Segmentation quality measures, accumulable over blocks so volumes can be scored in a stream."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def confusion_matrix(
    predicted: ArrayLike, truth: ArrayLike, num_classes: int, ignore: int | None = None
) -> NDArray[np.int64]:
    """Counts[t, p] of pixels with true class t predicted as p; sum the matrices of blocks to combine them.

    Pixels whose truth equals `ignore` (e.g. -1, unlabelled) are skipped. Other values
    outside 0..num_classes-1 are errors, not silently dropped.
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted and truth differ in shape: {predicted.shape} != {truth.shape}")
    predicted, truth = predicted.ravel(), truth.ravel()
    if ignore is not None:
        kept = truth != ignore
        predicted, truth = predicted[kept], truth[kept]
    for name, values in (("predicted", predicted), ("truth", truth)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds values outside 0..{num_classes - 1}")
    pairs = truth.astype(np.int64) * num_classes + predicted.astype(np.int64)
    return np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(confusion: NDArray[np.integer]) -> tuple[float, list[float]]:
    """(mean, per-class) intersection over union.

    A class absent from both truth and prediction has no defined IoU: NaN, left out of the mean.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(union > 0, intersection / union, np.nan)
    present = ~np.isnan(per_class)
    mean = float(per_class[present].mean()) if present.any() else float("nan")
    return mean, [float(value) for value in per_class]


def mean_iou(
    predicted: ArrayLike, truth: ArrayLike, num_classes: int, ignore: int | None = None
) -> tuple[float, list[float]]:
    """(mean, per-class) intersection over union of two label arrays of the same shape."""
    return iou_from_confusion(confusion_matrix(predicted, truth, num_classes, ignore))
