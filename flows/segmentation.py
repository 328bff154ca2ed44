"""The `segmentation` flow: train, then segment, by launching the segmentation job.

The flow holds no science: each step writes a parameters file and runs
`python -m segmentation` through a launcher (a process here, a podman or docker
container on a GPU node, a Slurm batch job on a cluster), forwarding the job's progress to Prefect. The step that
trains hands its job id to the step that infers, by name.

Steps:
- `train`: train on the mask, then segment the labelled slices (a check of the labels);
- `infer`: segment the whole volume with the model of `trained_job_id`;
- `train_and_infer`: both, the second using the first's model.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_link_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flows.job_runner import JobExit, run_launched_job, stop_when_the_parent_dies
from flows.leftovers import process_identity
from flows.launchers import ContainerLauncher, JobResources, Launcher, LauncherName, ProcessLauncher, node_has_gpus
from flows.slurm import SlurmLauncher, run_batch_job
from mlex_tomo.settings import StackSettings, load_settings
from mlex_tomo.tiled_names import RESULTS
from mlex_tomo.validation import validation_problems
from segmentation.models import ModelParameters
from segmentation.parameters import JOB_ID_PATTERN, Device, JobParameters, Task
from segmentation.progress import STAGE_LABELS

JOB_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$"
# A node of the Tiled tree by its path from the root, e.g. recons/k11-37086 (no "..", no scheme or host).
NODE_PATH_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$"
Step = Literal["train", "infer"]
STEPS = {"train": ("train",), "infer": ("infer",), "train_and_infer": ("train", "infer")}
# What each step runs: training also segments the labelled slices, a check of the labels.
STEP_TASKS: dict[Step, Task] = {"train": "train_infer", "infer": "infer"}
CHECKING_TILED_URL = "http://tiled.invalid:8000"  # stands in for the worker's Tiled while a request is validated
# The job's names for the request's fields, in what a refused request is told.
REQUEST_FIELD_NAMES = {"data_uri": "data", "mask_uri": "mask"}
PROGRESS_UPDATE_SECONDS = 1.0
EPOCH_TABLE_UPDATE_SECONDS = 5.0  # each update is a new artifact version: often enough for a live loss plot
TRAINING_SHARE = 0.8  # of a train-and-segment job's progress bar
# What part of the training share each training stage fills: the forest's features, then its fits.
TRAINING_STAGE_SPANS = {"features": (0.0, 0.5), "fitting": (0.5, 1.0), "training": (0.0, 1.0)}


class ResourceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpus: float | None = Field(default=None, gt=0, le=1024, description="CPU limit of the job's container.")
    memory_gib: float | None = Field(default=None, gt=0, le=4096, description="Memory limit of the job's container.")
    gpus: Literal["auto", "all", "none"] | None = Field(
        default=None, description="Give the container the node's GPUs; default: the worker's jobs.gpus."
    )


class SegmentationRequest(BaseModel):
    """What the web app (or a script) asks for; everything else comes from the worker's settings.

    Nodes are named by their path in the Tiled tree: which Tiled server is the
    worker's, so a scan is the same scan whatever address the web app used. The rules
    a request must follow are the job's own (`JobParameters`), checked on the job
    parameters each step would run with.
    """

    model_config = ConfigDict(extra="forbid")

    steps: Literal["train", "infer", "train_and_infer"] = "train"
    job_name: str = Field(default="segmentation", pattern=JOB_NAME_PATTERN, description="Prefix of the job ids.")
    data: str = Field(pattern=NODE_PATH_PATTERN, description="The volume's node, e.g. recons/<scan>.")
    mask: str | None = Field(default=None, pattern=NODE_PATH_PATTERN, description="The sparse mask's node: masks/<scan>/<mask_id>.")
    model: ModelParameters | None = None
    trained_job_id: str | None = Field(default=None, pattern=JOB_ID_PATTERN)
    device: Device = "auto"
    uncertainty: bool = False
    launcher: LauncherName | None = Field(default=None, description="Default: the worker's jobs.launcher.")
    resources: ResourceRequest = ResourceRequest()

    @model_validator(mode="after")
    def _each_step_is_a_valid_job(self) -> SegmentationRequest:
        trained_job_id = self.trained_job_id
        for step in STEPS[self.steps]:
            try:
                self.job_parameters(step, job_id=f"check-{step}", trained_job_id=trained_job_id, tiled_url=CHECKING_TILED_URL, models_dir=Path("models"))
            except ValidationError as error:
                problems = "; ".join(validation_problems(error, whole="job"))
                for job_name, request_name in REQUEST_FIELD_NAMES.items():
                    problems = re.sub(rf"\b{job_name}\b", request_name, problems)
                raise ValueError(f"step {step!r}: {problems}") from None
            trained_job_id = f"check-{step}"
        return self

    def job_parameters(self, step: Step, job_id: str, trained_job_id: str | None, tiled_url: str, models_dir: Path) -> JobParameters:
        """The parameters file of one step's job, its nodes on the Tiled at `tiled_url`."""
        metadata = f"{tiled_url.rstrip('/')}/api/v1/metadata"
        return JobParameters(
            task=STEP_TASKS[step],
            job_id=job_id,
            data_uri=f"{metadata}/{self.data}",
            mask_uri=None if self.mask is None else f"{metadata}/{self.mask}",
            result_uri=f"{metadata}/{RESULTS}",
            # Only a request that trains gives a model; one that only infers must not.
            model=self.model if step == "train" or self.steps == "infer" else None,
            trained_job_id=trained_job_id,
            models_dir=models_dir,
            device=self.device,
            uncertainty=self.uncertainty,
            slices="labelled" if step == "train" else "all",
        )


