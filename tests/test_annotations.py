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
    labels = rasterise([Stroke(index=0, tool="brush", class_id=7, points=[(5, 10), (25, 10)], width=5)], (20, 40), INDEX)
    assert labels.dtype == np.int8
    assert labels[10, 5:26].tolist() == [1] * 21
    assert labels[8:13, 15].tolist() == [1] * 5 and labels[7, 15] == -1 and labels[13, 15] == -1
    assert labels[10, 3] == 1 and labels[10, 0] == -1  # the cap reaches half a width past the end


def test_a_single_click_paints_a_dot_and_the_eraser_clears():
    strokes = [
        Stroke(index=0, tool="brush", class_id=3, points=[(10, 10)], width=6),
        Stroke(index=0, tool="eraser", points=[(10, 10)], width=2),
    ]
    labels = rasterise(strokes, (20, 20), INDEX)
    assert labels[10, 8] == 0 and labels[10, 10] == -1


def test_polygons_and_rectangles_fill_and_later_strokes_win():
    strokes = [
        Stroke(index=0, tool="rectangle", class_id=3, points=[(2, 2), (11, 7)]),
        Stroke(index=0, tool="polygon", class_id=7, points=[(6, 0), (19, 0), (19, 9), (6, 9)]),
    ]
    labels = rasterise(strokes, (10, 20), INDEX)
    assert (labels[2:8, 2:6] == 0).all() and (labels[2:8, 6:12] == 1).all()
    assert labels[9, 0] == -1


SHAPE = (20, 16, 16)  # (z, y, x)


def annotations(*strokes: Stroke) -> Annotations:
    return Annotations(scan="scan", volume_shape=SHAPE, classes=CLASSES, strokes=list(strokes))


def brush(axis: str, index: int, class_id: int | None, points, width: float = 1) -> Stroke:
    tool = "brush" if class_id is not None else "eraser"
    return Stroke(axis=axis, index=index, tool=tool, class_id=class_id, points=points, width=width)


def line(axis: str, index: int, class_id: int, start, end) -> Stroke:
    """A one-pixel line from pixel `start` to pixel `end` (a thin rectangle: no brush caps)."""
    return Stroke(axis=axis, index=index, tool="rectangle", class_id=class_id, points=[start, end])


def test_the_mask_holds_labelled_slices_only_with_classes_renumbered():
    painted = annotations(
        brush("z", 4, 7, [(3, 3)], width=3),
        brush("z", 9, 3, [(3, 3)], width=3), brush("z", 9, None, [(3, 3)], width=8),
        brush("z", 12, 3, [(8, 8)], width=3),
    )
    mask_idx, labels, classes = to_mask(painted)
    assert mask_idx == [4, 12]
    assert labels.shape == (2, 16, 16) and labels[0, 3, 3] == 1 and labels[1, 8, 8] == 0
    assert classes == {"0": CLASSES[3], "1": CLASSES[7]}


def test_a_stroke_on_a_y_slice_labels_a_row_of_every_z_slice_it_crosses():
    painted = annotations(line("y", 6, 7, (2, 3), (2, 8)))  # on y = 6: column x = 2, from z = 3 to z = 8
    mask_idx, labels, _ = to_mask(painted)
    assert mask_idx == [3, 4, 5, 6, 7, 8]
    assert (labels[:, 6, 2] == 1).all() and (labels != -1).sum() == 6
    assert painted.plane("z", 5)[6, 2] == 1 and (painted.plane("z", 5) != -1).sum() == 1
    assert painted.plane("x", 2)[3:9, 6].tolist() == [1] * 6  # seen from x = 2: the same voxels, along z
    assert (painted.plane("x", 3) == -1).all() and (painted.plane("z", 9) == -1).all()


def test_a_stroke_on_an_x_slice_is_seen_on_the_y_slices_it_crosses():
    painted = annotations(line("x", 10, 3, (1, 0), (14, 0)))  # on x = 10: y from 1 to 14, at z = 0
    assert painted.plane("y", 5)[0, 10] == 0 and (painted.plane("y", 5) != -1).sum() == 1
    assert (painted.plane("y", 15) == -1).all()
    assert painted.painted_planes() == [("x", 10)] and painted.painted_planes("z") == []


