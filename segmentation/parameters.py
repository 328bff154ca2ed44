"""The job's parameters file: what to do, on which Tiled nodes, with which model.

The flow writes this file; `python -m segmentation params.yaml` validates it before it
touches any data, so a mistake is reported by field name in the first second rather
than after an hour of training. Credentials are never here: the Tiled API key comes
from the environment (`TILED_API_KEY`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator, model_validator

from segmentation.models import ModelParameters

Task = Literal["train", "infer", "train_infer"]
Device = Literal["auto", "cuda", "cpu"]
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


# Set by a launcher that runs the job as its own child process: the job stops when it dies.
LAUNCHER_PID_VARIABLE = "MLEX_TOMO_JOB_LAUNCHER_PID"


class JobParameters(BaseModel):
    """One run of the segmentation job.

    `train` fits a model on the mask and stores it under `models_dir/<job_id>`;
    `train_infer` then segments `slices` (default: the labelled slices, a quick check of
    the labels); `infer` segments `slices` (default: the whole volume) with the model a
    previous job stored, named by `trained_job_id`. Results go to
    `<result_uri>/<job_id>/seg_result`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task
    job_id: str = Field(pattern=JOB_ID_PATTERN, description="Names the result node and the stored model.")
    data_uri: AnyHttpUrl = Field(description="Tiled node of the volume, e.g. http://host:8000/api/v1/metadata/recons/scan.")
    mask_uri: AnyHttpUrl | None = Field(default=None, description="Tiled node of the sparse mask; required to train.")
    result_uri: AnyHttpUrl = Field(description="Tiled container the job writes `<job_id>/seg_result` into.")
    model: ModelParameters | None = Field(default=None, description="Model name and hyperparameters; required to train.")
    trained_job_id: str | None = Field(
        default=None, pattern=JOB_ID_PATTERN, description="For `infer`: the train job whose model to use."
    )
    models_dir: Path = Field(default=Path("models"), description="Where trained models are stored (a shared file system).")
    device: Device = "auto"
    slices: list[int] | Literal["all", "labelled"] | None = Field(
        default=None,
        description="Slices to segment: indices, 'all' or 'labelled'; default 'labelled' after training, 'all' for infer.",
    )
    uncertainty: bool = Field(default=False, description="Also write `probabilities`: 255 * (1 - max class probability).")
    uncertainty_survey: int = Field(
        default=32, ge=0, le=1024,
        description="After training, also estimate the mean uncertainty of this many evenly spaced slices the job "
        "does not segment, for the web app's 'where to paint next'; 0: none.",
    )
    memory_budget_mib: float = Field(
        default=4096, gt=0, description="Host memory for blocks of slices in flight; larger volumes stream in blocks."
    )

    @field_validator("slices")
    @classmethod
    def _indices_valid(cls, slices: list[int] | str | None) -> list[int] | str | None:
        if isinstance(slices, list):
            if not slices:
                raise ValueError("give at least one slice index, or 'all'")
            if min(slices) < 0:
                raise ValueError("slice indices must not be negative")
            return sorted(set(slices))
        return slices

    @model_validator(mode="after")
    def _task_has_what_it_needs(self) -> JobParameters:
        if self.task in ("train", "train_infer"):
            missing = [name for name in ("mask_uri", "model") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"task {self.task!r} needs {' and '.join(missing)}")
            if self.trained_job_id is not None:
                raise ValueError(f"trained_job_id is only for task 'infer', not {self.task!r}")
        else:
            if self.trained_job_id is None:
                raise ValueError("task 'infer' needs trained_job_id: the train job whose model to use")
            if self.model is not None:
                raise ValueError("task 'infer' takes its model from trained_job_id; remove 'model'")
        if self.task == "train" and self.slices is not None:
            raise ValueError("task 'train' segments nothing; remove 'slices' or use 'train_infer'")
        if self.slices == "labelled" and self.mask_uri is None:
            raise ValueError("slices 'labelled' needs mask_uri")
        self._one_tiled_server()
        return self

    def _one_tiled_server(self) -> None:
        """The job sends its API key with every request: only to the server it writes its result to."""
        expected = _origin(self.result_uri)
        for name in ("data_uri", "mask_uri"):
            uri = getattr(self, name)
            if uri is not None and _origin(uri) != expected:
                raise ValueError(
                    f"{name} is on {_origin(uri)}, not on {expected} where the result goes: a job reads and "
                    "writes the one Tiled server its API key is for"
                )

    @property
    def trains(self) -> bool:
        return self.task in ("train", "train_infer")

    @property
    def infers(self) -> bool:
        return self.task in ("infer", "train_infer")

    @property
    def slice_selection(self) -> list[int] | Literal["all", "labelled"]:
        if self.slices is not None:
            return self.slices
        return "labelled" if self.task == "train_infer" else "all"


def _origin(uri: AnyHttpUrl) -> str:
    return f"{uri.scheme}://{uri.host}:{uri.port}"
