"""Time from `run_deployment` (as the UI calls it) to the segmentation job's process running.

    python -m benchmarks.flows [--runs 20] [--slurm]

Starts `mlex-tomo up` in a temporary data directory (its worker polls every second),
trains a small random forest once, then times `--runs` inference runs: from just
before `run_deployment(..., timeout=0)` to the creation time of the job's process
(`python -m segmentation ...`), as the kernel records it. The baseline, in the same
run, is the same deployment on a second work pool served by a worker with Prefect's
default polling interval.

With `--slurm` (root, Debian's slurm-wlm and munge) it also starts a single-node Slurm
cluster and times the same runs through the slurm launcher, next to the process
launcher, then cancels a few running jobs through each: from the flow run set
Cancelling to the job's process gone (and, for Slurm, the job out of squeue).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, PREFECT_WORKER_QUERY_SECONDS, temporary_settings
from prefect.utilities.callables import parameter_schema
from tiled.client import from_uri

from prefect.states import Cancelling

from benchmarks.common import NUM_CLASSES, paint_scribbles
from benchmarks.ingest import percentile
from benchmarks.harness import clean_environment, start_stack
from flows.segmentation import segmentation
from mlex_tomo.phantom import PhantomSpec, generate
from mlex_tomo.settings import StackSettings
from stack.services import prefect_worker_command, worker_environment
from tests.slurm_cluster import SlurmCluster

BASELINE_POOL = "segmentation-default-polling"
BASELINE_DEPLOYMENT = "segmentation-default-polling"
LABELLED_SLICES = [8, 24]
RUN_TIMEOUT_SECONDS = 300
CANCELS = 5
SLOW_MODEL = {"name": "TUNet", "depth": 2, "base_channels": 4, "num_epochs": 10_000, "early_stopping_patience": 10_000}


def write_sample(settings: StackSettings) -> dict[str, str]:
    image, truth = generate(PhantomSpec(shape=(32, 64, 64), seed=1))
    rng = np.random.default_rng(1)
    labels = np.stack([paint_scribbles(truth[z], rng) for z in LABELLED_SLICES])
    tiled = from_uri(settings.tiled.base_url, api_key=settings.tiled.api_key.get_secret_value())
    tiled["recons"].create_container("bench").write_array(image, key="data")
    classes = {str(index): {"label": str(index), "color": "#000000"} for index in range(NUM_CLASSES)}
    masks = tiled["masks"].create_container("bench").create_container("scribbles")
    masks.write_array(labels, key="mask", metadata={"mask_idx": LABELLED_SLICES, "classes": classes})
    return {"data": "recons/bench", "mask": "masks/bench/scribbles/mask", "device": "cpu"}


async def deploy_baseline() -> None:
    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=BASELINE_POOL, type="process"))
        flow_id = await client.create_flow_from_name(segmentation.name)
        await client.create_deployment(
            flow_id=flow_id,
            name=BASELINE_DEPLOYMENT,
            entrypoint="flows.segmentation:segmentation",
            work_pool_name=BASELINE_POOL,
            parameter_openapi_schema=parameter_schema(segmentation).model_dump_for_openapi(),
            enforce_parameter_schema=True,
        )


def start_baseline_worker(settings: StackSettings) -> subprocess.Popen:
    command = prefect_worker_command(settings)
    command = [*command[: command.index("--pool") + 1], BASELINE_POOL, "--type", "process"]
    baseline_environment = {**clean_environment(), **worker_environment(settings)}
    baseline_environment.pop("PREFECT_WORKER_QUERY_SECONDS")
    return subprocess.Popen(command, env=baseline_environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def job_started_at(job_name: str, deadline: float) -> float:
    """Creation time of the job process whose parameters file names `job_name`."""
    return job_process(job_name, deadline).create_time()


def job_process(job_name: str, deadline: float) -> psutil.Process:
    while time.time() < deadline:
        for process in psutil.process_iter(["cmdline"]):
            command = process.info["cmdline"] or []
            if "segmentation" in command and any(f"/{job_name}-" in part for part in command):
                return process
        time.sleep(0.01)
    raise SystemExit(f"no job process for {job_name} appeared")


def time_cancels(request: dict, count: int, label: str, cluster: SlurmCluster | None) -> list[float]:
    """Seconds from the run set Cancelling to its job's process gone and, on Slurm, the job out of the queue."""
    delays = []
    for index in range(count):
        job_name = f"{label}{index}"
        flow_run = run_deployment(
            "segmentation/segmentation", parameters={"request": {**request, "job_name": job_name}}, timeout=0
        )
        job = job_process(job_name, time.time() + RUN_TIMEOUT_SECONDS)
        asyncio.run(set_cancelling(flow_run.id))
        started = time.monotonic()
        while alive(job) or (cluster is not None and cluster.jobs()):
            time.sleep(0.01)
        delays.append(time.monotonic() - started)
        asyncio.run(wait_final(flow_run.id))
    return delays


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def set_cancelling(flow_run_id) -> None:
    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, Cancelling(), force=True)


