"""The live preview's model, as plain functions on arrays: no server, no browser."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mlex_tomo.tiled_names import UNLABELLED
from segmentation.features import NUMPY_DEVICE, compute_features
from segmentation.models import RandomForestParameters
from segmentation.preview import (
    PREVIEW_PARAMETERS,
    SURVEY_GRID,
    SURVEY_TILE,
    Scratch,
    fit_preview,
    held_out_score,
    mean_uncertainty,
    painted_samples,
    preview_stride,
    reduce_image,
    reduce_labels,
    slice_features,
    survey_features,
)


def two_phases(seed: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A noisy two-phase slice and its truth."""
    rng = np.random.default_rng(seed)
    truth = (ndimage.gaussian_filter(rng.standard_normal((size, size)), 6) > 0).astype(np.uint8)
    image = np.where(truth == 1, 0.7, 0.3).astype(np.float32) + rng.normal(0, 0.12, truth.shape).astype(np.float32)
    return image, truth


def scribbles(truth: np.ndarray, rows: range) -> np.ndarray:
    """Both classes painted on a band of rows, where each class lies well inside its region."""
    labels = np.full(truth.shape, UNLABELLED, np.int8)
    for label in (0, 1):
        core = ndimage.binary_erosion(truth == label, iterations=3)
        band = np.zeros_like(core)
        band[rows] = True
        labels[core & band] = label
    return labels


@pytest.mark.parametrize(
    ("shape", "stride"), [((64, 64, 64), 1), ((256, 2048, 2048), 2), ((100, 1025, 10), 2), ((4096, 512, 512), 4)]
)
def test_one_stride_per_scan_brings_its_longest_side_within_the_preview_size(shape, stride):
    assert preview_stride(shape) == stride


def test_reducing_averages_blocks_and_keeps_a_thin_stroke():
    image = np.arange(25, dtype=np.float32).reshape(5, 5)
    reduced = reduce_image(image, 2)
    assert reduced.shape == (3, 3)
    assert reduced[0, 0] == pytest.approx(np.mean([0, 1, 5, 6]))
    assert reduced[2, 2] == 24  # the corner block is filled out with its edge pixel

    labels = np.full((6, 6), UNLABELLED, np.int8)
    labels[3, :] = 1  # a one-pixel line, which every other row would miss
    labels[0, 0] = 0
    reduced_labels = reduce_labels(labels, 2)
    assert reduced_labels.tolist() == [[0, -1, -1], [1, 1, 1], [-1, -1, -1]]
    assert (reduce_labels(labels, 1) == labels).all()


def test_the_preview_forest_learns_from_strokes_and_scores_itself_on_held_out_tiles():
    image, truth = two_phases(seed=1)
    features = slice_features(image)
    painted = painted_samples(features, scribbles(truth, range(10, 120, 12)))
    model = fit_preview([painted])
    labels, uncertainty = model.predict(features)
    assert labels.shape == truth.shape and uncertainty.shape == truth.shape
    assert np.mean(labels == truth) > 0.9
    score = held_out_score([painted])
    assert score is not None and 0 < score.pixels < painted.pixels / 2
    assert score.mean_iou > 0.8
    assert 0 <= mean_uncertainty(uncertainty) < 0.5
    assert model.trained_pixels == min(painted.pixels, PREVIEW_PARAMETERS.max_training_pixels)

    # A forest that learned on a second slice too: the samples of each slice add up.
    other_image, other_truth = two_phases(seed=2)
    other_features = slice_features(other_image)
    both = fit_preview([painted, painted_samples(other_features, scribbles(other_truth, range(20, 100, 20)))])
    assert np.mean(both.predict(other_features)[0] == other_truth) > 0.9


def test_too_few_labels_to_hold_out_give_no_score_rather_than_a_flattering_one():
    image, truth = two_phases(seed=3)
    labels = np.full(truth.shape, UNLABELLED, np.int8)
    for label in (0, 1):
        row, column = np.argwhere(ndimage.binary_erosion(truth == label, iterations=3))[0]
        labels[row, column : column + 2] = label  # two pixels a class
    painted = [painted_samples(slice_features(image), labels)]
    assert held_out_score(painted) is None and fit_preview(painted).trained_pixels == 4


def test_one_class_painted_asks_for_another_and_mismatched_labels_are_refused():
    image, truth = two_phases(seed=4)
    features = slice_features(image)
    one_class = np.where(truth == 1, 1, UNLABELLED).astype(np.int8)
    with pytest.raises(ValueError, match="at least two classes"):
        fit_preview([painted_samples(features, one_class)])
    with pytest.raises(ValueError, match="at least two classes"):
        fit_preview([])
    with pytest.raises(ValueError, match="at least two classes"):
        held_out_score([painted_samples(features, one_class)])
    with pytest.raises(ValueError, match="do not match"):
        painted_samples(features, one_class[:-1])


def test_a_budget_of_training_pixels_is_shared_by_the_classes():
    image, truth = two_phases(seed=5)
    labels = np.where(truth == 1, 1, 0).astype(np.int8)  # every pixel painted
    parameters = RandomForestParameters(n_estimators=4, max_depth=4, max_training_pixels=200, selected_features=None)
    model = fit_preview([painted_samples(slice_features(image), labels)], parameters)
    assert model.trained_pixels == 200


def test_the_survey_s_tiles_have_the_whole_slice_s_features_for_a_fraction_of_the_work():
    image = ndimage.gaussian_filter(np.random.default_rng(6).normal(size=(640, 600)), 2).astype(np.float32)
    tiles = survey_features(image)  # 36 tiles, each computed with its margin
    assert tiles.shape == (SURVEY_GRID**2 * SURVEY_TILE, SURVEY_TILE, 32)
    np.testing.assert_allclose(tiles, tiles_of(slice_features(image)), rtol=0, atol=1e-6)
    middling = image[:160, :150]  # the tiles with their margins would cover it: cut from the whole slice's
    np.testing.assert_allclose(survey_features(middling), tiles_of(slice_features(middling)), rtol=0, atol=1e-6)
    small = image[:100, :90]  # no larger than the tiles: surveyed whole
    np.testing.assert_allclose(survey_features(small), slice_features(small), rtol=0, atol=1e-6)


def tiles_of(features: np.ndarray) -> np.ndarray:
    """The survey's tiles cut from a whole slice's features: SURVEY_GRID evenly spaced along each side."""
    rows, columns = (np.unique(np.linspace(0, extent - SURVEY_TILE, SURVEY_GRID).round().astype(int)) for extent in features.shape[:2])
    return np.concatenate([features[row : row + SURVEY_TILE, column : column + SURVEY_TILE] for row in rows for column in columns])


@pytest.mark.parametrize("shape", [(600, 90), (45, 300), (1000, 33)])
def test_a_slice_computed_in_bands_has_the_features_of_the_slice_computed_whole(shape):
    image = ndimage.gaussian_filter(np.random.default_rng(7).normal(size=shape), 2).astype(np.float32)
    whole = compute_features(image[np.newaxis], PREVIEW_PARAMETERS, NUMPY_DEVICE)[0]
    np.testing.assert_allclose(slice_features(image), whole, rtol=0, atol=1e-6)
    scratch = Scratch()  # memory reused from one slice to the next: what was returned is the caller's own
    first = slice_features(image, scratch=scratch)
    slice_features(image[::-1].copy(), scratch=scratch)
    np.testing.assert_allclose(first, whole, rtol=0, atol=1e-6)
