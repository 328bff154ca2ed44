"""The `segmentation` flow through the slurm launcher: a `mlex-tomo up` stack whose jobs run on a real Slurm."""

from __future__ import annotations

import asyncio
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling
from tiled.client import from_uri

from tests.services import RunningStack, wait_for
from tests.slurm_cluster import MISSING_REASON, SlurmCluster, slurm_available
from tests.test_flows import CANCEL_SECONDS, alive, job_processes, read_run_records, request, run, write_sample

pytestmark = [pytest.mark.stack, pytest.mark.skipif(not slurm_available(), reason=MISSING_REASON)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    running = RunningStack(tmp_path_factory.mktemp("flows-slurm"))
    running.settings_arguments += ["--jobs.launcher", "slurm", "--jobs.slurm.partition", cluster.partition]
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("SLURM_CONF", str(cluster.config))  # the worker's Slurm client commands find the cluster here
        cluster.start()
        try:
            running.start()
            running.truth = write_sample(running.settings)
            running.cluster = cluster
            yield running
        finally:
            running.stop()
            cluster.stop()


def test_mlex_tomo_check_passes_with_its_jobs_on_slurm(stack):
    checked = stack.cli("check", "--launcher", "slurm", timeout=900)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "mean IoU against the ground truth" in checked.stdout


def test_a_slurm_job_reports_progress_and_its_secret_stays_out_of_the_script(stack):
    flow_run = run(stack, request(stack, steps="train", job_name="batch", model={"name": "RandomForest"}))
    assert flow_run.state.is_completed(), flow_run.state.message
    logs, artifacts, _ = read_run_records(stack, flow_run.id)
    job_id = f"batch-{str(flow_run.id)[:8]}-train"
    assert [artifact.data for artifact in artifacts if artifact.type == "progress"] == [100.0]
    assert any(f"launching job {job_id} with sbatch" in log.message for log in logs)
    assert any(log.message.startswith("submitted as Slurm job ") for log in logs)
    assert from_uri(stack.settings.tiled.base_url)["results"][job_id].metadata["status"] == "complete"
    script = (stack.settings.jobs_path / f"{job_id}.sbatch").read_text()
    assert "#SBATCH --partition=debug" in script
    assert stack.settings.tiled.api_key.get_secret_value() not in script


def test_a_failing_slurm_job_fails_the_run_with_its_last_words(stack):
    flow_run = run(stack, request(stack, steps="infer", mask=None, trained_job_id="never-trained"))
    assert flow_run.state.is_failed()
    assert "exited with code 3: no model stored for job 'never-trained'" in flow_run.state.message


def test_cancelling_the_run_cancels_the_slurm_job_within_seconds(stack):
    slow = {"name": "TUNet", "depth": 2, "base_channels": 4, "num_epochs": 10_000, "early_stopping_patience": 10_000}
    flow_run = run(stack, request(stack, steps="train", job_name="doomed-slurm", model=slow), timeout=0)
    wait_for(lambda: job_processes("doomed-slurm"), timeout=120, message="the Slurm job's process to start")
    jobs = job_processes("doomed-slurm")
    assert any("mlex-tomo-doomed-slurm-" in line and "RUNNING" in line for line in stack.cluster.jobs())

    async def cancel():
        async with get_client() as client:
            await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

    with temporary_settings({PREFECT_API_URL: stack.settings.prefect.resolved_api_url}):
        asyncio.run(cancel())
    cancelled_at = time.monotonic()
    wait_for(lambda: stack.cluster.jobs() == [] and not any(alive(job) for job in jobs), timeout=60, message="the Slurm job to end")
    stopped_after = time.monotonic() - cancelled_at
    assert stopped_after <= 3 * CANCEL_SECONDS, f"the Slurm job ran on for {stopped_after:.1f} s after the cancel"
    print(f"slurm job gone {stopped_after:.1f} s after the cancel")
    wait_for(lambda: read_run_records(stack, flow_run.id)[2].state.is_final(), timeout=60, message="the run to end")
    assert read_run_records(stack, flow_run.id)[2].state.is_cancelled()
