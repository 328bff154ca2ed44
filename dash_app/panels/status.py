"""Health of the services the app depends on, refreshed periodically."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from dash import Dash, Input, Output, dcc, html

from mlex_tomo.settings import StackSettings
from mlex_tomo.health import broker_health, prefect_health, tiled_health, worker_health

PROBES = (tiled_health, prefect_health, worker_health, broker_health)


def layout(settings: StackSettings) -> html.Div:
    return html.Div(
        className="status",
        children=[
            html.Ul(id="service-status", className="badges"),
            dcc.Interval(id="status-refresh", interval=settings.ui.status_refresh_seconds * 1000),
        ],
    )


def register_callbacks(app: Dash, settings: StackSettings) -> None:
    @app.callback(Output("service-status", "children"), Input("status-refresh", "n_intervals"))
    def refresh(_: int | None) -> list[html.Li]:
        with ThreadPoolExecutor(len(PROBES)) as pool:
            report = list(pool.map(lambda probe: probe(settings), PROBES))
        return [
            html.Li(
                health.service,
                className="badge up" if health.healthy else "badge down",
                title=f"{health.url} {health.detail}".strip(),
            )
            for health in report
        ]
