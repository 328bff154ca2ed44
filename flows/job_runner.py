"""Run one launched job to its end, forwarding its output, and never leave it behind.

The job's standard output carries one JSON progress event per line; anything else on
stdout or stderr is log text. Whatever ends this function (the job's exit, an
exception, Prefect's TerminationSignal when a run is cancelled) stops the job first:
SIGTERM, then SIGKILL after the grace period, and for containers the engine's stop and
remove commands. The job stays in its caller's process group, so a signal to the
group (Prefect's process worker cancels by signalling the flow run's group, and kills
it 30 s later) reaches the job even if the caller can no longer act.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flows.launchers import Launch
from segmentation.parameters import LAUNCHER_PID_VARIABLE

TAIL_LINES = 20
ENGINE_COMMAND_TIMEOUT_SECONDS = 30
PARENT_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class JobExit:
    code: int
    last_event: dict[str, Any] | None
    stderr_tail: list[str]
    ended_by: str | None = None  # who ended the job, where not the job itself: e.g. Slurm at its time limit

    @property
    def failure_message(self) -> str:
        if self.last_event and self.last_event.get("event") == "failed":
            reason = self.last_event.get("message", "")
        else:
            reason = "\n".join(self.stderr_tail[-5:]) or "no output"
        return f"{self.ended_by or f'the segmentation job exited with code {self.code}'}: {reason}"


class JobTerminated(Exception):
    """The runner itself was asked to stop (SIGTERM) and stopped the job."""


def run_launched_job(
    launch: Launch,
    on_event: Callable[[dict[str, Any]], None],
    on_log: Callable[[str, bool], None],
    stop_grace_seconds: float = 3.0,
) -> JobExit:
    """Run to completion; `on_log(line, is_error)` gets every non-event line as it comes."""
    process = subprocess.Popen(
        launch.command,
        # A job run as a process stops when this one dies (segmentation.__main__.stop_with_the_launcher).
        env={**os.environ, **launch.secret_environment, LAUNCHER_PID_VARIABLE: str(os.getpid())},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)

    def read_stderr() -> None:
        for line in process.stderr:
            stderr_tail.append(line.rstrip("\n"))
            on_log(line.rstrip("\n"), True)

    stderr_reader = threading.Thread(target=read_stderr, name="job-stderr", daemon=True)
    stderr_reader.start()
    last_event = None
    previous_handler = _stop_on_sigterm()
    try:
        for line in process.stdout:
            event = parse_event(line)
            if event is None:
                on_log(line.rstrip("\n"), False)
            else:
                last_event = event
                on_event(event)
        code = process.wait()
    finally:
        if process.poll() is None:
            stop_job(process, launch, stop_grace_seconds)
        elif launch.remove_command is not None and process.returncode != 0:
            _run_engine(launch.remove_command)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    stderr_reader.join(timeout=5)
    return JobExit(code, last_event, list(stderr_tail))


def stop_job(process: subprocess.Popen, launch: Launch, grace_seconds: float) -> None:
    """Ask the job to stop, wait out the grace period, then kill it."""
    deadline = time.monotonic() + grace_seconds
    if launch.stop_command is not None:
        _run_engine(launch.stop_command, timeout=grace_seconds + 2)
    _send(process, signal.SIGTERM)
    try:
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _send(process, signal.SIGKILL)
        process.wait()
    if launch.remove_command is not None:
        _run_engine(launch.remove_command)


def stop_when_the_parent_dies(check_seconds: float = PARENT_CHECK_SECONDS) -> None:
    """SIGTERM this process once its parent (the worker, for a flow run) is gone, stopping its job as a cancel does.

    A flow run orphaned by a crashed worker would otherwise run its job to the end with
    nobody to report to; it stops instead and Prefect marks it crashed.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(check_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def parse_event(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _stop_on_sigterm() -> Any:
    """Where nothing handles SIGTERM yet, turn it into an exception so `finally` stops the job.

    Inside a flow run Prefect's own handler is in place (it raises TerminationSignal and
    acknowledges the cancellation), so it is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None

    def terminate(signal_number: int, frame: Any) -> None:
        raise JobTerminated("the flow run was asked to stop")

    return signal.signal(signal.SIGTERM, terminate)


def _send(process: subprocess.Popen, signal_number: int) -> None:
    try:
        process.send_signal(signal_number)
    except ProcessLookupError:
        pass


def _run_engine(command: list[str], timeout: float = ENGINE_COMMAND_TIMEOUT_SECONDS) -> None:
    """Container engine housekeeping; a container already gone is not an error."""
    try:
        subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass
