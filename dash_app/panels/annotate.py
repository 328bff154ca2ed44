"""Painting labels: tools, brush size, classes, undo and redo, saved to Tiled after every stroke.

Strokes are drawn with Plotly's drawing modes on the slice figure; each finished shape
becomes a `Stroke`, the annotation is saved to Tiled (content-hashed, so undoing back
to an earlier state reuses its mask) and the figure shows the saved mask as an overlay
image. The browser keeps the strokes and the undo history; Tiled keeps the result.
"""

from __future__ import annotations

import re
from typing import Any

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update

from dash_app.annotations import Annotations, ClassInfo, Stroke
from dash_app.masks import latest_annotations, save_annotations
from mlex_tomo.settings import StackSettings
from mlex_tomo.tiled_layout import RECONS, connect

HISTORY_LIMIT = 100
TOOLS = [("Pan", "pan"), ("Brush", "brush"), ("Eraser", "eraser"), ("Polygon", "polygon"), ("Rectangle", "rectangle")]
DEFAULT_CLASSES = {0: ClassInfo(label="class 1", color="#e6194b"), 1: ClassInfo(label="class 2", color="#3cb4e6")}
PALETTE = ["#e6194b", "#3cb4e6", "#ffe119", "#3cb44b", "#f58231", "#911eb4", "#f032e6", "#bcf60c", "#fabebe"]
_PATH_POINT = re.compile(r"[ML]\s*(-?[\d.eE+-]+)\s*,\s*(-?[\d.eE+-]+)")


def layout() -> html.Div:
    return html.Div(
        className="panel annotate",
        children=[
            html.H2("Paint"),
            dcc.RadioItems(id="tool", options=[{"label": label, "value": value} for label, value in TOOLS], value="brush", inline=True),
            html.Label("Brush size ([ and ])", htmlFor="brush-size"),
            dcc.Slider(id="brush-size", min=1, max=60, step=1, value=5, marks=None, tooltip={"placement": "bottom"}),
            html.H3("Classes (keys 1-9)"),
            dcc.RadioItems(id="active-class", className="classes", value=0),
            html.Div(
                className="row",
                children=[
                    dcc.Input(id="new-class-name", placeholder="new class", debounce=False, maxLength=64),
                    html.Button("Add", id="add-class"),
                ],
            ),
            html.Div(
                className="row",
                children=[
                    html.Button("Undo", id="undo", title="Ctrl+Z"),
                    html.Button("Redo", id="redo", title="Ctrl+Y"),
                    html.Button("◀ annotated", id="previous-annotated"),
                    html.Button("annotated ▶", id="next-annotated"),
                ],
            ),
            html.Div(id="annotation-status", className="details"),
            dcc.Store(id="annotations"),
            dcc.Store(id="history", data={"past": [], "future": []}),
            dcc.Store(id="mask-path"),
        ],
    )


def stroke_from_shape(shape: dict[str, Any], tool: str, class_id: int, width: float) -> Stroke:
    """A Plotly-drawn shape (path or rect, in data coordinates = slice pixels) as a stroke."""
    if shape.get("type") == "rect":
        points = [(shape["x0"], shape["y0"]), (shape["x1"], shape["y1"])]
        return Stroke(tool="rectangle", class_id=class_id, points=points)
    points = [(float(x), float(y)) for x, y in _PATH_POINT.findall(shape.get("path", ""))]
    if tool == "eraser":
        return Stroke(tool="eraser", points=points, width=width)
    return Stroke(tool="polygon" if tool == "polygon" else "brush", class_id=class_id, points=points, width=width)


