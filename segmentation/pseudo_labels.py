"""Dense training targets for a network from a random forest trained on the scribbles.

A network trained on a few hundred scribbled pixels learns their surroundings rather
than the classes: it scored below a plain threshold on volumes it had not been tuned to
(issue #18). A random forest on the same scribbles generalises well, because its
features are fixed, but cannot use context beyond its filters. Self-training joins the
two: the forest labels every pixel of the labelled slices and of a few context slices
spread through the volume, the pixels it is sure of become extra targets, and the
network learns from them and from the scribbles, which keep the last word where both
exist. The forest sees only the scribbles the network trains on, never the ones held
out to score it, so the held-out score stays honest.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from mlex_tomo.tiled_names import UNLABELLED
from segmentation.features import forest_device
from segmentation.models import RandomForestParameters
from segmentation.random_forest import train_random_forest

CONFIDENCE = 0.7  # the largest class probability a pixel needs to become a target


def forest_pseudo_labels(
    slices: NDArray[np.float32], targets: NDArray[np.int8], seed: int, device: torch.device
) -> NDArray[np.int8]:
    """The forest's label where it is confident and no scribble says otherwise, -1 elsewhere.

    `slices` (n, y, x) are normalised; `targets` holds the scribbles the network trains
    on (-1 unlabelled, including every pixel of the context slices).
    """
    labelled = np.flatnonzero((targets != UNLABELLED).any(axis=(1, 2)))
    back_end = forest_device(device)
    forest = train_random_forest(slices[labelled], targets[labelled], RandomForestParameters(seed=seed), back_end)
    labels, uncertainty = forest.predict_slices(slices, back_end)
    pseudo = np.where(uncertainty <= 1 - CONFIDENCE, labels.astype(np.int8), np.int8(UNLABELLED))
    pseudo[targets != UNLABELLED] = UNLABELLED
    return pseudo


def context_indices(depth: int, labelled: list[int], count: int) -> list[int]:
    """Up to `count` unlabelled slices spread evenly through the volume, for the pseudo-labels."""
    spread = np.linspace(0, depth - 1, count + 2)[1:-1].round().astype(int)
    return sorted(set(spread.tolist()) - set(labelled))
