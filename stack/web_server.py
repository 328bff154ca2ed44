"""The web app under gunicorn: what `mlex-tomo ui` runs, in `mlex-tomo up` and in compose.

One process, because the slice cache, the job list and the training previews live in
it; threads (`ui.threads`) serve concurrent slice requests. On SIGTERM in-flight
requests get `STOP_GRACE_SECONDS`, not gunicorn's default 30 s: a slice read ahead
waiting on a slow Tiled must not hold a shutdown.
"""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from mlex_tomo.settings import StackSettings

STOP_GRACE_SECONDS = 2
REQUEST_TIMEOUT_SECONDS = 120  # a whole-volume read ahead of a slow store may take this long


class WebAppServer(BaseApplication):
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        ui = self.settings.ui
        options = {
            "bind": [f"{ui.host}:{ui.port}"],
            "workers": 1,
            "worker_class": "gthread",
            "threads": ui.threads,
            "graceful_timeout": STOP_GRACE_SECONDS,
            "timeout": REQUEST_TIMEOUT_SECONDS,
        }
        for name, value in options.items():
            self.cfg.set(name, value)

    def load(self):
        from dash_app.app import create_app

        return create_app(self.settings).server
