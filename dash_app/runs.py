"""Segmentation runs in Prefect, as the Jobs panel shows them: start, list, follow, cancel.

The app starts work only through the `segmentation` deployment, so a run started here
is the same as one started from the Prefect UI or a script. Runs are tagged with the
scan they segment, which is how the panel finds a scan's runs again after a reload.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, LogSort
from prefect.states import Cancelled, Cancelling
from pydantic import BaseModel, ValidationError

from flows.segmentation import SegmentationRequest, step_job_ids
from flows.submit import DEPLOYMENT, submit_segmentation
from mlex_tomo.settings import StackSettings

SCAN_TAG = "scan:"
ACTIVE_STATES = {StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED}
FAILED_STATES = {StateType.FAILED, StateType.CRASHED}
LOG_LINES = 4


class RunSummary(BaseModel):
    """One run as a row of the job list."""

    id: str
    name: str  # Prefect's, e.g. "brave-otter"
    scan: str
    state: str
    state_type: str
    message: str | None
    created: datetime | None
    started: datetime | None
    ended: datetime | None
    steps: str
    model: str | None
    job_ids: dict[str, str]
    progress: float | None
    stage: str | None = None
    epochs: list[dict[str, Any]]
    log_lines: list[str]
    prefect_url: str

    @property
    def active(self) -> bool:
        return StateType(self.state_type) in ACTIVE_STATES

    @property
    def failed(self) -> bool:
        return StateType(self.state_type) in FAILED_STATES

    @property
    def completed(self) -> bool:
        return self.state_type == StateType.COMPLETED.value

    @property
    def title(self) -> str:
        """What the job is, in the user's words: the step, the model and the scan."""
        action = {"train": "Train", "infer": "Segment volume", "train_and_infer": "Train and segment"}.get(self.steps, self.steps)
        return f"{action} · {self.model or 'trained model'} · {self.scan}"

    def timing(self, now: datetime) -> str | None:
        """Since when, for how long, and (while running) about how long is left."""
        if self.started is None:
            return None
        elapsed = ((self.ended or now) - self.started).total_seconds()
        if not self.active:
            return f"took {duration(elapsed)}"
        text = f"running {duration(elapsed)}"
        if self.progress is not None and 2 <= self.progress < 100:
            text += f", about {duration(elapsed * (100 - self.progress) / self.progress)} left"
        return text

    @property
    def result_job_id(self) -> str | None:
        """The job whose labels the run leaves last: the whole volume when it segmented it."""
        return self.job_ids.get("infer") or self.job_ids.get("train")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def summaries_from_store(shown: list[dict[str, Any]] | None) -> list[RunSummary]:
    """The runs the job list holds (its `runs` store), less the entry that reports Prefect unreachable."""
    return [RunSummary.model_validate(run) for run in shown or [] if "error" not in run]


def selected_run(shown: list[dict[str, Any]] | None, selected: str | None) -> RunSummary | None:
    """The run the user clicked, else the newest."""
    summaries = summaries_from_store(shown)
    return next((run for run in summaries if run.id == selected), summaries[0] if summaries else None)


class SegmentationRuns:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.api_url = settings.prefect.resolved_api_url
        self.ui_url = settings.prefect.ui_url

    def start(self, scan: str, request: SegmentationRequest) -> str:
        return str(submit_segmentation(self.settings, request, tags=["mlex-tomo", SCAN_TAG + scan]).id)

    def recent(self, scan: str, limit: int = 8) -> list[RunSummary]:
        with SyncPrefectClient(self.api_url) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[SCAN_TAG + scan])),
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[DEPLOYMENT.split("/")[1]])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=limit,
            )
            if not runs:
                return []
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id for run in runs])),
                sort=ArtifactSort.CREATED_DESC,
            )
            logs = {
                run.id: self._last_log_lines(client, run.id)
                for run in runs
                if run.state_type in ACTIVE_STATES | FAILED_STATES
            }
        return [self._summary(run, artifacts, logs.get(run.id, [])) for run in runs]

    def cancel(self, run_id: str) -> None:
        """Cancelling a run that a worker holds stops its job; one still waiting is cancelled outright."""
        with SyncPrefectClient(self.api_url) as client:
            run = client.read_flow_run(UUID(run_id))
            if run.state_type in (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED):
                client.set_flow_run_state(run.id, Cancelled(message="Cancelled in the web app"), force=True)
            elif run.state_type == StateType.RUNNING:
                client.set_flow_run_state(run.id, Cancelling(message="Cancelled in the web app"))

    def _summary(self, run: Any, artifacts: list[Any], log_lines: list[str]) -> RunSummary:
        parameters = run.parameters.get("request", {})
        try:
            job_ids = step_job_ids(SegmentationRequest.model_validate(parameters), str(run.id))
        except ValidationError:
            job_ids = {}
        own = [artifact for artifact in artifacts if artifact.flow_run_id == run.id]  # newest first
        progress_artifact = next((artifact for artifact in own if artifact.type == "progress"), None)
        progress, stage = None, None
        if progress_artifact is not None:
            progress = float(progress_artifact.data)
            # The flow writes the job's current stage into the description: "Job <job id>: <stage>".
            stage = (progress_artifact.description or "").partition(": ")[2] or None
        epochs = next((_table(artifact.data) for artifact in own if artifact.type == "table"), [])
        return RunSummary(
            id=str(run.id),
            name=run.name,
            scan=next((tag.removeprefix(SCAN_TAG) for tag in run.tags if tag.startswith(SCAN_TAG)), "?"),
            started=run.start_time,
            ended=run.end_time,
            state=run.state_name or "Unknown",
            state_type=(run.state_type or StateType.PENDING).value,
            message=run.state.message if run.state else None,
            created=run.created,
            steps=str(parameters.get("steps", "?")),
            model=(parameters.get("model") or {}).get("name"),
            job_ids=job_ids,
            progress=100.0 if run.state_type == StateType.COMPLETED else progress,
            stage=stage if run.state_type in ACTIVE_STATES else None,
            epochs=epochs,
            log_lines=log_lines,
            prefect_url=f"{self.ui_url}/runs/flow-run/{run.id}",
        )

    @staticmethod
    def _last_log_lines(client: SyncPrefectClient, run_id: UUID) -> list[str]:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=LOG_LINES, sort=LogSort.TIMESTAMP_DESC
        )
        return [log.message for log in reversed(logs)]


def _table(data: Any) -> list[dict[str, Any]]:
    rows = json.loads(data) if isinstance(data, str) else data
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []
