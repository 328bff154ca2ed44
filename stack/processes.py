"""Child processes that can be stopped with everything they started.

Each service runs in its own session (process group), so stopping it reaches the
grandchildren too (Prefect's server and worker spawn their own subprocesses).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class ManagedProcess:
    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    process: subprocess.Popen | None = None

    def start(self) -> None:
        with open_private_log(self.log_path) as log:
            self.process = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_code(self) -> int | None:
        """None while running."""
        return self.process.poll() if self.process else None

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left after the grace period."""
        if self.process is None:
            return
        members = _group_members(self.process.pid)
        _signal_group(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and any(_alive(member) for member in members):
            time.sleep(0.1)
            self.process.poll()
        leftovers = [member for member in members if _alive(member)]
        if leftovers:
            _signal_group(self.process.pid, signal.SIGKILL)
            for member in leftovers:
                try:
                    member.kill()
                except psutil.NoSuchProcess:
                    pass
        self.process.wait()


def _group_members(leader_pid: int) -> list[psutil.Process]:
    """The leader and its descendants, including any that left the group."""
    try:
        leader = psutil.Process(leader_pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal_group(leader_pid: int, signum: int) -> None:
    try:
        os.killpg(leader_pid, signum)
    except ProcessLookupError:
        pass


def open_private_log(path: Path):
    """Append to a log only its owner may read, in a folder only its owner may list.

    Logs hold what services print about themselves: hosts, users, paths, and whatever a
    third-party service prints that we did not foresee.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(descriptor, 0o600)
    return os.fdopen(descriptor, "ab")
