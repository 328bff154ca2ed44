"""Tiled's server from tiled_config/config.yml, as `tiled serve config` runs it, less what leaks its secrets.

    python -m mlex_tomo.stack.tiled_server tiled_config/config.yml --host 127.0.0.1 --port 8000

`tiled serve config` prints a start-up banner holding `?api_key=<key>`, which went
into the stack's log; and a catalog with `init_if_not_exists` is initialised by a
`tiled catalog init <uri>` subprocess, whose command line (a Postgres password
included) any local user can read, and which is logged when it fails. Here the
catalog is initialised in this process, and the server starts without the banner.
The catalog URI comes from MLEX_TILED_CATALOG_URI, as the config file's does.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CATALOG_URI_VARIABLE = "MLEX_TILED_CATALOG_URI"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlex_tomo.stack.tiled_server", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="Tiled's configuration file (tiled_config/config.yml)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    arguments = parser.parse_args(argv)
    catalog_uri = os.environ.get(CATALOG_URI_VARIABLE)
    if not catalog_uri:
        print(f"tiled_server: set {CATALOG_URI_VARIABLE} to the catalog's database URI", file=sys.stderr)
        return 2

    import uvicorn
    from tiled.commandline._catalog import init as initialise_catalog  # Tiled 0.2.18; in-process, URI redacted in what it prints
    from tiled.config import parse_configs
    from tiled.server.app import build_app_from_config
    from tiled.server.logging_config import LOGGING_CONFIG

    initialise_catalog(catalog_uri, if_not_exists=True)
    app = build_app_from_config(parse_configs(arguments.config))
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_config=LOGGING_CONFIG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
