"""Two workers on one work pool: runs are routed by queue, and a worker at its limit leaves the next run waiting."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling

from flows.segmentation import SegmentationRequest
from flows.submit import submit_segmentation
from tests.services import RunningStack, clean_environment, wait_for
from tests.test_flows import alive, job_processes, read_run_records, write_sample

pytestmark = pytest.mark.stack

SLOW_NETWORK = {"name": "TUNet", "depth": 2, "base_channels": 4, "num_epochs": 10_000, "early_stopping_patience": 10_000}
WAITING_SECONDS = 10  # what a waiting run is watched for: ten of the workers' polls


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`up`'s worker as a CPU node's (queue cpu, one run at a time) and a second worker as a GPU node's (queue gpu)."""
    running = RunningStack(tmp_path_factory.mktemp("routing"))
    running.settings_arguments += ["--prefect.worker_queues", json.dumps(["cpu"]), "--prefect.worker_limit", "1"]
    gpu_worker = None
    try:
        running.start()
        write_sample(running.settings)
        gpu_worker = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", "worker", *running.arguments, "--prefect.worker_queues", json.dumps(["gpu"]),
             "--prefect.worker_limit", "1", "--prefect.worker_name", "gpu-node"],
            env=clean_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        yield running
    finally:
        if gpu_worker is not None:
            stop_group(gpu_worker)
        running.stop()


def stop_group(process: subprocess.Popen, grace_seconds: float = 30) -> None:
    """As `up` stops its worker: SIGTERM to the worker and its flow runs, SIGKILL what outlives the grace."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def submit(stack, job_name: str, model: dict):
    request = SegmentationRequest(data="recons/phantom", mask="masks/phantom/scribbles/mask", device="cpu", job_name=job_name, model=model)
    return submit_segmentation(stack.settings, request, tags=["routing-test"])


def state_of(stack, flow_run):
    return read_run_records(stack, flow_run.id)[2].state


def cancel(stack, flow_run) -> None:
    async def set_cancelling():
        async with get_client() as client:
            await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

    with temporary_settings({PREFECT_API_URL: stack.settings.prefect.resolved_api_url}):
        asyncio.run(set_cancelling())


def test_forest_runs_go_to_the_cpu_queue_networks_to_the_gpu_queue_and_a_third_run_waits(stack):
    first = submit(stack, "net-a", SLOW_NETWORK)
    wait_for(lambda: job_processes("net-a"), timeout=120, message="the first network's job on the GPU worker")
    second = submit(stack, "net-b", SLOW_NETWORK)
    forest = submit(stack, "forest", {"name": "RandomForest"})
    assert (first.work_queue_name, second.work_queue_name, forest.work_queue_name) == ("gpu", "gpu", "cpu")

    # The CPU worker runs the forest while the GPU worker's job goes on: two jobs at once.
    wait_for(lambda: state_of(stack, forest).is_final(), timeout=180, message="the forest run to end")
    assert state_of(stack, forest).is_completed(), state_of(stack, forest).message
    assert any(alive(process) for process in job_processes("net-a"))

    # The GPU worker is at its limit of one: the second network waits, never started.
    waited_until = time.monotonic() + WAITING_SECONDS
    while time.monotonic() < waited_until:
        assert state_of(stack, second).is_scheduled(), state_of(stack, second).name
        assert not job_processes("net-b")
        time.sleep(1)

    # Once the first ends, the waiting run starts.
    cancel(stack, first)
    wait_for(lambda: job_processes("net-b"), timeout=120, message="the waiting run's job to start")
    cancel(stack, second)
    for flow_run in (first, second):
        wait_for(lambda: state_of(stack, flow_run).is_final(), timeout=60, message="the cancelled runs to end")
