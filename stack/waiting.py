"""Wait until the services a process needs answer, then run it: `mlex-tomo wait-for`.

Compose starts every service at once on podman 4.3, whose podman-compose ignores
`depends_on` health conditions; and a database that restarts under a running stack is
no different. So each service of docker-compose.yml waits for what it needs itself,
with a bound and a log line an operator can read, instead of exiting at the first
refused connection.

A target is `host:port` or a URL: `http(s)://` must answer 200 at that path; any
other scheme (`stomp://`, `postgresql://`) is waited for as a TCP port. Credentials in
a URL are never printed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443, "stomp": 61613, "postgresql": 5432, "postgres": 5432}
ATTEMPT_TIMEOUT_SECONDS = 3.0
RETRY_SECONDS = 2.0
REPORT_EVERY_SECONDS = 10.0


class WaitTimedOut(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    """One service to wait for, named in log lines without any credentials."""

    name: str
    host: str
    port: int
    http_url: str | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        split = urlsplit(text if "://" in text else f"tcp://{text}")
        scheme = split.scheme.split("+")[0]  # postgresql+asyncpg -> postgresql
        try:
            port = split.port or DEFAULT_PORTS.get(scheme)
        except ValueError:
            port = None
        if not split.hostname or port is None:
            raise ValueError(f"cannot wait for {_without_credentials(text)!r}: expected host:port or a URL with a host and port")
        name = f"{split.hostname}:{port}"
        if scheme in {"http", "https"}:
            path = split.path or "/"
            url = f"{scheme}://{name}{path}" + (f"?{split.query}" if split.query else "")
            return cls(name=url, host=split.hostname, port=port, http_url=url)
        return cls(name=name, host=split.hostname, port=port)

    def problem(self) -> str | None:
        """Why the service is not ready yet, or None when it answers."""
        if self.http_url is None:
            try:
                with socket.create_connection((self.host, self.port), timeout=ATTEMPT_TIMEOUT_SECONDS):
                    return None
            except OSError as error:
                return error.strerror or type(error).__name__
        try:
            response = httpx.get(self.http_url, timeout=ATTEMPT_TIMEOUT_SECONDS)
        except httpx.HTTPError as error:
            return str(error) or type(error).__name__
        return None if response.status_code == 200 else f"HTTP {response.status_code}"


def wait_for(targets: list[Target], timeout: float, report: Callable[[str], None] = print) -> None:
    """Return once every target answers; raise WaitTimedOut past `timeout` seconds."""
    start = time.monotonic()
    pending = list(targets)
    next_report = 0.0
    while pending:
        problems = {target.name: target.problem() for target in pending}
        waited = time.monotonic() - start
        for target in [target for target in pending if problems[target.name] is None]:
            pending.remove(target)
            report(f"{target.name} is up after {waited:.0f} s")
        if not pending:
            return
        summary = "; ".join(f"{target.name}: {problems[target.name]}" for target in pending)
        if waited > timeout:
            raise WaitTimedOut(f"gave up after {timeout:.0f} s waiting for {summary}")
        if waited >= next_report:
            report(f"waiting for {summary} ({waited:.0f} s of {timeout:.0f} s)")
            next_report = waited + REPORT_EVERY_SECONDS
        time.sleep(RETRY_SECONDS)


def _without_credentials(text: str) -> str:
    split = urlsplit(text)
    if split.password is None and split.username is None:
        return text
    return split._replace(netloc=split.netloc.rpartition("@")[2]).geturl()
