"""Painted strokes to the mask of the Tiled contract, and back from Tiled after a reload."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from dash_app.annotations import Annotations, Stroke, rasterise, to_mask
from dash_app.masks import latest_annotations, save_annotations
from mlex_tomo.tiled_layout import connect_http
from segmentation.tiled_io import open_node, read_mask
from tests.services import Services

CLASSES = {3: {"label": "pore", "color": "#000000"}, 7: {"label": "matrix", "color": "#8c8c8c"}}
INDEX = {3: 0, 7: 1}


def test_a_brush_stroke_paints_a_round_capped_band():
    labels = rasterise([Stroke(tool="brush", class_id=7, points=[(5, 10), (25, 10)], width=5)], (20, 40), INDEX)
    assert labels.dtype == np.int8
    assert labels[10, 5:26].tolist() == [1] * 21
    assert labels[8:13, 15].tolist() == [1] * 5 and labels[7, 15] == -1 and labels[13, 15] == -1
    assert labels[10, 3] == 1 and labels[10, 0] == -1  # the cap reaches half a width past the end


def test_a_single_click_paints_a_dot_and_the_eraser_clears():
    strokes = [
        Stroke(tool="brush", class_id=3, points=[(10, 10)], width=6),
        Stroke(tool="eraser", points=[(10, 10)], width=2),
    ]
    labels = rasterise(strokes, (20, 20), INDEX)
    assert labels[10, 8] == 0 and labels[10, 10] == -1


def test_polygons_and_rectangles_fill_and_later_strokes_win():
    strokes = [
        Stroke(tool="rectangle", class_id=3, points=[(2, 2), (11, 7)]),
        Stroke(tool="polygon", class_id=7, points=[(6, 0), (19, 0), (19, 9), (6, 9)]),
    ]
    labels = rasterise(strokes, (10, 20), INDEX)
    assert (labels[2:8, 2:6] == 0).all() and (labels[2:8, 6:12] == 1).all()
    assert labels[9, 0] == -1


def annotations(**slices) -> Annotations:
    return Annotations(scan="scan", slice_shape=(16, 16), classes=CLASSES, slices=slices or {})


def test_the_mask_holds_labelled_slices_only_with_classes_renumbered():
    painted = annotations(**{
        "4": [Stroke(tool="brush", class_id=7, points=[(3, 3)], width=3)],
        "9": [Stroke(tool="brush", class_id=3, points=[(3, 3)], width=3), Stroke(tool="eraser", points=[(3, 3)], width=8)],
        "12": [Stroke(tool="brush", class_id=3, points=[(8, 8)], width=3)],
    })
    mask_idx, labels, classes = to_mask(painted)
    assert mask_idx == [4, 12]
    assert labels.shape == (2, 16, 16) and labels[0, 3, 3] == 1 and labels[1, 8, 8] == 0
    assert classes == {"0": CLASSES[3], "1": CLASSES[7]}


def test_the_mask_id_depends_on_content_only():
    stroke = Stroke(tool="brush", class_id=3, points=[(1, 1)])
    assert annotations(**{"1": [stroke]}).mask_id() == annotations(**{"1": [stroke]}).mask_id()
    assert annotations(**{"1": [stroke]}).mask_id() != annotations(**{"2": [stroke]}).mask_id()


@pytest.mark.parametrize(
    ("stroke", "message"),
    [
        ({"tool": "brush", "points": [(1, 1)]}, "needs class_id"),
        ({"tool": "eraser", "class_id": 3, "points": [(1, 1)]}, "the eraser has no class"),
        ({"tool": "polygon", "class_id": 3, "points": [(1, 1), (2, 2)]}, "at least 3 points"),
        ({"tool": "spray", "class_id": 3, "points": [(1, 1)]}, "tool"),
        ({"tool": "brush", "class_id": 3, "points": [(1, 1)], "width": 0}, "width"),
    ],
)
def test_malformed_strokes_are_refused(stroke, message):
    with pytest.raises(ValidationError, match=message):
        Stroke.model_validate(stroke)


def test_strokes_of_an_undefined_class_are_refused():
    with pytest.raises(ValidationError, match=r"classes \[5\] that are not defined"):
        annotations(**{"1": [Stroke(tool="brush", class_id=5, points=[(1, 1)])]})


@pytest.mark.stack
def test_saved_annotations_come_back_and_the_job_reads_the_mask(tmp_path):
    services = Services(tmp_path)
    try:
        services.start("tiled")
        writer = services.tiled(writable=True)
        writer["recons"].create_container("scan").write_array(np.zeros((20, 16, 16), np.float32), key="data")
        painted = annotations(**{
            "5": [Stroke(tool="brush", class_id=3, points=[(2, 2), (10, 2)], width=3)],
            "15": [Stroke(tool="rectangle", class_id=7, points=[(4, 4), (12, 12)])],
        })
        client = connect_http(services.settings, writable=True)
        path = save_annotations(client, painted, "http://tiled/api/v1/metadata/recons/scan", "beamline-user")
        assert path == f"masks/scan/{painted.mask_id()}/mask"
        assert save_annotations(client, painted, "http://tiled/api/v1/metadata/recons/scan", "beamline-user") == path
        assert len(writer["masks"]["scan"]) == 1

        found_path, found = latest_annotations(client, "scan")
        assert found_path == path and found == painted

        base = f"{services.settings.tiled.base_url}/api/v1/metadata"
        mask = read_mask(open_node(f"{base}/{path}"), (20, 16, 16))
        assert mask.slice_indices == [5, 15] and mask.num_classes == 2
        np.testing.assert_array_equal(mask.labels, to_mask(painted)[1])
        assert latest_annotations(client, "never-painted") is None
        assert save_annotations(client, annotations(), "uri", "user") is None
    finally:
        services.stop_all()


@pytest.mark.stack
def test_a_reload_shows_the_state_last_saved_after_undo_even_when_empty(tmp_path):
    """Undoing returns to an earlier mask node (stored once per content): the newest node is not the current one."""
    services = Services(tmp_path)
    try:
        services.start("tiled")
        client = connect_http(services.settings, writable=True)
        stroke_a = Stroke(tool="brush", class_id=3, points=[(2, 2), (10, 2)], width=3)
        stroke_b = Stroke(tool="brush", class_id=7, points=[(2, 9), (10, 9)], width=3)
        one, two = annotations(**{"5": [stroke_a]}), annotations(**{"5": [stroke_a, stroke_b]})
        for state in (one, two, one):  # paint A, paint B, undo
            save_annotations(client, state, "uri", "user")
        path, found = latest_annotations(client, "scan")
        assert found == one and path == f"masks/scan/{one.mask_id()}/mask"

        renamed = annotations()
        renamed.classes[3] = renamed.classes[3].model_copy(update={"label": "void"})
        assert save_annotations(client, renamed, "uri", "user") is None  # undone to nothing, a class renamed
        assert latest_annotations(client, "scan") == (None, renamed)
    finally:
        services.stop_all()
