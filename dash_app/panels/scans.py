"""The scan browser: every scan under /recons, newest first, searchable; new ones appear by themselves."""

from __future__ import annotations

from dash import Dash, Input, Output, State, dcc, html, no_update

from dash_app.address import view_from_address
from dash_app.volumes import ScanLibrary, ScanSummary
from mlex_tomo.settings import StackSettings


def layout(settings: StackSettings) -> html.Div:
    return html.Div(
        className="panel scans",
        children=[
            html.H2("Scans"),
            dcc.Dropdown(id="scan", placeholder="Pick a scan (type to search)", searchable=True, clearable=False),
            html.Div(id="scan-details", className="details"),
            dcc.Interval(id="scan-refresh", interval=settings.ui.scan_refresh_seconds * 1000),
        ],
    )


NO_SCANS_YET = (
    "No scans in Tiled yet. A reconstruction announced on the broker appears here by itself; "
    "`mlex-tomo ingest PATH` registers a file by hand, and `mlex-tomo simulate-scan --name demo` makes a test scan."
)


def option(scan: ScanSummary) -> dict:
    shape = " x ".join(str(extent) for extent in scan.shape)
    return {"label": f"{scan.key} ({shape}, {scan.dtype})", "value": scan.key, "search": scan.key}


def register_callbacks(app: Dash, library: ScanLibrary) -> None:
    @app.callback(
        Output("scan", "options"), Input("scan-refresh", "n_intervals"), State("scan", "options"), State("scan", "value"),
    )
    def list_scans(_: int | None, shown: list[dict] | None, chosen: str | None) -> list[dict]:
        options = [option(scan) for scan in library.scans()]
        if chosen is not None and all(entry["value"] != chosen for entry in options):
            # Kept, so the selection (and what is painted on it) does not silently disappear.
            options.append({"label": f"{chosen} (removed from Tiled)", "value": chosen, "search": chosen, "disabled": True})
        return no_update if options == shown else options  # an open list must not be redrawn under the pointer

    @app.callback(
        Output("scan", "value"), Output("axis", "value"),
        Input("scan", "options"), State("address", "search"), State("scan", "value"),
    )
    def open_from_address(options: list[dict] | None, search: str | None, chosen: str | None):
        """A reload or a shared link opens the scan and axis its address names, once the scan is listed."""
        wanted = view_from_address(search)
        if chosen is not None or wanted is None or all(entry["value"] != wanted.scan for entry in options or []):
            return no_update, no_update
        return wanted.scan, wanted.axis

    @app.callback(Output("scan-details", "children"), Input("scan", "value"), Input("scan", "options"))
    def describe(scan: str | None, options: list[dict] | None) -> list:
        if scan is None:
            return [html.P("Pick a scan above." if options else NO_SCANS_YET)]
        summary = next((found for found in library.scans() if found.key == scan), None)
        if summary is None:
            return [html.P(f"{scan} was removed from Tiled. Its painted labels stay saved under /masks; pick another scan.", className="warning")]
        return [
            html.Dl(
                children=[
                    html.Dt("shape (z, y, x)"), html.Dd(" x ".join(str(extent) for extent in summary.shape)),
                    html.Dt("dtype"), html.Dd(summary.dtype),
                    html.Dt("format"), html.Dd(summary.format or "-"),
                    html.Dt("ingested"), html.Dd(summary.ingested_at or "-"),
                ]
            )
        ]
