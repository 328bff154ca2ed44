"""The web app's logic without a browser: the generated model form, class edits, strokes sent while saving."""

from __future__ import annotations

import re

import pytest

from dash_app.annotations import Annotations, ClassInfo
from dash_app.model_form import MODELS, form_fields, parameters_from_form, render
from segmentation.models import TUNetParameters
from dash_app.address import AddressedView, view_from_address
from dash_app.panels.annotate import (
    edited_annotations,
    moved_in_history,
    recorded,
    with_class_changed,
    with_history_edit,
    with_new_class,
    with_strokes,
    without_class,
)
from dash_app.panels.jobs import job_name_for
from dash_app.panels.notifications import failure_notes
from flows.segmentation import JOB_NAME_PATTERN


@pytest.mark.parametrize("model_name", list(MODELS))
def test_the_form_offers_every_field_and_its_defaults_are_the_models(model_name):
    fields = form_fields(model_name)
    assert {field.name for field in fields} == set(MODELS[model_name].model_fields) - {"name"}
    values = [
        (["on"] if field.default else []) if field.kind == "flag"
        else ", ".join(f"{value:g}" for value in field.default or []) if field.kind == "numbers"
        else field.default
        for field in fields
    ]
    parameters, errors = parameters_from_form(model_name, [field.name for field in fields], values)
    assert errors == []
    assert parameters == MODELS[model_name]().model_dump(mode="json")
    assert render(model_name)


def test_form_errors_name_the_field():
    names = ["num_epochs", "weights", "depth"]
    fields = [field for field in form_fields("TUNet") if field.name not in names]
    base = {field.name: field.default for field in fields if field.kind not in ("flag", "numbers")}
    base.update({field.name: [] for field in fields if field.kind == "flag"})
    base.update({field.name: "" for field in fields if field.kind == "numbers"})
    _, errors = parameters_from_form("TUNet", [*base, *names], [*base.values(), 0, "1, x", 4])
    assert "num_epochs: Input should be greater than or equal to 1" in errors
    assert any(error.startswith("weights.1: Input should be a valid number") for error in errors)
    parameters, errors = parameters_from_form("TUNet", [*base, *names], [*base.values(), None, "", None])
    assert errors == ["depth: give a number"]  # an empty num_epochs is automatic, set by the job for its device
    parameters, errors = parameters_from_form("TUNet", [*base, *names], [*base.values(), None, "", 4])
    assert errors == [] and parameters["num_epochs"] is None and TUNetParameters(**parameters).for_device("cpu").num_epochs == 40
    _, errors = parameters_from_form("RandomForest", [*base, *names], [*base.values(), 3, "", 4])
    assert "choose the model again" in errors[0]


def annotations() -> Annotations:
    return Annotations(
        scan="scan",
        volume_shape=(10, 16, 16),
        classes={0: ClassInfo(label="pore", color="#e6194b"), 1: ClassInfo(label="grain", color="#3cb4e6")},
        strokes=[
            {"index": 3, "tool": "brush", "class_id": 0, "points": [(1, 1)]},
            {"index": 3, "tool": "brush", "class_id": 1, "points": [(5, 5)]},
        ],
    )


def pending(seq: int, class_id: int | None = 0, scan: str = "scan", tool: str = "brush", points=((2, 2),), axis="z", index=7) -> dict:
    stroke = {"tool": tool, "class_id": class_id, "points": list(points), "width": 3}
    return {"seq": seq, "scan": scan, "axis": axis, "index": index, "stroke": stroke}


def on(annotations: Annotations, axis: str, index: int) -> list:
    return [stroke for stroke in annotations.strokes if stroke.plane == (axis, index)]


def test_strokes_painted_while_a_save_was_on_its_way_are_all_applied_once():
    start = annotations()
    queue = [pending(1), pending(2, class_id=1)]
    updated, applied, refused = with_strokes(start, queue, applied=0)
    assert (applied, refused) == (2, [])
    assert [stroke.class_id for stroke in on(updated, "z", 7)] == [0, 1]
    again, applied_again, _ = with_strokes(updated, [*queue, pending(3, axis="x", index=15)], applied=2)
    assert applied_again == 3 and len(on(again, "z", 7)) == 2 and len(on(again, "x", 15)) == 1
    other_scan, applied_other, _ = with_strokes(start, [pending(4, scan="other")], applied=3)
    assert other_scan == start and applied_other == 3


def test_a_bad_stroke_is_refused_with_its_reason_and_the_rest_are_kept():
    queue = [pending(1, tool="polygon"), pending(2), pending(3, class_id=9), pending(4, axis="y", index=16), pending(5, axis="w")]
    updated, applied, refused = with_strokes(annotations(), queue, 0)
    assert applied == 5 and len(on(updated, "z", 7)) == 1
    assert "a polygon needs at least 3 points" in refused[0]
    assert refused[1] == "class 9 no longer exists"
    assert refused[2] == "y = 16 is outside the scan (0..15)"
    assert "Input should be 'z', 'y' or 'x'" in refused[3]


def test_classes_are_added_renamed_recoloured_and_deleted_with_their_strokes():
    start = annotations()
    added = with_new_class(start, "crack", "#e6194b")  # the chosen class's colour: a free one is taken instead
    assert added.classes[2].label == "crack" and added.classes[2].color not in ("#e6194b", "#3cb4e6")
    renamed = with_class_changed(added, 2, "fissure", "#00FF00")
    assert renamed.classes[2] == ClassInfo(label="fissure", color="#00ff00")
    removed = without_class(renamed, 0)
    assert set(removed.classes) == {1, 2}
    assert [stroke.class_id for stroke in on(removed, "z", 3)] == [1]
    with pytest.raises(ValueError, match="Name the class first"):
        with_new_class(start, "  ", None)
    with pytest.raises(ValueError, match="A colour looks like #1f77b4"):
        with_class_changed(start, 0, "pore", "red")
    with pytest.raises(ValueError, match="Keep at least one class"):
        without_class(without_class(start, 0), 1)


