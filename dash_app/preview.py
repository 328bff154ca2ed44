"""The live preview: the random forest's prediction of the slice on screen, refitted as the user paints.

It lives in the web app's process (docs/decisions.md, "Live preview"): the slice reads,
the saved masks and a warm cache are already here. The save callback begins the
preview of the slice painted (`begin`) on a thread of its own, and the browser's
request, made once the save is done, collects it: the fit overlaps the save, and the
save never waits for the fit. One preview computes at a time (it uses every core); the
browser asks for the newest only.

Kept between requests: the features of recently viewed slices (bounded by
`ui.preview_cache_mib`), each painted slice's labelled samples, the forest of each
recent mask, and tiles of evenly spaced z slices from which every new forest estimates
how unsure it is along the volume ("where to paint next"), computed in the background
while the user is idle. After a new forest's first preview, the same background thread
scores it on held-out painted pixels, then re-estimates the survey.

The model (`segmentation.preview`) is imported on first use: it brings torch and
scikit-learn, over 300 MiB, which a web app whose users never switch the preview on
should not carry.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from cachetools import LRUCache
from numpy.typing import NDArray

from dash_app.annotations import Annotations, Axis
from dash_app.imaging import palette_png, rgb
from dash_app.masks import MaskOverlays
from dash_app.volumes import ScanLibrary
from segmentation.held_out import HeldOutScore

if TYPE_CHECKING:
    from segmentation.preview import PaintedSamples, PreviewModel, Scratch

SURVEY_SLICES = 32  # evenly spaced z slices whose uncertainty every new forest estimates
IDLE_SECONDS = 2.0  # the survey's feature computation waits this long after the last preview request

logger = logging.getLogger(__name__)


class PreviewUnavailable(ValueError):
    """Nothing to preview yet (fewer than two classes painted): a message for the user, not a failure."""


@dataclass(frozen=True)
class Preview:
    labels: NDArray[np.uint8]  # at the preview's resolution
    uncertainty: float  # the slice's mean (1 - top class probability)
    trained_pixels: int
    stride: int
    seconds: float  # spent computing it, reading the slice included

    def headers(self) -> dict[str, str]:
        """What the browser reports beside the image (the forest's held-out score follows with the survey's estimates)."""
        return {
            "X-Preview-Trained-Pixels": str(self.trained_pixels),
            "X-Preview-Stride": str(self.stride),
            "X-Preview-Slice-Uncertainty": f"{self.uncertainty:.4f}",
            "X-Preview-Seconds": f"{self.seconds:.3f}",
        }


class LivePreviews:
    def __init__(self, library: ScanLibrary, masks: MaskOverlays, feature_cache_bytes: int) -> None:
        self.library = library
        self.masks = masks
        self.features: LRUCache[tuple, NDArray[np.float32]] = LRUCache(maxsize=feature_cache_bytes, getsizeof=lambda array: array.nbytes)
        self.samples: LRUCache[tuple, PaintedSamples] = LRUCache(maxsize=4096)
        self.models: LRUCache[tuple[str, str], PreviewModel] = LRUCache(maxsize=8)
        self.scores: LRUCache[tuple[str, str], HeldOutScore | None] = LRUCache(maxsize=8)
        self.predictions: LRUCache[tuple, Preview] = LRUCache(maxsize=32)  # 1 MiB of labels each at 1024²
        self.pending: dict[tuple, Future[Preview]] = {}  # begun while their mask was being saved
        self.survey_features: LRUCache[str, dict[int, NDArray[np.float32]]] = LRUCache(maxsize=2)  # 83 MiB a scan at 1024²
        self.survey_uncertainty: LRUCache[tuple[str, str], dict[int, float]] = LRUCache(maxsize=8)
        self.viewed_uncertainty: LRUCache[tuple[str, str], dict[int, float]] = LRUCache(maxsize=8)
        self.newest_mask: dict[str, str] = {}  # scan -> the mask whose forest was fitted last
        self.scratch: Scratch | None = None  # memory for features, reused under `compute`; made on first use
        self.compute = threading.Lock()  # one computation at a time: each uses every core
        self.state = threading.Lock()  # the caches, shared by the request threads and the background ones
        self.last_request = time.monotonic()
        self.starter = ThreadPoolExecutor(1, thread_name_prefix="preview")
        self.surveyor = ThreadPoolExecutor(1, thread_name_prefix="preview-survey")

    def begin(self, annotations: Annotations, axis: Axis, index: int) -> None:
        """Start the preview of the slice on screen while its annotations are being saved.

        The browser asks for it once the save has told it the mask id, and finds it under
        way: the fit overlaps the save instead of following it.
        """
        mask_id = annotations.mask_id()  # a hash of every stroke: computed once
        self.masks.remember(mask_id, annotations)
        key = (annotations.scan, mask_id, axis, index)
        with self.state:
            if key not in self.predictions and key not in self.pending:
                self.pending[key] = self.starter.submit(self._computed, key, annotations)

    def warm(self, scan: str, axis: Axis, index: int) -> None:
        """Load the model's libraries and compute the features of a slice nothing is painted on yet, in the background.

        The preview is switched on before the first stroke: this spares that stroke the
        import of scikit-learn and torch and the slice's features, several seconds.
        """
        self.starter.submit(self._warmed_logging_failures, scan, axis, index)

    def _warmed_logging_failures(self, scan: str, axis: Axis, index: int) -> None:
        from segmentation.preview import preview_stride

        try:
            with self.compute:
                self._features(scan, axis, index, preview_stride(tuple(self.library.volume(scan).shape)))
        except Exception:  # the next preview request says what is wrong
            logger.exception("warming the preview of %s %s=%d failed", scan, axis, index)

    def preview(self, scan: str, mask_id: str, axis: Axis, index: int) -> Preview:
        """The prediction of one slice by the forest of mask `mask_id` (never changes: a mask id is its content's hash).

        Raises PreviewUnavailable, LookupError (no such mask) or the library's errors.
        """
        key = (scan, mask_id, axis, index)
        with self.state:
            known, begun = self.predictions.get(key), self.pending.get(key)
        if known is not None:
            return known
        if begun is not None:
            return begun.result()
        return self._computed(key, None)

    def held_out_score(self, scan: str, mask_id: str) -> tuple[bool, HeldOutScore | None]:
        """(whether the forest of this mask is scored yet, its score: None when too few labels could be held out)."""
        with self.state:
            return (scan, mask_id) in self.scores, self.scores.get((scan, mask_id))

    def _computed(self, key: tuple, annotations: Annotations | None) -> Preview:
        from segmentation.preview import mean_uncertainty, preview_stride  # with torch and scikit-learn: on first use

        scan, mask_id, axis, index = key
        self.last_request = time.monotonic()
        try:
            with self.compute:
                started = time.perf_counter()
                shape = tuple(self.library.volume(scan).shape)
                stride = preview_stride(shape)
                annotations = (annotations or self.masks.annotations_of(scan, mask_id)).on_volume(shape)
                model, painted = self._model(scan, mask_id, annotations, stride)
                labels, uncertainty = model.predict(self._features(scan, axis, index, stride))
                preview = Preview(
                    labels=labels, uncertainty=mean_uncertainty(uncertainty), trained_pixels=model.trained_pixels,
                    stride=stride, seconds=time.perf_counter() - started,
                )
            with self.state:
                self.predictions[key] = preview
                if axis == "z":
                    self.viewed_uncertainty.setdefault((scan, mask_id), {})[index] = preview.uncertainty
        finally:
            with self.state:
                self.pending.pop(key, None)
        if painted is not None:
            self.surveyor.submit(self._follow_up_logging_failures, scan, mask_id, stride, painted)
        self.last_request = time.monotonic()
        return preview

    def overlay_png(self, scan: str, mask_id: str, preview: Preview, hidden: set[int]) -> bytes:
        """The preview's labels in their classes' colours (less `hidden`), as a PNG."""
        annotations = self.masks.annotations_of(scan, mask_id)
        index_of = annotations.class_index()
        colours = {index_of[class_id]: rgb(info.color) for class_id, info in annotations.classes.items()}
        return palette_png(preview.labels, colours, hidden)

    def slice_uncertainty(self, scan: str, mask_id: str) -> dict[int, float]:
        """Mean uncertainty of the z slices estimated so far: the survey's, then the slices previewed, which are exact."""
        with self.state:
            return {
                **self.survey_uncertainty.get((scan, mask_id), {}),
                **self.viewed_uncertainty.get((scan, mask_id), {}),
            }

    def _model(self, scan: str, mask_id: str, annotations: Annotations, stride: int) -> tuple[PreviewModel, list[PaintedSamples] | None]:
        """(the forest of this mask, the samples it was fitted on if that was just now, else None)."""
        from segmentation.preview import fit_preview, painted_samples, reduce_labels

        with self.state:
            model = self.models.get((scan, mask_id))
        if model is not None:
            return model, None
        painted = []
        for axis, index in annotations.painted_planes():
            key = (scan, axis, index, stride, annotations.plane_digest(axis, index))
            with self.state:
                samples = self.samples.get(key)
            if samples is None:  # the slice painted by this stroke: the others are as the last forest saw them
                labels = reduce_labels(annotations.plane(axis, index), stride)
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
        return model, painted

    def _features(self, scan: str, axis: Axis, index: int, stride: int) -> NDArray[np.float32]:
        from segmentation.preview import reduce_image, slice_features

        key = (scan, axis, index)
        with self.state:
            features = self.features.get(key)
        if features is None:
            features = slice_features(reduce_image(self.library.full_plane(scan, axis, index), stride), scratch=self._scratch())
            if features.nbytes <= self.features.maxsize:  # a cache smaller than one slice keeps none
                with self.state:
                    self.features[key] = features
        return features

    def _scratch(self) -> Scratch:
        """The features' working memory (callers hold `compute`), made on first use, with the model's libraries."""
        from segmentation.preview import Scratch

        if self.scratch is None:
            self.scratch = Scratch()
        return self.scratch

    def _follow_up_logging_failures(self, scan: str, mask_id: str, stride: int, painted: list[PaintedSamples]) -> None:
        """After a new forest's first preview: its held-out score, then its survey, unless a newer forest came first."""
        from segmentation.preview import held_out_score

        try:
            if self._superseded(scan, mask_id):
                return
            with self.compute:
                score = held_out_score(painted)
            with self.state:
                self.scores[(scan, mask_id)] = score
            self._survey(scan, mask_id, stride)
        except Exception:  # a scan removed meanwhile, Tiled down: the score or the estimate is left missing
            logger.exception("the preview's score or uncertainty survey of %s stopped", scan)

    def _survey(self, scan: str, mask_id: str, stride: int) -> None:
        """Estimate the new forest's uncertainty on evenly spaced z slices, from tiles of them whose features are computed once per scan.

        Feature computation waits until the user has been idle for IDLE_SECONDS, one
        slice at a time, and stops when a newer forest for the scan takes over.
        """
        from segmentation.preview import mean_uncertainty, reduce_image, survey_features

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
                    sampled[z] = survey_features(reduce_image(self.library.full_plane(scan, "z", z), stride), scratch=self._scratch())
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
