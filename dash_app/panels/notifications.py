"""Notifications: a toast for each run that fails while the page is open, saying why."""

from __future__ import annotations

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from dash_app.runs import RunSummary

NOTIFICATIONS_KEPT = 5


def layout() -> html.Div:
    return html.Div(
        [
            html.Div(id="notification-list", className="notifications", role="alert"),
            dcc.Store(id="known-failures"),
            dcc.Store(id="notifications", data=[]),
        ]
    )


def failure_notes(runs: list[dict] | None, known_failures: list[str] | None) -> tuple[list[str] | None, list[dict]]:
    """(the failed runs known now, notes for those that failed since the last look).

    Failures from before the page was opened are in the list, not notified.
    """
    if not runs or "error" in runs[0]:
        return None, []
    failed = [run for run in runs if RunSummary.model_validate(run).failed]
    if known_failures is None:
        return sorted(run["id"] for run in failed), []
    fresh = [run for run in failed if run["id"] not in known_failures]
    notes = [
        {"id": run["id"], "title": f"{RunSummary.model_validate(run).title} failed", "message": run["message"] or "no message"}
        for run in fresh
    ]
    return sorted(set(known_failures) | {run["id"] for run in failed}), notes


def register_callbacks(app: Dash) -> None:
    @app.callback(
        Output("known-failures", "data"), Output("notifications", "data", allow_duplicate=True),
        Input("runs", "data"), State("known-failures", "data"), State("notifications", "data"),
        prevent_initial_call=True,
    )
    def notify(runs, known_failures, notes):
        known, fresh = failure_notes(runs, known_failures)
        if known is None or (known == known_failures and not fresh):
            return no_update, no_update
        return known, ((notes or []) + fresh)[-NOTIFICATIONS_KEPT:] if fresh else no_update

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


