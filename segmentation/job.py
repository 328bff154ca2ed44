"""One segmentation job: read from Tiled, train or load a model, segment, write back to Tiled.

This is the glue between the science (plain functions on arrays in `training`,
`inference`, `random_forest`) and the outside world (Tiled nodes, the model store,
progress lines). It never holds the volume: slices are read and labels written in
blocks sized from `memory_budget_mib`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from numpy.typing import NDArray

from segmentation.features import forest_device
from segmentation.inference import SlabWriter, contiguous_blocks, segment_slices
from segmentation.held_out import held_out_metrics
from segmentation.labels import label_problems
from segmentation.model_store import ModelStore, TrainedModel
from segmentation.models import MSDNetParameters, NetworkParameters, RandomForestParameters, TUNet3PlusParameters
from segmentation.normalization import normalize, robust_range
from segmentation.parameters import JobParameters
from segmentation.pseudo_labels import context_indices
from segmentation.random_forest import TrainedForest, train_random_forest
from segmentation.tiled_io import InvalidInput, ResultWriter, SparseMask, TiledVolume, open_node, read_mask
from segmentation.training import ProgressCallback, TrainedNetwork, train_network

BLOCKS_IN_FLIGHT = 3  # read ahead, predicting, written behind
MiB = 2**20


class DeviceUnavailable(RuntimeError):
    """The parameters ask for a device this node does not have."""


class Cancelled(KeyboardInterrupt):
    """The job was asked to stop (SIGTERM from the launcher); results are marked cancelled."""


@dataclass(frozen=True)
class JobOutcome:
    model_folder: Path
    result_uri: str | None
    metrics: dict[str, Any]


def run_job(parameters: JobParameters, progress: ProgressCallback) -> JobOutcome:
    """Train and/or segment as the parameters say; the result node exists (status running) before training starts."""
    started = time.perf_counter()
    device = choose_device(parameters.device)
    volume = TiledVolume(open_node(str(parameters.data_uri)))
    mask = read_mask(open_node(str(parameters.mask_uri)), volume.shape) if parameters.mask_uri else None
    store = ModelStore(parameters.models_dir)
    if parameters.trains:
        assert parameters.model is not None and mask is not None  # guaranteed by JobParameters
        if store.folder(parameters.job_id).exists():
            raise InvalidInput(f"job_id: a model is already stored for {parameters.job_id!r}; use a new job id")
        problems = label_problems(mask.labels, mask.class_names)
        if problems:
            raise InvalidInput("mask_uri: " + "; ".join(problems))
        model_parameters, classes, trained_job_id = parameters.model, mask.classes, parameters.job_id
        if isinstance(model_parameters, NetworkParameters):
            model_parameters = model_parameters.for_device(device.type)
        stored = None
    else:
        assert parameters.trained_job_id is not None  # guaranteed by JobParameters
        stored = store.load(parameters.trained_job_id, device="cpu")
        classes, trained_job_id = stored.classes, parameters.trained_job_id
        model_parameters = stored.model.parameters
        if mask is not None and mask.num_classes != len(classes):
            raise InvalidInput(
                f"mask_uri: the mask has {mask.num_classes} classes, the model of {trained_job_id!r} {len(classes)}"
            )
    slices = selected_slices(parameters, volume.shape[0], mask) if parameters.infers else []
    writer = (
        open_result(parameters, model_parameters, classes, trained_job_id, volume, mask, slices, device)
        if parameters.infers
        else None
    )
    progress(
        {
            "event": "started",
            "stage": "reading",
            "task": parameters.task,
            "job_id": parameters.job_id,
            "device": str(device),
            "shape": list(volume.shape),
        }
    )
    try:
        if stored is None:
            model = train_model(model_parameters, volume, mask, device, progress)
            metrics = held_out_metrics(model.held_out)
            provenance = {
                "data_uri": str(parameters.data_uri),
                "mask_uri": str(parameters.mask_uri),
                "mask_idx": mask.slice_indices,
                "metrics": metrics,
            }
            folder = store.save(parameters.job_id, model, classes, provenance)
            progress(
                {
                    "event": "trained",
                    "stage": "training",
                    "model_folder": str(folder),
                    "seconds": time.perf_counter() - started,
                    **metrics,
                }
            )
        else:
            model, folder = stored.model, store.folder(trained_job_id)
            if _node_path(stored.description.get("data_uri", "")) != _node_path(str(parameters.data_uri)):
                # Another scan (a scan is its node, whichever address reached it): map its own
                # robust range onto what the model saw in training.
                model = with_normalization(model, volume_range(volume))
            metrics = held_out_metrics(model.held_out)  # the stored model's own score, from its training
        if writer is not None:
            slice_uncertainty = segment_volume(writer, model, len(classes), volume, slices, device, parameters, progress)
            if stored is None and parameters.uncertainty_survey:
                slice_uncertainty |= survey_uncertainty(model, len(classes), volume, slices, device, parameters, progress)
    except BaseException as error:
        if writer is not None:
            writer.annotate(status="cancelled" if isinstance(error, KeyboardInterrupt) else "failed")
        raise
    if writer is not None:
        measured = sorted(slice_uncertainty)
        writer.annotate(
            status="complete", metrics=metrics,
            slice_uncertainty={"slices": measured, "mean": [slice_uncertainty[z] for z in measured]},
        )
    result_uri = None if writer is None else f"{str(parameters.result_uri).rstrip('/')}/{parameters.job_id}"
    progress(
        {
            "event": "finished",
            "stage": "finished",
            "result_uri": result_uri,
            "seconds": time.perf_counter() - started,
            **metrics,
        }
    )
    return JobOutcome(model_folder=folder, result_uri=result_uri, metrics=metrics)


def choose_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device: 'cuda' was asked for, but torch sees no CUDA device on this node")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def selected_slices(parameters: JobParameters, depth: int, mask: SparseMask | None) -> list[int]:
    selection = parameters.slice_selection
    if selection == "all":
        return list(range(depth))
    if selection == "labelled":
        assert mask is not None  # guaranteed by JobParameters
        return list(mask.slice_indices)
    outside = [index for index in selection if index >= depth]
    if outside:
        raise InvalidInput(f"slices: {outside[:5]} lie outside the volume's 0..{depth - 1}")
    return list(selection)


def volume_range(volume: TiledVolume) -> tuple[float, float]:
    return robust_range(lambda z: volume.read(z, z + 1)[0], num_slices=volume.shape[0])


def train_model(
    model_parameters: NetworkParameters | RandomForestParameters,
    volume: TiledVolume,
    mask: SparseMask,
    device: torch.device,
    progress: ProgressCallback,
) -> TrainedModel:
    weights = getattr(model_parameters, "weights", None)
    if weights is not None and len(weights) != mask.num_classes:
        raise InvalidInput(f"model.weights: {len(weights)} weights given, the mask has {mask.num_classes} classes")
    low, high = volume_range(volume)
    slices = normalize(volume.read_slices(mask.slice_indices), low, high)
    if isinstance(model_parameters, RandomForestParameters):
        return train_random_forest(
            slices, mask.labels, model_parameters, forest_device(device), progress, normalisation=(low, high)
        )
    context = None
    if model_parameters.pseudo_labels and model_parameters.context_slices:
        indices = context_indices(volume.shape[0], mask.slice_indices, model_parameters.context_slices)
        context = normalize(volume.read_slices(indices), low, high) if indices else None
    return train_network(
        slices,
        mask.labels,
        model_parameters,
        mask.num_classes,
        device,
        with_epoch_eta(progress),
        normalization=(low, high),
        context=context,
    )


def with_epoch_eta(progress: ProgressCallback) -> ProgressCallback:
    """Adds `eta_seconds` to epoch events: the mean epoch time so far times the epochs left."""
    elapsed: list[float] = []

    def report(event: dict[str, Any]) -> None:
        if event.get("event") == "epoch":
            elapsed.append(event["seconds"])
            event = {**event, "eta_seconds": sum(elapsed) / len(elapsed) * (event["of"] - event["epoch"])}
        progress(event)

    return report


def with_normalization(model: TrainedModel, intensity_range: tuple[float, float]) -> TrainedModel:
    if isinstance(model, TrainedNetwork):
        return dataclasses.replace(model, normalization=intensity_range)
    return dataclasses.replace(model, normalisation=intensity_range)


def slices_per_block(
    parameters: JobParameters, model: TrainedModel, volume: TiledVolume, num_classes: int, device: torch.device
) -> int:
    """The most slices per block whose host buffers fit in the memory budget (at least one)."""
    _, height, width = volume.shape
    input_bytes = volume.dtype.itemsize + 4  # as read, then normalised to float32
    output_bytes = 2  # labels and uncertainty, one byte each
    if isinstance(model, TrainedForest):
        working_bytes = 4 * model.feature_count + 4 + 8 * num_classes
        per_pixel = input_bytes + output_bytes + working_bytes
        limit = math.inf
    else:
        working_bytes = 2 * 4 * num_classes  # probabilities, on the host when predicting on the CPU
        if device.type == "cpu":
            working_bytes += 3 * 4 * network_width(model.parameters)  # a few live activations per pixel
        per_pixel = BLOCKS_IN_FLIGHT * (input_bytes + output_bytes) + working_bytes
        limit = model.parameters.batch_size_inference
    per_slice = per_pixel * height * width
    block = int(parameters.memory_budget_mib * MiB // per_slice)
    if block < 1:
        raise InvalidInput(
            f"memory_budget_mib: {parameters.memory_budget_mib:g} MiB cannot hold one {height}x{width} slice;"
            f" give at least {math.ceil(per_slice / MiB)}"
        )
    return int(min(block, limit))


def network_width(parameters: NetworkParameters) -> int:
    """Channels of the widest full-resolution feature map."""
    if isinstance(parameters, MSDNetParameters):
        return 1 + parameters.num_layers * parameters.layer_width
    if isinstance(parameters, TUNet3PlusParameters):
        return parameters.depth * parameters.carryover_channels  # the fused maps of the top decoder level
    return 2 * parameters.base_channels  # decoder input: upsampled features joined to the skip


def open_result(
    parameters: JobParameters,
    model_parameters: NetworkParameters | RandomForestParameters,
    classes: dict[int, dict[str, Any]],
    trained_job_id: str,
    volume: TiledVolume,
    mask: SparseMask | None,
    slices: list[int],
    device: torch.device,
) -> ResultWriter:
    """`<result_uri>/<job_id>`, one row of `seg_result` per selected slice, with the contract's metadata."""
    _, height, width = volume.shape
    return ResultWriter(
        open_node(str(parameters.result_uri)),
        parameters.job_id,
        (len(slices), height, width),
        {
            "job_id": parameters.job_id,
            "task": parameters.task,
            "status": "running",
            "data_uri": str(parameters.data_uri),
            "mask_uri": None if parameters.mask_uri is None else str(parameters.mask_uri),
            "mask_idx": None if mask is None else mask.slice_indices,
            "model": model_parameters.name,
            "parameters": model_parameters.model_dump(mode="json"),
            "trained_job_id": trained_job_id,
            "classes": {str(class_id): info for class_id, info in classes.items()},
            "slices": slices,
            "device": str(device),
        },
        uncertainty=parameters.uncertainty,
    )


