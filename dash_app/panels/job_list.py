"""The job list: the scan's runs as Prefect reports them, followed every few seconds.

Each card shows a run's state, stage, progress, loss and last log lines, a link to
the Prefect UI and, while it runs, a cancel button; the selected run's loss is plotted.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import plotly.graph_objects as go
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from dash_app.runs import RunSummary, SegmentationRuns, selected_run, summaries_from_store
from mlex_tomo.settings import StackSettings


def layout(settings: StackSettings) -> list[Any]:
    return [
        html.H2("Jobs"),
        html.Div(id="job-list", className="job-list"),
        html.Div(id="loss-title", className="details"),
        dcc.Graph(id="loss-plot", className="loss-plot", config={"displayModeBar": False}, style={"display": "none"}),
        dcc.Store(id="runs"),
        dcc.Store(id="selected-run"),
        dcc.Interval(id="jobs-refresh", interval=settings.ui.jobs_refresh_seconds * 1000),
    ]


def register_callbacks(app: Dash, runs: SegmentationRuns) -> None:
    @app.callback(
        Output("runs", "data"),
        Input("jobs-refresh", "n_intervals"), Input("scan", "value"), Input("selected-run", "data"),
        State("runs", "data"),
    )
    def follow(_, scan, selected, shown):
        if scan is None:
            return None if shown else no_update
        try:
            current = [run.model_dump(mode="json") for run in runs.recent(scan)]
        except Exception as error:  # noqa: BLE001 - Prefect down: say so in the list, keep trying
            current = [{"error": f"Prefect unreachable: {error}"}]
        return no_update if current == shown else current

    @app.callback(Output("job-list", "children"), Input("runs", "data"), Input("selected-run", "data"))
    def list_runs(shown, selected):
        if not shown:
            return html.P("No jobs for this scan yet.", className="details")
        if "error" in shown[0]:
            return html.P(shown[0]["error"], className="details")
        shown_selected = selected_run(shown, selected)
        return [job_card(run, run.id == shown_selected.id) for run in summaries_from_store(shown)]

    @app.callback(
        Output("selected-run", "data", allow_duplicate=True),
        Input({"type": "job-select", "run": ALL}, "n_clicks"),
        prevent_initial_call=True,
    )
    def select(clicks):
        if not any(clicks):
            return no_update
        return ctx.triggered_id["run"]

    @app.callback(
        Output("job-start-status", "children", allow_duplicate=True),
        Input({"type": "job-cancel", "run": ALL}, "n_clicks"),
        prevent_initial_call=True,
    )
    def cancel(clicks):
        if not any(clicks):
            return no_update
        runs.cancel(ctx.triggered_id["run"])
        return "Cancelling: the job is stopped within seconds."

    @app.callback(
        Output("loss-plot", "figure"), Output("loss-plot", "style"), Output("loss-title", "children"),
        Input("runs", "data"), Input("selected-run", "data"),
    )
    def plot_loss(shown, selected):
        run = selected_run(shown, selected)
        if run is None or not run.epochs:
            return no_update, {"display": "none"}, ""
        return loss_figure(run), {"display": "block"}, f"Loss of {run.title} ({run.name})"



def job_card(run: RunSummary, selected: bool) -> html.Div:
    """A compact card: what the job is, its state, stage and timing, and what to do with it."""
    last_epoch = run.epochs[-1] if run.epochs else None
    meta = " · ".join(part for part in (run.stage, run.timing(datetime.now(timezone.utc))) if part)
    children: list[Any] = [
        html.Div(
            className="job-head",
            children=[
                html.Button(run.title, id={"type": "job-select", "run": run.id}, className="job-name", title="Show this job's result and loss"),
                html.Span(run.state, className=f"state {run.state_type.lower()}"),
            ],
        ),
        html.Div(
            className="details job-meta",
            children=[
                *([meta, " · "] if meta else []),
                html.A(f"Prefect: {run.name}", href=run.prefect_url, target="_blank", rel="noopener"),
            ],
        ),
    ]
    if run.active and run.progress is not None:
        children.append(html.Progress(value=f"{run.progress:.3g}", max="100", title=f"{run.progress:.0f} %"))
    if last_epoch and last_epoch.get("loss") is not None:
        children.append(html.Div(f"epoch {last_epoch['epoch']} · loss {last_epoch['loss']:.4f}", className="details"))
    if run.failed and run.message:
        children.append(html.P(run.message, className="failure"))
    if run.log_lines and (run.active or run.failed):
        children.append(html.Pre("\n".join(run.log_lines), className="log"))
    if run.active:
        children.append(html.Button("Cancel", id={"type": "job-cancel", "run": run.id}))
    return html.Div(className="job selected" if selected else "job", children=children)


def loss_figure(run: RunSummary) -> go.Figure:
    epochs = [row["epoch"] for row in run.epochs]
    figure = go.Figure(go.Scatter(x=epochs, y=[row.get("loss") for row in run.epochs], name="loss", mode="lines+markers"))
    scores = [row.get("val_score") for row in run.epochs]
    if any(score is not None for score in scores):
        figure.add_trace(go.Scatter(x=epochs, y=scores, name="validation IoU", mode="lines", yaxis="y2"))
    figure.update_layout(
        height=180, margin=dict(l=40, r=40, t=10, b=30), template="plotly_dark", legend=dict(orientation="h", y=1.15),
        xaxis_title="epoch", yaxis2=dict(overlaying="y", side="right", range=[0, 1]),
    )
    return figure
