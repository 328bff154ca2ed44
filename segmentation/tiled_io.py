"""Read volumes and sparse masks from Tiled; write label volumes back in large blocks.

The job reads slices through Tiled's HTTP API, never from files, so it runs the same
in a container on a GPU node as on the beamline workstation. Credentials come from
the environment (`TILED_API_KEY`), never from the parameters file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from tiled.client import from_uri
from tiled.structures.array import ArrayStructure, BuiltinDtype
from tiled.structures.core import StructureFamily
from tiled.structures.data_source import DataSource

from mlex_tomo.tiled_names import MASK_KEY, RESULT_KEY, UNCERTAINTY_KEY, UNLABELLED, volume_key


class InvalidInput(ValueError):
    """A URI does not lead to what the job needs; the message says what was found."""


def open_node(uri: str) -> Any:
    """The Tiled node at a full node URL, e.g. http://host:8000/api/v1/metadata/recons/scan."""
    return from_uri(uri, api_key=os.environ.get("TILED_API_KEY") or None)


class TiledVolume:
    """A (z, y, x) volume given as a bare array, or a container holding `data` or one array."""

    def __init__(self, node: Any) -> None:
        self.node = _volume_array(node)
        if len(self.node.shape) != 3:
            raise InvalidInput(f"the volume must be 3-D (z, y, x), got shape {self.node.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.node.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.node.dtype)

    def read(self, z_start: int, z_stop: int) -> np.ndarray:
        return np.asarray(self.node[z_start:z_stop])

    def read_slices(self, indices: list[int]) -> np.ndarray:
        return np.stack([np.asarray(self.node[index]) for index in indices])


def _volume_array(node: Any) -> Any:
    if node.structure_family == StructureFamily.array:
        return node
    if node.structure_family != StructureFamily.container:
        raise InvalidInput(f"expected an array or a container, got a {node.structure_family}")
    try:
        key = volume_key({key: child.structure_family == StructureFamily.array for key, child in node.items()})
    except ValueError as error:
        raise InvalidInput(f"container {error}") from None
    return _volume_array(node[key])


@dataclass(frozen=True)
class SparseMask:
    """Labels on a few slices: -1 where nothing was painted, 0..K-1 for classes."""

    labels: np.ndarray
    slice_indices: list[int]
    classes: dict[int, dict[str, Any]]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> dict[int, str]:
        return {class_id: str(info.get("label", class_id)) for class_id, info in self.classes.items()}


def read_mask(node: Any, volume_shape: tuple[int, int, int]) -> SparseMask:
    """Read `/masks/<scan>/<mask_id>/mask` and check it against the volume it labels."""
    if node.structure_family == StructureFamily.container:
        node = node[MASK_KEY]
    metadata = dict(node.metadata)
    for field in ("mask_idx", "classes"):
        if field not in metadata:
            raise InvalidInput(f"mask metadata lacks '{field}'")
    labels = np.asarray(node.read())
    slice_indices = [int(index) for index in metadata["mask_idx"]]
    classes = {int(class_id): dict(info) for class_id, info in metadata["classes"].items()}
    if labels.ndim != 3 or labels.shape[0] != len(slice_indices):
        raise InvalidInput(
            f"mask shape {labels.shape} does not match {len(slice_indices)} indices in mask_idx"
        )
    if labels.shape[1:] != volume_shape[1:]:
        raise InvalidInput(f"mask slices are {labels.shape[1:]}, the volume's are {volume_shape[1:]}")
    if slice_indices != sorted(set(slice_indices)) or not all(0 <= z < volume_shape[0] for z in slice_indices):
        raise InvalidInput(f"mask_idx must be sorted, unique and within 0..{volume_shape[0] - 1}")
    if sorted(classes) != list(range(len(classes))) or len(classes) < 2:
        raise InvalidInput(f"classes must be numbered 0..K-1 with K >= 2, got {sorted(classes)}")
    painted = labels[labels != UNLABELLED]
    if painted.size == 0:
        raise InvalidInput("the mask has no labelled pixel")
    if painted.min() < 0 or painted.max() >= len(classes):
        raise InvalidInput(f"labels must be -1 or 0..{len(classes) - 1}, found {painted.min()}..{painted.max()}")
    return SparseMask(labels.astype(np.int8), slice_indices, classes)


class ResultWriter:
    """`/results/<job_id>/seg_result`: uint8 labels, one slice per chunk, written in slabs."""

    def __init__(
        self,
        results: Any,
        job_id: str,
        shape: tuple[int, int, int],
        metadata: dict[str, Any],
        uncertainty: bool = False,
    ) -> None:
        self.job = results.create_container(job_id, metadata=metadata)
        self.labels = _empty_array(self.job, RESULT_KEY, shape, np.uint8, metadata)
        self.uncertainty = (
            _empty_array(self.job, UNCERTAINTY_KEY, shape, np.uint8, {"meaning": "255 * (1 - max class probability)"})
            if uncertainty
            else None
        )

    def write_labels(self, first_row: int, labels: np.ndarray) -> None:
        self.labels.patch(labels.astype(np.uint8, copy=False), offset=(first_row, 0, 0))

    def write_uncertainty(self, first_row: int, uncertainty: np.ndarray) -> None:
        if self.uncertainty is None:
            raise ValueError("this writer was created without an uncertainty map")
        self.uncertainty.patch(uncertainty.astype(np.uint8, copy=False), offset=(first_row, 0, 0))

    def annotate(self, **metadata: Any) -> None:
        """Add what is only known at the end, such as metrics, to the job's metadata."""
        self.job.update_metadata(metadata={**dict(self.job.metadata), **metadata})


def _empty_array(container: Any, key: str, shape: tuple[int, int, int], dtype: type, metadata: dict[str, Any]) -> Any:
    depth, height, width = shape
    structure = ArrayStructure(
        data_type=BuiltinDtype.from_numpy_dtype(np.dtype(dtype)),
        shape=shape,
        chunks=((1,) * depth, (height,), (width,)),
    )
    data_source = DataSource(structure_family=StructureFamily.array, structure=structure)
    return container.new(StructureFamily.array, [data_source], key=key, metadata=metadata)