def segment_volume(
    writer: ResultWriter,
    model: TrainedModel,
    num_classes: int,
    volume: TiledVolume,
    slices: list[int],
    device: torch.device,
    parameters: JobParameters,
    progress: ProgressCallback,
) -> dict[int, float]:
    """Segment `slices` into the writer's rows; return each slice's mean uncertainty (1 - the top class probability).

    The labels are not scored against the painted pixels: the model trained on them, so
    that would measure memory; the held-out score from training stands instead. The
    per-slice uncertainty is always measured (the web app's "where to paint next"); the
    voxels' own map is written only when asked for.
    """
    row_of = {z: row for row, z in enumerate(slices)}
    progress({"event": "inference", "stage": "segmenting", "done": 0, "of": len(slices)})

    def write_labels(start: int, labels: NDArray[np.uint8]) -> None:
        writer.write_labels(row_of[start], labels)

    def write_uncertainty(start: int, uncertainty: NDArray[np.uint8]) -> None:
        if parameters.uncertainty:
            writer.write_uncertainty(row_of[start], uncertainty)

    return predict_slices(model, num_classes, volume, slices, device, parameters, write_labels, write_uncertainty, progress)


def survey_uncertainty(
    model: TrainedModel,
    num_classes: int,
    volume: TiledVolume,
    segmented: list[int],
    device: torch.device,
    parameters: JobParameters,
    progress: ProgressCallback,
) -> dict[int, float]:
    """The mean uncertainty of `parameters.uncertainty_survey` evenly spaced z slices not segmented, labels discarded.

    A train job segments only the painted slices, which says nothing of where to paint
    next; this samples the rest of the volume for the web app's uncertainty strip.
    """
    depth = volume.shape[0]
    spaced = np.unique(np.linspace(0, depth - 1, min(parameters.uncertainty_survey, depth)).round().astype(int))
    survey = sorted(set(spaced.tolist()) - set(segmented))
    if not survey:
        return {}

    def reported(event: dict[str, Any]) -> None:
        if event["event"] == "inference":  # its own stage: the bar, full after segmenting, stays full
            progress({"event": "stage", "stage": "surveying", "done": event["done"], "of": event["of"]})

    reported({"event": "inference", "done": 0, "of": len(survey)})
    return predict_slices(model, num_classes, volume, survey, device, parameters, lambda start, labels: None, lambda start, uncertainty: None, reported)


