"""stack.tiled_server: what the Tiled service does before it answers, and what it never logs."""

from __future__ import annotations

import asyncio
import logging
import logging.config

from stack.tiled_server import create_top_level_containers, logging_config
from mlex_tomo.tiled_names import TOP_LEVEL_CONTAINERS

PASSWORD = "pa55w0rd42"


def test_no_log_line_holds_a_database_password(capsys):
    logging.config.dictConfig(logging_config())
    try:
        # What Tiled 0.2.18 logs at start-up with a Postgres catalog.
        logging.getLogger("tiled.graph.router").info(
            "Initializing links store with shared DB pool: %s", f"postgresql+asyncpg://mlex:{PASSWORD}@postgres:5432/tiled"
        )
        logging.getLogger("uvicorn.error").warning("cannot reach postgresql://mlex:%s@db:5432/prefect", PASSWORD)
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    logged = capsys.readouterr().err
    assert "postgresql+asyncpg://mlex:***@postgres:5432/tiled" in logged and "mlex:***@db:5432" in logged
    assert PASSWORD not in logged


def test_the_top_level_containers_are_created_once(tmp_path):
    from tiled.commandline._catalog import init as initialise_catalog

    uri = f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}"
    initialise_catalog(uri, if_not_exists=True)
    assert asyncio.run(create_top_level_containers(uri)) == list(TOP_LEVEL_CONTAINERS)
    assert asyncio.run(create_top_level_containers(uri)) == []
