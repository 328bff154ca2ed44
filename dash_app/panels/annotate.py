"""Painting labels: tools, brush size, classes, undo and redo, saved to Tiled after every stroke.

Strokes are drawn with Plotly's drawing modes on the slice figure. The browser turns
each finished shape into a stroke at once (`captureStroke` in assets/viewer.js), with
the tool and class chosen at that moment and a sequence number, into the `pending-strokes`
store; the server applies every stroke newer than the last it applied. A stroke painted
while the previous save is still on its way is therefore never lost. The annotation is
saved to Tiled (content-hashed, so undoing back to an earlier state reuses its mask) and
the figure shows the saved mask as an overlay image.
"""

from __future__ import annotations

import re
from typing import Any

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update
from pydantic import ValidationError

from dash_app.annotations import AXES, PALETTE, Annotations, ClassInfo, Stroke
from dash_app.masks import latest_annotations, save_annotations
from dash_app.preview import LivePreviews
from mlex_tomo.settings import StackSettings
from mlex_tomo.tiled_http import TiledHttpClient
from mlex_tomo.tiled_layout import check_writable, node_uri
from mlex_tomo.tiled_names import RECONS
from mlex_tomo.validation import validation_problems

HISTORY_LIMIT = 100
TOOLS = [("Brush (B)", "brush"), ("Eraser (E)", "eraser"), ("Polygon (P)", "polygon"), ("Rectangle (R)", "rectangle"), ("Pan (H, or hold Space)", "pan")]
DEFAULT_CLASSES = {0: ClassInfo(label="class 1", color="#e6194b"), 1: ClassInfo(label="class 2", color="#3cb4e6")}


def layout() -> html.Div:
    return html.Div(
        className="panel annotate",
        children=[
            html.H2("Paint"),
            dcc.RadioItems(id="tool", className="tools", options=[{"label": label, "value": value} for label, value in TOOLS], value="brush", inline=True),
            html.Label("Brush size ([ and ])", htmlFor="brush-size"),
            dcc.Slider(id="brush-size", min=1, max=60, step=1, value=5, marks=None, tooltip={"placement": "bottom"}),
            html.H3("Classes (keys 1-9)"),
            html.Div(
                className="class-list",
                children=[
                    dcc.RadioItems(id="active-class", className="classes", value=0),
                    dcc.Checklist(id="visible-classes", className="visibility", options=[], value=[]),
                ],
            ),
            html.Div(
                className="class-editor",
                children=[
                    dcc.Input(id="class-name", placeholder="class name", maxLength=64),
                    dcc.Input(id="class-colour", placeholder="#rrggbb", maxLength=7, pattern="#[0-9a-fA-F]{6}", className="colour"),
                ],
            ),
            html.Div(
                className="row",
                children=[
                    html.Button("Add", id="add-class", title="Add a class with this name and colour"),
                    html.Button("Update", id="update-class", title="Rename and recolour the chosen class"),
                    html.Button("Delete", id="delete-class", title="Delete the chosen class and its strokes"),
                ],
            ),
            html.Label("Labels opacity", htmlFor="label-opacity"),
            dcc.Slider(id="label-opacity", min=0, max=1, step=0.05, value=0.5, marks=None, tooltip={"placement": "bottom"}),
            html.Div(
                className="row",
                children=[
                    html.Button("Undo", id="undo", title="Ctrl+Z"),
                    html.Button("Redo", id="redo", title="Ctrl+Shift+Z or Ctrl+Y"),
                    html.Button("◀ annotated", id="previous-annotated"),
                    html.Button("annotated ▶", id="next-annotated"),
                ],
            ),
            html.Div(id="annotation-status", className="details"),
            # Written by assets/preview.js: the live preview (V) and where to paint next (U).
            html.Div(id="preview-status", className="details preview-status"),
            html.H3("Where to paint next"),
            html.Button("Next uncertain slice (U)", id="next-uncertain", title="The slice not painted yet where the model is least sure"),
            html.Div(id="paint-next-message", className="details"),
            html.Div(id="uncertainty-caption", className="details"),
            dcc.Store(id="annotations"),
            dcc.Store(id="history", data={"past": [], "future": []}),
            dcc.Store(id="mask-path"),
            dcc.Store(id="pending-strokes", data=[]),
            dcc.Store(id="strokes-applied", data=0),
        ],
    )


