"""Training a network on sparse labels: scribbles on a few slices of a volume.

Labels are a few strokes on one to a few percent of the slices, so everything here works
on labelled pixels rather than on slices: validation holds out a share of every class's
labels in whole tiles of the labelled slices (`segmentation.held_out`), and training
patches are drawn around the other labelled pixels only. Unlabelled pixels (-1) carry no
loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Annotated, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from pydantic import Field, TypeAdapter
from torch import nn

from mlex_tomo.tiled_names import UNLABELLED
from segmentation.held_out import HeldOutScore, hold_out_tiles
from segmentation.metrics import confusion_matrix, iou_from_confusion
from segmentation.models import (
    MSDNetParameters,
    NetworkParameters,
    TUNet3PlusParameters,
    TUNetParameters,
)
from segmentation.networks import build_network, mixed_precision
from segmentation.pseudo_labels import forest_pseudo_labels

FILE_FORMAT = 1  # bumped when the saved dictionary changes meaning
SGD_MOMENTUM = 0.9  # plain SGD at Adam-sized learning rates would hardly move
PSEUDO_LABEL_WEIGHT = 0.5  # of the forest's labels against the scribbles' in the loss

ProgressCallback = Callable[[dict[str, Any]], None]
_NETWORK_PARAMETERS: TypeAdapter[NetworkParameters] = TypeAdapter(
    Annotated[
        MSDNetParameters | TUNetParameters | TUNet3PlusParameters, Field(discriminator="name")
    ]
)


@dataclass
class TrainedNetwork:
    """A trained module with everything inference needs to use it as it was trained.

    `held_out` scores the kept weights on the held-out tiles; those tiles also chose the
    epoch kept, so it is the best of the epochs' scores: a little optimistic, but on
    labels the network never trained on. None when no labels could be held out.
    """

    module: nn.Module
    parameters: NetworkParameters
    num_classes: int
    normalization: tuple[float, float]  # (low, high) intensities mapped to 0 and 1
    held_out: HeldOutScore | None
    history: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: str | PathLike[str]) -> None:
        """One file of plain types and tensors, loadable with torch's safe `weights_only` unpickler."""
        low, high = self.normalization
        torch.save(
            {
                "format": FILE_FORMAT,
                "parameters": self.parameters.model_dump_json(),
                "num_classes": self.num_classes,
                "normalization": [float(low), float(high)],
                "held_out": None if self.held_out is None else asdict(self.held_out),
                "history": self.history,
                "state_dict": {
                    name: tensor.detach().cpu() for name, tensor in self.module.state_dict().items()
                },
            },
            path,
        )

    @classmethod
    def load(cls, path: str | PathLike[str], device: torch.device | str = "cpu") -> TrainedNetwork:
        saved = torch.load(path, map_location=device, weights_only=True)
        if saved.get("format") != FILE_FORMAT:
            raise ValueError(f"{path} is not a network file of format {FILE_FORMAT}")
        parameters = _NETWORK_PARAMETERS.validate_json(saved["parameters"])
        module = build_network(parameters, num_classes=saved["num_classes"])
        module.load_state_dict(saved["state_dict"])
        module.to(device).eval()
        low, high = saved["normalization"]
        held_out = saved.get("held_out")  # absent from networks saved before it was measured
        return cls(
            module=module,
            parameters=parameters,
            num_classes=saved["num_classes"],
            normalization=(low, high),
            held_out=None if held_out is None else HeldOutScore(**held_out),
            history=saved["history"],
        )


