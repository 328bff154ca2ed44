"""ilastik-style features and the random forest, trained from painted scribbles on a phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import ValidationError
from scipy import ndimage

from mlex_tomo.phantom import PhantomSpec, generate
from segmentation.features import compute_features, feature_names
from segmentation.metrics import mean_iou
from segmentation.models import ILASTIK_SCALES, RF_FEATURES, RandomForestParameters
from segmentation.random_forest import (
    TrainedForest,
    balanced_quotas,
    sample_training_pixels,
    select_channels,
    train_random_forest,
)

NUM_CLASSES = 3
PHANTOM_SHAPE = (96, 128, 128)
LABELLED_SLICES = (32, 64)  # 2 of 96 slices: about 2 %
DERIVATIVE_FEATURES = [feature for feature in RF_FEATURES if feature != "gaussian"]


def paint_scribbles(
    truth: NDArray[np.uint8], rng: np.random.Generator, strokes: int = 5, erosion: int = 2
) -> NDArray[np.int8]:
    """Brush strokes, 3 pixels wide, kept well inside each class as a person paints them."""
    mask = np.full(truth.shape, -1, np.int8)
    for label in range(NUM_CLASSES):
        inside = ndimage.binary_erosion(truth == label, iterations=erosion)
        candidates = np.argwhere(inside)
        assert len(candidates), f"class {label} has no room for a stroke in this slice"
        for _ in range(strokes):
            start_y, start_x = candidates[rng.integers(len(candidates))]
            angle = rng.uniform(0, 2 * np.pi)
            for step in range(rng.integers(8, 25)):
                y = round(start_y + step * np.sin(angle))
                x = round(start_x + step * np.cos(angle))
                if not (0 <= y < truth.shape[0] and 0 <= x < truth.shape[1] and inside[y, x]):
                    break
                mask[y - 1 : y + 2, x - 1 : x + 2] = label
    return mask


def scribbled_phantom(seed: int) -> tuple[NDArray[np.float32], NDArray[np.uint8], NDArray[np.int8]]:
    image, truth = generate(PhantomSpec(shape=PHANTOM_SHAPE, seed=seed))
    rng = np.random.default_rng(seed)
    masks = np.stack([paint_scribbles(truth[z], rng) for z in LABELLED_SLICES])
    return image, truth, masks


@pytest.fixture(scope="module")
def trained() -> tuple[NDArray[np.float32], TrainedForest]:
    image, _, masks = scribbled_phantom(seed=0)
    forest = train_random_forest(image[list(LABELLED_SLICES)], masks, RandomForestParameters(), "numpy")
    return image, forest


def test_torch_and_numpy_back_ends_agree() -> None:
    # Smaller than the sigma = 10 kernel's radius, so mirroring wraps more than once.
    image = np.random.default_rng(0).random((2, 24, 30), dtype=np.float32)
    parameters = RandomForestParameters(scales=list(ILASTIK_SCALES))
    from_numpy = compute_features(image, parameters, "numpy")
    from_torch = compute_features(image, parameters, "cpu")
    assert from_numpy.shape == from_torch.shape == (2, 24, 30, 56)
    np.testing.assert_allclose(from_torch, from_numpy, rtol=1e-3, atol=1e-5)
    reused = np.full_like(from_numpy, np.nan)
    assert compute_features(image, parameters, "numpy", out=reused) is reused
    np.testing.assert_array_equal(reused, from_numpy)
    with pytest.raises(ValueError, match="out must be"):
        compute_features(image, parameters, "numpy", out=reused[:, :, :10])


@pytest.mark.parametrize(
    ("features", "scales", "expected"),
    [
        (list(RF_FEATURES), [0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0], 56),
        (["gaussian", "hessian_eigenvalues"], [1.0, 3.5], 6),
        (["structure_tensor_eigenvalues"], [2.0], 2),
    ],
)
def test_feature_count_and_names_follow_parameters(
    features: list[str], scales: list[float], expected: int
) -> None:
    parameters = RandomForestParameters(features=features, scales=scales)
    names = feature_names(parameters)
    assert len(names) == len(set(names)) == expected
    image = np.random.default_rng(1).random((1, 40, 40), dtype=np.float32)
    assert compute_features(image, parameters, "numpy").shape == (1, 40, 40, expected)


@pytest.mark.parametrize(("sigma", "tolerance"), [(1.0, 1e-6), (3.5, 2e-4)])  # presmoothed above 1
def test_gaussian_channel_is_scipys_gaussian_at_its_named_scale(sigma: float, tolerance: float) -> None:
    parameters = RandomForestParameters(features=["hessian_eigenvalues", "gaussian"], scales=[1.0, 3.5])
    image = np.random.default_rng(2).random((1, 64, 64), dtype=np.float32)
    channel = feature_names(parameters).index(f"gaussian sigma={sigma:g}")
    expected = ndimage.gaussian_filter(image[0], sigma, mode="mirror", truncate=3.5)
    for device in ("numpy", "cpu"):
        features = compute_features(image, parameters, device)
        np.testing.assert_allclose(features[0, ..., channel], expected, atol=tolerance)


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_constant_image_has_no_structure(device: str) -> None:
    parameters = RandomForestParameters()
    features = compute_features(np.full((1, 32, 32), 0.4, np.float32), parameters, device)
    for index, name in enumerate(feature_names(parameters)):
        expected = 0.4 if name.startswith("gaussian ") else 0.0
        np.testing.assert_allclose(features[..., index], expected, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_derivatives_of_a_ramp_are_exact_away_from_the_border(device: str) -> None:
    """Vigra's kernel normalisation: gradients of a linear image are its slope, second derivatives zero."""
    parameters = RandomForestParameters(features=DERIVATIVE_FEATURES, scales=[0.3, 1.0, 1.6])
    y, x = np.mgrid[:48, :48].astype(np.float32)
    features = compute_features((0.03 * y - 0.04 * x)[None], parameters, device)[0, 12:-12, 12:-12]
    for index, name in enumerate(feature_names(parameters)):
        if name.startswith("gradient_magnitude"):
            expected = 0.05
        elif name.startswith("structure_tensor_eigenvalues") and name.endswith("largest"):
            expected = 0.05**2
        else:
            expected = 0.0
        np.testing.assert_allclose(features[..., index], expected, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forest_segments_the_volume_from_sparse_scribbles(seed: int) -> None:
    image, truth, masks = scribbled_phantom(seed)
    assert len(LABELLED_SLICES) / PHANTOM_SHAPE[0] <= 0.03
    assert 0 < np.mean(masks >= 0) < 0.05  # strokes, not painted slices
    labelled = masks >= 0
    assert np.array_equal(masks[labelled], truth[list(LABELLED_SLICES)][labelled])

    events: list[dict] = []
    forest = train_random_forest(
        image[list(LABELLED_SLICES)], masks, RandomForestParameters(seed=seed), "numpy", events.append
    )
    labels, uncertainty = forest.predict_slices(image, "numpy", batch=16, progress=events.append)

    mean, per_class = mean_iou(labels, truth, NUM_CLASSES)
    assert mean >= 0.85, per_class
    assert labels.dtype == np.uint8 and uncertainty.dtype == np.float32
    assert 0.0 <= uncertainty.min() and uncertainty.max() <= 1 - 1 / NUM_CLASSES + 1e-6
    stages = [event["stage"] for event in events if event["event"] == "stage"]
    assert stages[0] == "features" and stages[-1] == "fitting"
    assert events[-1] == {"event": "inference", "stage": "segmenting", "done": PHANTOM_SHAPE[0], "of": PHANTOM_SHAPE[0]}
    assert forest.held_out is not None and forest.held_out.pixels > 0


def test_chunked_prediction_matches_sklearn(trained: tuple[NDArray[np.float32], TrainedForest]) -> None:
    image, forest = trained
    block = image[40:42]
    labels, uncertainty = forest.predict_slices(block, "numpy")
    assert forest.channels is not None and len(forest.channels) == forest.parameters.selected_features
    features = compute_features(block, forest.parameters, "numpy", channels=forest.channels).reshape(-1, forest.feature_count)
    probabilities = forest.model.predict_proba(features)
    np.testing.assert_array_equal(labels.ravel(), forest.classes[probabilities.argmax(axis=1)])
    np.testing.assert_allclose(uncertainty.ravel(), 1 - probabilities.max(axis=1), atol=1e-6)


def test_saved_forest_predicts_identically(
    trained: tuple[NDArray[np.float32], TrainedForest], tmp_path: Path
) -> None:
    image, forest = trained
    forest = TrainedForest(forest.model, forest.parameters, normalisation=(120.0, 3400.0), channels=forest.channels)
    path = tmp_path / "forest.joblib"
    forest.save(path)
    loaded = TrainedForest.load(path)
    assert loaded.parameters == forest.parameters and loaded.normalisation == (120.0, 3400.0)
    assert loaded.channels == forest.channels
    block = image[10:14]
    for expected, actual in zip(forest.predict_slices(block, "numpy"), loaded.predict_slices(block, "numpy")):
        np.testing.assert_array_equal(actual, expected)


def test_training_draw_is_class_balanced_and_seeded() -> None:
    masks = np.full((2, 40, 40), -1, np.int8)
    masks.reshape(-1)[:1000] = 0
    masks.reshape(-1)[1000:1050] = 1
    masks.reshape(-1)[1050:1450] = 2
    chosen = sample_training_pixels(masks, 300, seed=4)
    assert np.bincount(masks.reshape(-1)[chosen], minlength=3).tolist() == [125, 50, 125]
    assert np.array_equal(chosen, sample_training_pixels(masks, 300, seed=4))
    assert not np.array_equal(chosen, sample_training_pixels(masks, 300, seed=5))
    assert balanced_quotas([10, 20], 100) == [10, 20]


def test_training_needs_two_labelled_classes() -> None:
    image = np.zeros((1, 32, 32), np.float32)
    masks = np.full((1, 32, 32), -1, np.int8)
    masks[0, :4] = 1
    with pytest.raises(ValueError, match="two classes"):
        train_random_forest(image, masks, RandomForestParameters(), "numpy")
    with pytest.raises(ValueError, match="shape"):
        train_random_forest(image[:, :16], masks, RandomForestParameters(), "numpy")


@pytest.mark.parametrize(
    "invalid",
    [
        {"scales": []},
        {"scales": [1.0, -0.5]},
        {"features": ["sobel"]},
        {"n_estimators": 0},
        {"max_depth": 0},
        {"max_training_pixels": 10},
        {"learning_rate": 0.1},
    ],
)
def test_invalid_parameters_are_rejected(invalid: dict) -> None:
    with pytest.raises(ValidationError):
        RandomForestParameters(**invalid)


def striped_noise() -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    """Noise, with class 0 painted in rows on the left and class 1 on the right: nothing to learn but where."""
    image = np.random.default_rng(0).random((2, 96, 96), dtype=np.float32)
    masks = np.full(image.shape, -1, np.int8)
    masks[:, 8:88:8, 8:40] = 0
    masks[:, 8:88:8, 56:88] = 1
    return image, masks


def test_the_forest_is_scored_on_held_out_tiles_not_on_the_pixels_it_fitted() -> None:
    image, masks = striped_noise()
    parameters = RandomForestParameters(max_depth=None, n_estimators=20)
    forest = train_random_forest(image, masks, parameters, "numpy")
    labels, _ = forest.predict_slices(image, "numpy")
    labelled = masks >= 0
    assert np.array_equal(labels[labelled], masks[labelled])  # it fits every painted pixel...
    assert forest.held_out is not None
    assert forest.held_out.mean_iou < 0.7, forest.held_out  # ...and guesses on those held out
    assert 0.1 * labelled.sum() < forest.held_out.pixels < 0.5 * labelled.sum()
    assert len(forest.held_out.iou_per_class) == 2


def test_random_forest_reports_stage_progress_while_training() -> None:
    image, masks = striped_noise()
    parameters = RandomForestParameters(n_estimators=5, max_training_pixels=2_000)
    events: list[dict] = []
    train_random_forest(image, masks, parameters, "numpy", events.append)
    assert all(event["event"] == "stage" for event in events)
    for stage in ("features", "fitting"):
        done = [event["done"] for event in events if event["stage"] == stage]
        assert len(done) > 1 and done[0] == 0
        assert all(earlier < later for earlier, later in zip(done, done[1:]))
        assert done[-1] == next(event["of"] for event in events if event["stage"] == stage)
    assert [event["stage"] for event in events].index("fitting") > 0


def test_a_single_short_stroke_per_class_claims_no_held_out_score() -> None:
    image, _ = striped_noise()
    masks = np.full(image.shape, -1, np.int8)
    masks[0, 20, 18:24] = 0
    masks[0, 60, 66:72] = 1
    events: list[dict] = []
    forest = train_random_forest(image, masks, RandomForestParameters(n_estimators=5), "numpy", events.append)
    assert forest.held_out is None
    fits = [event for event in events if event["stage"] == "fitting"]
    assert [(event["done"], event["of"]) for event in fits] == [(0, 1), (1, 1)]
    assert forest.model.n_features_in_ == 16 and sorted(forest.model.classes_) == [0, 1]


def test_held_out_score_is_saved_with_the_forest(tmp_path: Path) -> None:
    image, masks = striped_noise()
    forest = train_random_forest(image, masks, RandomForestParameters(n_estimators=5), "numpy")
    forest.save(tmp_path / "forest.joblib")
    assert forest.held_out is not None
    assert TrainedForest.load(tmp_path / "forest.joblib").held_out == forest.held_out


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_chosen_channels_are_the_same_as_in_the_whole_set_and_skip_unneeded_filters(device: str) -> None:
    image = np.random.default_rng(2).random((2, 40, 48), dtype=np.float32)
    parameters = RandomForestParameters(scales=list(ILASTIK_SCALES))
    every = compute_features(image, parameters, device)
    channels = [0, 9, 30, 55]
    chosen = compute_features(image, parameters, device, channels=channels)
    np.testing.assert_allclose(chosen, every[..., channels], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="increasing indices"):
        compute_features(image, parameters, device, channels=[9, 0])
    with pytest.raises(ValueError, match="increasing indices"):
        compute_features(image, parameters, device, channels=[56])


def test_selection_keeps_the_most_important_features_and_none_keeps_all() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 2000).astype(np.uint8)
    samples = rng.random((2000, 6), dtype=np.float32)
    samples[:, 4] += targets  # only features 1 and 4 tell the classes apart
    samples[:, 1] -= 2 * targets
    assert select_channels(samples, targets, RandomForestParameters(selected_features=2)) == (1, 4)
    assert select_channels(samples, targets, RandomForestParameters(selected_features=None)) is None
    assert select_channels(samples, targets, RandomForestParameters(selected_features=6)) is None
