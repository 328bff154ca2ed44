"""The standard methods every model here must beat, measured in the same run on the same scribbles.

- scikit-image's interactive segmentation: `multiscale_basic_features` (its defaults)
  per slice, `fit_segmenter` with a random forest of 50 trees of depth 10 on the
  scribbled pixels, `predict_segmenter` slice by slice;
- a Gaussian smoothing and a multi-level Otsu threshold: the intensity bands are
  named after the class whose scribbles fall in them most, as a person would name
  them, so the scribbles are all the threshold knows of the classes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.feature import multiscale_basic_features
from skimage.filters import threshold_multiotsu
from skimage.future import fit_segmenter, predict_segmenter
from sklearn.ensemble import RandomForestClassifier

from mlex_tomo.tiled_names import UNLABELLED

SKIMAGE_TREES = 50
SKIMAGE_DEPTH = 10
OTSU_SMOOTHING = 1.0
OTSU_BINS = 256


def skimage_forest(image: NDArray[np.float32], slices: list[int], masks: NDArray[np.int8], seed: int = 0) -> RandomForestClassifier:
    features = np.stack([multiscale_basic_features(image[z]) for z in slices])
    classifier = RandomForestClassifier(n_estimators=SKIMAGE_TREES, max_depth=SKIMAGE_DEPTH, n_jobs=-1, random_state=seed)
    return fit_segmenter(masks.astype(np.int16) + 1, features, classifier)  # skimage: 0 is unlabelled


def skimage_segment(image: NDArray[np.float32], classifier: RandomForestClassifier) -> NDArray[np.uint8]:
    labels = np.empty(image.shape, np.uint8)
    for z in range(len(image)):
        labels[z] = predict_segmenter(multiscale_basic_features(image[z]), classifier) - 1
    return labels


def otsu_segment(image: NDArray[np.float32], slices: list[int], masks: NDArray[np.int8], num_classes: int) -> NDArray[np.uint8]:
    smoothed = ndimage.gaussian_filter(image, OTSU_SMOOTHING)
    thresholds = threshold_multiotsu(smoothed[:: max(1, len(image) // 32)], classes=num_classes, nbins=OTSU_BINS)
    bands = np.digitize(smoothed, thresholds).astype(np.uint8)
    return name_bands(bands, slices, masks, num_classes)[bands]


def name_bands(bands: NDArray[np.uint8], slices: list[int], masks: NDArray[np.int8], num_classes: int) -> NDArray[np.uint8]:
    """The class of each band: the most frequent among the scribbles in it; a band without any takes its neighbour's."""
    painted = masks != UNLABELLED
    votes = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(votes, (bands[slices][painted], masks[painted].astype(np.int64)), 1)
    names = np.full(num_classes, -1, np.int64)
    voted = votes.sum(axis=1) > 0
    names[voted] = votes[voted].argmax(axis=1)
    for band in np.flatnonzero(~voted):
        nearest = np.flatnonzero(voted)[np.argmin(np.abs(np.flatnonzero(voted) - band))]
        names[band] = names[nearest]
    return names.astype(np.uint8)