def train_network(
    slices: NDArray[np.float32],
    masks: NDArray[np.int8],
    parameters: NetworkParameters,
    num_classes: int,
    device: torch.device | str,
    progress: ProgressCallback | None = None,
    *,
    normalization: tuple[float, float] = (0.0, 1.0),
    context: NDArray[np.float32] | None = None,
) -> TrainedNetwork:
    """Train on the labelled slices (n, y, x), already normalised, and their masks (-1 = unlabelled).

    `normalization` is the (low, high) the slices were normalised with; it travels with
    the network so inference maps new slices identically. `context` holds unlabelled
    slices (k, y, x) normalised alike, which the forest's pseudo-labels cover when
    `parameters.pseudo_labels` is set. Deterministic for a given `parameters.seed` on
    CPU; the global torch random state is left as it was.
    """
    slices = np.ascontiguousarray(slices, dtype=np.float32)
    masks = np.ascontiguousarray(masks, dtype=np.int8)
    _check_training_data(slices, masks, num_classes)
    device = torch.device(device)
    parameters = parameters.for_device(device.type)
    rng = np.random.default_rng(parameters.seed)
    training_targets, validation_targets = split_labelled_pixels(masks, parameters.val_pct, parameters.seed)
    validated = np.flatnonzero((validation_targets != UNLABELLED).any(axis=(1, 2)))
    validation_slices, validation_targets = slices[validated], validation_targets[validated]
    pseudo = None
    if parameters.pseudo_labels:
        if context is not None and len(context):
            slices = np.concatenate([slices, np.asarray(context, np.float32).reshape(-1, *slices.shape[1:])])
            unlabelled = np.full((len(slices) - len(training_targets), *slices.shape[1:]), UNLABELLED, np.int8)
            training_targets = np.concatenate([training_targets, unlabelled])
        if progress is not None:
            progress({"event": "stage", "stage": "pseudo-labels", "done": 0, "of": 1})
        pseudo = forest_pseudo_labels(slices, training_targets, parameters.seed, device)
    weights = class_weights(training_targets, num_classes, parameters.weights)
    sampler = PatchSampler(slices, training_targets, parameters.patch_size, rng, pseudo=pseudo)
    steps_per_epoch = math.ceil(parameters.patches_per_epoch / parameters.batch_size_train)

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(parameters.seed)
        module = build_network(parameters, num_classes=num_classes).to(device)
        optimizer = _optimizer(module, parameters)
        scribble_loss = MaskedCrossEntropy(weights, device)
        # The forest's labels cover classes in about their true shares: balancing them would grow the rare ones.
        pseudo_loss = None if pseudo is None else MaskedCrossEntropy(np.ones(num_classes, np.float32), device)
        history: list[dict[str, Any]] = []
        best_rank: tuple[float, float] | None = None
        best_state: dict[str, torch.Tensor] | None = None
        best_confusion: NDArray[np.int64] | None = None
        epochs_without_improvement = 0
        if progress is not None:
            progress({"event": "stage", "stage": "training", "done": 0, "of": parameters.num_epochs})
        for epoch in range(1, parameters.num_epochs + 1):
            started = time.perf_counter()
            module.train()
            loss_sum = torch.zeros((), device=device)
            for _ in range(steps_per_epoch):
                patches = sampler.draw(parameters.batch_size_train)
                with mixed_precision(device):
                    logits = module(torch.from_numpy(patches.images[:, None]).to(device)).float()
                loss = scribble_loss(logits, patches.targets)
                if pseudo_loss is not None:
                    loss = loss + PSEUDO_LABEL_WEIGHT * pseudo_loss(logits, patches.pseudo)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
            record: dict[str, Any] = {"epoch": epoch, "loss": loss_sum.item() / steps_per_epoch}
            if validated.size:
                confusion, validation_loss = _validate(
                    module,
                    validation_slices,
                    validation_targets,
                    num_classes,
                    parameters.batch_size_inference,
                    device,
                )
                score = iou_from_confusion(confusion)[0]
                record.update(val_score=score, val_loss=validation_loss)
                # Scores on few pixels saturate; the validation loss breaks ties.
                rank = (score, -validation_loss)
                if best_rank is None or rank > best_rank:
                    best_rank, best_confusion, epochs_without_improvement = rank, confusion, 0
                    best_state = {
                        name: tensor.detach().clone() for name, tensor in module.state_dict().items()
                    }
                else:
                    epochs_without_improvement += 1
            else:
                record.update(val_score=None, val_loss=None)
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            if progress is not None:
                progress(
                    {
                        "event": "epoch",
                        "stage": "training",
                        "epoch": epoch,
                        "of": parameters.num_epochs,
                        "loss": record["loss"],
                        "val_score": record["val_score"],
                        "seconds": record["seconds"],
                    }
                )
            if epochs_without_improvement >= parameters.early_stopping_patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return TrainedNetwork(
        module=module,
        parameters=parameters,
        num_classes=num_classes,
        normalization=normalization,
        held_out=None if best_confusion is None else HeldOutScore.from_confusion(best_confusion),
        history=history,
    )


