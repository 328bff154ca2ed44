"""A single-node Slurm cluster from Debian's packages, in a folder of its own, for the tests.

munged, slurmctld and slurmd run as root (slurmd must, to start jobs as their user),
with their key, socket, state, spool and logs under the folder and free ports, so a
Slurm or munge already on the machine is left alone. Clients find it through
SLURM_CONF. `python -m tests.slurm_cluster FOLDER` starts one for a walk by hand.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.services import free_ports

DAEMONS = ("munged", "slurmctld", "slurmd")
MISSING_REASON = "Slurm is not installed (make test installs slurm-wlm and munge) or this is not root"


def slurm_available() -> bool:
    return os.geteuid() == 0 and all(shutil.which(daemon) for daemon in (*DAEMONS, "sbatch"))


class SlurmCluster:
    def __init__(self, folder: Path, partition: str = "debug") -> None:
        self.folder, self.partition = folder.resolve(), partition
        self.config = self.folder / "slurm.conf"
        self.munge_socket = self.folder / "munge" / "socket"

    @property
    def environment(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.config)}

    def start(self, timeout: float = 60) -> None:
        for name in ("munge", "state", "spool", "log"):
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        key = self.folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge = self.folder / "munge"
        subprocess.run(
            [
                "munged", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                f"--log-file={munge / 'munged.log'}", f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'seed'}",
            ],
            check=True,
        )
        self.config.write_text(self._configuration())
        subprocess.run(["slurmctld", "-f", str(self.config)], check=True)
        subprocess.run(["slurmd", "-f", str(self.config)], check=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.command("sinfo", "--noheader", "--format=%t").stdout.split()
            if states and all(state == "idle" for state in states):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node did not become idle within {timeout:.0f} s; see {self.folder / 'log'}")

    def stop(self) -> None:
        self.command("scontrol", "shutdown")
        for pid_file in (self.folder / "slurmd.pid", self.folder / "slurmctld.pid", self.folder / "munge" / "munged.pid"):
            _wait_for_exit(pid_file)
        subprocess.run(["munged", "--stop", f"--socket={self.munge_socket}"], capture_output=True)

    def command(self, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(arguments), env={**os.environ, **self.environment}, capture_output=True, text=True, timeout=30
        )

    def jobs(self) -> list[str]:
        """Jobs Slurm still pending or running, as 'ID NAME STATE'."""
        return self.command("squeue", "--noheader", "--format=%i %j %T").stdout.splitlines()

    def _configuration(self) -> str:
        host = socket.gethostname().split(".")[0]
        controller_port, node_port = free_ports(2)
        memory_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        folder = self.folder
        return "\n".join(
            [
                "ClusterName=mlextomo",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={self.munge_socket}",
                f"SlurmctldPort={controller_port}",
                f"SlurmdPort={node_port}",
                f"StateSaveLocation={folder / 'state'}",
                f"SlurmdSpoolDir={folder / 'spool'}",
                f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
                f"SlurmdPidFile={folder / 'slurmd.pid'}",
                f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "ReturnToService=2",
                "MpiDefault=none",
                "KillWait=5",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mib} State=UNKNOWN",
                f"PartitionName={self.partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )


def _wait_for_exit(pid_file: Path, timeout: float = 15) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


if __name__ == "__main__":
    cluster = SlurmCluster(Path(sys.argv[1]))
    cluster.start()
    print(f"Slurm is up: export SLURM_CONF={cluster.config}; stop it with `scontrol shutdown` and `munged --stop --socket={cluster.munge_socket}`")
