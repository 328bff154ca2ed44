"""The slice viewer: slider and keys through the volume, axis choice, window/level, histogram.

The figure is built in the browser (a clientside callback in assets/viewer.js) around an
image URL served by `dash_app.routes`. Moving through slices costs one image request and
no callback: viewer.js swaps the image itself, and tells Dash the slice once the user
rests on it.
"""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go
from dash import ClientsideFunction, Dash, Input, Output, State, dcc, html, no_update

from dash_app.address import view_from_address
from dash_app.volumes import AXES, ScanLibrary, ScanNotFound, UnreadableScan


SIDE_VIEWS_MAX_BYTES = 2**30  # a y or x slice of a larger volume takes seconds to read (docs/decisions.md)

# Nothing here is published: Plotly's modebar offers no upload ("share") and no Chart Studio link.
SLICE_VIEW_CONFIG = {
    "scrollZoom": True, "displaylogo": False, "showSendToCloud": False, "showEditInChartStudio": False,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "sendDataToCloud", "editInChartStudio"],
}


def layout() -> html.Div:
    return html.Div(
        className="panel viewer",
        children=[
            html.Div(
                className="planes",
                children=[
                    dcc.Graph(id="slice-view", className="slice-view", config=SLICE_VIEW_CONFIG, figure=empty_figure()),
                    # The other two planes through the crosshair, drawn by assets/planes.js.
                    html.Div(
                        id="side-views", className="side-views", hidden=True,
                        children=[
                            html.Div(id="side-view-1", className="side-view", role="button"),
                            html.Div(id="side-view-2", className="side-view", role="button"),
                            html.P("Ctrl+click the slice to move the crosshair.", className="hint"),
                        ],
                    ),
                ],
            ),
            html.Div(
                className="controls",
                children=[
                    dcc.RadioItems(id="axis", options=[{"label": axis, "value": axis} for axis in AXES], value="z", inline=True),
                    html.Div(
                        className="slider-column",
                        children=[
                            html.Div(id="slice-slider", className="slider"),  # a range input made by viewer.js
                            html.Div(id="uncertainty-strip", className="uncertainty-strip"),  # drawn by assets/preview.js
                        ],
                    ),
                    html.Span(id="slice-label", className="slice-label"),
                    dcc.Checklist(
                        id="shown-layers", className="layers", inline=True, value=["labels", "result", "planes"],
                        options=[
                            {"label": "labels (L)", "value": "labels"}, {"label": "result (O)", "value": "result"},
                            {"label": "live preview (V)", "value": "preview"}, {"label": "3 planes (T)", "value": "planes"},
                        ],
                    ),
                ],
            ),
            html.Div(id="cursor-readout", className="cursor-readout"),  # written by assets/planes.js
            html.Div(id="planes-note", className="details"),
            html.P(id="viewer-message", className="errors"),
            dcc.Store(id="slice-index"),
            dcc.Store(id="crosshair"),  # the point the three planes go through, as a side view was clicked  # the slice, once the user rests on it (see showSlice in viewer.js)
            dcc.Store(id="viewport"),
            html.Div(
                className="contrast",
                children=[
                    html.Label("Window", htmlFor="window"),
                    dcc.RangeSlider(id="window", min=0, max=1, value=[0, 1], marks=None, tooltip={"placement": "bottom"}),
                    dcc.Graph(id="histogram", className="histogram", config={"displayModeBar": False}, figure=empty_figure()),
                ],
            ),
        ],
    )


def empty_figure() -> go.Figure:
    figure = go.Figure()
    figure.update_layout(
        margin=dict(l=0, r=0, t=0, b=0), xaxis_visible=False, yaxis_visible=False, plot_bgcolor="#111", paper_bgcolor="#111",
    )
    return figure


def histogram_figure(defaults: dict[str, Any]) -> go.Figure:
    figure = go.Figure(go.Bar(x=defaults["bin_centres"], y=defaults["counts"], marker_color="#8c8c8c"))
    figure.update_layout(
        margin=dict(l=0, r=0, t=0, b=0), height=80, bargap=0, yaxis_visible=False, xaxis_showgrid=False,
        paper_bgcolor="#1b1b1b", plot_bgcolor="#1b1b1b", font_color="#cccccc",
        shapes=[
            dict(type="line", x0=value, x1=value, y0=0, y1=1, yref="paper", line=dict(color="#ffb000"))
            for value in (defaults["low"], defaults["high"])
        ],
    )
    return figure