def split_labelled_pixels(
    masks: NDArray[np.int8], validation_fraction: float, seed: int
) -> tuple[NDArray[np.int8], NDArray[np.int8]]:
    """(training, validation) masks: about `validation_fraction` of every class's labels, in whole tiles.

    Scribbles cover too few slices to hold any slice out, and random pixels would sit
    beside training ones, so tiles are held out (`hold_out_tiles`). When the labels are
    too few for that, validation is empty and training gets every label.
    """
    masks = np.ascontiguousarray(masks, dtype=np.int8)
    held_out = hold_out_tiles(masks, validation_fraction, seed)
    if held_out is None:
        return masks.copy(), np.full_like(masks, UNLABELLED)
    return np.where(held_out, UNLABELLED, masks).astype(np.int8), np.where(held_out, masks, UNLABELLED).astype(np.int8)


def class_weights(
    targets: NDArray[np.int8], num_classes: int, given: list[float] | None = None
) -> NDArray[np.float32]:
    """The given weights, or weights that give every labelled class the same total say in the loss."""
    if given is not None:
        if len(given) != num_classes:
            raise ValueError(f"{len(given)} class weights given for {num_classes} classes")
        return np.asarray(given, dtype=np.float32)
    counts = np.bincount(targets[targets != UNLABELLED].astype(np.int64), minlength=num_classes)
    present = counts > 0
    weights = np.zeros(num_classes, np.float32)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


class Patches(NamedTuple):
    images: NDArray[np.float32]  # (count, h, w)
    targets: NDArray[np.int64]  # the scribbles, -1 unlabelled
    pseudo: NDArray[np.int64]  # the forest's confident labels, -1 elsewhere (all -1 without pseudo-labels)


class PatchSampler:
    """Random training patches, each containing at least one target pixel, randomly flipped and rotated.

    A patch is placed around an anchor pixel drawn class by class, so rare classes are
    seen as often as common ones: around a scribble, or, with pseudo-labels, as often
    around a pixel the forest labelled. Slices smaller than the patch are used whole.
    """

    def __init__(
        self,
        slices: NDArray[np.float32],
        targets: NDArray[np.int8],
        patch_size: int,
        rng: np.random.Generator,
        augment: bool = True,
        pseudo: NDArray[np.int8] | None = None,
    ) -> None:
        if slices.shape != targets.shape or (pseudo is not None and pseudo.shape != targets.shape):
            raise ValueError(f"slices {slices.shape}, targets {targets.shape} and pseudo-labels differ in shape")
        self.slices, self.targets, self.rng, self.augment = slices, targets, rng, augment
        self.pseudo = np.full_like(targets, UNLABELLED) if pseudo is None else pseudo
        _, height, width = slices.shape
        self.patch_shape = (min(patch_size, height), min(patch_size, width))
        self.anchors = [_anchors_by_class(targets)] + ([_anchors_by_class(pseudo)] if pseudo is not None else [])
        self.anchors = [anchors for anchors in self.anchors if anchors]
        if not self.anchors:
            raise ValueError("no labelled pixels to draw patches around")

    def draw(self, count: int) -> Patches:
        patch_height, patch_width = self.patch_shape
        _, height, width = self.slices.shape
        images = np.empty((count, patch_height, patch_width), np.float32)
        targets = np.empty((count, patch_height, patch_width), np.int64)
        pseudo = np.empty((count, patch_height, patch_width), np.int64)
        for index, source in enumerate(self.rng.integers(len(self.anchors), size=count)):
            by_class = self.anchors[source]
            anchors = by_class[self.rng.integers(len(by_class))]
            anchor = anchors[self.rng.integers(anchors.size)]
            slice_index, y, x = np.unravel_index(anchor, self.targets.shape)
            top = int(np.clip(y - self.rng.integers(patch_height), 0, height - patch_height))
            left = int(np.clip(x - self.rng.integers(patch_width), 0, width - patch_width))
            window = (slice_index, slice(top, top + patch_height), slice(left, left + patch_width))
            planes = [self.slices[window], self.targets[window], self.pseudo[window]]
            if self.augment:
                planes = self._reorient(planes)
            images[index], targets[index], pseudo[index] = planes
        return Patches(images, targets, pseudo)

    def _reorient(self, planes: list[NDArray[Any]]) -> list[NDArray[Any]]:
        """One of the eight flips and right-angle rotations, alike for every plane; odd rotations only for square patches."""
        for axis in (0, 1):
            if self.rng.random() < 0.5:
                planes = [np.flip(plane, axis) for plane in planes]
        turns = int(self.rng.integers(4)) if planes[0].shape[0] == planes[0].shape[1] else 0
        return [np.rot90(plane, turns) for plane in planes]


