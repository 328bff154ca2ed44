"""Tiled's server from tiled_config/config.yml, as `tiled serve config` runs it, less what leaks its secrets.

    python -m stack.tiled_server tiled_config/config.yml --host 127.0.0.1 --port 8000

`tiled serve config` prints a start-up banner holding `?api_key=<key>`, which went
into the stack's log; and a catalog with `init_if_not_exists` is initialised by a
`tiled catalog init <uri>` subprocess, whose command line (a Postgres password
included) any local user can read, and which is logged when it fails. Here the
catalog is initialised in this process, and the server starts without the banner.
Tiled also logs the catalog URI at start-up ("Initializing links store with shared DB
pool: ..."): every log line passes through `RedactPasswords` first.
The catalog URI comes from MLEX_TILED_CATALOG_URI, as the config file's does.

The top-level containers every part writes under (/recons, /masks, /results) are
created here too, before the server answers: a client that sees Tiled up finds them,
with no one-shot init service to order after it.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
import re
import sys
from pathlib import Path

CATALOG_URI_VARIABLE = "MLEX_TILED_CATALOG_URI"
URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


class RedactPasswords(logging.Filter):
    """Replaces the password of any `scheme://user:password@host` in a log line with ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = URL_PASSWORD.sub(r"\1***@", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def logging_config() -> dict:
    """Tiled's uvicorn logging, every handler behind RedactPasswords."""
    from tiled.server.logging_config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"]["redact_passwords"] = {"()": "stack.tiled_server.RedactPasswords"}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact_passwords", *handler.get("filters", [])]
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.tiled_server", description=__doc__.splitlines()[0])
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

    initialise_catalog(catalog_uri, if_not_exists=True)
    created = asyncio.run(create_top_level_containers(catalog_uri))
    if created:
        print(f"tiled_server: created the containers {', '.join('/' + name for name in created)}", flush=True)
    app = build_app_from_config(parse_configs(arguments.config))
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_config=logging_config())
    return 0


async def create_top_level_containers(catalog_uri: str) -> list[str]:
    """The containers of mlex_tomo.tiled_layout that the catalog lacks, created; their names."""
    from tiled.catalog import from_uri
    from tiled.structures.core import StructureFamily

    from mlex_tomo.tiled_layout import CONTAINER_DESCRIPTIONS
    from mlex_tomo.tiled_names import TOP_LEVEL_CONTAINERS

    catalog = from_uri(catalog_uri)
    await catalog.startup()
    try:
        existing = set(await catalog.keys_range(0, None))
        missing = [name for name in TOP_LEVEL_CONTAINERS if name not in existing]
        for name in missing:
            await catalog.create_node(StructureFamily.container, {"description": CONTAINER_DESCRIPTIONS[name]}, key=name)
    finally:
        await catalog.shutdown()
    return missing


if __name__ == "__main__":
    sys.exit(main())
