"""The live preview: the random forest's prediction of the slice on screen, refitted as the user paints.

It lives in the web app's process (docs/decisions.md, "Live preview"): the slice reads,
the saved masks and a warm cache are already here, and a stroke's save never waits for
it, since previews are separate requests. One preview computes at a time (it uses
every core); the browser asks for the newest only.

Kept between requests: the features of recently viewed slices (bounded by
`ui.preview_cache_mib`), each painted slice's labelled samples, the forest of each
recent mask, and a sparse sample of evenly spaced z slices from which every new forest
estimates how unsure it is along the volume ("where to paint next"), computed in the
background while the user is idle.

The model (`segmentation.preview`) is imported on first use: it brings torch and
scikit-learn, over 300 MiB, which a web app whose users never switch the preview on
should not carry.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from cachetools import LRUCache
from numpy.typing import NDArray

from dash_app.annotations import Annotations, Axis, label_plane, painted_runs
from dash_app.imaging import colour_labels, rgb
from dash_app.masks import MaskOverlays
from dash_app.volumes import ScanLibrary
from segmentation.held_out import HeldOutScore

if TYPE_CHECKING:
    from segmentation.preview import PaintedSamples, PreviewModel

SURVEY_SLICES = 32  # evenly spaced z slices whose uncertainty every new forest estimates
SURVEY_PIXEL_STEP = 8  # of their preview pixels, every 8th along each side is kept (2 MiB a slice at 1024²)
IDLE_SECONDS = 2.0  # the survey's feature computation waits this long after the last preview request

logger = logging.getLogger(__name__)


class PreviewUnavailable(ValueError):
    """Nothing to preview yet (fewer than two classes painted): a message for the user, not a failure."""


@dataclass(frozen=True)
class Preview:
    labels: NDArray[np.uint8]  # at the preview's resolution
    uncertainty: float  # the slice's mean (1 - top class probability)
    trained_pixels: int
    held_out: HeldOutScore | None
    stride: int
    seconds: float  # spent computing it, reading the slice included

    def headers(self) -> dict[str, str]:
        """What the browser reports beside the image."""
        headers = {
            "X-Preview-Trained-Pixels": str(self.trained_pixels),
            "X-Preview-Stride": str(self.stride),
            "X-Preview-Slice-Uncertainty": f"{self.uncertainty:.4f}",
            "X-Preview-Seconds": f"{self.seconds:.3f}",
            "X-Preview-Held-Out-Pixels": str(0 if self.held_out is None else self.held_out.pixels),
        }
        if self.held_out is not None:
            headers["X-Preview-Held-Out-Mean-IoU"] = f"{self.held_out.mean_iou:.3f}"
        return headers


class LivePreviews:
    def __init__(self, library: ScanLibrary, masks: MaskOverlays, feature_cache_bytes: int) -> None:
        self.library = library
        self.masks = masks
        self.features: LRUCache[tuple, NDArray[np.float32]] = LRUCache(maxsize=feature_cache_bytes, getsizeof=lambda array: array.nbytes)
        self.samples: LRUCache[tuple, PaintedSamples] = LRUCache(maxsize=4096)
        self.models: LRUCache[tuple[str, str], PreviewModel] = LRUCache(maxsize=8)
        self.predictions: LRUCache[tuple, Preview] = LRUCache(maxsize=32)  # 1 MiB of labels each at 1024²
        self.survey_features: LRUCache[str, dict[int, NDArray[np.float32]]] = LRUCache(maxsize=4)
        self.survey_uncertainty: LRUCache[tuple[str, str], dict[int, float]] = LRUCache(maxsize=8)
        self.viewed_uncertainty: LRUCache[tuple[str, str], dict[int, float]] = LRUCache(maxsize=8)
        self.newest_mask: dict[str, str] = {}  # scan -> the mask whose forest was fitted last
        self.compute = threading.Lock()  # one computation at a time: each uses every core
        self.state = threading.Lock()  # the caches, shared by the request threads and the survey
        self.last_request = time.monotonic()
        self.surveyor = ThreadPoolExecutor(1, thread_name_prefix="preview-survey")

    def preview(self, scan: str, mask_id: str, axis: Axis, index: int) -> Preview:
        """The prediction of one slice by the forest of mask `mask_id` (never changes: a mask id is its content's hash).

        Raises PreviewUnavailable, LookupError (no such mask) or the library's errors.
        """
        key = (scan, mask_id, axis, index)
        with self.state:
            known = self.predictions.get(key)
        if known is not None:
            return known
        from segmentation.preview import mean_uncertainty, preview_stride  # with torch and scikit-learn: on first use

        self.last_request = time.monotonic()
        with self.compute:
            started = time.perf_counter()
            shape = tuple(self.library.volume(scan).shape)
            stride = preview_stride(shape)
            annotations = self.masks.annotations_of(scan, mask_id).on_volume(shape)
            model, fresh = self._model(scan, mask_id, annotations, stride)
            labels, uncertainty = model.predict(self._features(scan, axis, index, stride))
            preview = Preview(
                labels=labels, uncertainty=mean_uncertainty(uncertainty), trained_pixels=model.trained_pixels,
                held_out=model.held_out, stride=stride, seconds=time.perf_counter() - started,
            )
        with self.state:
            self.predictions[key] = preview
            if axis == "z":
                self.viewed_uncertainty.setdefault((scan, mask_id), {})[index] = preview.uncertainty
        if fresh:
            self.surveyor.submit(self._survey_logging_failures, scan, mask_id, stride)
        self.last_request = time.monotonic()
        return preview

    def overlay(self, scan: str, mask_id: str, preview: Preview, hidden: set[int]) -> NDArray[np.uint8]:
        """The preview's labels in their classes' colours (less `hidden`)."""
        annotations = self.masks.annotations_of(scan, mask_id)
        index_of = annotations.class_index()
        colours = {index_of[class_id]: rgb(info.color) for class_id, info in annotations.classes.items()}
        return colour_labels(preview.labels, colours, hidden)

    def slice_uncertainty(self, scan: str, mask_id: str) -> dict[int, float]:
        """Mean uncertainty of the z slices estimated so far: the survey's, then the slices previewed, which are exact."""
        with self.state:
            return {
                **self.survey_uncertainty.get((scan, mask_id), {}),
                **self.viewed_uncertainty.get((scan, mask_id), {}),
            }

    def _model(self, scan: str, mask_id: str, annotations: Annotations, stride: int) -> tuple[PreviewModel, bool]:
        """(the forest of this mask, whether it was fitted just now)."""
        from segmentation.preview import fit_preview, painted_samples, reduce_labels

        with self.state:
            model = self.models.get((scan, mask_id))
        if model is not None:
            return model, False
        runs = painted_runs(annotations)
        painted = []
        for axis, index in annotations.painted_planes():
            labels = reduce_labels(label_plane(runs, annotations.volume_shape, axis, index), stride)
            digest = hashlib.blake2b(labels.tobytes(), digest_size=16).hexdigest()
            key = (scan, axis, index, digest)
            with self.state:
                samples = self.samples.get(key)
            if samples is None:
                samples = painted_samples(self._features(scan, axis, index, stride), labels)
                with self.state:
                    self.samples[key] = samples
            painted.append(samples)
        try:
            model = fit_preview(painted)
        except ValueError as error:
            raise PreviewUnavailable(str(error)) from None
        with self.state:
            self.models[(scan, mask_id)] = model
            self.newest_mask[scan] = mask_id
        return model, True

    def _features(self, scan: str, axis: Axis, index: int, stride: int) -> NDArray[np.float32]:
        from segmentation.preview import reduce_image, slice_features

        key = (scan, axis, index)
        with self.state:
            features = self.features.get(key)
        if features is None:
            features = slice_features(reduce_image(self.library.full_plane(scan, axis, index), stride))
            if features.nbytes <= self.features.maxsize:  # a cache smaller than one slice keeps none
                with self.state:
                    self.features[key] = features
        return features

    def _survey_logging_failures(self, scan: str, mask_id: str, stride: int) -> None:
        try:
            self._survey(scan, mask_id, stride)
        except Exception:  # a scan removed meanwhile, Tiled down: the estimate is left partial
            logger.exception("the preview's uncertainty survey of %s stopped", scan)

    def _survey(self, scan: str, mask_id: str, stride: int) -> None:
        """Estimate the new forest's uncertainty on evenly spaced z slices, their features sampled once per scan.

        Feature computation waits until the user has been idle for IDLE_SECONDS, one
        slice at a time, and stops when a newer forest for the scan takes over.
        """
        from segmentation.preview import mean_uncertainty, reduce_image, slice_features

        depth = self.library.volume(scan).shape[0]
        wanted = np.unique(np.linspace(0, depth - 1, min(SURVEY_SLICES, depth)).round().astype(int)).tolist()
        with self.state:
            sampled = self.survey_features.setdefault(scan, {})
            estimates: dict[int, float] = {}
            self.survey_uncertainty[(scan, mask_id)] = estimates
        for z in wanted:
            if self._superseded(scan, mask_id):
                return
            if z not in sampled:
                while time.monotonic() - self.last_request < IDLE_SECONDS:
                    time.sleep(0.2)
                    if self._superseded(scan, mask_id):
                        return
                with self.compute:
                    features = slice_features(reduce_image(self.library.full_plane(scan, "z", z), stride))
                sampled[z] = np.ascontiguousarray(features[::SURVEY_PIXEL_STEP, ::SURVEY_PIXEL_STEP])
            with self.state:
                model = self.models.get((scan, mask_id))
            if model is None:
                return
            _, uncertainty = model.predict(sampled[z])
            with self.state:
                estimates[z] = mean_uncertainty(uncertainty)

    def _superseded(self, scan: str, mask_id: str) -> bool:
        """A newer forest for the scan was fitted since: its own survey runs instead."""
        with self.state:
            return self.newest_mask.get(scan, mask_id) != mask_id
