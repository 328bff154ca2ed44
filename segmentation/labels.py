"""What a mask must hold before a model can learn from it, checked the same in the web app and the job.

A model never predicts a class it has no pixel of, and a classifier needs two classes
to tell apart: such a mask would train for minutes and then report a one-class result,
or fail deep in a library. Both are refused before any work starts, in words a person
painting the labels understands.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from mlex_tomo.tiled_names import UNLABELLED


def label_problems(labels: NDArray[np.integer], class_names: Mapping[int, str]) -> list[str]:
    """One sentence per problem of `labels` (-1 unlabelled, 0..K-1 the classes named in `class_names`)."""
    labels = np.asarray(labels)
    painted = labels[labels != UNLABELLED]
    counts = np.bincount(painted.astype(np.int64), minlength=len(class_names)) if painted.size else np.zeros(0, np.int64)
    painted_classes = [index for index in sorted(class_names) if index < counts.size and counts[index] > 0]
    if not painted_classes:
        return ["nothing is painted: paint at least two classes, a model learns to tell them apart"]
    problems = []
    if len(painted_classes) == 1:
        only = class_names[painted_classes[0]]
        problems.append(f"only class {only!r} is painted: paint at least one more, a model learns to tell classes apart")
    unpainted = [class_names[index] for index in sorted(class_names) if index not in painted_classes]
    if unpainted and len(painted_classes) > 1:
        listed = ", ".join(repr(name) for name in unpainted)
        problems.append(
            f"class {listed} has no painted pixel: paint some, or remove the class; a model never predicts a class it has not seen"
            if len(unpainted) == 1
            else f"classes {listed} have no painted pixel: paint some, or remove them; a model never predicts a class it has not seen"
        )
    return problems