def register_callbacks(app: Dash, settings: StackSettings) -> None:
    def data_uri(scan: str) -> str:
        return f"{settings.tiled.base_url}/api/v1/metadata/{RECONS}/{scan}"

    def save(annotations: Annotations) -> str | None:
        return save_annotations(connect(settings, writable=True), annotations, data_uri(annotations.scan), settings.ui.username or "local user")

    @app.callback(
        Output("annotations", "data"), Output("history", "data"), Output("mask-path", "data"),
        Input("display-defaults", "data"),
    )
    def load(defaults: dict | None):
        if defaults is None:
            return None, {"past": [], "future": []}, None
        found = latest_annotations(connect(settings), defaults["scan"])
        if found is None:
            fresh = Annotations(scan=defaults["scan"], slice_shape=tuple(defaults["shape"][1:]), classes=DEFAULT_CLASSES)
            return fresh.model_dump(mode="json"), {"past": [], "future": []}, None
        path, annotations = found
        return annotations.model_dump(mode="json"), {"past": [], "future": []}, path

    @app.callback(
        Output("annotations", "data", allow_duplicate=True),
        Output("history", "data", allow_duplicate=True),
        Output("mask-path", "data", allow_duplicate=True),
        Output("annotation-status", "children"),
        Input("slice-view", "relayoutData"),
        Input("undo", "n_clicks"),
        Input("redo", "n_clicks"),
        Input("add-class", "n_clicks"),
        State("annotations", "data"), State("history", "data"), State("tool", "value"),
        State("active-class", "value"), State("brush-size", "value"), State("slice-index", "value"),
        State("axis", "value"), State("new-class-name", "value"),
        prevent_initial_call=True,
    )
    def edit(relayout, undo, redo, add_class, current, history, tool, class_id, brush_size, z, axis, new_class_name):
        if current is None:
            return no_update, no_update, no_update, "Pick a scan first."
        annotations = Annotations.model_validate(current)
        trigger = ctx.triggered_id
        if trigger == "slice-view":
            shapes = (relayout or {}).get("shapes")
            if not shapes:
                return no_update, no_update, no_update, no_update
            if axis != "z":
                return no_update, no_update, no_update, "Labels are painted on z slices."
            stroke = stroke_from_shape(shapes[-1], tool, class_id, float(brush_size))
            updated = annotations.model_copy(deep=True)
            updated.slices.setdefault(int(z), []).append(stroke)
            history = {"past": [*history["past"], current][-HISTORY_LIMIT:], "future": []}
        elif trigger in ("undo", "redo"):
            source, target = ("past", "future") if trigger == "undo" else ("future", "past")
            if not history[source]:
                return no_update, no_update, no_update, f"Nothing to {trigger}."
            updated = Annotations.model_validate(history[source][-1])
            history = {source: history[source][:-1], target: [*history[target], current]}
        else:
            name = (new_class_name or "").strip()
            if not name:
                return no_update, no_update, no_update, "Name the new class first."
            updated = annotations.model_copy(deep=True)
            new_id = max(updated.classes, default=-1) + 1
            updated.classes[new_id] = ClassInfo(label=name, color=PALETTE[new_id % len(PALETTE)])
            history = {"past": [*history["past"], current][-HISTORY_LIMIT:], "future": []}
        path = save(updated)
        painted = sum(len(strokes) for strokes in updated.slices.values())
        return updated.model_dump(mode="json"), history, path, f"{painted} strokes on {len(updated.slices)} slices, saved."

    @app.callback(Output("active-class", "options"), Input("annotations", "data"))
    def list_classes(current: dict | None) -> list[dict]:
        if current is None:
            return []
        return [
            {"label": html.Span(info["label"], style={"borderLeft": f"1rem solid {info['color']}", "paddingLeft": "0.4rem"}), "value": int(class_id)}
            for class_id, info in current["classes"].items()
        ]

    @app.callback(
        Output("slice-index", "value", allow_duplicate=True),
        Input("previous-annotated", "n_clicks"), Input("next-annotated", "n_clicks"),
        State("annotations", "data"), State("slice-index", "value"),
        prevent_initial_call=True,
    )
    def jump(previous, following, current, z):
        if current is None:
            return no_update
        painted = sorted(int(index) for index, strokes in current["slices"].items() if strokes)
        if ctx.triggered_id == "next-annotated":
            later = [index for index in painted if index > z]
            return later[0] if later else no_update
        earlier = [index for index in painted if index < z]
        return earlier[-1] if earlier else no_update