@pytest.mark.parametrize(("scan", "expected"), [("sample", "sample"), ("2026/run 7;$(x)", "2026-run-7---x-"), ("...", "segmentation")])
def test_job_names_from_any_scan_key_fit_the_flows_pattern(scan, expected):
    assert job_name_for(scan) == expected
    assert re.fullmatch(JOB_NAME_PATTERN, job_name_for(scan))


def test_undo_and_redo_walk_the_history_both_ways():
    classes = {"0": {"label": "pore", "color": "#000000"}, "1": {"label": "rock", "color": "#ffffff"}}
    first = {"scan": "s", "classes": classes, "strokes": []}
    second = {**first, "strokes": [{"stroke": 1, "class_id": 0}]}
    third = {**first, "strokes": [{"stroke": 1, "class_id": 0}, {"stroke": 2, "class_id": 1}]}
    history = recorded(recorded({"past": [], "future": []}, first, second), second, third)
    shown, history = moved_in_history(history, third, "undo")
    assert shown == second
    shown, history = moved_in_history(history, shown, "undo")
    assert shown == first
    with pytest.raises(LookupError, match="Nothing to undo"):
        moved_in_history(history, shown, "undo")
    shown, history = moved_in_history(history, shown, "redo")
    assert shown == second
    shown, history = moved_in_history(history, shown, "redo")
    assert shown == third and history["future"] == []


def test_a_strokes_undo_entry_holds_no_copy_of_the_strokes_before_it():
    classes = {"0": {"label": "pore", "color": "#000000"}}
    many = {"scan": "s", "classes": classes, "strokes": [{"stroke": index, "class_id": 0} for index in range(500)]}
    one_more = {**many, "strokes": [*many["strokes"], {"stroke": 500, "class_id": 0}]}
    entry = recorded({"past": [], "future": []}, many, one_more)["past"][0]
    assert entry == {"classes": classes, "kept": 500, "strokes": []}
    assert with_history_edit(one_more, entry) == many


def test_deleting_a_class_is_undone_with_its_strokes_in_their_places():
    classes = {"0": {"label": "pore", "color": "#000000"}, "1": {"label": "rock", "color": "#ffffff"}}
    strokes = [{"stroke": index, "class_id": index % 2} for index in range(6)]
    before = {"scan": "s", "classes": classes, "strokes": strokes}
    after = {"scan": "s", "classes": {"0": classes["0"]}, "strokes": [stroke for stroke in strokes if stroke["class_id"] == 0]}
    history = recorded({"past": [], "future": []}, before, after)
    shown, history = moved_in_history(history, after, "undo")
    assert shown == before
    assert moved_in_history(history, shown, "redo")[0] == after


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("?scan=rock&axis=y&slice=12&zoom=1.0,20.0,30.0,2.0", AddressedView(scan="rock", axis="y", slice=12)),
        ("?scan=rock", AddressedView(scan="rock")),
        ("", None),
        ("?axis=y", None),
        ("?scan=rock&axis=w", None),  # hand-edited: the default view, not an error page
        ("?scan=rock&slice=-4", None),
    ],
)
def test_the_address_names_a_view_or_none(search, expected):
    assert view_from_address(search) == expected


def run_row(run_id: str, state_type: str, message: str | None = None) -> dict:
    return {
        "id": run_id, "name": f"run-{run_id}", "scan": "s", "state": state_type.title(), "state_type": state_type,
        "message": message, "created": None, "started": None, "ended": None, "steps": "train", "model": "TUNet",
        "job_ids": {"train": f"s-{run_id}-train"}, "progress": None, "epochs": [], "log_lines": [], "prefect_url": "http://p",
    }


def test_only_runs_that_fail_while_the_page_is_open_are_notified():
    before = [run_row("a", "FAILED", "old"), run_row("b", "RUNNING")]
    known, notes = failure_notes(before, None)
    assert (known, notes) == (["a"], [])  # failed before the page was opened: listed, not notified
    now = [run_row("a", "FAILED", "old"), run_row("b", "CRASHED", "out of memory")]
    known, notes = failure_notes(now, known)
    assert known == ["a", "b"] and [(note["id"], note["message"]) for note in notes] == [("b", "out of memory")]
    assert failure_notes(now, known) == (["a", "b"], [])
    assert failure_notes([{"error": "Prefect unreachable"}], known) == (None, [])


def test_an_undo_pressed_as_a_stroke_arrives_undoes_that_stroke():
    start = annotations().model_dump(mode="json")
    empty = {"past": [], "future": []}
    updated, history, applied, refused = edited_annotations("undo", start, empty, [pending(1)], 0, None, None, None)
    assert updated.model_dump(mode="json") == start and applied == 1 and refused == []
    redone, _, _, _ = edited_annotations("redo", start, history, [pending(1)], applied, None, None, None)
    assert len(redone.strokes) == len(annotations().strokes) + 1


def test_nothing_new_is_no_edit_and_a_refused_class_change_says_why():
    start = annotations().model_dump(mode="json")
    empty = {"past": [], "future": []}
    assert edited_annotations(None, start, empty, [pending(1)], 1, None, None, None) is None
    with pytest.raises(LookupError, match="Nothing to undo"):
        edited_annotations("undo", start, empty, [], 0, None, None, None)
    one_class = without_class(annotations(), 1).model_dump(mode="json")
    with pytest.raises(ValueError, match="Keep at least one class"):
        edited_annotations("delete-class", one_class, empty, [], 0, 0, None, None)
