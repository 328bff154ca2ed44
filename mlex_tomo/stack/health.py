"""Health probes: each asks a service the question its users depend on."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import httpx

from mlex_tomo.settings import StackSettings

PROBE_TIMEOUT_SECONDS = 3.0


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


def _http_health(service: str, url: str, probe_url: str) -> Health:
    try:
        response = httpx.get(probe_url, timeout=PROBE_TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        return Health(service, False, url, f"unreachable: {error}")
    if response.status_code != 200:
        return Health(service, False, url, f"HTTP {response.status_code} from {probe_url}")
    return Health(service, True, url)


def stack_health(settings: StackSettings) -> list[Health]:
    return [probe(settings) for probe in (broker_health, tiled_health, prefect_health, worker_health)]
