"""The whole loop on a running stack: what `mlex-tomo demo` shows and `mlex-tomo check` asserts.

simulate a scan -> announce it on the broker -> wait until Tiled serves it -> paint sparse
labels from the phantom's ground truth on a few slices, as a person would -> train and
segment through the `segmentation` deployment, as the web app does -> score the labels
in Tiled against the ground truth. Every stage is timed; what the loop created is
recorded as it goes, so a check can remove it even after a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from uuid import UUID

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from flows.launchers import LauncherName
from flows.segmentation import SegmentationRequest, step_job_ids
from flows.submit import submit_segmentation
from mlex_tomo.announce import announce
from mlex_tomo.phantom import CLASS_NAMES, PhantomSpec
from mlex_tomo.scan_simulator import simulate_scan
from mlex_tomo.scribbles import paint_scribbles
from mlex_tomo.settings import StackSettings
from mlex_tomo.tiled_layout import connect, connect_http, node_uri, write_mask
from mlex_tomo.tiled_names import MASKS, RECONS, RESULT_KEY, RESULTS, VOLUME_KEY
from mlex_tomo.volume_writers import LABELS_DATASET, NXTOMOPROC_DATA_PATH
from segmentation.metrics import confusion_matrix, iou_from_confusion

CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
POLL_SECONDS = 0.5
SCORE_SLAB = 32  # slices of the result read at a time

Report = Callable[[str], None]


class LoopOptions(BaseModel):
    """What `demo` and `check` take from the command line, validated here."""

    model_config = ConfigDict(extra="forbid")

    scan: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="Name of the simulated scan.")
    size: int = Field(default=96, ge=32, le=1024, description="Edge of the cubic phantom, in voxels.")
    labelled_slices: int = Field(default=3, ge=1, le=32, description="Slices with painted scribbles.")
    model: Literal["RandomForest", "MSDNet", "TUNet", "TUNet3+"] = "RandomForest"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    launcher: LauncherName | None = Field(default=None, description="Where the job runs; default: the worker's jobs.launcher.")
    via: Literal["broker", "tiled"] = Field(
        default="broker",
        description="broker: write a file under the recons root and announce it, as a beamline does; "
        "tiled: upload the volume through Tiled, for a deployment whose file store this machine cannot write.",
    )
    timeout_seconds: float = Field(default=900, gt=0, description="Longest wait for each of ingest and segment.")


class LoopFailed(RuntimeError):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


@dataclass
class LoopRecord:
    """What the loop made and measured, filled in stage by stage."""

    scan: str
    files: list[Path] = field(default_factory=list)
    tiled_nodes: list[str] = field(default_factory=list)
    flow_run_id: str | None = None
    job_ids: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    mean_iou: float | None = None
    class_iou: list[float] = field(default_factory=list)


def run_loop(settings: StackSettings, options: LoopOptions, record: LoopRecord, report: Report = print) -> None:
    """Each stage in turn; raises LoopFailed naming the stage that went wrong."""
    spec = PhantomSpec(shape=(options.size,) * 3, seed=11)
    truth_path = _timed(record, "simulate", lambda: _simulate(settings, options, spec, record), report)
    _timed(record, "ingest", lambda: _ingest(settings, options, record, truth_path), report)
    mask_path = _timed(record, "label", lambda: _label(settings, options, record, truth_path), report)
    _timed(record, "segment", lambda: _segment(settings, options, record, mask_path, report), report)
    _timed(record, "score", lambda: _score(settings, record, truth_path), report)


def _timed(record: LoopRecord, stage: str, action: Callable, report: Report):
    report(f"{stage} ...")
    started = time.monotonic()
    try:
        result = action()
    except LoopFailed:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of a stage is reported with the stage's name
        raise LoopFailed(stage, f"{type(error).__name__}: {error}") from error
    record.seconds[stage] = time.monotonic() - started
    report(f"{stage} done in {record.seconds[stage]:.1f} s")
    return result


def _simulate(settings: StackSettings, options: LoopOptions, spec: PhantomSpec, record: LoopRecord) -> Path:
    """The phantom and its ground truth; the truth stays out of the recons root, never served."""
    scan = simulate_scan(settings.recons_path, settings.data_path / "ground_truth", options.scan, spec, "nxtomo")
    record.files += [scan.announce_path.parent, scan.ground_truth_path]
    if options.via == "tiled":
        with h5py.File(scan.announce_path, "r") as file:
            volume = file[NXTOMOPROC_DATA_PATH][()]
        recons = connect(settings, writable=True)[RECONS]
        record.tiled_nodes.append(f"{RECONS}/{options.scan}")
        recons.create_container(options.scan, metadata={"format": "uploaded", "source": "mlex-tomo demo"}).write_array(volume, key=VOLUME_KEY)
    else:
        announce(settings, scan.announce_path, beamline="simulated", scanId=options.scan)
        record.tiled_nodes.append(f"{RECONS}/{options.scan}")
    return scan.ground_truth_path


def _ingest(settings: StackSettings, options: LoopOptions, record: LoopRecord, truth_path: Path) -> None:
    recons = connect(settings)[RECONS]
    deadline = time.monotonic() + options.timeout_seconds
    while time.monotonic() < deadline:
        if options.scan in recons:
            with h5py.File(truth_path, "r") as file:
                expected = file[LABELS_DATASET].shape
            served = tuple(recons[options.scan][VOLUME_KEY].shape)
            if served != expected:
                raise LoopFailed("ingest", f"Tiled serves {options.scan} as {served}, the phantom is {expected}")
            return
        time.sleep(POLL_SECONDS)
    raise LoopFailed("ingest", f"{options.scan} not in Tiled after {options.timeout_seconds:g} s; is the ingester running?")


def _label(settings: StackSettings, options: LoopOptions, record: LoopRecord, truth_path: Path) -> str:
    """Scribbles on evenly spread slices, a few short strokes per class, as a person paints them."""
    with h5py.File(truth_path, "r") as file:
        depth = file[LABELS_DATASET].shape[0]
        slices = [int(z) for z in np.linspace(0, depth - 1, options.labelled_slices + 2).round()[1:-1]]
        truth = np.stack([file[LABELS_DATASET][z] for z in slices])
    rng = np.random.default_rng(7)
    labels = np.stack([paint_scribbles(plane, rng, num_classes=len(CLASS_NAMES)) for plane in truth])
    classes = {str(index): {"label": name, "color": CLASS_COLOURS[index % len(CLASS_COLOURS)]} for index, name in CLASS_NAMES.items()}
    with connect_http(settings, writable=True) as tiled:
        path = write_mask(tiled, options.scan, slices, labels, classes, node_uri(settings, f"{RECONS}/{options.scan}"), "mlex-tomo demo")
    record.tiled_nodes.append(f"{MASKS}/{options.scan}")
    return path


def _segment(settings: StackSettings, options: LoopOptions, record: LoopRecord, mask_path: str, report: Report) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    request = SegmentationRequest(
        steps="train_and_infer", job_name=options.scan, data=f"{RECONS}/{options.scan}", mask=mask_path,
        model={"name": options.model}, device=options.device, launcher=options.launcher,
    )
    run = submit_segmentation(settings, request, tags=["mlex-tomo", "demo", f"scan:{options.scan}"])
    with SyncPrefectClient(settings.prefect.resolved_api_url) as client:
        record.flow_run_id = str(run.id)
        record.job_ids = step_job_ids(request, str(run.id))
        record.tiled_nodes += [f"{RESULTS}/{job_id}" for job_id in record.job_ids.values()]
        report(f"  flow run {run.name}: {settings.prefect.ui_url}/runs/flow-run/{run.id}")
        deadline = time.monotonic() + options.timeout_seconds
        shown = None
        while time.monotonic() < deadline:
            run = client.read_flow_run(run.id)
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            percents = [float(artifact.data) for artifact in artifacts if artifact.type == "progress"]
            line = f"  {run.state_name}" + (f", {max(percents):.0f} %" if percents else "")
            if line != shown:
                report(line)
                shown = line
            if run.state and run.state.is_final():
                if not run.state.is_completed():
                    raise LoopFailed("segment", f"the run ended {run.state_name}: {run.state.message}")
                return
            time.sleep(POLL_SECONDS)
        _cancel(client, run.id)
        raise LoopFailed("segment", f"the run did not finish within {options.timeout_seconds:g} s; cancelled it")


def _cancel(client, run_id: UUID) -> None:
    from prefect.states import Cancelling

    client.set_flow_run_state(run_id, Cancelling(message="timed out in mlex-tomo demo"), force=True)


def _score(settings: StackSettings, record: LoopRecord, truth_path: Path) -> None:
    """Mean IoU of the whole volume's labels against the ground truth, read in slabs."""
    labels = connect(settings)[RESULTS][record.job_ids["infer"]][RESULT_KEY]
    classes = len(CLASS_NAMES)
    confusion = np.zeros((classes, classes), np.int64)
    with h5py.File(truth_path, "r") as file:
        truth = file[LABELS_DATASET]
        if tuple(labels.shape) != truth.shape:
            raise LoopFailed("score", f"the result is {tuple(labels.shape)}, the volume {truth.shape}")
        for start in range(0, truth.shape[0], SCORE_SLAB):
            stop = min(start + SCORE_SLAB, truth.shape[0])
            confusion += confusion_matrix(np.asarray(labels[start:stop]), truth[start:stop], classes)
    record.mean_iou, record.class_iou = iou_from_confusion(confusion)


