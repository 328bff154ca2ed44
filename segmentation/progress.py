"""Progress as one JSON object per line on standard output, for the flow to parse.

Every line is strict JSON (NaN and infinities become null), written and flushed at
once, so a reader sees each event as it happens even through a container's pipe.

Every event names its kind (`event`) and the job's current `stage`, one of STAGE_LABELS.
The stages that count (features, fitting, training, segmenting) open with an event of
`done: 0`, so a reader knows at once that one began. The events:

    {"event": "started", "stage": "reading", "task": "train_infer", "job_id": "...", "device": "cpu", "shape": [64, 96, 96]}
    {"event": "stage", "stage": "features", "done": 1, "of": 2}
        random forest: labelled slices whose features are computed
    {"event": "stage", "stage": "fitting", "done": 1, "of": 2, "pixels": 5210, "features": 56}
        random forest: forests fitted, one on the training tiles, then one on every label
        (`of` is 1 when no labels could be held out)
    {"event": "stage", "stage": "training", "done": 0, "of": 30}
        networks: before the first epoch
    {"event": "epoch", "stage": "training", "epoch": 3, "of": 30, "loss": 0.12, "val_score": 0.91, "seconds": 1.8, "eta_seconds": 48.6}
        networks: `val_score` is the mean IoU on the held-out tiles
    {"event": "trained", "stage": "training", "model_folder": "...", "seconds": 61.2, <metrics>}
    {"event": "inference", "stage": "segmenting", "done": 512, "of": 2048, "eta_seconds": 30.1}
    {"event": "finished", "stage": "finished", "result_uri": "...", "seconds": 98.4, <metrics>}
    {"event": "failed", "stage": "failed", "exit_code": 3, "message": "..."}

<metrics> are `held_out_mean_iou`, `held_out_iou_per_class` (None for a class absent
from the held-out pixels) and `held_out_pixels`, measured on labelled tiles the model
did not train on (`segmentation.held_out`); when the labels are too few to hold any out,
only `held_out_pixels: 0`. An `infer` job reports the stored model's own.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from typing import Any, TextIO

STAGE_LABELS = {  # each stage in words, for a UI to show
    "reading": "reading the volume",
    "features": "computing features",
    "fitting": "fitting the forest",
    "training": "training",
    "segmenting": "segmenting",
    "surveying": "estimating where to paint next",
    "finished": "finished",
    "failed": "failed",
}


class JsonLinesProgress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()  # events also come from the write-behind thread

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(finite(event), allow_nan=False, default=str)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def finite(value: Any) -> Any:
    """The value with NaN and infinities replaced by None, through dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value
