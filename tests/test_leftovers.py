"""What a crashed worker leaves behind is found and removed: real processes, real podman containers, real folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from flows.leftovers import LAUNCHED_BY_LABEL, clean_up_leftovers, is_running_here, process_identity
from tests.services import wait_for

CONTAINERS_CONF = Path(__file__).parent / "podman" / "containers.conf"
needs_podman = pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed (make test installs it)")


def gone_process_identity() -> str:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = process_identity(process.pid)
    process.kill()
    process.wait()
    return identity


def test_a_process_identity_tells_a_live_process_from_a_gone_one_and_leaves_other_hosts_alone():
    assert is_running_here(process_identity()) is True
    assert is_running_here(gone_process_identity()) is False
    assert is_running_here(f"another-host/{os.getpid()}/1") is None
    pid, start = process_identity().split("/")[1:]
    assert is_running_here(f"{process_identity().split('/')[0]}/{pid}/{int(start) + 1}") is False  # a reused PID


@pytest.fixture
def podman(monkeypatch):
    monkeypatch.setenv("CONTAINERS_CONF", os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)))
    names = []

    def run_container(launched_by: str) -> str:
        name = f"mlex-tomo-job-leftover-{uuid.uuid4().hex[:8]}"
        names.append(name)
        subprocess.run(
            ["podman", "run", "--detach", "--rm", "--name", name, "--label", f"{LAUNCHED_BY_LABEL}={launched_by}",
             "--rootfs", "/:O", "sleep", "600"],
            capture_output=True, check=True, timeout=120,
        )
        return name

    yield run_container
    subprocess.run(["podman", "rm", "--force", "--ignore", *names], capture_output=True, timeout=120)


def running_containers() -> list[str]:
    listed = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True, check=True, timeout=60)
    return listed.stdout.split()


@needs_podman
def test_a_job_container_whose_launcher_is_gone_is_removed_and_one_whose_launcher_lives_is_kept(podman, tmp_path):
    orphan = podman(gone_process_identity())
    owned = podman(process_identity())
    assert {orphan, owned} <= set(running_containers())
    removed = clean_up_leftovers(engines=("podman",), run_folders=tmp_path)
    assert f"podman container {orphan}" in removed and f"podman container {owned}" not in removed  # and any other orphan
    assert orphan not in running_containers() and owned in running_containers()


def test_a_run_folder_is_removed_only_when_no_process_works_in_it_and_it_is_not_new(tmp_path):
    left, busy, new = (tmp_path / f"tmp{name}prefect" for name in ("left", "busy", "new"))
    for folder in (left, busy, new):
        (folder / "inside").mkdir(parents=True)
    an_hour_ago = time.time() - 3600
    for folder in (left, busy):
        os.utime(folder, (an_hour_ago, an_hour_ago))
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=busy / "inside")
    try:
        removed = clean_up_leftovers(engines=(), run_folders=tmp_path)
    finally:
        worker.kill()
        worker.wait()
    assert removed == [f"run folder {left.resolve()}"]
    assert not left.exists() and busy.exists() and new.exists()


def test_a_process_whose_parent_dies_is_sent_sigterm(tmp_path):
    """As a flow run whose worker was killed: it stops, and its job with it (flows/job_runner.py)."""
    told = tmp_path / "told"
    orphan = textwrap.dedent(f"""
        import pathlib, signal, time
        from flows.job_runner import stop_when_the_parent_dies
        signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(told)!r}).write_text("SIGTERM"), exit(0)))
        stop_when_the_parent_dies(check_seconds=0.1)
        pathlib.Path({str(told)!r} + ".ready").write_text("")
        time.sleep(60)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {orphan!r}]); time.sleep(60)"],
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        wait_for(lambda: Path(f"{told}.ready").exists(), timeout=60, message="the child to watch its parent")
        assert not told.exists()
    finally:
        parent.kill()
        parent.wait()
    wait_for(lambda: told.exists(), timeout=10, message="SIGTERM to the orphan")
    assert told.read_text() == "SIGTERM"
