"""The flow's progress artifact from the job's events: every model moves the bar and names its stage.

Prefect artifacts need a Prefect server (tests/test_flows.py runs the whole stack); the
reporter's arithmetic does not, so here the artifact functions are recorded instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import flows.segmentation as flow
from segmentation.models import RandomForestParameters
from segmentation.progress import STAGE_LABELS
from segmentation.random_forest import train_random_forest


class Artifacts:
    """What the reporter published: (percent, description) per update, and epoch tables."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.updates: list[tuple[float, str | None]] = []
        self.tables: list[list[dict[str, Any]]] = []
        monkeypatch.setattr(flow, "create_progress_artifact", self.create)
        monkeypatch.setattr(flow, "update_progress_artifact", self.update)
        monkeypatch.setattr(flow, "create_table_artifact", lambda key, table, description: self.tables.append(table))

    def create(self, progress: float, description: str) -> str:
        self.updates.append((progress, description))
        return "artifact"

    def update(self, artifact_id: str, progress: float, description: str | None = None) -> None:
        self.updates.append((progress, description))


@pytest.fixture
def artifacts(monkeypatch: pytest.MonkeyPatch) -> Artifacts:
    monkeypatch.setattr(flow, "PROGRESS_UPDATE_SECONDS", 0.0)
    return Artifacts(monkeypatch)


def forest_training_events() -> list[dict[str, Any]]:
    image = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    masks = np.full(image.shape, -1, np.int8)
    masks[:, 4:60:6, 4:28] = 0
    masks[:, 4:60:6, 36:60] = 1
    events: list[dict[str, Any]] = []
    parameters = RandomForestParameters(n_estimators=5, scales=[1.0, 3.5])
    train_random_forest(image, masks, parameters, "numpy", events.append)
    return events


def test_the_random_forest_moves_the_bar_while_it_trains_and_names_its_stages(artifacts: Artifacts) -> None:
    reporter = flow.ProgressReporter("forest-1-train", "train_infer")
    reporter.handle({"event": "started", "stage": "reading", "task": "train_infer"})
    assert reporter.percent == 0
    during_training = []
    for event in forest_training_events():
        reporter.handle(event)
        during_training.append(reporter.percent)
    assert during_training[-1] == pytest.approx(100 * flow.TRAINING_SHARE)
    assert during_training == sorted(during_training) and 0 < during_training[len(during_training) // 2]
    reporter.handle({"event": "trained", "stage": "training", "held_out_pixels": 0})
    for done in (0, 1, 2):
        reporter.handle({"event": "inference", "stage": "segmenting", "done": done, "of": 2})
    reporter.handle({"event": "finished", "stage": "finished", "held_out_pixels": 0, "seconds": 1.0})
    reporter.close()

    percents = [percent for percent, _ in artifacts.updates]
    assert percents == sorted(percents) and percents[-1] == 100
    descriptions = [description for _, description in artifacts.updates]
    shown = [label for label in STAGE_LABELS.values() if f"Job forest-1-train: {label}" in descriptions]
    assert shown == [
        "reading the volume", "computing features", "fitting the forest", "training", "segmenting", "finished"
    ]
    features = descriptions.index("Job forest-1-train: computing features")
    fitting = descriptions.index("Job forest-1-train: fitting the forest")
    assert 0 < percents[fitting] and percents[features] <= percents[fitting]
    assert reporter.metrics == {"held_out_pixels": 0}


def test_networks_fill_the_training_share_epoch_by_epoch(artifacts: Artifacts) -> None:
    reporter = flow.ProgressReporter("tunet-1-train", "train_infer")
    reporter.handle({"event": "stage", "stage": "training", "done": 0, "of": 4})
    assert artifacts.updates[-1] == (0.0, "Job tunet-1-train: training")
    for epoch in (1, 2):
        reporter.handle(
            {"event": "epoch", "stage": "training", "epoch": epoch, "of": 4, "loss": 1.0, "val_score": 0.5, "seconds": 1.0}
        )
    assert reporter.percent == pytest.approx(100 * flow.TRAINING_SHARE / 2)
    reporter.handle({"event": "trained", "stage": "training", "held_out_mean_iou": 0.5, "held_out_pixels": 40})
    assert artifacts.tables[-1][-1] == {"epoch": 2, "loss": 1.0, "val_score": 0.5, "seconds": 1.0}
    assert artifacts.updates[-1][0] == pytest.approx(100 * flow.TRAINING_SHARE)


def test_an_inference_job_gives_segmenting_the_whole_bar(artifacts: Artifacts) -> None:
    reporter = flow.ProgressReporter("forest-1-infer", "infer")
    reporter.handle({"event": "inference", "stage": "segmenting", "done": 16, "of": 64})
    assert reporter.percent == 25 and artifacts.updates[-1] == (25, "Job forest-1-infer: segmenting")