def predict_slices(
    model: TrainedModel,
    num_classes: int,
    volume: TiledVolume,
    slices: list[int],
    device: torch.device,
    parameters: JobParameters,
    write_labels: SlabWriter,
    write_uncertainty: SlabWriter,
    progress: ProgressCallback,
) -> dict[int, float]:
    """Label `slices` block by block into the writers; return each slice's mean uncertainty."""
    measured: dict[int, float] = {}

    def measure(start: int, uncertainty: NDArray[np.uint8]) -> None:
        for offset, means in enumerate(uncertainty.reshape(len(uncertainty), -1).mean(axis=1) / 255):
            measured[start + offset] = round(float(means), 4)
        write_uncertainty(start, uncertainty)

    block = slices_per_block(parameters, model, volume, num_classes, device)
    if isinstance(model, TrainedForest):
        segment_with_forest(model, volume, slices, block, device, write_labels, measure, progress)
    else:
        segment_slices(
            model,
            volume.read,
            slices,
            write_labels,
            batch_size=block,
            device=device,
            progress=progress,
            write_uncertainty=measure,
        )
    return measured


def segment_with_forest(
    forest: TrainedForest,
    volume: TiledVolume,
    slices: list[int],
    block: int,
    device: torch.device,
    write_labels: SlabWriter,
    write_uncertainty: SlabWriter,
    progress: ProgressCallback,
) -> None:
    started, done = time.perf_counter(), 0
    low, high = forest.normalisation
    for start, stop in contiguous_blocks(slices, block):
        images = normalize(volume.read(start, stop), low, high)
        labels, uncertainty = forest.predict_slices(images, forest_device(device), batch=block)
        write_labels(start, labels)
        write_uncertainty(start, np.round(uncertainty * 255).astype(np.uint8))
        done += stop - start
        elapsed = time.perf_counter() - started
        progress(
            {
                "event": "inference",
                "stage": "segmenting",
                "done": done,
                "of": len(slices),
                "eta_seconds": elapsed / done * (len(slices) - done),
            }
        )


def _node_path(uri: str) -> str:
    return urlsplit(uri).path.rstrip("/")
