"""Launchers build argument lists that carry hostile values inertly; the runner never leaves a job behind."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import psutil
import pytest

from flows.job_runner import JobTerminated, run_launched_job
from flows.launchers import ContainerLauncher, JobResources, Launch, LaunchRefused, ProcessLauncher

SECRET = "0123456789abcdef" * 4
NO_RESOURCES = JobResources()


def test_the_process_launcher_runs_the_job_module_with_the_secret_in_the_environment(tmp_path):
    launch = ProcessLauncher(Path("/opt/env/bin/python")).launch(
        "job-1", tmp_path / "job-1.yaml", tmp_path, NO_RESOURCES, {"TILED_API_KEY": SECRET}
    )
    assert launch.command == ["/opt/env/bin/python", "-m", "segmentation", str(tmp_path / "job-1.yaml")]
    assert launch.secret_environment == {"TILED_API_KEY": SECRET} and SECRET not in repr(launch)


def test_podman_gets_cdi_gpus_limits_and_the_secret_by_name_only(tmp_path):
    launcher = ContainerLauncher("podman", "registry.example/segmentation:1", launched_by="node-7/4242/99")
    resources = JobResources(cpus=8, memory_gib=31.5, gpus=True)
    launch = launcher.launch("job-2", tmp_path / "job-2.yaml", tmp_path / "models", resources, {"TILED_API_KEY": SECRET})
    command = launch.command
    assert command[:3] == ["podman", "run", "--rm"]
    assert command[command.index("--name") + 1] == "mlex-tomo-job-job-2"
    labels = [command[index + 1] for index, argument in enumerate(command) if argument == "--label"]
    assert labels == ["mlex-tomo.job-id=job-2", "mlex-tomo.launched-by=node-7/4242/99"]  # what flows/leftovers.py looks for
    assert command[command.index("--device") + 1] == "nvidia.com/gpu=all"
    passed = [command[index + 1] for index, argument in enumerate(command) if argument == "--env"]
    assert "TILED_API_KEY" in passed and SECRET not in " ".join(command)
    assert command[command.index("--cpus") + 1] == "8" and command[command.index("--memory") + 1] == "32256m"
    assert f"{tmp_path / 'job-2.yaml'}:/job/params.yaml:ro" in command
    assert command[-2:] == ["registry.example/segmentation:1", "/job/params.yaml"]
    assert launch.stop_command == ["podman", "stop", "--time", "3", "mlex-tomo-job-job-2"]
    assert launch.remove_command == ["podman", "rm", "--force", "mlex-tomo-job-job-2"]


def test_podman_with_a_root_file_system_runs_python_from_it_after_every_option(tmp_path):
    launcher = ContainerLauncher("podman", "unused", rootfs=Path("/"), rootfs_python=Path("/opt/venv/bin/python"))
    command = launcher.launch("job-4", tmp_path / "p.yaml", tmp_path, NO_RESOURCES, {}).command
    assert command[command.index("--rootfs") :] == [
        "--rootfs", "/:O", "/opt/venv/bin/python", "-m", "segmentation", "/job/params.yaml"
    ]
    assert "unused" not in command


def test_docker_uses_gpus_all_and_no_gpu_flag_without_gpus(tmp_path):
    launcher = ContainerLauncher("docker", "segmentation:latest")
    with_gpus = launcher.launch("job-3", tmp_path / "p.yaml", tmp_path, JobResources(gpus=True), {})
    assert with_gpus.command[with_gpus.command.index("--gpus") + 1] == "all"
    without = launcher.launch("job-3", tmp_path / "p.yaml", tmp_path, NO_RESOURCES, {})
    assert "--gpus" not in without.command and "--device" not in without.command
    with pytest.raises(LaunchRefused, match="--rootfs"):
        ContainerLauncher("docker", "segmentation:latest", rootfs=Path("/"))


def test_docker_through_podmans_socket_asks_for_the_gpus_by_cdi(tmp_path):
    """The compose worker runs `docker` against podman's Docker API, which knows CDI devices, not --gpus."""
    launcher = ContainerLauncher("docker", "segmentation:latest", gpu_request="cdi")
    command = launcher.launch("job-5", tmp_path / "p.yaml", tmp_path, JobResources(gpus=True), {}).command
    assert command[command.index("--device") + 1] == "nvidia.com/gpu=all" and "--gpus" not in command
    podman = ContainerLauncher("podman", "segmentation:latest", gpu_request="gpus")
    assert podman.launch("job-5", tmp_path / "p.yaml", tmp_path, JobResources(gpus=True), {}).command.count("--gpus") == 1


