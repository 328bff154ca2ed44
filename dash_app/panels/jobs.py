"""Jobs: choose a model, Train or Segment volume through Prefect, and follow the runs.

The form comes from the job's parameter models (`dash_app.model_form`); the runs are
Prefect flow runs of the `segmentation` deployment (`dash_app.runs`), listed with their
state, progress, loss, last log lines, a cancel button and a link to the Prefect UI.
A run that fails raises a notification that says why.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import plotly.graph_objects as go
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update
from pydantic import ValidationError

from dash_app import model_form
from dash_app.runs import RunSummary, SegmentationRuns, selected_run, summaries_from_store
from flows.segmentation import SegmentationRequest
from mlex_tomo.settings import StackSettings
from mlex_tomo.tiled_names import RECONS

NOTIFICATIONS_KEPT = 5


def layout(settings: StackSettings) -> html.Div:
    return html.Div(
        className="panel jobs",
        children=[
            html.H2("Segment"),
            html.Label(
                className="form-row",
                children=[
                    html.Span("model"),
                    dcc.Dropdown(id="model-name", options=list(model_form.MODELS), value=model_form.DEFAULT_MODEL, clearable=False),
                ],
            ),
            html.Div(id="model-form", children=model_form.render(model_form.DEFAULT_MODEL)),
            html.Ul(id="model-errors", className="errors"),
            html.Div(
                className="row",
                children=[
                    html.Button("Train", id="train", title="Train on the painted labels, then segment the painted slices"),
                    html.Button("Segment volume", id="segment-volume", title="Segment every slice with the selected job's model"),
                ],
            ),
            html.Div(id="job-start-status", className="details"),
            html.H2("Jobs"),
            html.Div(id="job-list", className="job-list"),
            html.Div(id="loss-title", className="details"),
            dcc.Graph(id="loss-plot", className="loss-plot", config={"displayModeBar": False}, style={"display": "none"}),
            dcc.Store(id="runs"),
            dcc.Store(id="selected-run"),
            dcc.Store(id="known-failures"),
            dcc.Store(id="notifications", data=[]),
            dcc.Interval(id="jobs-refresh", interval=settings.ui.jobs_refresh_seconds * 1000),
        ],
    )


def notifications_layout() -> html.Div:
    return html.Div(id="notification-list", className="notifications", role="alert")


def job_name_for(scan: str) -> str:
    """A job name (the prefix of job ids) from the scan's key, within the flow's pattern."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", scan).lstrip("._-")[:40]
    return name or "segmentation"


