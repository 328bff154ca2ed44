"""Trained models on a shared file system, one folder per train job.

`<models_dir>/<job_id>/` holds the weights (`network.pt`, or `forest.joblib` for the
random forest) and `model.json`: the model's parameters, the class map and where the
training data came from. An inference job names the train job and finds everything
there. A folder appears whole or not at all (written aside, then renamed), so a job
killed mid-save never leaves a model that looks usable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segmentation.random_forest import TrainedForest
from segmentation.training import TrainedNetwork

DESCRIPTION_FILE = "model.json"
NETWORK_FILE = "network.pt"
FOREST_FILE = "forest.joblib"

TrainedModel = TrainedNetwork | TrainedForest


class ModelNotFound(LookupError):
    """No usable model is stored for the job id; the message says where it looked."""


@dataclass(frozen=True)
class StoredModel:
    model: TrainedModel
    classes: dict[int, dict[str, Any]]
    description: dict[str, Any]


class ModelStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def folder(self, job_id: str) -> Path:
        return self.directory / job_id

    def save(
        self,
        job_id: str,
        model: TrainedModel,
        classes: dict[int, dict[str, Any]],
        provenance: dict[str, Any],
    ) -> Path:
        """Store the model; `provenance` (data and mask URIs, metrics) goes into model.json."""
        destination = self.folder(job_id)
        if destination.exists():
            raise FileExistsError(f"a model is already stored for job {job_id!r} at {destination}")
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{job_id}-", dir=self.directory))
        try:
            if isinstance(model, TrainedNetwork):
                model.save(staging / NETWORK_FILE)
                kind, parameters = "network", model.parameters
            else:
                model.save(staging / FOREST_FILE)
                kind, parameters = "random_forest", model.parameters
            description = {
                "job_id": job_id,
                "kind": kind,
                "model": parameters.model_dump(mode="json"),
                "classes": {str(class_id): info for class_id, info in classes.items()},
                "saved_at": datetime.now(timezone.utc).isoformat(),
                **provenance,
            }
            (staging / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2))
            staging.rename(destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return destination

    def load_description(self, job_id: str) -> dict[str, Any]:
        description_path = self.folder(job_id) / DESCRIPTION_FILE
        if not description_path.is_file():
            raise ModelNotFound(f"no model stored for job {job_id!r}: {description_path} does not exist")
        return json.loads(description_path.read_text())

    def load(self, job_id: str, device: str = "cpu") -> StoredModel:
        folder = self.folder(job_id)
        description = self.load_description(job_id)
        if description.get("kind") == "network":
            model: TrainedModel = TrainedNetwork.load(folder / NETWORK_FILE, device=device)
        elif description.get("kind") == "random_forest":
            model = TrainedForest.load(folder / FOREST_FILE)
        else:
            raise ModelNotFound(f"{folder / DESCRIPTION_FILE} names an unknown kind {description.get('kind')!r}")
        classes = {int(class_id): info for class_id, info in description["classes"].items()}
        return StoredModel(model=model, classes=classes, description=description)
