"""What `mlex-tomo up` runs: one entry per embedded service, in start-up waves."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlex_tomo.settings import CONFIG_FILE_VARIABLE, StackSettings, secrets_as_environment, settings_as_yaml
from stack import activemq
from mlex_tomo.health import (
    Health,
    broker_health,
    ingester_health,
    postgres_health,
    prefect_health,
    tiled_health,
    ui_health,
    worker_health,
)


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    probe: Callable[[StackSettings], Health]
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    """Setting name -> port this service will listen on, checked free before start."""


def embedded_services(settings: StackSettings) -> tuple[list[Service], list[Service], list[Service]]:
    """Databases, servers, then their clients: each wave starts once the one before is healthy.

    A service configured with an external URL (`tiled.url`, `prefect.api_url`,
    `broker.url`) is not started; its probe still runs in `mlex-tomo status`.
    """
    databases = [postgres_service(settings)] if uses_embedded_postgres(settings) else []
    servers = []
    if settings.broker.embedded:
        servers.append(broker_service(settings))
    if settings.tiled.embedded:
        servers.append(tiled_service(settings))
    if settings.prefect.embedded:
        servers.append(prefect_server_service(settings))
    return databases, servers, [worker_service(settings), ingester_service(settings), ui_service(settings)]


def uses_embedded_postgres(settings: StackSettings) -> bool:
    """Only when an embedded Tiled or Prefect would use it: an external or configured database needs none."""
    tiled_uses = settings.tiled.embedded and not settings.tiled.catalog_uri
    prefect_uses = settings.prefect.embedded and not settings.prefect.database_url
    return settings.postgres.embedded and (tiled_uses or prefect_uses)


def postgres_service(settings: StackSettings) -> Service:
    postgres = settings.postgres
    return Service(
        name="postgres",
        command=[sys.executable, "-m", "stack.postgres", *postgres_arguments(settings)],
        probe=postgres_health,
        ports={"postgres.port": postgres.port},
    )


def postgres_arguments(settings: StackSettings) -> list[str]:
    postgres = settings.postgres
    arguments = [
        "--data", str(settings.data_path / "postgres"), "--password-file", str(settings.postgres_password_path),
        "--host", postgres.host, "--port", str(postgres.port), "--user", postgres.user,
    ]
    if postgres.bin_dir is not None:
        arguments += ["--bin-dir", str(postgres.bin_dir)]
    return arguments


def broker_service(settings: StackSettings) -> Service:
    broker = settings.broker
    return Service(
        name="broker",
        command=activemq.broker_command(broker, settings.data_path / "activemq"),
        probe=broker_health,
        ports={"broker.stomp_port": broker.stomp_port, "broker.openwire_port": broker.openwire_port},
    )


def tiled_service(settings: StackSettings) -> Service:
    tiled = settings.tiled
    api_key = tiled.api_key.get_secret_value() if tiled.api_key else ""
    catalog = settings.tiled_catalog_uri
    return Service(
        name="tiled",
        command=[
            sys.executable, "-m", "stack.tiled_server", str(tiled.config_path),
            "--host", tiled.host, "--port", str(tiled.port),
        ],
        probe=tiled_health,
        env={
            "TILED_SINGLE_USER_API_KEY": api_key,
            "MLEX_TILED_CATALOG_URI": catalog,
            "MLEX_TILED_READABLE_DIR": str(settings.recons_path),
            "MLEX_TILED_WRITABLE_DIR": str(settings.writable_path),
        },
        ports={"tiled.port": tiled.port},
    )


def prefect_server_service(settings: StackSettings) -> Service:
    prefect = settings.prefect
    database = settings.prefect_database_url
    return Service(
        name="prefect",
        command=[
            sys.executable, "-m", "prefect", "server", "start",
            "--host", prefect.host, "--port", str(prefect.port),
        ],
        probe=prefect_health,
        env={
            **prefect_client_environment(settings),
            "PREFECT_API_DATABASE_CONNECTION_URL": database,
        },
        ports={"prefect.port": prefect.port},
    )


def worker_service(settings: StackSettings) -> Service:
    """`mlex-tomo worker`: removes what a crashed worker left (flows/leftovers.py), then becomes Prefect's worker."""
    return Service(name="worker", command=mlex_tomo_command(settings, "worker"), probe=worker_health, env=worker_environment(settings))


def prefect_worker_command(settings: StackSettings) -> list[str]:
    prefect = settings.prefect
    command = [
        sys.executable, "-m", "prefect", "worker", "start",
        "--pool", prefect.work_pool, "--type", "process",
        "--name", prefect.worker_name or f"{socket.gethostname()}-{prefect.work_pool}",
    ]
    for queue in prefect.worker_queues:
        command += ["--work-queue", queue]
    if prefect.worker_limit is not None:
        command += ["--limit", str(prefect.worker_limit)]
    return command


def worker_environment(settings: StackSettings) -> dict[str, str]:
    return {
        **prefect_client_environment(settings),
        "PREFECT_WORKER_QUERY_SECONDS": str(settings.prefect.worker_query_seconds),
        # Flow runs inherit these: the stack's settings, and its secrets by environment only.
        CONFIG_FILE_VARIABLE: str(child_settings_path(settings)),
        **secrets_as_environment(settings),
    }


def ingester_service(settings: StackSettings) -> Service:
    return Service(
        name="ingester",
        command=mlex_tomo_command(settings, "ingester"),
        probe=ingester_health,
        env=secrets_as_environment(settings),
    )


def ui_service(settings: StackSettings) -> Service:
    return Service(
        name="ui",
        command=mlex_tomo_command(settings, "ui"),
        probe=ui_health,
        # Each request thread's freed 8 MiB slice buffers otherwise stay in its own glibc
        # arena: measured 886 -> 687 MiB peak RSS while browsing (docs/benchmarks.md).
        env={"MALLOC_ARENA_MAX": "2", **secrets_as_environment(settings)},
        ports={"ui.port": settings.ui.port},
    )


def mlex_tomo_command(settings: StackSettings, subcommand: str) -> list[str]:
    """`mlex-tomo SUBCOMMAND` reading the settings `up` resolved (see `write_child_settings`)."""
    config = str(child_settings_path(settings))
    return [sys.executable, "-m", "stack.cli", subcommand, "--config", config]


def child_settings_path(settings: StackSettings) -> Path:
    return settings.run_path / "settings.yaml"


def write_child_settings(settings: StackSettings) -> None:
    """Children read the resolved settings from a file; their secrets come by environment."""
    path = child_settings_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = path.with_name(f".{path.name}.{os.getpid()}")  # a part restarting meanwhile reads the old file or the new, whole
    written.write_text(settings_as_yaml(settings))
    written.replace(path)


def prefect_client_environment(settings: StackSettings) -> dict[str, str]:
    """Prefect's own variables for anything of ours that talks to the Prefect API."""
    return {
        "PREFECT_HOME": str(settings.data_path / "prefect"),
        "PREFECT_API_URL": settings.prefect.resolved_api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
    }