def register_callbacks(app: Dash, settings: StackSettings) -> None:
    runs = SegmentationRuns(settings)

    @app.callback(Output("model-form", "children"), Input("model-name", "value"), prevent_initial_call=True)
    def show_form(model_name: str):
        return model_form.render(model_name)

    @app.callback(
        Output("model-errors", "children"), Output("train", "disabled"),
        Output({"type": model_form.FIELD_ID, "name": ALL}, "className"),
        Input({"type": model_form.FIELD_ID, "name": ALL}, "value"),
        State({"type": model_form.FIELD_ID, "name": ALL}, "id"), State("model-name", "value"),
    )
    def validate(values: list[Any], ids: list[dict], model_name: str):
        """The errors listed under the form, and each field at fault marked where it is."""
        names = [control["name"] for control in ids]
        if set(names) != {field.name for field in model_form.form_fields(model_name)}:
            return no_update, no_update, [no_update] * len(names)  # the form of another model is still on screen
        parameters, errors = model_form.parameters_from_form(model_name, names, values)
        at_fault = {error.split(":", 1)[0].split(".", 1)[0] for error in errors}
        return [html.Li(error) for error in errors], parameters is None, ["invalid" if name in at_fault else "" for name in names]

    @app.callback(
        Output("job-start-status", "children"), Output("selected-run", "data"),
        Input("train", "n_clicks"),
        State("scan", "value"), State("mask-path", "data"), State("annotations", "data"), State("model-name", "value"),
        State({"type": model_form.FIELD_ID, "name": ALL}, "value"), State({"type": model_form.FIELD_ID, "name": ALL}, "id"),
        prevent_initial_call=True,
    )
    def train(_, scan, mask_path, annotations, model_name, values, ids):
        """Reads the form as it is at the click, not as the last validation saw it."""
        if scan is None:
            return "Pick a scan first.", no_update
        parameters, errors = model_form.parameters_from_form(model_name, [control["name"] for control in ids], values)
        if parameters is None:
            return f"Fix the model first: {'; '.join(errors)}", no_update
        painted = {stroke["class_id"] for stroke in (annotations or {}).get("strokes", [])}
        if mask_path is None or len(painted - {None}) < 2:
            return "Paint at least two classes first: a model learns to tell them apart.", no_update
        request = SegmentationRequest(
            steps="train", job_name=job_name_for(scan), data=f"{RECONS}/{scan}", mask=mask_path, model=parameters,
        )
        return start(scan, request)

    @app.callback(
        Output("job-start-status", "children", allow_duplicate=True), Output("selected-run", "data", allow_duplicate=True),
        Input("segment-volume", "n_clicks"),
        State("scan", "value"), State("runs", "data"), State("selected-run", "data"),
        prevent_initial_call=True,
    )
    def segment_volume(_, scan, shown_runs, selected):
        if scan is None:
            return "Pick a scan first.", no_update
        trained = [run for run in summaries_from_store(shown_runs) if run.completed and "train" in run.job_ids]
        chosen = next((run for run in trained if run.id == selected), trained[0] if trained else None)
        if chosen is None:
            return "Train a model first (or select a finished training job).", no_update
        request = SegmentationRequest(
            steps="infer", job_name=job_name_for(scan), data=f"{RECONS}/{scan}", trained_job_id=chosen.job_ids["train"],
        )
        return start(scan, request)

    def start(scan: str, request: SegmentationRequest) -> tuple[str, Any]:
        try:
            run_id = runs.start(scan, request)
        except (ValidationError, OSError, RuntimeError) as error:
            return f"Could not start the job: {error}", no_update
        return f"Started: {request.steps.replace('_', ' ')} with {request.model.name if request.model else request.trained_job_id}.", run_id

    @app.callback(
        Output("runs", "data"), Output("known-failures", "data"),
        Output("notifications", "data", allow_duplicate=True),
        Input("jobs-refresh", "n_intervals"), Input("scan", "value"), Input("selected-run", "data"),
        State("runs", "data"), State("known-failures", "data"), State("notifications", "data"),
        prevent_initial_call="initial_duplicate",
    )
    def follow(_, scan, selected, shown, known_failures, notifications):
        if scan is None:
            return (None if shown else no_update), no_update, no_update
        try:
            current = [run.model_dump(mode="json") for run in runs.recent(scan)]
        except Exception as error:  # noqa: BLE001 - Prefect down: say so in the list, keep trying
            unreachable = [{"error": f"Prefect unreachable: {error}"}]
            return no_update if unreachable == shown else unreachable, no_update, no_update
        failed = {run["id"]: run for run in current if RunSummary.model_validate(run).failed}
        if known_failures is None:  # failures from before this page was opened are in the list, not notified
            return current, sorted(failed), no_update
        fresh = [failed[run_id] for run_id in failed if run_id not in known_failures]
        notes = notifications + [
            {"id": run["id"], "title": f"{RunSummary.model_validate(run).title} failed", "message": run["message"] or "no message"}
            for run in fresh
        ]
        return (
            no_update if current == shown else current,
            sorted(set(known_failures) | set(failed)) if fresh else no_update,
            notes[-NOTIFICATIONS_KEPT:] if fresh else no_update,
        )

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

    @app.callback(Output("notification-list", "children"), Input("notifications", "data"))
    def show_notifications(notes):
        return [
            html.Div(
                className="toast",
                children=[
                    html.Strong(note["title"]), html.P(note["message"]),
                    html.Button("Dismiss", id={"type": "dismiss-notification", "run": note["id"]}),
                ],
            )
            for note in notes or []
        ]

    @app.callback(
        Output("notifications", "data", allow_duplicate=True),
        Input({"type": "dismiss-notification", "run": ALL}, "n_clicks"), State("notifications", "data"),
        prevent_initial_call=True,
    )
    def dismiss(clicks, notes):
        if not any(clicks):
            return no_update
        return [note for note in notes if note["id"] != ctx.triggered_id["run"]]


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