def _anchors_by_class(targets: NDArray[np.int8]) -> list[NDArray[np.int64]]:
    flat = targets.reshape(-1)
    return [np.flatnonzero(flat == label) for label in np.unique(flat[flat != UNLABELLED])]


class MaskedCrossEntropy:
    """Class-weighted cross-entropy over the labelled pixels of a batch; zero when it has none.

    torch's `ignore_index` mean divides by the weight of the labelled pixels, which is
    0/0 for a batch of patches around pseudo-labels alone.
    """

    def __init__(self, weights: NDArray[np.float32], device: torch.device) -> None:
        self.weights, self.device = torch.as_tensor(weights, device=device), device

    def __call__(self, logits: torch.Tensor, targets: NDArray[np.int64]) -> torch.Tensor:
        target = torch.from_numpy(targets).to(self.device)
        labelled = target != UNLABELLED
        if not bool(labelled.any()):
            return logits.sum() * 0.0
        pixel_logits = logits.permute(0, 2, 3, 1)[labelled]
        pixel_targets = target[labelled]
        losses = F.cross_entropy(pixel_logits, pixel_targets, weight=self.weights, reduction="sum")
        return losses / self.weights[pixel_targets].sum().clamp_min(1e-12)


def _validate(
    module: nn.Module,
    slices: NDArray[np.float32],
    targets: NDArray[np.int8],
    num_classes: int,
    batch_size: int,
    device: torch.device,
) -> tuple[NDArray[np.int64], float]:
    """(confusion matrix, mean cross-entropy) over the validation pixels, predicting whole slices."""
    module.eval()
    confusion = np.zeros((num_classes, num_classes), np.int64)
    loss_sum, pixel_count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(slices), batch_size):
            images = torch.from_numpy(slices[start : start + batch_size, None]).to(device)
            batch_targets = torch.from_numpy(targets[start : start + batch_size].astype(np.int64)).to(device)
            with mixed_precision(device):
                logits = module(images)
            labelled = batch_targets != UNLABELLED
            pixel_logits = logits.float().permute(0, 2, 3, 1)[labelled]
            pixel_targets = batch_targets[labelled]
            loss_sum += F.cross_entropy(pixel_logits, pixel_targets, reduction="sum").item()
            pixel_count += pixel_targets.numel()
            confusion += confusion_matrix(
                pixel_logits.argmax(1).cpu().numpy(), pixel_targets.cpu().numpy(), num_classes
            )
    return confusion, loss_sum / pixel_count


def _optimizer(module: nn.Module, parameters: NetworkParameters) -> torch.optim.Optimizer:
    if parameters.optimizer == "SGD":
        return torch.optim.SGD(module.parameters(), lr=parameters.learning_rate, momentum=SGD_MOMENTUM)
    if parameters.optimizer == "AdamW":
        return torch.optim.AdamW(module.parameters(), lr=parameters.learning_rate)
    return torch.optim.Adam(module.parameters(), lr=parameters.learning_rate)


def _check_training_data(slices: NDArray[np.float32], masks: NDArray[np.int8], num_classes: int) -> None:
    if slices.ndim != 3 or slices.shape != masks.shape:
        raise ValueError(
            f"slices and masks must be (n, y, x) of one shape, got {slices.shape} and {masks.shape}"
        )
    if num_classes < 2:
        raise ValueError(f"need at least two classes, got {num_classes}")
    if masks.min() < UNLABELLED or masks.max() >= num_classes:
        raise ValueError(f"mask values must lie in -1..{num_classes - 1}")
    if masks.max() == UNLABELLED:
        raise ValueError("the masks hold no labelled pixels")
    if np.unique(masks[masks != UNLABELLED]).size < 2:
        raise ValueError("labels of at least two classes are needed: one class alone teaches nothing to tell apart")