class StepOutcome(BaseModel):
    job_id: str
    result_uri: str | None
    metrics: dict[str, Any] = {}


class SegmentationFailed(RuntimeError):
    """The job exited non-zero; the message carries its last words."""


def step_job_ids(request: SegmentationRequest, flow_run_id: str) -> dict[str, str]:
    """Step ("train", "infer") -> the job id it runs under, which is also its result's key in Tiled."""
    return {step: f"{request.job_name}-{str(flow_run_id)[:8]}-{step}" for step in STEPS[request.steps]}


@flow(name="segmentation")
def segmentation(request: SegmentationRequest) -> list[StepOutcome]:
    stop_when_the_parent_dies()
    job_ids = step_job_ids(request, str(flow_run.id or "local"))
    outcomes = []
    if "train" in job_ids:
        outcomes.append(run_step(request, "train", job_ids["train"], None))
    if "infer" in job_ids:
        model_job = request.trained_job_id if request.steps == "infer" else outcomes[-1].job_id
        outcomes.append(run_step(request, "infer", job_ids["infer"], model_job))
    if outcomes[-1].result_uri:
        create_link_artifact(
            key="segmentation-result",
            link=outcomes[-1].result_uri,
            link_text=outcomes[-1].job_id,
            description="Labels in Tiled",
        )
    return outcomes


@task(name="segmentation-job", cache_policy=NO_CACHE)
def run_step(request: SegmentationRequest, step: Step, job_id: str, trained_job_id: str | None) -> StepOutcome:
    """One job, from the worker's settings (which hold the secrets, so they are never a parameter)."""
    logger = get_run_logger()
    settings = load_settings()
    parameters = request.job_parameters(step, job_id, trained_job_id, settings.tiled.base_url, settings.models_path)
    parameters_file = write_parameters(parameters, settings.jobs_path)
    settings.models_path.mkdir(parents=True, exist_ok=True)  # containers mount it, so it must exist
    progress = ProgressReporter(job_id, parameters.task)
    exit_status = run_job(
        launcher_for(request, settings),
        job_id,
        parameters_file,
        resources_for(request, settings),
        settings,
        on_event=progress.handle,
        on_log=lambda line, is_error: (logger.warning if is_error else logger.info)("%s", line),
    )
    progress.close()
    if exit_status.code != 0:
        raise SegmentationFailed(exit_status.failure_message)
    finished = exit_status.last_event or {}
    return StepOutcome(job_id=job_id, result_uri=finished.get("result_uri"), metrics=progress.metrics)