def clean_up(settings: StackSettings, record: LoopRecord) -> list[str]:
    """Remove what the loop created: Tiled nodes, the flow run, the trained model, the files. Returns what failed."""
    import shutil

    problems = []
    tiled = connect(settings, writable=True)
    for path in record.tiled_nodes:
        parent, key = path.rsplit("/", 1)
        try:
            if key in tiled[parent]:
                tiled[parent][key].delete(recursive=True, external_only=False)  # masks and results are data Tiled wrote
        except Exception as error:  # noqa: BLE001 - report every leftover, do not stop at the first
            problems.append(f"Tiled node {path}: {error}")
    if record.flow_run_id is not None:
        from prefect.client.orchestration import SyncPrefectClient

        try:
            with SyncPrefectClient(settings.prefect.resolved_api_url) as client:
                client.delete_flow_run(UUID(record.flow_run_id))
        except Exception as error:  # noqa: BLE001
            problems.append(f"flow run {record.flow_run_id}: {error}")
    for job_id in record.job_ids.values():
        shutil.rmtree(settings.models_path / job_id, ignore_errors=True)
    for path in record.files:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return problems


def web_app_problems(settings: StackSettings, url: str, record: LoopRecord) -> list[str]:
    """What a scientist would see broken in the web app: its health, a slice, the result overlay."""
    import httpx

    auth = None
    if settings.ui.username and settings.ui.password:
        auth = (settings.ui.username, settings.ui.password.get_secret_value())
    middle = _middle_slice(settings, record)
    expected = {
        "/healthz": "",  # any content: a 200 says it is up
        f"/slices/{record.scan}/z/{middle}.jpeg": "image/jpeg",
        f"/results/{record.scan}/{record.job_ids.get('infer', 'none')}/z/{middle}.png": "image/png",
    }
    problems = []
    with httpx.Client(base_url=url.rstrip("/"), auth=auth, timeout=60) as client:
        for path, content_type in expected.items():
            try:
                response = client.get(path)
            except httpx.HTTPError as error:
                problems.append(f"web app {path}: {error}")
                continue
            if response.status_code != 200 or not response.headers.get("content-type", "").startswith(content_type):
                problems.append(f"web app {path}: HTTP {response.status_code} {response.headers.get('content-type')}: {response.text[:200]}")
    return problems


def _middle_slice(settings: StackSettings, record: LoopRecord) -> int:
    return int(connect(settings)[RECONS][record.scan][VOLUME_KEY].shape[0]) // 2
