"""Launchers: the argument list that starts one segmentation job, and the one that stops it.

Every command is a list of arguments, never a shell string, so a value from a request
(a job name, a path) can only ever be one argument. Secrets are not arguments either:
containers get `--env NAME` and read the value from the engine's own environment,
which the runner sets; command lines are visible to every user of the node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from flows.leftovers import LAUNCHED_BY_LABEL

LauncherName = Literal["process", "podman", "docker", "slurm"]
GpuRequest = Literal["auto", "gpus", "cdi"]
CDI_ALL_GPUS = "nvidia.com/gpu=all"
CONTAINER_PARAMETERS_PATH = "/job/params.yaml"
CONTAINER_NAME_PREFIX = "mlex-tomo-job-"
GPU_DEVICE = Path("/dev/nvidia0")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VOLUME_SEPARATORS = (":", ",")


class LaunchRefused(ValueError):
    """A value cannot be passed to the launcher safely; the message says which."""


@dataclass(frozen=True)
class JobResources:
    cpus: float | None = None
    memory_gib: float | None = None
    gpus: bool = False


@dataclass(frozen=True)
class Launch:
    """How to start one job and, for containers, how to stop and remove it."""

    command: list[str]
    secret_environment: dict[str, str] = field(default_factory=dict, repr=False)
    stop_command: list[str] | None = None
    remove_command: list[str] | None = None


@dataclass(frozen=True)
class ProcessLauncher:
    """The job in a Python environment on this node: the default of `mlex-tomo up`."""

    python: Path

    def launch(self, job_id: str, parameters_file: Path, models_dir: Path, resources: JobResources, secrets: dict[str, str]) -> Launch:
        check_name("job id", job_id)
        return Launch([str(self.python), "-m", "segmentation", str(parameters_file)], secrets)


@dataclass(frozen=True)
class ContainerLauncher:
    """The job in a podman or docker container, with the node's GPUs when asked."""

    engine: Literal["podman", "docker"]
    image: str
    network: str = "host"
    rootfs: Path | None = None
    rootfs_python: Path | None = None
    stop_grace_seconds: float = 3.0
    launched_by: str | None = None  # flows.leftovers.process_identity() of the process that runs the engine
    gpu_request: GpuRequest = "auto"

    def __post_init__(self) -> None:
        if self.rootfs is not None and self.engine != "podman":
            raise LaunchRefused("jobs.container_rootfs needs podman; docker has no --rootfs")

    def launch(self, job_id: str, parameters_file: Path, models_dir: Path, resources: JobResources, secrets: dict[str, str]) -> Launch:
        check_name("job id", job_id)
        name = container_name(job_id)
        command = [
            self.engine, "run", "--rm", "--init",
            "--name", name,
            "--label", f"mlex-tomo.job-id={job_id}",
        ]
        if self.launched_by is not None:  # a worker started later removes the container if this process is gone
            command += ["--label", f"{LAUNCHED_BY_LABEL}={self.launched_by}"]
        command += [
            "--network", self.network,
            "--env", "PYTHONUNBUFFERED=1",
        ]
        for variable in sorted(secrets):
            command += ["--env", variable]
        command += [
            "--volume", f"{volume_path(parameters_file)}:{CONTAINER_PARAMETERS_PATH}:ro",
            "--volume", f"{volume_path(models_dir)}:{volume_path(models_dir)}",
        ]
        if resources.gpus:
            command += self.gpu_options()
        if resources.cpus is not None:
            command += ["--cpus", f"{resources.cpus:g}"]
        if resources.memory_gib is not None:
            command += ["--memory", f"{max(1, round(resources.memory_gib * 1024))}m"]
        if self.rootfs is not None:  # takes the image's place, so it must come after every option
            python = str(self.rootfs_python or "python3")
            command += ["--rootfs", f"{volume_path(self.rootfs)}:O", python, "-m", "segmentation"]
        else:
            command.append(self.image)
        command.append(CONTAINER_PARAMETERS_PATH)
        return Launch(
            command,
            secrets,
            stop_command=[self.engine, "stop", "--time", str(max(1, round(self.stop_grace_seconds))), name],
            remove_command=[self.engine, "rm", "--force", name],
        )

    def gpu_options(self) -> list[str]:
        """CDI for podman, also through its Docker API (the compose worker's); `--gpus` for Docker's NVIDIA runtime."""
        request = self.gpu_request
        if request == "auto":
            request = "cdi" if self.engine == "podman" else "gpus"
        return ["--device", CDI_ALL_GPUS] if request == "cdi" else ["--gpus", "all"]


Launcher = ProcessLauncher | ContainerLauncher


def container_name(job_id: str) -> str:
    return CONTAINER_NAME_PREFIX + job_id


def node_has_gpus() -> bool:
    return GPU_DEVICE.exists()


def check_name(what: str, value: str) -> None:
    if not _SAFE_NAME.fullmatch(value):
        raise LaunchRefused(f"{what} {value!r} may hold only letters, digits, '.', '_' and '-'")


def volume_path(path: Path) -> str:
    """An absolute path that cannot break a `--volume SOURCE:TARGET:OPTIONS` argument."""
    text = str(Path(path).resolve())
    if any(separator in text for separator in _VOLUME_SEPARATORS):
        raise LaunchRefused(f"path {text!r} holds ':' or ',', which a container volume argument cannot carry")
    return text