def write_parameters(parameters: JobParameters, jobs_path: Path) -> Path:
    jobs_path.mkdir(parents=True, exist_ok=True)
    path = jobs_path / f"{parameters.job_id}.yaml"
    path.write_text(yaml.safe_dump(parameters.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return path


def run_job(
    launcher: Launcher | SlurmLauncher,
    job_id: str,
    parameters_file: Path,
    resources: JobResources,
    settings: StackSettings,
    on_event: Callable[[dict[str, Any]], None],
    on_log: Callable[[str, bool], None],
) -> JobExit:
    """Start the job with its launcher and follow it to its end: a local process, or a Slurm batch job."""
    logger = get_run_logger()
    secrets, grace = job_secrets(settings), settings.jobs.stop_grace_seconds
    if isinstance(launcher, SlurmLauncher):
        batch_job = launcher.batch_job(job_id, parameters_file, settings.models_path, resources, secrets)
        logger.info("launching job %s with sbatch %s", job_id, batch_job.script)
        return run_batch_job(batch_job, on_event, on_log, settings.jobs.slurm.poll_seconds, grace)
    launch = launcher.launch(job_id, parameters_file, settings.models_path, resources, secrets)
    logger.info("launching job %s with %s", job_id, launch.command[0])
    return run_launched_job(launch, on_event, on_log, stop_grace_seconds=grace)


def launcher_for(request: SegmentationRequest, settings: StackSettings) -> Launcher | SlurmLauncher:
    jobs = settings.jobs
    name = request.launcher or jobs.launcher
    python = jobs.python or Path(sys.executable)
    if name == "process":
        return ProcessLauncher(python=python)
    if name == "slurm":
        # A container on a cluster node is Slurm's to stop and no worker's leftover: no launched-by label.
        container = container_launcher("podman", settings, launched_by=None)
        return SlurmLauncher(settings=jobs.slurm, work_dir=settings.jobs_path, python=python, container=container)
    return container_launcher(name, settings, launched_by=process_identity())


def container_launcher(engine: Literal["podman", "docker"], settings: StackSettings, launched_by: str | None) -> ContainerLauncher:
    jobs = settings.jobs
    return ContainerLauncher(
        engine=engine,
        image=jobs.image,
        network=jobs.container_network,
        rootfs=jobs.container_rootfs,
        rootfs_python=jobs.python,
        stop_grace_seconds=jobs.stop_grace_seconds,
        launched_by=launched_by,
        gpu_request=jobs.gpu_request,
    )


def resources_for(request: SegmentationRequest, settings: StackSettings) -> JobResources:
    """What the job may use; for Slurm, `auto` GPUs are those the operator's `jobs.slurm` asks for, not this node's."""
    gpus = request.resources.gpus or settings.jobs.gpus
    if (request.launcher or settings.jobs.launcher) == "slurm":
        gpus_available = settings.jobs.slurm.asks_for_gpus
    else:
        gpus_available = node_has_gpus()
    return JobResources(
        cpus=request.resources.cpus or settings.jobs.cpus,
        memory_gib=request.resources.memory_gib or settings.jobs.memory_gib,
        gpus=gpus == "all" or (gpus == "auto" and gpus_available),
    )


def job_secrets(settings: StackSettings) -> dict[str, str]:
    """What the job may know: the Tiled API key, as the variable it reads."""
    key = settings.tiled.api_key
    return {"TILED_API_KEY": key.get_secret_value()} if key else {}


class ProgressReporter:
    """Turns the job's progress lines into a progress artifact and a table of epochs.

    The bar gives training TRAINING_SHARE of a train-and-segment job: networks fill it
    epoch by epoch, the random forest by its stages (TRAINING_STAGE_SPANS). The
    artifact's description reads "Job <job id>: <stage>", the job's current stage in
    words (`segmentation.progress.STAGE_LABELS`), for a UI to show.
    """

    def __init__(self, job_id: str, task_name: str) -> None:
        self.job_id, self.trains = job_id, task_name == "train_infer"
        self.description = f"Job {job_id}: {'training, then segmenting' if self.trains else 'segmenting'}"
        self.artifact_id = create_progress_artifact(progress=0.0, description=self.description)
        self.epochs: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}
        self.percent, self.updated_at, self.epochs_published_at = 0.0, 0.0, 0.0
        self.published_description = self.description

    def handle(self, event: dict[str, Any]) -> None:
        kind, stage = event.get("event"), event.get("stage")
        if stage in STAGE_LABELS:
            self.description = f"Job {self.job_id}: {STAGE_LABELS[stage]}"
        force = False
        if kind == "epoch":
            self.epochs.append({key: event.get(key) for key in ("epoch", "loss", "val_score", "seconds")})
            self.move_to(TRAINING_SHARE * event["epoch"] / event["of"])
            if time.monotonic() - self.epochs_published_at >= EPOCH_TABLE_UPDATE_SECONDS:
                self.publish_epochs()
        elif kind == "stage" and stage in TRAINING_STAGE_SPANS:
            start, end = TRAINING_STAGE_SPANS[stage]
            self.move_to(TRAINING_SHARE * (start + (end - start) * event["done"] / max(1, event["of"])))
        elif kind == "trained":
            self.publish_epochs()
            self.move_to(TRAINING_SHARE if self.trains else 0.0)
            force = True
        elif kind == "inference":
            start = TRAINING_SHARE if self.trains else 0.0
            self.move_to(start + (1 - start) * event["done"] / max(1, event["of"]))
        elif kind == "finished":
            not_metrics = ("event", "stage", "result_uri", "seconds")
            self.metrics = {key: value for key, value in event.items() if key not in not_metrics}
        self.publish(force)

    def move_to(self, fraction: float) -> None:
        """The bar never goes back: a stage that starts at its own beginning leaves it where it is."""
        self.percent = max(self.percent, 100 * fraction)

    def publish(self, force: bool = False) -> None:
        """At most once a second, unless forced or the stage changed, which a UI should see at once."""
        now = time.monotonic()
        changed = self.description != self.published_description
        if force or changed or now - self.updated_at >= PROGRESS_UPDATE_SECONDS:
            update_progress_artifact(self.artifact_id, progress=self.percent, description=self.description)
            self.updated_at, self.published_description = now, self.description

    def publish_epochs(self) -> None:
        if self.epochs:
            create_table_artifact(
                key=epochs_artifact_key(self.job_id),
                table=self.epochs,
                description=f"Training of job {self.job_id}: loss and held-out mean IoU per epoch",
            )
            self.epochs_published_at = time.monotonic()

    def close(self) -> None:
        update_progress_artifact(self.artifact_id, progress=self.percent, description=self.description)


def epochs_artifact_key(job_id: str) -> str:
    """Artifact keys allow only lower-case letters, digits and dashes."""
    return "epochs-" + re.sub(r"[^a-z0-9-]", "-", job_id.lower())
