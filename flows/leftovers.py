"""What a crashed worker left behind, found and removed when a worker starts.

A flow run killed with its worker (`kill -9`, the OOM killer) cannot stop its job. A
process job dies with it (segmentation.__main__), but a container, kept by its
engine, runs on, and the temporary folder Prefect's process worker made for the run
stays. So every job container is labelled with the process that launched it (host,
PID and the PID's start time, so that a reused PID is not taken for it), and a
starting worker (`mlex-tomo worker`, which `up` runs) removes the containers whose
launcher is gone from this host, and the run folders no process works in any more.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

LAUNCHED_BY_LABEL = "mlex-tomo.launched-by"
RUN_FOLDER_PATTERN = "tmp*prefect"  # prefect.workers.process: tempfile.TemporaryDirectory(suffix="prefect")
RUN_FOLDER_MIN_AGE_SECONDS = 60  # a folder this young may belong to a run whose process is only starting
ENGINE_TIMEOUT_SECONDS = 30


def process_identity(pid: int | None = None) -> str:
    """`host/pid/start`: names one process on one host, for as long as the host runs."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{pid}/{start_time(pid)}"


def is_running_here(identity: str) -> bool | None:
    """Whether the process named is alive; None when it ran on another host (not ours to judge)."""
    host, _, rest = identity.partition("/")
    if host != socket.gethostname():
        return None
    pid, _, started = rest.partition("/")
    return pid.isdigit() and start_time(int(pid)) == started


def start_time(pid: int) -> str:
    """The process's start, in clock ticks since boot (`/proc/<pid>/stat`, field 22); empty when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def clean_up_leftovers(engines: tuple[str, ...] = ("podman", "docker"), run_folders: Path | None = None) -> list[str]:
    """Remove orphaned job containers and run folders; says what was removed."""
    removed = []
    for engine in engines:
        if shutil.which(engine) is None:
            continue
        for name in orphaned_containers(engine):
            subprocess.run([engine, "rm", "--force", name], capture_output=True, timeout=ENGINE_TIMEOUT_SECONDS, check=False)
            removed.append(f"{engine} container {name}")
    for folder in orphaned_run_folders(run_folders or Path(tempfile.gettempdir())):
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(f"run folder {folder}")
    return removed


def orphaned_containers(engine: str) -> list[str]:
    """Job containers, running or not, whose launching process is no longer alive on this host."""
    try:
        listed = subprocess.run(
            [engine, "ps", "--all", "--quiet", "--filter", f"label={LAUNCHED_BY_LABEL}"],
            capture_output=True, text=True, timeout=ENGINE_TIMEOUT_SECONDS, check=True,
        )
        ids = listed.stdout.split()
        if not ids:
            return []
        inspected = subprocess.run(
            [engine, "inspect", *ids], capture_output=True, text=True, timeout=ENGINE_TIMEOUT_SECONDS, check=True,
        )
    except (OSError, subprocess.SubprocessError):  # the engine is not usable here: nothing of ours runs in it
        return []
    orphans = []
    for container in json.loads(inspected.stdout or "[]"):
        labels = (container.get("Config") or {}).get("Labels") or {}
        if is_running_here(labels.get(LAUNCHED_BY_LABEL, "")) is False:
            orphans.append(container["Name"].lstrip("/"))
    return orphans


def orphaned_run_folders(parent: Path) -> list[Path]:
    """This user's Prefect run folders older than a minute in which no process works."""
    now, uid = time.time(), os.getuid()
    candidates = []
    for folder in parent.glob(RUN_FOLDER_PATTERN):
        try:
            status = folder.lstat()
        except OSError:
            continue
        if folder.is_dir() and not folder.is_symlink() and status.st_uid == uid and now - status.st_mtime > RUN_FOLDER_MIN_AGE_SECONDS:
            candidates.append(folder.resolve())
    if not candidates:
        return []
    in_use = working_folders()
    return [folder for folder in candidates if not any(place.is_relative_to(folder) for place in in_use)]


def working_folders() -> list[Path]:
    """Where every process this user may inspect is working (`/proc/<pid>/cwd`)."""
    places = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                places.append(Path(os.readlink(entry / "cwd")))
            except OSError:
                continue
    return places