def with_strokes(annotations: Annotations, pending: list[dict[str, Any]], applied: int) -> tuple[Annotations, int, list[str]]:
    """The annotations with this scan's pending strokes newer than `applied`, the newest sequence number, and why any was refused."""
    fresh = [entry for entry in pending or [] if entry["seq"] > applied and entry.get("scan") == annotations.scan]
    if not fresh:
        return annotations, applied, []
    updated, refused = annotations.model_copy(deep=True), []
    for entry in fresh:
        try:
            stroke = Stroke.model_validate({**entry["stroke"], "axis": entry["axis"], "index": entry["index"]})
        except ValidationError as error:
            refused.extend(validation_problems(error, whole="stroke"))
            continue
        if stroke.class_id is not None and stroke.class_id not in updated.classes:
            refused.append(f"class {stroke.class_id} no longer exists")
            continue
        extent = updated.volume_shape[AXES.index(stroke.axis)]
        if stroke.index >= extent:
            refused.append(f"{stroke.axis} = {stroke.index} is outside the scan (0..{extent - 1})")
            continue
        updated.strokes.append(stroke)
    return updated, max(entry["seq"] for entry in fresh), refused


def history_edit(after: dict, before: dict) -> dict:
    """What turns the annotations `after` back into `before`, compactly.

    Strokes are only ever appended, or removed with their class, so `before` is `after`'s
    strokes up to the first that differs, then its own: a stroke's undo entry holds the
    stroke count and the classes, not a copy of every stroke painted so far.
    """
    kept = 0
    for stroke_after, stroke_before in zip(after["strokes"], before["strokes"]):
        if stroke_after != stroke_before:
            break
        kept += 1
    return {"classes": before["classes"], "kept": kept, "strokes": before["strokes"][kept:]}


def with_history_edit(current: dict, edit: dict) -> dict:
    return {**current, "classes": edit["classes"], "strokes": current["strokes"][: edit["kept"]] + edit["strokes"]}


def recorded(history: dict[str, list], before: dict, after: dict) -> dict[str, list]:
    """The history once `before` became `after` by an edit: undoable, and nothing left to redo."""
    return {"past": [*history["past"], history_edit(after, before)][-HISTORY_LIMIT:], "future": []}


def moved_in_history(history: dict[str, list], current: dict, step: str) -> tuple[dict, dict[str, list]]:
    """(the state to show, the history after it) for an `undo` or a `redo` from `current`."""
    source, target = ("past", "future") if step == "undo" else ("future", "past")
    if not history[source]:
        raise LookupError(f"Nothing to {step}.")
    shown = with_history_edit(current, history[source][-1])
    return shown, {source: history[source][:-1], target: [*history[target], history_edit(shown, current)]}


def edited_annotations(
    trigger: str | None, current: dict, history: dict[str, list], pending: list[dict[str, Any]], applied: int,
    class_id: int | None, name: str | None, colour: str | None,
) -> tuple[Annotations, dict[str, list], int, list[str]] | None:
    """(the annotations to save, the history, the newest stroke applied, why strokes were refused), or None for no change.

    Strokes that arrived are applied first, whatever the trigger: an undo or a class
    change then acts on what is on screen. Raises LookupError (nothing to undo or redo)
    or ValueError (a class change refused) with the reason.
    """
    annotations = Annotations.model_validate(current)
    painted, applied_now, refused = with_strokes(annotations, pending, applied)
    if painted.strokes != annotations.strokes:
        painted_state = painted.model_dump(mode="json")
        history, current = recorded(history, current, painted_state), painted_state
    if trigger in ("undo", "redo"):
        restored, history = moved_in_history(history, current, trigger)
        return Annotations.model_validate(restored), history, applied_now, refused
    if trigger in ("add-class", "update-class", "delete-class"):
        change = {
            "add-class": lambda: with_new_class(painted, name, colour),
            "update-class": lambda: with_class_changed(painted, class_id, name, colour),
            "delete-class": lambda: without_class(painted, class_id),
        }[trigger]
        updated = change()
        return updated, recorded(history, current, updated.model_dump(mode="json")), applied_now, refused
    if applied_now == applied:
        return None
    return painted, history, applied_now, refused


