"""The `slurm` launcher: the job as a Slurm batch job, followed until it ends.

`sbatch` gets an argument list and a script written from the operator's settings
(`jobs.slurm`): one `#SBATCH` line per setting, then the job's own argument list, each
argument quoted, run with `exec` (no `eval`, nothing a request can widen). Secrets
travel in sbatch's environment, which Slurm exports to the job; they are never on a
command line or in the script. The job's stdout and stderr go to files in the jobs
folder, which the nodes share with the worker; they are read as they grow, so progress
events reach Prefect as they do from a local job. Whatever ends the follower (the
job's end, a cancelled flow run, a dead worker) cancels the Slurm job if it still runs.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.job_runner import TAIL_LINES, JobExit, parse_event
from flows.launchers import CONTAINER_PARAMETERS_PATH, ContainerLauncher, JobResources, LaunchRefused, check_name, volume_path
from mlex_tomo.settings import SlurmSettings

JOB_NAME_PREFIX = "mlex-tomo-"
COMMAND_TIMEOUT_SECONDS = 30
WORKER_ONLY_PREFIXES = ("MLEX_TOMO_", "PREFECT_")
# How long the controller may stay unreachable before the follower gives the job up.
CONTROLLER_PATIENCE_SECONDS = 300
ACTIVE_STATES = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT",
}
# A path goes into `#SBATCH --output=PATH`, where Slurm splits at blanks and expands `%`.
_UNSAFE_IN_DIRECTIVE = re.compile(r"[\s%#]")


class SlurmFailed(RuntimeError):
    """Slurm refused the job or could no longer be asked about it; the message says why."""


@dataclass(frozen=True)
class BatchJob:
    """A written batch script, where its job's output goes, and what sbatch's environment adds."""

    job_id: str
    script: Path
    output: Path
    error: Path
    secret_environment: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class SlurmState:
    state: str
    reason: str
    exit_code: int

    @property
    def ended(self) -> bool:
        return self.state not in ACTIVE_STATES


@dataclass(frozen=True)
class SlurmLauncher:
    """Writes the batch script of one job into `work_dir`, which the compute nodes must see."""

    settings: SlurmSettings
    work_dir: Path
    python: Path
    container: ContainerLauncher  # for runtime podman: the podman launcher as the worker's settings make it

    def batch_job(
        self, job_id: str, parameters_file: Path, models_dir: Path, resources: JobResources, secrets: dict[str, str]
    ) -> BatchJob:
        check_name("job id", job_id)
        output, error = self.work_dir / f"{job_id}.slurm.out", self.work_dir / f"{job_id}.slurm.err"
        lines = ["#!/bin/bash"]
        lines += [f"#SBATCH {option}" for option in self.directives(job_id, output, error, resources)]
        lines += [
            f"# mlex-tomo job {job_id}: its progress events are the JSON lines of its output.",
            "export PYTHONUNBUFFERED=1",
            "exec " + shlex.join(self.job_command(job_id, parameters_file, models_dir, resources, secrets)),
        ]
        script = self.work_dir / f"{job_id}.sbatch"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        script.write_text("\n".join(lines) + "\n")
        return BatchJob(job_id, script, output, error, dict(secrets))

    def directives(self, job_id: str, output: Path, error: Path, resources: JobResources) -> list[str]:
        settings = self.settings
        options = [
            f"--job-name={JOB_NAME_PREFIX}{job_id}",
            f"--output={_directive_path(output)}",
            f"--error={_directive_path(error)}",
            f"--time={settings.time_limit}",
            f"--nodes={settings.nodes}",
            "--ntasks=1",
        ]
        for option, value in (("partition", settings.partition), ("account", settings.account), ("qos", settings.qos)):
            if value is not None:
                options.append(f"--{option}={value}")
        cpus = math.ceil(resources.cpus) if resources.cpus is not None else settings.cpus_per_task
        if cpus is not None:
            options.append(f"--cpus-per-task={cpus}")
        if resources.memory_gib is not None:
            options.append(f"--mem={math.ceil(resources.memory_gib * 1024)}M")
        elif settings.memory is not None:
            options.append(f"--mem={settings.memory}")
        if resources.gpus:
            options.append(f"--gres={settings.gres}" if settings.gres else f"--gpus={settings.gpus or 1}")
        return options + list(settings.extra_directives)

    def job_command(
        self, job_id: str, parameters_file: Path, models_dir: Path, resources: JobResources, secrets: dict[str, str]
    ) -> list[str]:
        """`python -m segmentation PARAMS` on the node, or in the job image through the site's container runtime."""
        runtime = self.settings.runtime
        if runtime == "python":
            return [str(self.python), "-m", "segmentation", str(parameters_file)]
        if runtime == "podman":
            # Resources are Slurm's to enforce here; the container takes the whole allocation.
            return self.container.launch(job_id, parameters_file, models_dir, JobResources(gpus=resources.gpus), secrets).command
        command = ["apptainer", "exec"]
        if resources.gpus:
            command.append("--nv")
        command += [
            "--bind", f"{volume_path(parameters_file)}:{CONTAINER_PARAMETERS_PATH}:ro",
            "--bind", f"{volume_path(models_dir)}:{volume_path(models_dir)}",
            str(self.settings.apptainer_image), "python", "-m", "segmentation", CONTAINER_PARAMETERS_PATH,
        ]
        return command


