"""`mlex-tomo up`: start the embedded stack, wait until it is healthy, stop it cleanly.

Start-up ordering is explicit (waves, each gated on health probes) rather than
papered over with restarts, and every child runs in its own process group so that
stopping the stack leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TextIO

from pydantic import SecretStr

from mlex_tomo.backoff import Backoff
from mlex_tomo.health import Health
from mlex_tomo.settings import GENERATED_BROKER_USER, StackSettings
from stack import activemq
from stack.processes import ManagedProcess, open_private_log
from stack.services import Service, embedded_services, uses_embedded_postgres, write_child_settings

PROBE_INTERVAL_SECONDS = 0.5
MONITOR_INTERVAL_SECONDS = 1.0
RESTART_BACKOFF = Backoff(first=1.0, longest=30.0)  # by the number of crashes in CRASH_WINDOW_SECONDS
CRASHES_BEFORE_GIVING_UP = 5  # within CRASH_WINDOW_SECONDS; one more stops the stack
CRASH_WINDOW_SECONDS = 300.0


class StartupError(RuntimeError):
    """The stack could not start; the message names the service and its log."""


class StopRequested(Exception):
    """SIGTERM arrived; unwinds like Ctrl-C does."""


class Stack:
    def __init__(self, settings: StackSettings, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.out = out
        self.running: list[tuple[Service, ManagedProcess]] = []
        self.existing_scans: str | None = None
        """What registering the scans already on disk did, for the summary; None when not tried."""

    def start(self) -> None:
        """Start the servers, prepare Tiled and Prefect, then start their clients."""
        settings = self.settings
        if settings.broker.embedded:
            activemq.check_installation(settings.broker)
        databases, servers, clients = self._prepare()
        _check_ports_free(databases + servers + clients)
        self._start_wave(databases)
        self._start_wave(servers)
        try:
            self._initialise_services()
        except Exception as error:  # Tiled's and Prefect's clients raise many types
            raise StartupError(f"could not prepare Tiled and Prefect: {error}") from error
        self._start_wave(clients)
        if settings.ingester.register_existing:
            self._register_existing_scans()

    def _start_wave(self, wave: list[Service]) -> None:
        for service in wave:
            self._launch(service)
        self._wait_healthy(wave)

    def _prepare(self) -> tuple[list[Service], list[Service], list[Service]]:
        settings = self.settings
        state = settings.data_path
        for directory in (
            settings.logs_path, settings.recons_path, settings.writable_path,
            state / "tiled", state / "prefect", state / "activemq",
        ):
            directory.mkdir(parents=True, exist_ok=True)
        if settings.tiled.embedded and settings.tiled.api_key is None:
            key = SecretStr(_generate_secret(settings.tiled_api_key_path))
            tiled = settings.tiled.model_copy(update={"api_key": key})
            self.settings = settings = settings.model_copy(update={"tiled": tiled})
        if settings.broker.embedded and settings.broker.user is None and settings.broker.password is None:
            password = SecretStr(_generate_secret(settings.broker_password_path))
            broker = settings.broker.model_copy(update={"user": GENERATED_BROKER_USER, "password": password})
            self.settings = settings = settings.model_copy(update={"broker": broker})
        if uses_embedded_postgres(settings) and not settings.postgres_password_path.is_file():
            _generate_secret(settings.postgres_password_path)
        # `up` registers the scans on disk itself, to report them; its ingester need not do it again.
        ingester = settings.ingester.model_copy(update={"register_existing": False})
        write_child_settings(settings.model_copy(update={"ingester": ingester}))
        return embedded_services(settings)

    def _launch(self, service: Service) -> None:
        self.running.append((service, self._start_process(service)))

    def _start_process(self, service: Service) -> ManagedProcess:
        log_path = self.settings.logs_path / f"{service.name}.log"
        with open_private_log(log_path) as log:
            log.write(f"\n==== mlex-tomo up: starting {service.name} at {datetime.now().isoformat()} ====\n".encode())
        process = ManagedProcess(service.name, service.command, log_path, env=service.env)
        process.start()
        self._say(f"starting {service.name} (pid {process.pid}, log {log_path})")
        return process

    def _wait_healthy(self, wave: list[Service]) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        pending = {service.name: service for service in wave}
        last: dict[str, Health] = {}
        while pending:
            for name, service in list(pending.items()):
                process = self._process(name)
                if process.exit_code() is not None:
                    raise StartupError(
                        f"{name} exited with code {process.exit_code()} while starting; "
                        f"read {process.log_path}"
                    )
                last[name] = service.probe(self.settings)
                if last[name].healthy:
                    del pending[name]
                    self._say(f"{name} is healthy at {last[name].url}")
            if pending and time.monotonic() > deadline:
                name = next(iter(pending))
                raise StartupError(
                    f"{name} did not become healthy within {self.settings.startup_timeout:.0f} s "
                    f"({last[name].detail}); read {self._process(name).log_path}"
                )
            if pending:
                time.sleep(PROBE_INTERVAL_SECONDS)

    def _initialise_services(self) -> None:
        from flows.deploy import register_deployments
        from mlex_tomo.tiled_layout import connect, ensure_containers

        if self.settings.tiled.api_key is not None:  # the embedded Tiled made them; a facility's (tiled.url) may lack them
            created = ensure_containers(connect(self.settings, writable=True))
            if created:
                self._say(f"created Tiled containers: {', '.join('/' + name for name in created)}")
        deployments = register_deployments(self.settings)
        self._say(f"deployed to work pool {self.settings.prefect.work_pool!r}: {', '.join(deployments)}")

    def _register_existing_scans(self) -> None:
        """Samples and scans written while the stack was down were never announced; a failure here only loses them."""
        from ingester.existing import register_existing

        try:
            self.existing_scans = register_existing(self.settings, self._say).summary()
        except Exception as error:  # Tiled down, no API key, an unreadable root: the stack works without them
            self.existing_scans = f"not registered: {error}"
            self._say(f"could not register the scans already in the data roots: {error}")

    def monitor(self) -> None:
        """Block until the user stops the stack, restarting a child that dies with backoff.

        One crashed part must not take the others down with it; a part that keeps
        crashing (more than CRASHES_BEFORE_GIVING_UP times in CRASH_WINDOW_SECONDS)
        stops the stack with a StartupError that says so.
        """
        crashes: dict[str, list[float]] = {}
        while True:
            for position, (service, process) in enumerate(self.running):
                code = process.exit_code()
                if code is None:
                    continue
                now = time.monotonic()
                recent = [moment for moment in crashes.get(service.name, []) if now - moment < CRASH_WINDOW_SECONDS]
                crashes[service.name] = recent = [*recent, now]
                if len(recent) > CRASHES_BEFORE_GIVING_UP:
                    raise StartupError(
                        f"{service.name} stopped {len(recent)} times within {CRASH_WINDOW_SECONDS / 60:g} minutes "
                        f"(last exit code {code}); read {process.log_path}"
                    )
                delay = RESTART_BACKOFF.delay(len(recent))
                self._say(
                    f"{service.name} stopped unexpectedly with code {code}; restarting it in {delay:g} s "
                    f"(read {process.log_path})"
                )
                time.sleep(delay)
                self.running[position] = (service, self._start_process(service))
            time.sleep(MONITOR_INTERVAL_SECONDS)

    def stop(self) -> None:
        """Stop in reverse start order, so the worker goes before the server it talks to."""
        for service, process in reversed(self.running):
            if process.exit_code() is None:
                self._say(f"stopping {service.name}")
            process.stop()
        self.running.clear()

    def summary(self) -> str:
        settings = self.settings
        rows = [
            ("Web app", settings.ui.url),
            ("Tiled", settings.tiled.base_url),
            ("Prefect UI", settings.prefect.resolved_api_url.removesuffix("/api")),
            ("Prefect API", settings.prefect.resolved_api_url),
            ("ActiveMQ STOMP", "stomp://{}:{}".format(*settings.broker.stomp_address)),
            *([("PostgreSQL", f"{settings.postgres.host}:{settings.postgres.port} (databases tiled, prefect)")]
              if uses_embedded_postgres(settings) else []),
            ("Work pool", f"{settings.prefect.work_pool} (queues {settings.prefect.forest_queue}, {settings.prefect.network_queue})"),
            ("Ingesting from", settings.ingester.destination),
            *([("Scans on disk", self.existing_scans)] if self.existing_scans is not None else []),
            ("Logs", str(settings.logs_path)),
        ]
        width = max(len(label) for label, _ in rows)
        lines = [f"  {label:<{width}}  {value}" for label, value in rows]
        return "mlex-tomo is up:\n" + "\n".join(lines) + "\nPress Ctrl-C to stop."

    def _process(self, name: str) -> ManagedProcess:
        return next(process for service, process in self.running if service.name == name)

    def _say(self, message: str) -> None:
        self._say_raw(f"[mlex-tomo] {message}")

    def _say_raw(self, text: str) -> None:
        """Report progress; a terminal or pipe that went away must not stop the shutdown."""
        try:
            print(text, file=self.out, flush=True)
        except (OSError, ValueError):
            pass


def run_up(settings: StackSettings, out: TextIO = sys.stdout) -> int:
    """Run the stack in the foreground until Ctrl-C or SIGTERM; return the exit code."""
    with _single_instance(settings.data_path / "run" / "up.lock"), _sigterm_as_exception():
        stack = Stack(settings, out)
        try:
            stack.start()
            stack._say_raw(stack.summary())
            stack.monitor()
        except (KeyboardInterrupt, StopRequested):
            stack._say("stop requested")
            return 0
        except (StartupError, activemq.BrokerUnavailable) as error:
            stack._say(f"error: {error}")
            return 1
        finally:
            with _signals_ignored():
                stack.stop()
            stack._say("stopped")
    return 0


def _generate_secret(path: Path) -> str:
    """A random key in a file only the owner can read; later starts and clients reuse it."""
    key = secrets.token_hex(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    path.touch(mode=0o600)
    path.write_text(key)
    return key


def _check_ports_free(services: list[Service]) -> None:
    for service in services:
        for setting, port in service.ports.items():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    raise StartupError(
                        f"port {port} for {service.name} is already in use; stop what holds it "
                        f"or choose another with --{setting} PORT"
                    ) from None


@contextmanager
def _single_instance(lock_path: Path) -> Iterator[None]:
    """One `up` per data directory: two would fight over the same catalogs and ports."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(
                f"a stack is already running from {lock_path.parent.parent}; "
                "stop it first or use another --data-dir"
            ) from None
        yield


@contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """SIGTERM, and SIGHUP from a closed terminal, stop the stack cleanly instead of orphaning it."""
    def raise_stop(signum, frame):
        raise StopRequested()

    previous = {signum: signal.signal(signum, raise_stop) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not abandon children half-way through shutdown."""
    handlers: dict[int, Callable | int | None] = {
        signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
