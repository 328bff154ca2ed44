"""Health probes: each asks a service the question its users depend on."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil

import httpx

from mlex_tomo.settings import StackSettings

PROBE_TIMEOUT_SECONDS = 3.0
# The ingester rewrites its status file every 2 s; older than this means hung or gone.
INGESTER_STATUS_STALE_SECONDS = 10.0


@dataclass(frozen=True)
class Health:
    service: str
    healthy: bool
    url: str
    detail: str = ""


def tiled_health(settings: StackSettings) -> Health:
    url = settings.tiled.base_url
    return _http_health("tiled", url, f"{url}/healthz")


def prefect_health(settings: StackSettings) -> Health:
    api = settings.prefect.resolved_api_url
    return _http_health("prefect", api.removesuffix("/api"), f"{api}/health")


def worker_health(settings: StackSettings) -> Health:
    """Healthy when at least one worker of the pool has sent a heartbeat recently."""
    api = settings.prefect.resolved_api_url
    pool = settings.prefect.work_pool
    label = f"work pool {pool!r}"
    try:
        response = httpx.post(
            f"{api}/work_pools/{pool}/workers/filter", json={}, timeout=PROBE_TIMEOUT_SECONDS
        )
    except httpx.HTTPError as error:
        return Health("worker", False, label, f"Prefect API unreachable: {error}")
    if response.status_code == 404:
        return Health("worker", False, label, "work pool does not exist")
    if response.status_code != 200:
        return Health("worker", False, label, f"HTTP {response.status_code}")
    online = [worker["name"] for worker in response.json() if worker.get("status") == "ONLINE"]
    if not online:
        return Health("worker", False, label, "no worker online")
    return Health("worker", True, label, f"{len(online)} online: {', '.join(online)}")


def broker_health(settings: StackSettings) -> Health:
    """A STOMP CONNECT answered by CONNECTED, not merely an open port."""
    host, port = settings.broker.stomp_address
    url = f"stomp://{host}:{port}"
    frame = "CONNECT\naccept-version:1.2\nhost:/\n"
    if settings.broker.user:
        frame += f"login:{settings.broker.user}\n"
        if settings.broker.password:
            frame += f"passcode:{settings.broker.password.get_secret_value()}\n"
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS) as connection:
            connection.sendall((frame + "\n\0").encode())
            reply = connection.recv(4096).decode(errors="replace")
            connection.sendall(b"DISCONNECT\n\n\0")
    except OSError as error:
        return Health("broker", False, url, str(error))
    command = reply.lstrip("\n").split("\n", 1)[0]
    if command != "CONNECTED":
        message = next((line for line in reply.splitlines() if line.startswith("message:")), command)
        return Health("broker", False, url, f"STOMP answered {message!r}")
    return Health("broker", True, url)


def ingester_health(settings: StackSettings) -> Health:
    """Read the status file a local ingester keeps fresh (see ingester/status.py)."""
    label = settings.ingester.destination
    path = settings.ingester_status_path
    try:
        status = json.loads(path.read_text())
        age = (datetime.now(UTC) - datetime.fromisoformat(status["updated_at"])).total_seconds()
        pid = int(status["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return Health("ingester", False, label, f"no ingester status at {path}")
    if status.get("stopped") or not psutil.pid_exists(pid):
        return Health("ingester", False, label, "not running")
    if age > INGESTER_STATUS_STALE_SECONDS:
        return Health("ingester", False, label, f"status not updated for {age:.0f} s")
    if not status.get("connected"):
        return Health("ingester", False, label, "not connected to the broker")
    counts = ", ".join(f"{count} {kind}" for kind, count in sorted(status.get("counts", {}).items()))
    return Health("ingester", True, label, counts)


def postgres_health(settings: StackSettings) -> Health:
    """A login to the catalog's database with the generated password, not merely an open port."""
    import asyncio

    import asyncpg

    postgres = settings.postgres
    url = f"postgresql://{postgres.host}:{postgres.port}"
    try:
        password = settings.postgres_password_path.read_text().strip()
    except OSError as error:
        return Health("postgres", False, url, f"no password: {error.strerror}")

    async def log_in() -> None:
        connection = await asyncpg.connect(
            host=postgres.host, port=postgres.port, user=postgres.user, password=password, database="tiled",
            timeout=PROBE_TIMEOUT_SECONDS,
        )
        await connection.close()

    try:
        asyncio.run(log_in())
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as error:
        return Health("postgres", False, url, str(error) or type(error).__name__)
    return Health("postgres", True, url)


def _http_health(service: str, url: str, probe_url: str) -> Health:
    try:
        response = httpx.get(probe_url, timeout=PROBE_TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        return Health(service, False, url, f"unreachable: {error}")
    if response.status_code != 200:
        return Health(service, False, url, f"HTTP {response.status_code} from {probe_url}")
    return Health(service, True, url)


def ui_health(settings: StackSettings) -> Health:
    url = settings.ui.url
    return _http_health("ui", url, f"{url}/healthz")


def stack_health(settings: StackSettings) -> list[Health]:
    probes = (broker_health, tiled_health, prefect_health, worker_health, ingester_health, ui_health)
    if settings.postgres.embedded:
        probes = (postgres_health, *probes)
    return [probe(settings) for probe in probes]
