"""The selected job's labels over the slice: opacity, per-class toggles, and what produced them."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, State, dcc, html, no_update, set_props

from dash_app.results import COMPLETE, ResultDescription, ResultNotFound, ResultOverlays
from dash_app.runs import selected_run


def layout() -> html.Div:
    return html.Div(
        className="panel results",
        children=[
            html.H2("Result"),
            dcc.Checklist(id="result-classes", className="classes", options=[], value=[], inline=True),
            html.Label("Opacity", htmlFor="result-opacity"),
            dcc.Slider(id="result-opacity", min=0, max=1, step=0.05, value=0.6, marks=None, tooltip={"placement": "bottom"}),
            html.Div(id="result-details", className="details", children=html.P("Select a finished job to overlay its labels.")),
            dcc.Store(id="shown-result"),
        ],
    )


def register_callbacks(app: Dash, results: ResultOverlays) -> None:
    @app.callback(
        Output("result-details", "children"), Output("result-classes", "options"),
        Input("runs", "data"), Input("selected-run", "data"), Input("scan", "value"),
        State("shown-result", "data"),
    )
    def show(shown_runs, selected, scan, shown):
        """Sets what the slice figure draws (`shown-result`, `result-classes`) with set_props, not as outputs.

        Dash holds back every callback whose inputs descend from one still pending: with
        declared outputs, the slice figure would wait on each job-list refresh, a Prefect
        round trip, and a slider dragged meanwhile would stall.
        """
        run = selected_run(shown_runs, selected)
        job_id = run.result_job_id if run else None
        if job_id is None:
            return nothing_shown(shown, "Select a finished job to overlay its labels.")
        try:
            description = results.describe(job_id)
        except ResultNotFound:
            return nothing_shown(shown, f"{job_id}: no labels in Tiled yet.")
        if description.status != COMPLETE:
            why = "its labels show when it completes" if not description.finished else "it left no labels to overlay"
            return nothing_shown(shown, f"{run.title} is {description.status}: {why}.")
        state = {
            "scan": scan, "job_id": job_id, "status": description.status, "classes": sorted(int(index) for index in description.classes),
            "uncertainty": description.slice_uncertainty.model_dump(),  # where to paint next
        }
        if state == shown:
            return no_update, no_update
        options = [
            {"label": html.Span(info.get("label", index), style={"borderLeft": f"1rem solid {info.get('color', '#888')}", "paddingLeft": "0.4rem"}), "value": int(index)}
            for index, info in sorted(description.classes.items(), key=lambda item: int(item[0]))
        ]
        set_props("shown-result", {"data": state})
        set_props("result-classes", {"value": state["classes"]})
        return details(description), options


def nothing_shown(shown: dict | None, message: str) -> tuple:
    """Clear the overlay, once: every change of these props redraws the slice figure."""
    if shown is not None:
        set_props("shown-result", {"data": None})
        set_props("result-classes", {"value": []})
        return html.P(message), []
    return html.P(message), no_update


def details(description: ResultDescription) -> list[Any]:
    """One line a user reads at a glance (model, score, extent), the rest folded away."""
    score = description.metrics.get("held_out_mean_iou")
    summary = " · ".join(
        part for part in (
            description.model,
            f"mean IoU {score:.3f} on held-out painted pixels" if isinstance(score, (int, float)) else None,
            f"{len(description.slices)} slice{'s' if len(description.slices) != 1 else ''}",
        ) if part
    )
    rows: list[tuple[str, Any]] = [
        ("job", description.job_id),
        ("status", description.status),
        ("model", description.model),
        ("trained by", description.trained_job_id if description.trained_job_id != description.job_id else None),
        ("slices", f"{len(description.slices)} ({description.slices[0]}..{description.slices[-1]})" if description.slices else None),
        ("data", description.data_uri),
        ("mask", description.mask_uri),
        ("device", description.device),
        *((name.replace("_", " "), _number(value)) for name, value in description.metrics.items()),
    ]
    items: list[Any] = []
    for name, value in rows:
        if value is not None:
            items += [html.Dt(name), html.Dd(str(value))]
    if description.parameters:
        parameters = ", ".join(f"{name}={value}" for name, value in description.parameters.items() if name != "name")
        items += [html.Dt("parameters"), html.Dd(parameters, className="parameters")]
    return [html.P(summary), html.Details([html.Summary("Details"), html.Dl(items)])]


def _number(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value
