"""Jobs: choose a model and Train or Segment volume through Prefect.

The form comes from the job's parameter models (`dash_app.model_form`); a click
starts a run of the `segmentation` deployment (`dash_app.runs`), which the job list
(`dash_app.panels.job_list`) then follows.
"""

from __future__ import annotations

import re
from typing import Any

from dash import ALL, Dash, Input, Output, State, dcc, html, no_update
from pydantic import ValidationError

from dash_app import model_form
from dash_app.annotations import Annotations, training_problems
from dash_app.panels import job_list
from dash_app.runs import SegmentationRuns, summaries_from_store
from dash_app.volumes import ScanLibrary, ScanNotFound, UnreadableScan
from flows.segmentation import SegmentationRequest
from mlex_tomo.settings import StackSettings
from mlex_tomo.tiled_names import RECONS


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
            *job_list.layout(settings),
        ],
    )


def job_name_for(scan: str) -> str:
    """A job name (the prefix of job ids) from the scan's key, within the flow's pattern."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", scan).lstrip("._-")[:40]
    return name or "segmentation"


def register_callbacks(app: Dash, runs: SegmentationRuns, library: ScanLibrary) -> None:
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
        if annotations is None:
            return "Paint at least two classes first: a model learns to tell them apart.", no_update
        try:
            shape = library.volume(scan).shape
        except (ScanNotFound, UnreadableScan) as error:
            return f"Cannot train: {error}.", no_update
        problems = training_problems(Annotations.model_validate(annotations), shape)
        if problems or mask_path is None:
            return f"Cannot train yet: {'; '.join(problems or ['the labels are not saved yet'])}.", no_update
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