def time_runs(deployment: str, request: dict, count: int, label: str) -> list[float]:
    delays = []
    for index in range(count):
        job_name = f"{label}{index}"
        started = time.time()
        flow_run = run_deployment(deployment, parameters={"request": {**request, "job_name": job_name}}, timeout=0)
        delays.append(job_started_at(job_name, started + RUN_TIMEOUT_SECONDS) - started)
        finished = asyncio.run(wait_final(flow_run.id))
        if not finished.is_completed():
            raise SystemExit(f"run {flow_run.id} ended {finished.name}: {finished.message}")
    return delays


async def wait_final(flow_run_id):
    async with get_client() as client:
        while True:
            state = (await client.read_flow_run(flow_run_id)).state
            if state is not None and state.is_final():
                return state
            await asyncio.sleep(0.2)


def report(label: str, delays: list[float]) -> None:
    print(
        f"{label}: n={len(delays)}, p50 {statistics.median(delays):.2f} s, "
        f"p95 {percentile(delays, 0.95):.2f} s, max {max(delays):.2f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--slurm", action="store_true", help="also through the slurm launcher on a local single-node Slurm")
    arguments = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="mlex-flows-bench-"))
    stack, baseline_worker, cluster = None, None, None
    try:
        if arguments.slurm:
            cluster = SlurmCluster(data_dir / "slurm")
            cluster.start()
            os.environ.update(cluster.environment)  # the worker's Slurm commands find the cluster through it
        stack, settings = start_stack(data_dir)
        sample = write_sample(settings)
        with temporary_settings({PREFECT_API_URL: settings.prefect.resolved_api_url}):
            train = run_deployment(
                "segmentation/segmentation",
                parameters={"request": {**sample, "steps": "train", "job_name": "model",
                                        "model": {"name": "RandomForest", "n_estimators": 5}}},
                timeout=RUN_TIMEOUT_SECONDS,
            )
            if not train.state.is_completed():
                raise SystemExit(f"training run ended {train.state.name}: {train.state.message}")
            trained_job_id = f"model-{str(train.id)[:8]}-train"
            request = {"data": sample["data"], "device": "cpu", "steps": "infer", "trained_job_id": trained_job_id}
            asyncio.run(deploy_baseline())
            baseline_worker = start_baseline_worker(settings)
            ours = time_runs("segmentation/segmentation", request, arguments.runs, "fast")
            baseline = time_runs(f"segmentation/{BASELINE_DEPLOYMENT}", request, arguments.runs, "default")
            if cluster is not None:
                slurm = time_runs("segmentation/segmentation", {**request, "launcher": "slurm"}, arguments.runs, "slurm")
                slow = {**sample, "steps": "train", "model": SLOW_MODEL}
                cancels = {
                    "process": time_cancels({**slow, "launcher": "process"}, CANCELS, "cancelprocess", None),
                    "slurm": time_cancels({**slow, "launcher": "slurm"}, CANCELS, "cancelslurm", cluster),
                }
        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        report(f"mlex-tomo worker (polls every {settings.prefect.worker_query_seconds:g} s), process launcher", ours)
        report(f"baseline: Prefect's default worker polling ({PREFECT_WORKER_QUERY_SECONDS.value():g} s)", baseline)
        if cluster is not None:
            report(f"mlex-tomo worker, slurm launcher (state read every {settings.jobs.slurm.poll_seconds:g} s)", slurm)
            for launcher, delays in cancels.items():
                report(f"cancel -> job gone, {launcher} launcher", delays)
    finally:
        for process in (baseline_worker, stack):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT if process is baseline_worker else signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
