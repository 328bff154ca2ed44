"""`python -m segmentation params.yaml` as the worker runs it, against a real Tiled server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from mlex_tomo.phantom import PhantomSpec, generate
from segmentation.__main__ import main
from segmentation.metrics import mean_iou
from segmentation.parameters import JobParameters
from mlex_tomo.scribbles import paint_scribbles
from tests.services import Services, clean_environment, free_ports, wait_for

REPOSITORY = Path(__file__).resolve().parents[1]
PHANTOM = PhantomSpec(shape=(64, 96, 96), seed=3)
LABELLED_SLICES = [20, 44]  # 3 % of the slices, a few strokes on each
CLASSES = {
    "0": {"label": "void", "color": "#000000"},
    "1": {"label": "matrix", "color": "#8c8c8c"},
    "2": {"label": "inclusion", "color": "#ffb000"},
}
FAST_TUNET = {
    "name": "TUNet",
    "depth": 3,
    "base_channels": 8,
    "learning_rate": 0.01,
    "num_epochs": 30,
    "batch_size_train": 8,
    "patches_per_epoch": 64,
    "early_stopping_patience": 30,
}
FLOOR = 0.85
# The TUNet trains without the fifth of each class's strokes held out to score it: 0.83
# here (seed 0; 0.88 with seed 1), against 0.89-0.91 trained on every label.
TUNET_FLOOR = 0.80


class Job:
    """Runs the job in a subprocess with the environment a launcher gives it."""

    def __init__(self, services: Services, models_dir: Path, work_dir: Path, labels: np.ndarray) -> None:
        self.services, self.models_dir, self.work_dir, self.labels = services, models_dir, work_dir, labels
        self.base = f"{services.settings.tiled.base_url}/api/v1/metadata"

    def environment(self, api_key: bool = True) -> dict[str, str]:
        environment = clean_environment()
        if api_key:
            environment["TILED_API_KEY"] = self.services.settings.tiled.api_key.get_secret_value()
        return environment

    def parameters(self, **overrides) -> dict:
        return {
            "data_uri": f"{self.base}/recons/phantom",
            "mask_uri": f"{self.base}/masks/phantom/scribbles/mask",
            "result_uri": f"{self.base}/results",
            "models_dir": str(self.models_dir),
            "device": "cpu",
            **overrides,
        }

    def start(self, parameters: dict, api_key: bool = True) -> subprocess.Popen:
        path = self.work_dir / f"{parameters.get('job_id', 'job')}-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(parameters))
        return subprocess.Popen(
            [sys.executable, "-m", "segmentation", str(path)],
            cwd=REPOSITORY,
            env=self.environment(api_key),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, parameters: dict, api_key: bool = True, timeout: float = 300) -> tuple[int, list[dict], str]:
        process = self.start(parameters, api_key)
        stdout, stderr = process.communicate(timeout=timeout)
        return process.returncode, [json.loads(line) for line in stdout.splitlines()], stderr

    def result(self, job_id: str):
        return self.services.tiled()["results"][job_id]


@pytest.fixture(scope="module")
def phantom():
    return generate(PHANTOM)


@pytest.fixture(scope="module")
def job(tmp_path_factory, phantom):
    image, truth = phantom
    rng = np.random.default_rng(5)
    labels = np.stack([paint_scribbles(truth[z], rng, strokes_per_class=10) for z in LABELLED_SLICES])
    services = Services(tmp_path_factory.mktemp("job-stack"))
    try:
        services.start("tiled")
        writer = services.tiled(writable=True)
        writer["recons"].create_container("phantom").write_array(image, key="data")
        other = writer["recons"].create_container("phantom-brighter")
        other.write_array(image * 3 + 10, key="data")
        scan_masks = writer["masks"].create_container("phantom").create_container("scribbles")
        scan_masks.write_array(
            labels,
            key="mask",
            metadata={"mask_idx": LABELLED_SLICES, "classes": CLASSES, "data_uri": "recons/phantom"},
        )
        one_class = np.where(labels == 1, 1, -1).astype(np.int8)
        writer["masks"]["phantom"].create_container("one-class").write_array(
            one_class, key="mask", metadata={"mask_idx": LABELLED_SLICES, "classes": CLASSES}
        )
        four_classes = {**CLASSES, "3": {"label": "crack", "color": "#ff0000"}}
        writer["masks"]["phantom"].create_container("unpainted-class").write_array(
            labels, key="mask", metadata={"mask_idx": LABELLED_SLICES, "classes": four_classes}
        )
        yield Job(services, tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("parameters"), labels)
    finally:
        services.stop_all()


def events_named(events: list[dict], name: str) -> list[dict]:
    return [event for event in events if event["event"] == name]


@pytest.mark.stack
def test_random_forest_trains_on_scribbles_then_segments_the_whole_volume(job, phantom):
    _, truth = phantom
    code, events, stderr = job.run(
        job.parameters(task="train_infer", job_id="forest-train", model={"name": "RandomForest"})
    )
    assert code == 0, stderr
    assert [event["event"] for event in events][0] == "started"
    assert events_named(events, "trained") and events[-1]["event"] == "finished"
    preview = job.result("forest-train")
    assert preview["seg_result"].shape == (len(LABELLED_SLICES), 96, 96)
    assert preview.metadata["status"] == "complete" and preview.metadata["slices"] == LABELLED_SLICES
    assert preview.metadata["model"] == "RandomForest" and preview.metadata["mask_idx"] == LABELLED_SLICES
    # Where to paint next: the painted slices it segmented, and 32 spread through the volume it only estimated.
    measured = preview.metadata["slice_uncertainty"]
    spread = np.unique(np.linspace(0, 63, 32).round().astype(int)).tolist()
    assert measured["slices"] == sorted(set(LABELLED_SLICES) | set(spread))
    assert all(0 <= value <= 1 for value in measured["mean"]) and max(measured["mean"]) > 0
    surveyed = [event for event in events if event.get("stage") == "surveying"]
    assert surveyed[-1]["done"] == surveyed[-1]["of"] == len(set(spread) - set(LABELLED_SLICES))
    metrics = preview.metadata["metrics"]
    assert set(metrics) == {"held_out_mean_iou", "held_out_iou_per_class", "held_out_pixels"}
    assert 0 < metrics["held_out_pixels"] < np.sum(job.labels >= 0) / 2 and len(metrics["held_out_iou_per_class"]) == 3
    assert 0.5 < metrics["held_out_mean_iou"] <= 1
    for name in ("trained", "finished"):
        assert {key: events_named(events, name)[0][key] for key in metrics} == metrics
    assert all("stage" in event for event in events)
    for stage in ("features", "fitting"):
        done = [event["done"] for event in events if event["event"] == "stage" and event["stage"] == stage]
        assert done[0] == 0 and done[-1] > 0 and all(a < b for a, b in zip(done, done[1:])), (stage, done)
    assert {path.name for path in (job.models_dir / "forest-train").iterdir()} == {"model.json", "forest.joblib"}

    code, events, stderr = job.run(
        job.parameters(
            task="infer", job_id="forest-infer", trained_job_id="forest-train", mask_uri=None, uncertainty=True
        )
    )
    assert code == 0, stderr
    result = job.result("forest-infer")
    labels = result["seg_result"].read()
    assert labels.shape == truth.shape and labels.dtype == np.uint8
    score, _ = mean_iou(labels, truth, 3)
    assert score >= FLOOR, f"random forest mean IoU {score:.3f} is below {FLOOR}"
    uncertainty = result["probabilities"].read()
    assert uncertainty.shape == truth.shape and uncertainty.max() > 0
    # Each slice's mean uncertainty, for "where to paint next", is the mean of its written map.
    expected = uncertainty.reshape(len(uncertainty), -1).mean(axis=1) / 255
    assert result.metadata["slice_uncertainty"]["slices"] == list(range(64))
    assert np.allclose(result.metadata["slice_uncertainty"]["mean"], expected, atol=1e-4)
    assert result.metadata["trained_job_id"] == "forest-train" and result.metadata["classes"] == CLASSES
    assert result.metadata["metrics"] == metrics  # the score of the model that segmented it
    assert events_named(events, "inference")[-1]["done"] == 64


@pytest.fixture(scope="module")
def tunet_job(job):
    parameters = job.parameters(task="train_infer", job_id="tunet", model=FAST_TUNET, slices="all")
    return job.run(parameters)


@pytest.mark.stack
def test_tunet_trains_with_epoch_progress_and_segments_the_volume(job, tunet_job, phantom):
    _, truth = phantom
    code, events, stderr = tunet_job
    assert code == 0, stderr
    epochs = events_named(events, "epoch")
    assert [event["epoch"] for event in epochs] == list(range(1, 31))
    assert all({"loss", "val_score", "eta_seconds", "of"} <= event.keys() for event in epochs)
    assert events_named(events, "trained")[0]["held_out_pixels"] > 0
    assert epochs[-1]["eta_seconds"] == 0
    done = [event["done"] for event in events_named(events, "inference")]
    assert done == sorted(done) and done[-1] == 64
    result = job.result("tunet")
    labels = result["seg_result"].read()
    slice_uncertainty = result.metadata["slice_uncertainty"]
    assert slice_uncertainty["slices"] == list(range(64))
    assert all(0 <= value <= 1 for value in slice_uncertainty["mean"]) and max(slice_uncertainty["mean"]) > 0
    score, _ = mean_iou(labels, truth, 3)
    assert score >= TUNET_FLOOR, f"TUNet mean IoU {score:.3f} is below {TUNET_FLOOR}"


@pytest.mark.stack
def test_a_volume_larger_than_the_memory_budget_streams_in_blocks_with_the_same_result(job, tunet_job):
    assert tunet_job[0] == 0
    one_slice_mib = 96 * 96 * 200 / 2**20  # well above one slice's buffers, far below the volume's
    code, events, stderr = job.run(
        job.parameters(
            task="infer", job_id="tunet-budget", trained_job_id="tunet", memory_budget_mib=one_slice_mib * 3
        )
    )
    assert code == 0, stderr
    done = [event["done"] for event in events_named(events, "inference")]
    blocks = np.diff([0, *done])
    assert len(blocks) >= 64 / 8 and blocks.max() < 8, f"blocks of {blocks} slices"
    np.testing.assert_array_equal(
        job.result("tunet-budget")["seg_result"].read(), job.result("tunet")["seg_result"].read()
    )

    code, _, stderr = job.run(
        job.parameters(task="infer", job_id="tunet-starved", trained_job_id="tunet", memory_budget_mib=0.01)
    )
    assert code == 3 and "memory_budget_mib" in stderr


@pytest.mark.stack
def test_another_scan_is_normalised_by_its_own_range(job, tunet_job):
    assert tunet_job[0] == 0
    code, _, stderr = job.run(
        job.parameters(
            task="infer",
            job_id="tunet-brighter",
            trained_job_id="tunet",
            data_uri=f"{job.base}/recons/phantom-brighter",
            mask_uri=None,
        )
    )
    assert code == 0, stderr
    same = job.result("tunet-brighter")["seg_result"].read() == job.result("tunet")["seg_result"].read()
    assert same.mean() > 0.99


@pytest.mark.stack
def test_sigterm_cancels_training_and_marks_the_result_cancelled(job):
    slow = {**FAST_TUNET, "num_epochs": 1000, "early_stopping_patience": 1000}
    process = job.start(job.parameters(task="train_infer", job_id="cancelled", model=slow))
    for line in process.stdout:
        if json.loads(line)["event"] == "epoch":
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    assert job.result("cancelled").metadata["status"] == "cancelled"
    assert not (job.models_dir / "cancelled").exists()


@pytest.mark.stack
@pytest.mark.parametrize(
    ("overrides", "api_key", "code", "message"),
    [
        ({"task": "infer", "job_id": "orphan", "trained_job_id": "never-trained"}, True, 3, "no model stored"),
        ({"task": "train", "job_id": "nowhere", "data_uri": "/recons/missing"}, True, 3, "no node"),
        ({"task": "train_infer", "job_id": "anonymous"}, False, 4, "401"),
        ({"task": "train_infer", "job_id": "far-slice", "slices": [3, 64]}, True, 3, "slices: [64]"),
        ({"task": "train", "job_id": "weights", "model": {"name": "TUNet", "weights": [1, 2]}}, True, 3, "model.weights"),
        ({"task": "train", "job_id": "one", "mask_uri": "/masks/phantom/one-class/mask"}, True, 3, "only class 'matrix' is painted"),
        (
            {"task": "train", "job_id": "one-network", "mask_uri": "/masks/phantom/one-class/mask", "model": {"name": "TUNet"}},
            True,
            3,
            "only class 'matrix' is painted",
        ),
        ({"task": "train", "job_id": "unpainted", "mask_uri": "/masks/phantom/unpainted-class/mask"}, True, 3, "class 'crack' has no painted pixel"),
    ],
)
def test_bad_input_fails_early_with_its_own_exit_code(job, overrides, api_key, code, message):
    for name in ("data_uri", "mask_uri"):
        if name in overrides:
            overrides = {**overrides, name: job.base + overrides[name]}
    parameters = job.parameters(**{"model": {"name": "RandomForest"}, **overrides})
    if overrides["task"] == "infer":
        parameters.pop("model")
    returned, events, stderr = job.run(parameters, api_key=api_key)
    assert returned == code, stderr
    failed = {"event": "failed", "stage": "failed", "exit_code": code, "message": events[-1]["message"]}
    assert message in stderr and events[-1] == failed
    assert not events_named(events, "stage") and not events_named(events, "epoch")


@pytest.mark.stack
def test_a_job_id_is_never_reused(job):
    parameters = job.parameters(task="train", job_id="once", model={"name": "RandomForest", "n_estimators": 5})
    assert job.run(parameters)[0] == 0
    code, _, stderr = job.run(parameters)
    assert code == 3 and "already stored" in stderr


@pytest.fixture
def run_file(tmp_path, capsys, monkeypatch):
    """The entry point in this process (importing torch once), on a parameters file."""
    for name in list(os.environ):
        if name.startswith("TILED_"):
            monkeypatch.delenv(name)

    def run(document, raw: str | None = None) -> tuple[int, str]:
        path = tmp_path / "params.yaml"
        path.write_text(raw if raw is not None else yaml.safe_dump(document))
        code = main([str(path)])
        return code, capsys.readouterr().err

    return run


def test_an_unreachable_tiled_exits_4(run_file):
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}/api/v1/metadata"
    code, stderr = run_file(
        {
            "task": "train",
            "job_id": "offline",
            "data_uri": f"{base}/recons/x",
            "mask_uri": f"{base}/masks/x",
            "result_uri": f"{base}/results",
            "model": {"name": "RandomForest"},
        },
    )
    assert code == 4 and "cannot reach Tiled" in stderr


VALID = {
    "task": "train_infer",
    "job_id": "job-1",
    "data_uri": "http://tiled:8000/api/v1/metadata/recons/scan",
    "mask_uri": "http://tiled:8000/api/v1/metadata/masks/scan/abc/mask",
    "result_uri": "http://tiled:8000/api/v1/metadata/results",
    "model": {"name": "TUNet"},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "segment"}, "task: Input should be 'train', 'infer' or 'train_infer'"),
        ({"job_id": "../escape"}, "job_id: String should match pattern"),
        ({"data_uri": "not a url"}, "data_uri:"),
        ({"model": {"name": "TUNet", "num_epochs": 0}}, "model.TUNet.num_epochs: Input should be greater than or equal to 1"),
        ({"model": {"name": "UNet"}}, "model: Input tag 'UNet' found using 'name' does not match"),
        ({"model": {"name": "TUNet", "depht": 3}}, "model.TUNet.depht: Extra inputs are not permitted"),
        ({"mask_uri": None}, "task 'train_infer' needs mask_uri"),
        ({"task": "infer"}, "task 'infer' needs trained_job_id"),
        ({"slices": [-1]}, "slices"),
        ({"device": "gpu"}, "device: Input should be 'auto', 'cuda' or 'cpu'"),
        ({"tiled_api_key": "secret"}, "tiled_api_key: Extra inputs are not permitted"),
        ({"memory_budget_mib": 0}, "memory_budget_mib: Input should be greater than 0"),
        ({"data_uri": "http://elsewhere.example:8000/api/v1/metadata/recons/scan"}, "data_uri is on http://elsewhere.example:8000"),
        ({"mask_uri": "http://tiled:9999/api/v1/metadata/masks/scan/abc/mask"}, "mask_uri is on http://tiled:9999, not on http://tiled:8000"),
    ],
)
def test_invalid_parameters_exit_2_naming_the_field(run_file, change, message):
    code, stderr = run_file({**VALID, **change})
    assert code == 2 and message in stderr, stderr


@pytest.mark.parametrize(
    ("raw", "message"),
    [("task: [unclosed", "is not valid YAML"), ("- a\n- list", "must hold a mapping"), ("", "must hold a mapping")],
)
def test_unreadable_parameter_files_exit_2(run_file, raw, message):
    code, stderr = run_file(None, raw=raw)
    assert code == 2 and message in stderr, stderr


def test_a_missing_parameters_file_exits_2(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "segmentation", str(tmp_path / "absent.yaml")],
        cwd=REPOSITORY,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2 and "cannot read the parameters file" in completed.stderr


def test_cuda_requested_without_a_gpu_exits_5(run_file):
    if torch.cuda.is_available():
        pytest.skip("this node has a GPU")
    code, stderr = run_file({**VALID, "device": "cuda"})
    assert code == 5 and "device: 'cuda'" in stderr


def test_slice_selection_defaults_follow_the_task():
    assert JobParameters.model_validate(VALID).slice_selection == "labelled"
    infer = {**VALID, "task": "infer", "trained_job_id": "job-0", "model": None}
    assert JobParameters.model_validate(infer).slice_selection == "all"
    assert JobParameters.model_validate({**VALID, "slices": [9, 3, 3]}).slices == [3, 9]


def test_a_job_run_as_a_process_stops_when_its_launcher_is_killed(tmp_path):
    """A flow-run process killed outright (kill -9, a worker crash) left its job running, orphaned."""
    silent = socket.socket()  # takes connections, never answers: the job waits on it
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    base = f"http://127.0.0.1:{silent.getsockname()[1]}/api/v1/metadata"
    parameters = tmp_path / "params.yaml"
    parameters.write_text(yaml.safe_dump(
        {**VALID, "data_uri": f"{base}/recons/scan", "mask_uri": f"{base}/masks/scan/abc/mask", "result_uri": f"{base}/results"}
    ))
    launcher_code = (
        "import sys, time; from flows.job_runner import run_launched_job; from flows.launchers import ProcessLauncher, JobResources\n"
        f"launch = ProcessLauncher(sys.executable).launch('orphan', {str(parameters)!r}, {str(tmp_path)!r}, JobResources(), {{}})\n"
        "run_launched_job(launch, on_event=lambda event: None, on_log=lambda line, error: print(line, flush=True))"
    )
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], cwd=Path(__file__).parents[1], env=clean_environment())
    try:
        launcher_process = psutil.Process(launcher.pid)
        job = wait_for(lambda: next(iter(launcher_process.children()), None), timeout=30, message="the job")
        time.sleep(3)  # the job has started and waits on the silent server
        assert job.is_running()
        launcher.kill()
        launcher.wait()
        wait_for(lambda: not job.is_running() or job.status() == psutil.STATUS_ZOMBIE, timeout=15, message="the job to stop")
    finally:
        launcher.kill()
        silent.close()