def with_new_class(annotations: Annotations, name: str | None, colour: str | None) -> Annotations:
    """A new class; a colour already taken (the form starts with the chosen class's) gives way to a free one."""
    updated = annotations.model_copy(deep=True)
    new_id = max(updated.classes, default=-1) + 1
    taken = {info.color.lower() for info in updated.classes.values()}
    free = [candidate for candidate in PALETTE if candidate not in taken] or [PALETTE[new_id % len(PALETTE)]]
    chosen = colour if colour and colour.strip().lower() not in taken else free[0]
    updated.classes[new_id] = class_info(name, chosen)
    return updated


def with_class_changed(annotations: Annotations, class_id: int, name: str | None, colour: str | None) -> Annotations:
    updated = annotations.model_copy(deep=True)
    updated.classes[class_id] = class_info(name, colour or updated.classes[class_id].color)
    return updated


def without_class(annotations: Annotations, class_id: int) -> Annotations:
    """The class and every stroke painted with it are gone (undo brings them back)."""
    if len(annotations.classes) <= 1:
        raise ValueError("Keep at least one class.")
    updated = annotations.model_copy(deep=True)
    del updated.classes[class_id]
    updated.strokes = [stroke for stroke in updated.strokes if stroke.class_id != class_id]
    return updated


def painted_summary(annotations: Annotations) -> str:
    return f"{plural(len(annotations.strokes), 'stroke')} on {plural(len(annotations.painted_planes()), 'slice')}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def class_info(name: str | None, colour: str) -> ClassInfo:
    name = (name or "").strip()
    if not name:
        raise ValueError("Name the class first.")
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", colour.strip()):
        raise ValueError(f"A colour looks like #1f77b4, not {colour!r}.")
    return ClassInfo(label=name, color=colour.strip().lower())


