"""The slurm launcher: its batch script from typed settings, and the follower on a real single-node Slurm."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from flows.job_runner import JobTerminated
from flows.launchers import ContainerLauncher, JobResources, LaunchRefused
from flows.slurm import BatchJob, GrowingFile, SlurmLauncher, run_batch_job
from mlex_tomo.settings import SettingsError, SlurmSettings, load_settings
from tests.slurm_cluster import MISSING_REASON, SlurmCluster, slurm_available
from tests.services import wait_for

SECRET = "0123456789abcdef" * 4
CONTAINERS_CONF = Path(__file__).parent / "podman" / "containers.conf"
CANCEL_SECONDS = 5


def launcher(tmp_path: Path, **settings) -> SlurmLauncher:
    container = ContainerLauncher("podman", "registry.example/seg:1")
    return SlurmLauncher(SlurmSettings(**settings), tmp_path / "jobs", Path("/opt/env/bin/python"), container)


def script_lines(batch_job: BatchJob) -> list[str]:
    return batch_job.script.read_text().splitlines()


def test_the_script_holds_the_operators_settings_and_runs_the_job_argv_without_the_secret(tmp_path):
    slurm = launcher(
        tmp_path, partition="gpu", account="beamline-k11", qos="beamtime", time_limit="0-04:00:00",
        cpus_per_task=16, memory="64G", extra_directives=["--constraint=h200", "--exclusive"],
    )
    parameters = tmp_path / "jobs" / "job-1.yaml"
    batch_job = slurm.batch_job("job-1", parameters, tmp_path / "models", JobResources(), {"TILED_API_KEY": SECRET})
    lines = script_lines(batch_job)
    assert lines[0] == "#!/bin/bash"
    assert [line for line in lines if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=mlex-tomo-job-1",
        f"#SBATCH --output={tmp_path}/jobs/job-1.slurm.out",
        f"#SBATCH --error={tmp_path}/jobs/job-1.slurm.err",
        "#SBATCH --time=0-04:00:00",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=beamline-k11",
        "#SBATCH --qos=beamtime",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=64G",
        "#SBATCH --constraint=h200",
        "#SBATCH --exclusive",
    ]
    assert lines[-1] == f"exec /opt/env/bin/python -m segmentation {parameters}"
    assert SECRET not in batch_job.script.read_text() and SECRET not in repr(batch_job)
    assert batch_job.secret_environment == {"TILED_API_KEY": SECRET}


def test_a_runs_resources_override_the_settings_and_gpus_are_asked_as_the_site_wants(tmp_path):
    resources = JobResources(cpus=3.5, memory_gib=31.5, gpus=True)
    gpus = script_lines(launcher(tmp_path, cpus_per_task=2, memory="8G", gpus="h200:1").batch_job("a", tmp_path / "a.yaml", tmp_path, resources, {}))
    assert {"#SBATCH --cpus-per-task=4", "#SBATCH --mem=32256M", "#SBATCH --gpus=h200:1"} <= set(gpus)
    gres = script_lines(launcher(tmp_path, gres="gpu:1").batch_job("b", tmp_path / "b.yaml", tmp_path, resources, {}))
    assert "#SBATCH --gres=gpu:1" in gres and not any("--gpus" in line for line in gres)
    no_gpus = script_lines(launcher(tmp_path, gpus="1").batch_job("c", tmp_path / "c.yaml", tmp_path, JobResources(), {}))
    assert not any("--gpus" in line or "--gres" in line for line in no_gpus)


def test_the_container_runtimes_run_the_image_with_the_secret_by_name_only(tmp_path):
    resources, secrets = JobResources(gpus=True), {"TILED_API_KEY": SECRET}
    podman = launcher(tmp_path, runtime="podman").batch_job("job-p", tmp_path / "p.yaml", tmp_path / "models", resources, secrets)
    command = script_lines(podman)[-1]
    assert command.startswith("exec podman run --rm --init --name mlex-tomo-job-job-p ")
    assert "--env TILED_API_KEY " in command and "--device nvidia.com/gpu=all" in command
    assert command.endswith("registry.example/seg:1 /job/params.yaml")
    image = tmp_path / "segmentation.sif"
    apptainer = launcher(tmp_path, runtime="apptainer", apptainer_image=image).batch_job("job-a", tmp_path / "a.yaml", tmp_path / "models", resources, secrets)
    assert script_lines(apptainer)[-1] == (
        f"exec apptainer exec --nv --bind {tmp_path}/a.yaml:/job/params.yaml:ro --bind {tmp_path}/models:{tmp_path}/models "
        f"{image} python -m segmentation /job/params.yaml"
    )
    assert SECRET not in podman.script.read_text() + apptainer.script.read_text()


def test_hostile_values_are_refused_or_stay_one_quoted_argument(tmp_path):
    slurm = launcher(tmp_path)
    with pytest.raises(LaunchRefused, match="job id"):
        slurm.batch_job("x\n#SBATCH --uid=0", tmp_path / "x.yaml", tmp_path, JobResources(), {})
    spaced = SlurmLauncher(SlurmSettings(), tmp_path / "my jobs", Path("/opt/env/bin/python"), ContainerLauncher("podman", "image"))
    with pytest.raises(LaunchRefused, match="#SBATCH line"):
        spaced.batch_job("job-1", tmp_path / "job-1.yaml", tmp_path, JobResources(), {})
    odd = slurm.batch_job("job-2", tmp_path / "it's $(here).yaml", tmp_path, JobResources(), {})
    assert script_lines(odd)[-1] == f"exec /opt/env/bin/python -m segmentation '{tmp_path}/it'\"'\"'s $(here).yaml'"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"partition": "gpu --uid=0"}, "jobs.slurm.partition"),
        ({"extra_directives": ["--comment=a\n#SBATCH --uid=0"]}, "jobs.slurm.extra_directives"),
        ({"time_limit": "two hours"}, "jobs.slurm.time_limit"),
        ({"runtime": "apptainer"}, "apptainer_image"),
    ],
)
def test_settings_that_would_break_the_script_are_refused_with_their_key(override, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(overrides={"jobs": {"slurm": override}}, environ={})


def test_settings_come_from_the_environment_too():
    settings = load_settings(environ={"MLEX_TOMO_JOBS__SLURM__PARTITION": "gpu", "MLEX_TOMO_JOBS__LAUNCHER": "slurm"})
    assert (settings.jobs.launcher, settings.jobs.slurm.partition) == ("slurm", "gpu")


def test_a_growing_file_gives_whole_lines_and_the_last_one_at_the_end(tmp_path):
    path = tmp_path / "out"
    growing = GrowingFile(path)
    assert growing.new_lines() == []
    path.write_bytes(b"one\ntw")
    assert growing.new_lines() == ["one"]
    with path.open("ab") as file:
        file.write(b"o\nthree")
    assert growing.new_lines() == ["two"]
    assert growing.new_lines(ended=True) == ["three"]


# On a real Slurm ---------------------------------------------------------------------

needs_slurm = pytest.mark.skipif(not slurm_available(), reason=MISSING_REASON)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    running.start()
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("SLURM_CONF", str(running.config))
        try:
            yield running
        finally:
            running.stop()


def batch_job(tmp_path: Path, body: str, directives: tuple[str, ...] = (), secrets: dict[str, str] | None = None) -> BatchJob:
    output, error = tmp_path / "job.out", tmp_path / "job.err"
    script = tmp_path / "job.sbatch"
    lines = ["#!/bin/bash", "#SBATCH --job-name=mlex-tomo-test", f"#SBATCH --output={output}", f"#SBATCH --error={error}"]
    script.write_text("\n".join([*lines, *(f"#SBATCH {line}" for line in directives), body, ""]))
    return BatchJob("test", script, output, error, secrets or {})


@needs_slurm
def test_events_and_logs_are_forwarded_and_the_secret_reaches_only_the_job(cluster, tmp_path, monkeypatch):
    seen = tmp_path / "seen"
    body = "\n".join(
        [
            'echo \'{"event": "stage", "stage": "loading"}\'',
            "echo plain log line",
            "echo warning >&2",
            f'printf %s "$TILED_API_KEY" > {seen}',
            'printf \'{"event": "finished", "result_uri": "r"}\'',
        ]
    )
    body += f'\nprintf %s "$MLEX_TOMO_UI__PASSWORD" > {tmp_path / "worker-secret"}'
    monkeypatch.setenv("MLEX_TOMO_UI__PASSWORD", "the worker's own")
    events, logs = [], []
    ended = run_batch_job(
        batch_job(tmp_path, body, secrets={"TILED_API_KEY": SECRET}), events.append,
        lambda line, is_error: logs.append((line, is_error)), poll_seconds=0.5,
    )
    assert ended.code == 0 and ended.ended_by is None
    assert events == [{"event": "stage", "stage": "loading"}, {"event": "finished", "result_uri": "r"}]
    assert ("plain log line", False) in logs and ("warning", True) in logs
    assert logs[0][0].startswith("submitted as Slurm job ")
    assert seen.read_text() == SECRET and SECRET not in os.environ.get("TILED_API_KEY", "")
    assert (tmp_path / "worker-secret").read_text() == ""  # the worker's settings and secrets stay with the worker


@needs_slurm
def test_a_failing_job_reports_its_code_and_last_words(cluster, tmp_path):
    body = 'echo \'{"event": "failed", "message": "no model stored for job x"}\'\nexit 3'
    ended = run_batch_job(batch_job(tmp_path, body), lambda event: None, lambda line, is_error: None, poll_seconds=0.5)
    assert ended.code == 3
    assert ended.failure_message == "the segmentation job exited with code 3: no model stored for job x"


@needs_slurm
def test_a_refused_submission_says_what_sbatch_said(cluster, tmp_path):
    from flows.slurm import SlurmFailed

    with pytest.raises(SlurmFailed, match="sbatch refused job test: .*partition"):
        run_batch_job(batch_job(tmp_path, "true", ("--partition=nowhere",)), lambda event: None, lambda line, is_error: None)


@needs_slurm
def test_stopping_the_follower_cancels_the_slurm_job_at_once(cluster, tmp_path):
    def stop_at_the_first_event(event) -> None:
        raise JobTerminated("the flow run was asked to stop")

    body = "echo '{\"event\": \"stage\", \"stage\": \"training\"}'\nsleep 300"
    with pytest.raises(JobTerminated):
        run_batch_job(batch_job(tmp_path, body), stop_at_the_first_event, lambda line, is_error: None, poll_seconds=0.5)
    stopped_at = time.monotonic()
    wait_for(lambda: cluster.jobs() == [], timeout=30, message="Slurm to end the job")
    assert time.monotonic() - stopped_at <= CANCEL_SECONDS


@needs_slurm
def test_a_job_past_its_time_limit_fails_with_slurms_reason(cluster, tmp_path):
    """Slurm's limits are whole minutes and it checks them every 30 s: this test waits 60-90 s."""
    ended = run_batch_job(
        batch_job(tmp_path, "echo working\nsleep 600", ("--time=1",)), lambda event: None, lambda line, is_error: None, poll_seconds=1
    )
    assert ended.code != 0
    assert ended.ended_by is not None and ended.ended_by.endswith("ended TIMEOUT (TimeLimit)")
    assert ended.failure_message.startswith("Slurm job ") and "TIMEOUT" in ended.failure_message


@needs_slurm
@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed (make test installs it)")
def test_the_podman_runtime_runs_the_job_module_in_a_container_on_the_node(cluster, tmp_path, monkeypatch):
    """The real path up to the job's own checks: sbatch, podman on the node, the parameters file mounted, its verdict back."""
    monkeypatch.setenv("CONTAINERS_CONF", os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)))
    container = ContainerLauncher("podman", "unused", rootfs=Path("/"), rootfs_python=Path(sys.executable))
    slurm = SlurmLauncher(SlurmSettings(runtime="podman"), tmp_path / "jobs", Path(sys.executable), container)
    parameters = tmp_path / "params.yaml"
    parameters.write_text("task: train\n")
    (tmp_path / "models").mkdir()  # the flow makes it before any launch
    batch_job = slurm.batch_job("boxed-1", parameters, tmp_path / "models", JobResources(), {"TILED_API_KEY": SECRET})
    events = []
    ended = run_batch_job(batch_job, events.append, lambda line, is_error: None, poll_seconds=0.5)
    assert ended.code == 2, ended.failure_message
    assert events[-1]["event"] == "failed" and "/job/params.yaml has invalid parameters" in events[-1]["message"]
