"""Training on sparse scribbles, then streaming inference, scored on a phantom's ground truth.

The scribbles imitate a person painting a few short strokes per class inside regions
(never on their edges) on 2 of 128 slices; the networks must then segment every slice.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from scipy import ndimage

from mlex_tomo.phantom import PhantomSpec, generate
from segmentation.inference import (
    contiguous_blocks,
    segment_slices,
    segment_with_tiles,
    tile_origins,
)
from segmentation.metrics import confusion_matrix, iou_from_confusion, mean_iou
from segmentation.models import MSDNetParameters, NetworkParameters, TUNetParameters
from segmentation.normalization import normalize, robust_range
from segmentation.training import (
    PatchSampler,
    TrainedNetwork,
    class_weights,
    split_labelled_pixels,
    train_network,
)
from mlex_tomo.scribbles import paint_scribbles

PHANTOM = PhantomSpec(shape=(128, 128, 128), seed=11)
LABELLED_SLICES = [40, 88]  # 1.6 % of the slices
NUM_CLASSES = 3
CPU = torch.device("cpu")

# GroupNorm, not DLSIA's default BatchNorm2d: trained on a few hundred scribbled pixels, a
# BatchNorm TUNet learns batch-statistics shortcuts and reaches only about 0.75 mean IoU here.
TUNET = TUNetParameters(
    depth=3,
    base_channels=8,
    normalization="GroupNorm",
    learning_rate=0.01,
    num_epochs=30,
    patch_size=64,
    batch_size_train=8,
    patches_per_epoch=64,
    early_stopping_patience=30,
    pseudo_labels=False,  # the scribbles alone: pseudo-labels are tested below
    seed=0,
)
# Trained on every label (val_pct 0): this small network needs all ~165 scribbled pixels.
# With a quarter of each class's strokes held out it reached 0.71-0.79 here (seeds 0-2),
# against 0.86-0.88 on every label; the held-out split is tested with the TUNet.
MSDNET = MSDNetParameters(
    num_layers=20,
    layer_width=1,
    max_dilation=8,
    learning_rate=0.01,
    num_epochs=30,
    patch_size=64,
    batch_size_train=8,
    patches_per_epoch=64,
    early_stopping_patience=30,
    val_pct=0.0,
    pseudo_labels=False,
    seed=0,
)
TUNET_FLOOR = 0.85
# A 20-layer, one-map-per-layer MSDNet has about 2,000 weights against the U-Net's 30,000
# and places the small inclusions' edges less exactly: it reached 0.86-0.90 on phantoms
# like this one where the U-Net reached 0.91-0.94, hence a lower floor.
MSDNET_FLOOR = 0.80

Phantom = tuple[NDArray[np.float32], NDArray[np.uint8]]
Scribbles = tuple[NDArray[np.float32], NDArray[np.int8], tuple[float, float]]  # slices, masks, range
Trained = tuple[TrainedNetwork, list[dict], float]  # network, progress events, seconds


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return generate(PHANTOM)


@pytest.fixture(scope="module")
def scribbles(phantom: Phantom) -> Scribbles:
    """(normalised labelled slices, their masks, the volume's normalisation range)."""
    image, truth = phantom
    rng = np.random.default_rng(1)
    masks = np.stack([paint_scribbles(truth[z], rng) for z in LABELLED_SLICES])
    low, high = robust_range(image)
    return normalize(image[LABELLED_SLICES], low, high), masks, (low, high)


def train(parameters: NetworkParameters, scribbles: Scribbles) -> Trained:
    slices, masks, normalization = scribbles
    events: list[dict] = []
    started = time.perf_counter()
    network = train_network(
        slices, masks, parameters, NUM_CLASSES, CPU, progress=events.append, normalization=normalization
    )
    return network, events, time.perf_counter() - started


@pytest.fixture(scope="module")
def trained_tunet(scribbles: Scribbles) -> Trained:
    return train(TUNET, scribbles)


def segment_volume(network: TrainedNetwork, image: NDArray, batch_size: int = 16) -> NDArray[np.uint8]:
    labels = np.full(image.shape, 255, np.uint8)

    def write(start: int, block: NDArray[np.uint8]) -> None:
        labels[start : start + len(block)] = block

    segment_slices(
        network, lambda start, stop: image[start:stop], range(len(image)), write, batch_size=batch_size
    )
    return labels


def test_scribbles_are_sparse_correct_and_cover_every_class(scribbles: Scribbles, phantom: Phantom) -> None:
    _, masks, _ = scribbles
    _, truth = phantom
    labelled = masks >= 0
    assert labelled.mean() < 0.02  # of the labelled slices' pixels
    assert len(LABELLED_SLICES) / PHANTOM.shape[0] < 0.03
    assert np.array_equal(masks[labelled], truth[LABELLED_SLICES][labelled])
    assert set(np.unique(masks[labelled])) == {0, 1, 2}


def test_tunet_trained_on_scribbles_segments_the_whole_volume(trained_tunet: Trained, phantom: Phantom) -> None:
    network, events, seconds = trained_tunet
    image, truth = phantom
    miou, per_class = mean_iou(segment_volume(network, image), truth, NUM_CLASSES)
    print(f"TUNet: mean IoU {miou:.3f}, per class {np.round(per_class, 3)}, trained in {seconds:.1f} s")
    assert miou >= TUNET_FLOOR, per_class

    assert events[0] == {"event": "stage", "stage": "training", "done": 0, "of": TUNET.num_epochs}
    epochs = events[1:]
    assert [event["epoch"] for event in epochs] == list(range(1, len(epochs) + 1))
    for event in epochs:
        assert event["event"] == "epoch" and event["stage"] == "training" and event["of"] == TUNET.num_epochs
        assert np.isfinite(event["loss"]) and 0 <= event["val_score"] <= 1 and event["seconds"] > 0
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert network.held_out is not None and network.held_out.pixels > 0
    assert network.held_out.mean_iou == max(event["val_score"] for event in epochs)


def test_msdnet_trained_on_scribbles_segments_the_whole_volume(scribbles: Scribbles, phantom: Phantom) -> None:
    network, _, seconds = train(MSDNET, scribbles)
    image, truth = phantom
    miou, per_class = mean_iou(segment_volume(network, image), truth, NUM_CLASSES)
    print(f"MSDNet: mean IoU {miou:.3f}, per class {np.round(per_class, 3)}, trained in {seconds:.1f} s")
    assert miou >= MSDNET_FLOOR, per_class


def test_early_stopping_returns_the_weights_of_the_best_epoch(scribbles: Scribbles) -> None:
    slices, masks, _ = scribbles
    parameters = TUNET.model_copy(
        update={"num_epochs": 20, "early_stopping_patience": 2, "patches_per_epoch": 16, "base_channels": 4}
    )
    network = train_network(slices, masks, parameters, NUM_CLASSES, CPU)
    history = network.history
    ranks = [(record["val_score"], -record["val_loss"]) for record in history]
    best_epoch = ranks.index(max(ranks)) + 1
    # Training stops exactly `patience` epochs after the best one, here before epochs run out.
    assert len(history) == best_epoch + parameters.early_stopping_patience < parameters.num_epochs

    # Re-scoring the returned module on the held-out pixels gives the best epoch's loss.
    _, validation = split_labelled_pixels(masks, parameters.val_pct, parameters.seed)
    with torch.inference_mode():
        logits = network.module(torch.from_numpy(slices[:, None]))
    held_out = torch.from_numpy(validation.astype(np.int64))
    loss = torch.nn.functional.cross_entropy(logits, held_out, ignore_index=-1).item()
    assert loss == pytest.approx(history[best_epoch - 1]["val_loss"], rel=1e-4)


def test_training_is_deterministic_on_cpu_and_leaves_the_global_seed_alone(scribbles: Scribbles) -> None:
    slices, masks, _ = scribbles
    parameters = TUNET.model_copy(
        update={"num_epochs": 2, "patches_per_epoch": 8, "base_channels": 4, "dropout": 0.2}
    )
    torch.manual_seed(123)
    expected_next_random = torch.rand(1)
    torch.manual_seed(123)
    first = train_network(slices, masks, parameters, NUM_CLASSES, CPU)
    assert torch.equal(torch.rand(1), expected_next_random)
    second = train_network(slices, masks, parameters, NUM_CLASSES, CPU)
    other_seed = train_network(slices, masks, parameters.model_copy(update={"seed": 1}), NUM_CLASSES, CPU)

    def weights(network: TrainedNetwork) -> list[torch.Tensor]:
        return list(network.module.state_dict().values())

    assert all(torch.equal(a, b) for a, b in zip(weights(first), weights(second)))
    assert [record["loss"] for record in first.history] == [record["loss"] for record in second.history]
    assert not all(torch.equal(a, b) for a, b in zip(weights(first), weights(other_seed)))


def test_without_validation_pixels_training_runs_every_epoch_and_keeps_the_last_weights(scribbles: Scribbles) -> None:
    slices, masks, _ = scribbles
    parameters = TUNET.model_copy(
        update={
            "num_epochs": 3,
            "patches_per_epoch": 8,
            "base_channels": 4,
            "val_pct": 0.0,
            "early_stopping_patience": 1,
        }
    )
    events: list[dict] = []
    network = train_network(slices, masks, parameters, NUM_CLASSES, CPU, progress=events.append)
    assert [event["val_score"] for event in events if event["event"] == "epoch"] == [None, None, None]
    assert network.held_out is None and len(network.history) == 3


def test_validation_split_holds_out_whole_tiles_of_every_class(scribbles: Scribbles) -> None:
    _, masks, _ = scribbles
    training, validation = split_labelled_pixels(masks, 0.2, seed=0)
    assert not ((training >= 0) & (validation >= 0)).any()
    assert np.array_equal(np.where(training >= 0, training, validation), masks)
    for label in range(NUM_CLASSES):
        assert 0.1 <= (validation == label).sum() / (masks == label).sum() <= 0.4


def test_labels_too_few_to_hold_out_all_go_to_training() -> None:
    masks = np.full((2, 50, 60), -1, np.int8)
    masks[0, 10:20, 10:20] = 0
    masks[1, 5:7, 5:30] = 1
    masks[1, 40, 40] = 2  # a single pixel: no honest score for class 2
    training, validation = split_labelled_pixels(masks, 0.2, seed=0)
    assert np.array_equal(training, masks) and (validation == -1).all()


def test_balanced_class_weights_give_every_class_the_same_total_weight() -> None:
    targets = np.array([0] * 60 + [1] * 30 + [2] * 10 + [-1] * 50, np.int8)
    weights = class_weights(targets, 4)
    counts = np.array([60, 30, 10, 0])
    totals = weights * counts
    assert np.allclose(totals[:3], totals[0]) and weights[3] == 0
    assert np.array_equal(class_weights(targets, 3, [1.0, 2.0, 3.0]), [1, 2, 3])
    with pytest.raises(ValueError):
        class_weights(targets, 3, [1.0, 2.0])


def test_patches_always_contain_labelled_pixels_and_cover_small_slices_whole() -> None:
    rng = np.random.default_rng(0)
    slices = rng.random((3, 200, 300), dtype=np.float32)
    targets = np.full(slices.shape, -1, np.int8)
    targets[0, 5, 7] = 0
    targets[2, 150:153, 290] = 1
    sampler = PatchSampler(slices, targets, 32, rng)
    images, patch_targets, pseudo = sampler.draw(200)
    assert (pseudo == -1).all()
    assert images.shape == patch_targets.shape == (200, 32, 32)
    assert ((patch_targets >= 0).sum(axis=(1, 2)) >= 1).all()
    assert {0, 1} <= set(np.unique(patch_targets))
    # Every patch is a flipped or rotated window of a slice: its values come from the slices.
    assert np.isin(images, slices).all()

    small = PatchSampler(slices[:, :20, :30], targets[:, :20, :30], 64, rng)
    small_images, small_targets, _ = small.draw(10)
    assert small_images.shape == (10, 20, 30)
    assert all((target == 0).sum() == 1 for target in small_targets)


def test_patches_are_reoriented_in_all_eight_ways() -> None:
    rng = np.random.default_rng(0)
    slices = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    targets = np.zeros((1, 4, 4), np.int8)
    images, _, _ = PatchSampler(slices, targets, 4, rng).draw(200)
    assert len({image.tobytes() for image in images}) == 8


def test_training_refuses_inconsistent_labels(scribbles: Scribbles) -> None:
    slices, masks, _ = scribbles
    with pytest.raises(ValueError, match="mask values"):
        train_network(slices, np.where(masks == 2, 3, masks).astype(np.int8), TUNET, NUM_CLASSES, CPU)
    with pytest.raises(ValueError, match="no labelled pixels"):
        train_network(slices, np.full_like(masks, -1), TUNET, NUM_CLASSES, CPU)
    with pytest.raises(ValueError, match="shape"):
        train_network(slices[:1], masks, TUNET, NUM_CLASSES, CPU)


def test_streaming_inference_reads_bounded_blocks_and_matches_one_pass(trained_tunet: Trained, phantom: Phantom) -> None:
    network, _, _ = trained_tunet
    image, _ = phantom
    requested: list[tuple[int, int]] = []
    written: dict[int, NDArray[np.uint8]] = {}
    uncertainties: dict[int, NDArray[np.uint8]] = {}
    events: list[dict] = []

    def read(start: int, stop: int) -> NDArray[np.float32]:
        requested.append((start, stop))
        return image[start:stop]

    segment_slices(
        network,
        read,
        range(3, 120),
        lambda start, block: written.__setitem__(start, block),
        batch_size=5,
        progress=events.append,
        write_uncertainty=lambda start, block: uncertainties.__setitem__(start, block),
    )
    assert max(stop - start for start, stop in requested) == 5
    assert sorted(requested) == requested and requested[0][0] == 3 and requested[-1][1] == 120
    assert sorted(written) == [start for start, _ in requested] == sorted(uncertainties)

    streamed = np.concatenate([written[start] for start in sorted(written)])
    assert streamed.dtype == np.uint8 and streamed.shape == (117, 128, 128)
    in_one_pass = segment_volume(network, image, batch_size=len(image))[3:120]
    assert np.array_equal(streamed, in_one_pass)

    uncertainty = np.concatenate([uncertainties[start] for start in sorted(uncertainties)])
    assert uncertainty.dtype == np.uint8 and uncertainty.shape == streamed.shape
    assert uncertainty.max() <= round(255 * (1 - 1 / NUM_CLASSES))
    # The network is least sure on phase boundaries.
    _, truth = phantom
    edges = ndimage.morphological_gradient(truth[3:120], size=(1, 3, 3)) > 0
    assert uncertainty[edges].mean() > 2 * uncertainty[~edges].mean()

    assert [event["done"] for event in events] == list(range(5, 117, 5)) + [117]
    assert all(event["event"] == "inference" and event["of"] == 117 for event in events)
    assert events[-1]["eta_seconds"] == 0


def test_float16_uncertainty_and_scattered_slices(trained_tunet: Trained, phantom: Phantom) -> None:
    network, _, _ = trained_tunet
    image, _ = phantom
    requested: list[tuple[int, int]] = []
    uncertainties: dict[int, NDArray[np.float16]] = {}

    def read(start: int, stop: int) -> NDArray[np.float32]:
        requested.append((start, stop))
        return image[start:stop]

    segment_slices(
        network,
        read,
        [9, 7, 8, 50, 51, 52, 53],
        lambda start, block: None,
        batch_size=3,
        write_uncertainty=lambda start, block: uncertainties.__setitem__(start, block),
        uncertainty_dtype="float16",
    )
    assert requested == [(7, 10), (50, 53), (53, 54)]
    assert all(block.dtype == np.float16 for block in uncertainties.values())
    assert 0 <= min(block.min() for block in uncertainties.values())
    assert max(block.max() for block in uncertainties.values()) <= 1 - 1 / NUM_CLASSES + 1e-3


def test_tiled_baseline_agrees_with_whole_slices(trained_tunet: Trained, phantom: Phantom) -> None:
    network, _, _ = trained_tunet
    image, truth = phantom
    tiled = np.full((8, *image.shape[1:]), 255, np.uint8)

    def write(start: int, block: NDArray[np.uint8]) -> None:
        tiled[start - 60 : start - 60 + len(block)] = block

    segment_with_tiles(network, lambda start, stop: image[start:stop], range(60, 68), write, batch_size=4)
    whole = segment_volume(network, image[60:68])
    assert (tiled != 255).all()
    assert (tiled == whole).mean() > 0.97
    assert mean_iou(tiled, truth[60:68], NUM_CLASSES)[0] > TUNET_FLOOR - 0.05


def test_block_and_tile_layouts() -> None:
    assert contiguous_blocks(range(0, 10), 4) == [(0, 4), (4, 8), (8, 10)]
    assert contiguous_blocks([5, 1, 2, 2, 9, 10], 8) == [(1, 3), (5, 6), (9, 11)]
    assert contiguous_blocks([], 3) == []
    with pytest.raises(ValueError):
        contiguous_blocks([-1, 0], 3)
    assert tile_origins(128, 64, 32) == [0, 32, 64]
    assert tile_origins(100, 64, 32) == [0, 32, 36]
    assert tile_origins(40, 40, 32) == [0]


def test_robust_range_is_exact_for_small_volumes_and_ignores_outliers() -> None:
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 10, (8, 30, 40)).astype(np.float32)
    volume[0, 0, :5] = [1e9, -1e9, np.nan, np.inf, 5e8]
    low, high = robust_range(volume, (1, 99))
    finite = volume[np.isfinite(volume)]
    assert (low, high) == pytest.approx(tuple(np.percentile(finite.astype(np.float64), [1, 99])))
    assert 60 < low < 100 < high < 140