@pytest.mark.parametrize("job_id", ["a;rm -rf /", "$(touch x)", "../up", "name with space", "'quoted'", "-flag"])
def test_hostile_job_ids_are_refused(tmp_path, job_id):
    for launcher in (ProcessLauncher(Path(sys.executable)), ContainerLauncher("podman", "image")):
        with pytest.raises(LaunchRefused, match="job id"):
            launcher.launch(job_id, tmp_path / "p.yaml", tmp_path, NO_RESOURCES, {})


def test_paths_that_would_break_a_volume_argument_are_refused_and_others_pass_inertly(tmp_path):
    launcher = ContainerLauncher("podman", "image")
    with pytest.raises(LaunchRefused, match="':' or ','"):
        launcher.launch("job", tmp_path / "a:b.yaml", tmp_path, NO_RESOURCES, {})
    odd = tmp_path / "$(touch pwned); echo"
    launch = launcher.launch("job", odd / "p.yaml", odd, NO_RESOURCES, {})
    assert f"{odd / 'p.yaml'}:/job/params.yaml:ro" in launch.command


def fake_job(tmp_path: Path, body: str) -> Launch:
    """A stand-in process speaking the job's output protocol, to exercise the runner alone."""
    script = tmp_path / "job.py"
    script.write_text(body)
    return Launch([sys.executable, str(script)], {"TILED_API_KEY": SECRET})


def test_events_and_log_lines_are_forwarded_and_the_secret_reaches_only_the_job(tmp_path):
    launch = fake_job(
        tmp_path,
        "import json, os, sys\n"
        "print('plain text')\n"
        "print(json.dumps({'event': 'epoch', 'epoch': 1, 'of': 2}), flush=True)\n"
        "print('warning: something', file=sys.stderr)\n"
        "print(json.dumps({'event': 'finished', 'key_ok': os.environ['TILED_API_KEY'] == %r}))\n" % SECRET,
    )
    events, logs = [], []
    exit_status = run_launched_job(launch, events.append, lambda line, error: logs.append((line, error)))
    assert exit_status.code == 0
    assert events == [{"event": "epoch", "epoch": 1, "of": 2}, {"event": "finished", "key_ok": True}]
    assert ("plain text", False) in logs and ("warning: something", True) in logs


def test_a_failing_job_reports_its_last_words(tmp_path):
    launch = fake_job(
        tmp_path,
        "import json, sys\n"
        "print('segmentation: mask_uri: no node', file=sys.stderr)\n"
        "print(json.dumps({'event': 'failed', 'exit_code': 3, 'message': 'mask_uri: no node'}))\n"
        "sys.exit(3)\n",
    )
    exit_status = run_launched_job(launch, lambda event: None, lambda line, error: None)
    assert exit_status.code == 3
    assert exit_status.failure_message == "the segmentation job exited with code 3: mask_uri: no node"


def test_sigterm_to_the_runner_stops_a_job_that_ignores_it(tmp_path):
    launch = fake_job(
        tmp_path,
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('{\"event\": \"started\", \"pid\": %d}' % os.getpid(), flush=True)\n"
        "time.sleep(600)\n",
    )
    jobs: list[int] = []

    def on_event(event):
        jobs.append(event["pid"])
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(JobTerminated):
            run_launched_job(launch, on_event, lambda line, error: None, stop_grace_seconds=1.0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not psutil.pid_exists(jobs[0]) or psutil.Process(jobs[0]).status() == psutil.STATUS_ZOMBIE


def test_an_existing_sigterm_handler_such_as_prefects_is_left_in_charge(tmp_path):
    class Terminated(BaseException):
        pass

    def handler(signal_number, frame):
        raise Terminated()

    launch = fake_job(tmp_path, "import time\nprint('{\"event\": \"started\"}', flush=True)\ntime.sleep(600)\n")
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Terminated):
            run_launched_job(
                launch,
                lambda event: threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start(),
                lambda line, error: None,
                stop_grace_seconds=1.0,
            )
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_runner_restores_the_previous_sigterm_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    run_launched_job(fake_job(tmp_path, "print('done')\n"), lambda event: None, lambda line, error: None)
    assert signal.getsignal(signal.SIGTERM) is before


def test_container_stop_and_remove_commands_run_when_the_job_is_stopped(tmp_path):
    record = tmp_path / "engine.log"
    engine = [sys.executable, "-c", f"import sys; open({str(record)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"]
    launch = Launch(
        [sys.executable, "-c", "import json, time; print(json.dumps({'event': 'started'}), flush=True); time.sleep(600)"],
        stop_command=[*engine, "stop", "job"],
        remove_command=[*engine, "rm", "job"],
    )

    def on_event(event):
        raise RuntimeError("the flow crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        run_launched_job(launch, on_event, lambda line, error: None, stop_grace_seconds=1.0)
    assert record.read_text().splitlines() == ["stop job", "rm job"]