def test_the_later_stroke_wins_where_slices_along_different_axes_cross():
    z_then_y = annotations(line("z", 5, 3, (0, 6), (15, 6)), line("y", 6, 7, (4, 5), (4, 5)))
    assert z_then_y.plane("z", 5)[6].tolist() == [0] * 4 + [1] + [0] * 11
    y_then_z = annotations(line("y", 6, 7, (4, 5), (4, 5)), line("z", 5, 3, (0, 6), (15, 6)))
    assert y_then_z.plane("z", 5)[6].tolist() == [0] * 16 and y_then_z.plane("y", 6)[5, 4] == 0
    eraser = Stroke(axis="x", index=4, tool="eraser", points=[(6, 5)], width=1)
    erased_across = annotations(line("z", 5, 3, (0, 6), (15, 6)), eraser)
    assert erased_across.plane("z", 5)[6, 4] == -1 and erased_across.plane("z", 5)[6, 3] == 0
    assert to_mask(erased_across)[1][0, 6, 4] == -1


def test_the_mask_id_depends_on_content_only():
    stroke = brush("z", 1, 3, [(1, 1)])
    assert annotations(stroke).mask_id() == annotations(stroke).mask_id()
    assert annotations(stroke).mask_id() != annotations(brush("z", 2, 3, [(1, 1)])).mask_id()
    assert annotations(stroke).mask_id() != annotations(brush("y", 1, 3, [(1, 1)])).mask_id()


def test_annotations_saved_before_strokes_had_an_axis_are_read_as_z_strokes():
    record = {
        "scan": "scan", "slice_shape": [16, 16], "classes": CLASSES,
        "slices": {"4": [{"tool": "brush", "class_id": 3, "points": [[3, 3]], "width": 3}]},
    }
    old = Annotations.model_validate(record)
    assert old.volume_shape == (5, 16, 16) and old.strokes[0].plane == ("z", 4)
    on_scan = old.on_volume(SHAPE)
    assert on_scan.volume_shape == SHAPE and to_mask(on_scan)[0] == [4]
    with pytest.raises(ValueError, match=r"painted on slices of \(16, 16\), the scan's are \(8, 8\)"):
        old.on_volume((20, 8, 8))


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
        Stroke.model_validate({"index": 0, **stroke})


def test_strokes_of_an_undefined_class_or_outside_the_volume_are_refused():
    with pytest.raises(ValidationError, match=r"classes \[5\] that are not defined"):
        annotations(brush("z", 1, 5, [(1, 1)]))
    with pytest.raises(ValidationError, match=r"a stroke on y = 16 is outside the volume \(0..15\)"):
        annotations(brush("y", 16, 3, [(1, 1)]))


@pytest.mark.stack
def test_saved_annotations_come_back_and_the_job_reads_the_mask(tmp_path):
    services = Services(tmp_path)
    try:
        services.start("tiled")
        writer = services.tiled(writable=True)
        writer["recons"].create_container("scan").write_array(np.zeros((20, 16, 16), np.float32), key="data")
        painted = annotations(
            brush("z", 5, 3, [(2, 2), (10, 2)], width=3),
            Stroke(axis="z", index=15, tool="rectangle", class_id=7, points=[(4, 4), (12, 12)]),
            line("x", 8, 7, (3, 9), (3, 10)),  # painted on x = 8, seen on z = 9 and 10
        )
        client = connect_http(services.settings, writable=True)
        path = save_annotations(client, painted, "http://tiled/api/v1/metadata/recons/scan", "beamline-user")
        assert path == f"masks/scan/{painted.mask_id()}/mask"
        assert save_annotations(client, painted, "http://tiled/api/v1/metadata/recons/scan", "beamline-user") == path
        assert len(writer["masks"]["scan"]) == 1

        found_path, found = latest_annotations(client, "scan")
        assert found_path == path and found == painted

        base = f"{services.settings.tiled.base_url}/api/v1/metadata"
        mask = read_mask(open_node(f"{base}/{path}"), (20, 16, 16))
        assert mask.slice_indices == [5, 9, 10, 15] and mask.num_classes == 2
        assert mask.labels[1, 3, 8] == 1 and mask.labels[2, 3, 8] == 1
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
        stroke_a = brush("z", 5, 3, [(2, 2), (10, 2)], width=3)
        stroke_b = brush("z", 5, 7, [(2, 9), (10, 9)], width=3)
        one, two = annotations(stroke_a), annotations(stroke_a, stroke_b)
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