def test_robust_range_reads_only_a_sample_of_slices() -> None:
    slice_shape = (64, 64)
    reads: list[int] = []

    def read_slice(z: int) -> NDArray[np.uint16]:
        reads.append(z)
        return np.full(slice_shape, z, np.uint16)

    low, high = robust_range(read_slice, (0, 100), num_slices=10_000, sample_slices=20, sample_pixels=1000)
    assert len(reads) == len(set(reads)) == 20 and reads == sorted(reads)
    assert (low, high) == (min(reads), max(reads))
    with pytest.raises(ValueError, match="num_slices"):
        robust_range(read_slice)


def test_normalize_maps_the_range_to_unit_interval_and_clips() -> None:
    slab = np.array([[[0, 100, 200, 300, 400]]], np.uint16)
    normalized = normalize(slab, 100, 300)
    assert normalized.dtype == np.float32
    assert np.allclose(normalized, [[[0, 0, 0.5, 1, 1]]])
    assert np.array_equal(normalize(np.array([np.nan, 2.0]), 0, 4), np.array([0, 0.5], np.float32))
    assert robust_range(np.full((3, 4, 4), 7.0)) == (7.0, 8.0)
    with pytest.raises(ValueError):
        normalize(slab, 5, 5)


def test_mean_iou_on_a_worked_example() -> None:
    truth = np.array([0, 0, 1, 1, 2, -1])
    predicted = np.array([0, 1, 1, 1, 1, 0])
    miou, per_class = mean_iou(predicted, truth, 4, ignore=-1)
    # class 0: 1 / 2; class 1: 2 / 4; class 2: 0 / 1; class 3: absent from both.
    assert per_class[:3] == [0.5, 0.5, 0.0] and np.isnan(per_class[3])
    assert miou == pytest.approx(1 / 3)
    halves = confusion_matrix(predicted[:3], truth[:3], 4) + confusion_matrix(predicted[3:5], truth[3:5], 4)
    combined_mean, combined_per_class = iou_from_confusion(halves)
    assert combined_mean == miou and combined_per_class[:3] == per_class[:3]
    with pytest.raises(ValueError):
        mean_iou(predicted, truth, 3)