def register_callbacks(app: Dash, settings: StackSettings, tiled: TiledHttpClient, previews: LivePreviews) -> None:
    def save(annotations: Annotations) -> str | None:
        data_uri = node_uri(settings, f"{RECONS}/{annotations.scan}")
        check_writable(settings)
        return save_annotations(tiled, annotations, data_uri, settings.ui.username or "local user")

    @app.callback(
        Output("annotations", "data"), Output("history", "data"), Output("mask-path", "data"),
        Output("annotation-status", "children"),
        Input("display-defaults", "data"),
    )
    def load(defaults: dict | None):
        if defaults is None:
            return None, {"past": [], "future": []}, None, ""
        found = latest_annotations(tiled, defaults["scan"])
        shape = tuple(defaults["shape"])
        fresh = Annotations(scan=defaults["scan"], volume_shape=shape, classes=DEFAULT_CLASSES)
        if found is None:
            return fresh.model_dump(mode="json"), {"past": [], "future": []}, None, ""
        path, annotations = found
        try:
            annotations = annotations.on_volume(shape)
        except ValueError as error:  # the scan was replaced by another volume; its old labels stay in Tiled
            return fresh.model_dump(mode="json"), {"past": [], "future": []}, None, f"Starting afresh: {error}."
        return annotations.model_dump(mode="json"), {"past": [], "future": []}, path, f"Loaded {painted_summary(annotations)}."

    @app.callback(
        Output("annotations", "data", allow_duplicate=True),
        Output("history", "data", allow_duplicate=True),
        Output("mask-path", "data", allow_duplicate=True),
        Output("strokes-applied", "data"),
        Output("annotation-status", "children", allow_duplicate=True),
        Input("pending-strokes", "data"),
        Input("undo", "n_clicks"),
        Input("redo", "n_clicks"),
        Input("add-class", "n_clicks"),
        Input("update-class", "n_clicks"),
        Input("delete-class", "n_clicks"),
        State("annotations", "data"), State("history", "data"), State("strokes-applied", "data"),
        State("active-class", "value"), State("class-name", "value"), State("class-colour", "value"),
        State("shown-layers", "value"), State("axis", "value"), State("slice-index", "data"),
        prevent_initial_call=True,
    )
    def edit(pending, undo, redo, add, update, delete, current, history, applied, class_id, name, colour, layers, axis, index):
        if current is None:
            return no_update, no_update, no_update, no_update, "Pick a scan first."
        try:
            edited = edited_annotations(ctx.triggered_id, current, history, pending, applied or 0, class_id, name, colour)
        except (LookupError, ValueError) as error:  # nothing to undo, the last class, ...
            return no_update, no_update, no_update, no_update, str(error)
        if edited is None:
            return no_update, no_update, no_update, no_update, no_update
        updated, history, applied_now, refused = edited
        refusal = f" A stroke was refused: {'; '.join(refused)}." if refused else ""
        if "preview" in (layers or []) and index is not None:
            previews.begin(updated, axis, index)  # computes while the mask is written: the browser asks for it next
        try:
            path = save(updated)
        except RuntimeError as error:  # Tiled refused or is down, or there is no API key to write with
            status = f"{painted_summary(updated)}, NOT saved ({error}). They are kept here and saved with the next change."
            return updated.model_dump(mode="json"), history, no_update, applied_now, status
        return updated.model_dump(mode="json"), history, path, applied_now, f"{painted_summary(updated)}, saved.{refusal}"

    @app.callback(
        Output("active-class", "options"), Output("active-class", "value"),
        Output("visible-classes", "options"), Output("visible-classes", "value"),
        Input("annotations", "data"),
        State("active-class", "value"), State("visible-classes", "options"), State("visible-classes", "value"),
    )
    def list_classes(current: dict | None, active: int | None, listed: list[dict], visible: list[int]):
        if current is None:
            return [], None, [], []
        ids = [int(class_id) for class_id in current["classes"]]
        options = [
            {"label": html.Span(info["label"], style={"borderLeft": f"1rem solid {info['color']}", "paddingLeft": "0.4rem"}), "value": int(class_id)}
            for class_id, info in current["classes"].items()
        ]
        hidden = {option["value"] for option in listed or []} - set(visible or [])
        toggles = [{"label": "show", "value": class_id, "title": f"show {current['classes'][str(class_id)]['label']}"} for class_id in ids]
        # The chosen class is written only when it is gone: a key pressed while a save was on
        # its way would otherwise be overwritten by the class chosen when the save began.
        chosen = no_update if active in ids else ids[0]
        return options, chosen, toggles, [class_id for class_id in ids if class_id not in hidden]

    @app.callback(
        Output("class-name", "value"), Output("class-colour", "value"),
        Input("active-class", "value"), State("annotations", "data"),
    )
    def describe_class(active: int | None, current: dict | None):
        info = (current or {}).get("classes", {}).get(str(active))
        return (info["label"], info["color"]) if info else ("", "")

    @app.callback(
        Output("slice-index", "data", allow_duplicate=True),
        Input("previous-annotated", "n_clicks"), Input("next-annotated", "n_clicks"),
        State("annotations", "data"), State("slice-index", "data"), State("axis", "value"),
        prevent_initial_call=True,
    )
    def jump(previous, following, current, index, axis):
        """To the previous or next slice painted on, along the axis on screen."""
        if current is None:
            return no_update
        painted = [position for _, position in Annotations.model_validate(current).painted_planes(axis)]
        if ctx.triggered_id == "next-annotated":
            later = [position for position in painted if position > index]
            return later[0] if later else no_update
        earlier = [position for position in painted if position < index]
        return earlier[-1] if earlier else no_update
