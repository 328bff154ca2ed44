"""Held-out tiles: the labels a model is scored on and never trains on."""

from __future__ import annotations

import numpy as np

from segmentation.held_out import (
    MIN_HELD_OUT_PIXELS,
    HeldOutScore,
    held_out_metrics,
    hold_out_tiles,
    tile_edge,
)


def strokes(count: int = 2, size: int = 96) -> np.ndarray:
    """Rows of each of three classes across the slices, as many short strokes."""
    masks = np.full((count, size, size), -1, np.int8)
    for label in range(3):
        masks[:, 4 + label : size : 6, 4 : size - 4] = label
    return masks


def test_a_class_is_held_out_tile_by_tile_leaving_most_of_it_to_train_on() -> None:
    masks = strokes()
    held_out = hold_out_tiles(masks, 0.2, seed=0)
    assert held_out is not None and not held_out[masks < 0].any()
    edge = tile_edge(96, 96)
    for label in range(3):
        of_class = held_out & (masks == label)
        tiles = of_class.reshape(2, 96 // edge, edge, 96 // edge, edge).any(axis=(2, 4))
        for z, row, column in np.argwhere(tiles):
            window = (z, slice(row * edge, (row + 1) * edge), slice(column * edge, (column + 1) * edge))
            assert np.array_equal(of_class[window], masks[window] == label), "a class's tile is held out whole"
        share = held_out[masks == label].mean()
        assert 0.2 <= share <= 0.25, (label, share)


def test_the_split_is_seeded() -> None:
    masks = strokes()
    assert np.array_equal(hold_out_tiles(masks, 0.2, seed=3), hold_out_tiles(masks, 0.2, seed=3))
    assert not np.array_equal(hold_out_tiles(masks, 0.2, seed=3), hold_out_tiles(masks, 0.2, seed=4))


def test_too_few_labels_hold_nothing_out() -> None:
    masks = np.full((1, 96, 96), -1, np.int8)
    masks[0, 10, 10:16] = 0  # one short stroke per class, each inside one tile
    masks[0, 50, 50:56] = 1
    assert hold_out_tiles(masks, 0.2, seed=0) is None
    rich = strokes(count=1)
    rich[rich == 2] = -1
    rich[0, 90, 90 - MIN_HELD_OUT_PIXELS // 2 : 90] = 2  # a third class with a single stroke
    assert hold_out_tiles(rich, 0.2, seed=0) is None
    assert hold_out_tiles(strokes(), 0.0, seed=0) is None
    assert hold_out_tiles(np.full((1, 32, 32), -1, np.int8), 0.2, seed=0) is None


def test_tiles_grow_with_the_slice_within_limits() -> None:
    assert [tile_edge(size, size) for size in (40, 128, 256, 2560)] == [16, 16, 32, 64]
    assert tile_edge(100, 2560) == 16


def test_metrics_name_the_held_out_score_and_claim_none_without_it() -> None:
    confusion = np.array([[8, 2, 0], [0, 10, 0], [0, 0, 0]])
    score = HeldOutScore.from_confusion(confusion)
    assert score.pixels == 20 and score.iou_per_class[2] is None
    assert held_out_metrics(score) == {
        "held_out_mean_iou": score.mean_iou,
        "held_out_iou_per_class": [0.8, 10 / 12, None],
        "held_out_pixels": 20,
    }
    assert held_out_metrics(None) == {"held_out_pixels": 0}