def run_batch_job(
    job: BatchJob,
    on_event: Callable[[dict[str, Any]], None],
    on_log: Callable[[str, bool], None],
    poll_seconds: float = 2.0,
    stop_grace_seconds: float = 3.0,
) -> JobExit:
    """Submit, forward the job's output as it grows, and return once Slurm says it ended."""
    slurm_id = submit(job)
    on_log(f"submitted as Slurm job {slurm_id}", False)
    output, error = GrowingFile(job.output), GrowingFile(job.error)
    stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)
    last_event: dict[str, Any] | None = None

    def forward(ended: bool = False) -> None:
        nonlocal last_event
        for line in output.new_lines(ended):
            event = parse_event(line)
            if event is None:
                on_log(line, False)
            else:
                last_event = event
                on_event(event)
        for line in error.new_lines(ended):
            stderr_tail.append(line)
            on_log(line, True)

    state: SlurmState | None = None
    try:
        while state is None or not state.ended:
            time.sleep(poll_seconds)
            state = job_state(slurm_id)
            forward()
    finally:
        if state is None or not state.ended:
            cancel(slurm_id, stop_grace_seconds)
    forward(ended=True)
    code = 0 if state.state == "COMPLETED" else state.exit_code or 1
    ended_by = None if state.state in ("COMPLETED", "FAILED") else f"Slurm job {slurm_id} ended {state.state} ({state.reason})"
    return JobExit(code, last_event, list(stderr_tail), ended_by=ended_by)


def submit(job: BatchJob) -> str:
    """sbatch, with the job's secrets in its environment only; returns the Slurm job id.

    Slurm keeps the environment it exports with the job, so the worker's own settings
    and secrets (`MLEX_TOMO_*`, `PREFECT_*`) are left out of it: the job needs neither.
    """
    environment = {name: value for name, value in os.environ.items() if not name.startswith(WORKER_ONLY_PREFIXES)}
    completed = _slurm(["sbatch", "--parsable", "--export=ALL", str(job.script)], {**environment, **job.secret_environment})
    if completed.returncode != 0:
        raise SlurmFailed(f"sbatch refused job {job.job_id}: {completed.stderr.strip() or completed.stdout.strip()}")
    return completed.stdout.strip().split(";")[0]


def job_state(slurm_id: str) -> SlurmState:
    """From scontrol while the controller remembers the job, from sacct after; waits out a controller that is away."""
    unreachable_since = None
    while True:
        shown = _slurm(["scontrol", "show", "job", "--oneliner", slurm_id])
        if shown.returncode == 0:
            return _parse_scontrol(shown.stdout)
        if "Invalid job id" in shown.stderr:
            return _accounted_state(slurm_id)
        unreachable_since = unreachable_since or time.monotonic()
        if time.monotonic() - unreachable_since > CONTROLLER_PATIENCE_SECONDS:
            raise SlurmFailed(f"Slurm did not answer about job {slurm_id}: {shown.stderr.strip()}")
        time.sleep(5)


def cancel(slurm_id: str, grace_seconds: float) -> None:
    """scancel, then wait for Slurm to see the job end, at most the grace period and a little."""
    _slurm(["scancel", slurm_id])
    deadline = time.monotonic() + grace_seconds + 2
    while time.monotonic() < deadline:
        shown = _slurm(["scontrol", "show", "job", "--oneliner", slurm_id])
        if shown.returncode != 0 or _parse_scontrol(shown.stdout).ended:
            return
        time.sleep(0.5)


def _accounted_state(slurm_id: str) -> SlurmState:
    accounted = _slurm(["sacct", "--noheader", "--allocations", "--parsable2", "--jobs", slurm_id, "--format", "State,ExitCode"])
    fields = accounted.stdout.strip().splitlines()[0].split("|") if accounted.returncode == 0 and accounted.stdout.strip() else []
    if len(fields) != 2:
        raise SlurmFailed(f"Slurm no longer knows job {slurm_id} and keeps no accounting of it")
    return SlurmState(fields[0].split()[0], "from sacct", _exit_status(fields[1]))


def _parse_scontrol(text: str) -> SlurmState:
    def value(key: str) -> str:
        found = re.search(rf"\b{key}=(\S+)", text)
        return found.group(1) if found else ""

    return SlurmState(value("JobState"), value("Reason"), _exit_status(value("ExitCode")))


def _exit_status(text: str) -> int:
    """Slurm's "CODE:SIGNAL" as a shell would report it: the code, or 128 + the signal."""
    code, _, signal_number = text.partition(":")
    if signal_number.isdigit() and int(signal_number):
        return 128 + int(signal_number)
    return int(code) if code.isdigit() else 1


def _slurm(command: list[str], environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            command, env=environment, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS
        )
    except FileNotFoundError:
        raise SlurmFailed(f"{command[0]} is not installed on the worker's node (the slurm launcher needs Slurm's client commands)") from None
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 1, "", f"{command[0]} did not answer within {COMMAND_TIMEOUT_SECONDS} s")


class GrowingFile:
    """Complete lines appended to a file since the last read; the file may not exist yet."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def new_lines(self, ended: bool = False) -> list[str]:
        """Once the job has `ended`, also a last line without its newline."""
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            data = b""
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        if ended and self.partial:
            lines.append(self.partial)
            self.partial = b""
        return [line.decode(errors="replace") for line in lines]


def _directive_path(path: Path) -> str:
    text = str(path.absolute())
    if _UNSAFE_IN_DIRECTIVE.search(text):
        raise LaunchRefused(f"path {text!r} holds a blank, '%' or '#', which an #SBATCH line cannot carry")
    return text