def register_callbacks(app: Dash, library: ScanLibrary) -> None:
    @app.callback(Output("display-defaults", "data"), Output("viewer-message", "children"), Input("scan", "value"))
    def load_defaults(scan: str | None) -> tuple[dict | None, str]:
        if scan is None:
            return None, ""
        try:
            defaults = library.display_defaults(scan)
            shape = library.volume(scan).shape
        except ScanNotFound:
            return None, ""
        except UnreadableScan as error:
            return None, f"This scan cannot be shown: {error}"
        return {"scan": scan, "shape": list(shape), **defaults.__dict__}, ""

    @app.callback(
        Output("shown-layers", "value", allow_duplicate=True), Output("planes-note", "children"),
        Input("display-defaults", "data"), State("shown-layers", "value"),
        prevent_initial_call=True,
    )
    def side_views_for_the_scan(defaults: dict | None, shown: list[str]):
        """Side views open with a scan small enough that a y or x slice is a quick read; the user's T decides after."""
        if defaults is None:
            return no_update, ""
        volume_bytes = library.volume(defaults["scan"]).dtype.itemsize * math.prod(defaults["shape"])
        others = [layer for layer in shown or [] if layer != "planes"]
        if volume_bytes <= SIDE_VIEWS_MAX_BYTES:
            return [*others, "planes"], ""
        note = (
            f"Side views start hidden for this {volume_bytes / 2**30:.1f} GiB volume: a y or x slice crosses every "
            "z chunk, so it reads across the whole volume. T shows them."
        )
        return others, note

    @app.callback(
        Output("window", "min"), Output("window", "max"), Output("window", "value"), Output("window", "step"),
        Output("histogram", "figure"),
        Input("display-defaults", "data"),
    )
    def reset_window(defaults: dict | None):
        if defaults is None:
            return no_update, no_update, no_update, no_update, empty_figure()
        span = defaults["maximum"] - defaults["minimum"] or 1.0
        return defaults["minimum"], defaults["maximum"], [defaults["low"], defaults["high"]], span / 1000, histogram_figure(defaults)

    @app.callback(
        Output("slice-index", "data"), Input("display-defaults", "data"), Input("axis", "value"),
        State("address", "search"), State("crosshair", "data"),
    )
    def first_slice(defaults: dict | None, axis: str, search: str | None, crosshair: dict | None) -> int:
        """The crosshair's slice along the new axis; else the one the page's address names (a reload, a shared link); else the middle one."""
        if defaults is None:
            return 0
        extent = defaults["shape"][AXES.index(axis)]
        if crosshair and crosshair.get("scan") == defaults["scan"] and 0 <= crosshair.get(axis, -1) < extent:
            return crosshair[axis]
        wanted = view_from_address(search)
        if wanted and wanted.scan == defaults["scan"] and wanted.axis == axis and wanted.slice is not None and wanted.slice < extent:
            return wanted.slice
        return extent // 2

    app.clientside_callback(
        ClientsideFunction(namespace="mlexTomo", function_name="sliceFigure"),
        Output("slice-view", "figure"), Output("slice-label", "children"),
        Input("display-defaults", "data"), Input("axis", "value"), Input("slice-index", "data"), Input("window", "value"),
        Input("tool", "value"), Input("brush-size", "value"), Input("active-class", "value"),
        Input("annotations", "data"), Input("mask-path", "data"),
        Input("label-opacity", "value"), Input("visible-classes", "value"),
        Input("shown-result", "data"), Input("result-opacity", "value"), Input("result-classes", "value"),
        Input("viewport", "data"),  # a zoom or pan: redraw at the resolution the view now needs
        Input("shown-layers", "value"),
    )

    app.clientside_callback(
        ClientsideFunction(namespace="mlexTomo", function_name="windowMarkers"),
        Output("histogram", "figure", allow_duplicate=True),
        Input("window", "value"), State("histogram", "figure"),
        prevent_initial_call=True,
    )

    app.clientside_callback(
        ClientsideFunction(namespace="mlexTomo", function_name="captureStroke"),
        Output("pending-strokes", "data"),
        Input("slice-view", "relayoutData"),
        State("pending-strokes", "data"), State("strokes-applied", "data"), State("tool", "value"),
        State("active-class", "value"), State("brush-size", "value"), State("slice-index", "data"),
        State("axis", "value"), State("display-defaults", "data"),
        prevent_initial_call=True,
    )

    app.clientside_callback(
        ClientsideFunction(namespace="mlexTomo", function_name="visiblePart"),
        Output("viewport", "data"),
        Input("slice-view", "relayoutData"), State("display-defaults", "data"), State("axis", "value"),
        prevent_initial_call=True,
    )
