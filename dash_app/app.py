"""The segmentation web app: one Dash app whose server also serves slice images.

`create_app` wires the panels (one module each under `dash_app/panels/`, each with its
layout and its callbacks) to one `ScanLibrary`, the only thing that talks to Tiled.
"""

from __future__ import annotations

import base64
import secrets

from dash import Dash, dcc, html
from flask import Flask, Response, request

from dash_app.masks import MaskOverlays
from dash_app.preview import LivePreviews
from dash_app.results import ResultOverlays
from dash_app.panels import annotate, job_list, jobs, notifications, scans, status, viewer
from dash_app.panels import results as results_panel
from dash_app.routes import slice_routes
from dash_app.runs import SegmentationRuns
from dash_app.volumes import ScanLibrary
from mlex_tomo.settings import StackSettings
from mlex_tomo.tiled_layout import connect_http

TITLE = "mlex-tomo"


def create_app(settings: StackSettings) -> Dash:
    server = Flask(__name__)
    server.add_url_rule("/healthz", "healthz", lambda: "ok")
    tiled = connect_http(settings)  # one pooled connection for every thread
    library = ScanLibrary(tiled, settings.ui.image_cache_mib * 2**20)
    results = ResultOverlays(tiled)
    masks = MaskOverlays(tiled)
    previews = LivePreviews(library, masks, settings.ui.preview_cache_mib * 2**20)
    server.register_blueprint(slice_routes(library, masks, results, previews))
    if settings.ui.login_required:
        _require_basic_auth(server, settings)
    app = Dash(__name__, server=server, title=TITLE, update_title=None, suppress_callback_exceptions=True)
    app.layout = html.Div(
        className="app",
        children=[
            html.Header(className="header", children=[html.H1(TITLE), status.layout(settings)]),
            html.Main(
                className="main",
                children=[
                    html.Aside(className="sidebar", children=[scans.layout(settings), annotate.layout()]),
                    html.Section(className="workspace", children=[viewer.layout()]),
                    html.Aside(className="sidebar jobs-column", children=[jobs.layout(settings), results_panel.layout()]),
                ],
            ),
            notifications.layout(),
            dcc.Store(id="display-defaults"),
            dcc.Location(id="address", refresh=False),  # the view, written by assets/view_address.js
        ],
    )
    scans.register_callbacks(app, library)
    viewer.register_callbacks(app, library)
    annotate.register_callbacks(app, settings, tiled, previews)
    status.register_callbacks(app, settings)
    runs = SegmentationRuns(settings)
    jobs.register_callbacks(app, runs, library)
    job_list.register_callbacks(app, runs)
    notifications.register_callbacks(app)
    results_panel.register_callbacks(app, results)
    return app


def _require_basic_auth(server: Flask, settings: StackSettings) -> None:
    """HTTP basic auth on every route, pages, callbacks and images alike."""
    username = settings.ui.username or ""
    password = settings.ui.password.get_secret_value() if settings.ui.password else ""
    expected = base64.b64encode(f"{username}:{password}".encode())

    @server.before_request
    def check_credentials() -> Response | None:
        if request.path == "/healthz":
            return None
        given = request.headers.get("Authorization", "")
        # Compared as bytes: compare_digest refuses a str with non-ASCII characters (a 500, not a 401).
        if given.startswith("Basic ") and secrets.compare_digest(given[len("Basic "):].encode("latin-1", "replace"), expected):
            return None
        return Response(
            "Log in to use mlex-tomo.", 401, {"WWW-Authenticate": 'Basic realm="mlex-tomo", charset="UTF-8"'}
        )
