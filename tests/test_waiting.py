"""`mlex-tomo wait-for`: how every compose service waits for the servers it needs."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stack.waiting import Target, WaitTimedOut, wait_for
from tests.services import free_ports

PASSWORD = "s3cretpassw0rd"


@pytest.mark.parametrize(
    ("text", "name", "port"),
    [
        ("postgres:5432", "postgres:5432", 5432),
        ("stomp://broker:61613", "broker:61613", 61613),
        ("stomp://broker", "broker:61613", 61613),
        (f"postgresql+asyncpg://mlex:{PASSWORD}@db.facility/tiled", "db.facility:5432", 5432),
        ("http://tiled:8000/healthz", "http://tiled:8000/healthz", 8000),
    ],
)
def test_targets_are_named_without_credentials(text, name, port):
    target = Target.parse(text)
    assert (target.name, target.port) == (name, port)
    assert PASSWORD not in repr(target)


@pytest.mark.parametrize("text", ["tiled", "http://:8000/", "ftp://host", f"tcp://mlex:{PASSWORD}@host:notaport"])
def test_a_target_without_host_or_port_is_refused_without_echoing_a_password(text):
    with pytest.raises(ValueError, match="cannot wait for") as refused:
        Target.parse(text)
    assert PASSWORD not in str(refused.value)


def test_waits_until_a_port_opens_then_returns():
    (port,) = free_ports(1)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def open_later():
        time.sleep(1.5)
        server.bind(("127.0.0.1", port))
        server.listen()

    threading.Thread(target=open_later, daemon=True).start()
    lines: list[str] = []
    try:
        wait_for([Target.parse(f"127.0.0.1:{port}")], timeout=30, report=lines.append)
    finally:
        server.close()
    assert lines[0].startswith(f"waiting for 127.0.0.1:{port}: ")
    assert lines[-1].startswith(f"127.0.0.1:{port} is up after ")


def test_gives_up_after_the_timeout_saying_what_it_waited_for():
    (port,) = free_ports(1)
    started = time.monotonic()
    with pytest.raises(WaitTimedOut, match=f"gave up after 1 s waiting for 127.0.0.1:{port}: Connection refused"):
        wait_for([Target.parse(f"127.0.0.1:{port}")], timeout=1, report=lambda line: None)
    assert time.monotonic() - started < 15


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *arguments):
        pass


def test_an_http_target_must_answer_200():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        wait_for([Target.parse(f"{base}/healthz")], timeout=5, report=lambda line: None)
        with pytest.raises(WaitTimedOut, match="HTTP 404"):
            wait_for([Target.parse(f"{base}/missing")], timeout=1, report=lambda line: None)
    finally:
        server.shutdown()


def test_the_command_replaces_the_waiting_process_once_its_servers_answer():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "stack.cli", "wait-for", f"http://127.0.0.1:{server.server_address[1]}/healthz", "--timeout", "10",
             "--", sys.executable, "-c", "import os; print('ran as', os.getpid())"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    finally:
        server.shutdown()
    assert completed.returncode == 0, completed.stderr
    assert "is up after" in completed.stdout and "ran as" in completed.stdout


def test_without_a_command_or_with_one_elsewhere_the_cli_says_how_to_use_it():
    without = subprocess.run([sys.executable, "-m", "stack.cli", "wait-for", "tiled:8000"], capture_output=True, text=True, timeout=60, check=False)
    assert without.returncode == 2 and "give the command to run after --" in without.stderr
    elsewhere = subprocess.run([sys.executable, "-m", "stack.cli", "status", "--", "true"], capture_output=True, text=True, timeout=60, check=False)
    assert elsewhere.returncode == 2 and "only wait-for takes a command after --" in elsewhere.stderr
