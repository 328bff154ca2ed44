"""Random-forest pixel classification on ilastik features: few labels, no GPU, minutes.

Training sees only the labelled slices; inference streams the volume in blocks of
slices, so the features of the whole volume never sit in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from mlex_tomo.tiled_names import UNLABELLED
from segmentation.features import compute_features, feature_names, worker_count
from segmentation.held_out import HeldOutScore, hold_out_tiles
from segmentation.metrics import confusion_matrix
from segmentation.models import RandomForestParameters

ProgressCallback = Callable[[dict[str, Any]], None]
BLOCK_FEATURE_BYTES = 128 * 2**20  # features of one block of slices: about the baseline's whole footprint
PREDICT_CHUNK_PIXELS = 32_768  # small enough that every tree reuses the chunk from cache
SAVE_FORMAT = 1
HELD_OUT_FRACTION = 0.2  # of each class's drawn pixels, as the networks' default val_pct


@dataclass(frozen=True)
class TrainedForest:
    """A fitted forest with what inference needs to reproduce its features.

    `normalisation` is the raw (low, high) that `segmentation.normalization.normalize`
    mapped onto [0, 1] to make the training slices; slices to predict must be mapped alike.
    `held_out` is the score measured on held-out tiles before the final refit (None when
    the labels were too few to hold any out).
    """

    model: RandomForestClassifier
    parameters: RandomForestParameters
    normalisation: tuple[float, float]
    held_out: HeldOutScore | None = None
    channels: tuple[int, ...] | None = None  # indices into `feature_names` the model was fitted on; None: all

    @property
    def classes(self) -> NDArray[np.uint8]:
        return self.model.classes_.astype(np.uint8)

    @property
    def feature_count(self) -> int:
        return len(feature_names(self.parameters)) if self.channels is None else len(self.channels)

    def iter_predictions(
        self,
        slices: NDArray[Any],
        device: str = "auto",
        batch: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> Iterator[tuple[int, NDArray[np.uint8], NDArray[np.float32]]]:
        """(first slice, labels, uncertainty) per block, for writing results as they come.

        `slices` may be any array that yields numpy arrays when sliced along z (h5py,
        zarr, memory maps), so only one block is ever read.
        """
        count, height, width = slices.shape
        batch = min(batch or slices_per_block((height, width), self.feature_count), count)
        # One feature buffer serves every block: fresh memory would cost page faults each time.
        buffer = np.empty((batch, height, width, self.feature_count), np.float32)
        for start in range(0, count, batch):
            stop = min(start + batch, count)
            block = np.asarray(slices[start:stop], dtype=np.float32)
            features = compute_features(block, self.parameters, device, out=buffer[: stop - start], channels=self.channels)
            labels, uncertainty = classify_pixels(self.model, features.reshape(-1, features.shape[-1]))
            if progress is not None:
                progress({"event": "inference", "stage": "segmenting", "done": stop, "of": count})
            yield start, labels.reshape(block.shape), uncertainty.reshape(block.shape)

    def predict_slices(
        self,
        slices: NDArray[Any],
        device: str = "auto",
        batch: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        """Labels and uncertainty (1 - the largest class probability) of each (y, x) slice."""
        labels = np.empty(slices.shape, np.uint8)
        uncertainty = np.empty(slices.shape, np.float32)
        for start, block_labels, block_uncertainty in self.iter_predictions(
            slices, device, batch, progress
        ):
            labels[start : start + len(block_labels)] = block_labels
            uncertainty[start : start + len(block_labels)] = block_uncertainty
        return labels, uncertainty

    def save(self, path: str | Path) -> None:
        joblib.dump(
            {
                "format": SAVE_FORMAT,
                "model": self.model,
                "parameters": self.parameters.model_dump(mode="json"),
                "normalisation": list(self.normalisation),
                "feature_names": feature_names(self.parameters),
                "held_out": None if self.held_out is None else asdict(self.held_out),
                "channels": None if self.channels is None else list(self.channels),
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> TrainedForest:
        """Unpickles the file: load only from trusted storage, as a crafted file runs code."""
        stored = joblib.load(path)
        if stored.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path} holds format {stored.get('format')!r}, expected {SAVE_FORMAT}")
        low, high = stored["normalisation"]
        held_out = stored.get("held_out")  # absent from forests saved before it was measured
        channels = stored.get("channels")  # absent from forests fitted on every feature
        return cls(
            model=stored["model"],
            parameters=RandomForestParameters.model_validate(stored["parameters"]),
            normalisation=(float(low), float(high)),
            held_out=None if held_out is None else HeldOutScore(**held_out),
            channels=None if channels is None else tuple(int(channel) for channel in channels),
        )


def train_random_forest(
    slices: NDArray[np.floating],
    masks: NDArray[np.integer],
    parameters: RandomForestParameters,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    normalisation: tuple[float, float] = (0.0, 1.0),
) -> TrainedForest:
    """Fit on a class-balanced, seeded draw of the labelled pixels of `slices`, scored on held-out tiles.

    `slices` are the labelled slices (n, y, x), already normalised with the (low, high)
    `normalisation`, which the forest keeps for inference;
    `masks` (n, y, x) holds -1 where unlabelled and the class 0..K-1 elsewhere.
    Features are computed once, only for slices that contribute a drawn pixel. The
    drawn pixels less those held out (about HELD_OUT_FRACTION of each class, in whole
    tiles: `hold_out_tiles`) choose the features (`select_channels`), and a forest fitted
    on them is scored on the held-out pixels. The forest returned is then refitted on
    every drawn pixel with the same features: that costs one more fit and no features,
    and with labels this few they serve the model better than the score, which thus
    rates a forest that saw a little less, erring low.
    """
    if slices.shape != masks.shape or slices.ndim != 3:
        raise ValueError(
            f"slices {slices.shape} and masks {masks.shape} must share one (n, y, x) shape"
        )
    masks = np.asarray(masks)
    if masks.min(initial=UNLABELLED) < UNLABELLED or masks.max(initial=0) > np.iinfo(np.uint8).max:
        raise ValueError(f"mask values must be {UNLABELLED} (unlabelled) or a class index 0..255")
    report = progress or (lambda event: None)
    chosen = sample_training_pixels(masks, parameters.max_training_pixels, parameters.seed)
    targets = masks.reshape(-1)[chosen].astype(np.uint8)
    if np.unique(targets).size < 2:
        raise ValueError("labels of at least two classes are needed to train a classifier")
    held_out = drawn_held_out(masks, chosen, parameters.seed)
    samples = training_features(slices, chosen, parameters, device, report)

    training = np.ones(targets.size, bool) if held_out is None else ~held_out
    channels = select_channels(samples[training], targets[training], parameters)
    columns = slice(None) if channels is None else list(channels)
    fits = 1 if held_out is None else 2

    def fitted(done: int) -> None:
        report(
            {
                "event": "stage",
                "stage": "fitting",
                "done": done,
                "of": fits,
                "pixels": int(chosen.size),
                "features": samples.shape[1],
            }
        )

    fitted(0)
    score = None
    if held_out is not None:
        model = fit_forest(samples[~held_out][:, columns], targets[~held_out], parameters)
        predicted, _ = classify_pixels(model, np.ascontiguousarray(samples[held_out][:, columns]))
        num_classes = int(targets.max()) + 1
        score = HeldOutScore.from_confusion(confusion_matrix(predicted, targets[held_out], num_classes))
        fitted(1)
    model = fit_forest(samples[:, columns], targets, parameters)
    fitted(fits)
    return TrainedForest(
        model=model, parameters=parameters, normalisation=normalisation, held_out=score, channels=channels
    )


def select_channels(
    samples: NDArray[np.float32], targets: NDArray[np.uint8], parameters: RandomForestParameters
) -> tuple[int, ...] | None:
    """The `selected_features` most important features of a forest fitted on all of them (None: keep all).

    Computing features dominates segmenting a volume, and a forest fitted on a few
    hundred painted pixels leans on a handful of them: the rest are computed over
    billions of voxels for splits that hardly matter. Importance is the trees' mean
    decrease in impurity.
    """
    keep = parameters.selected_features
    if keep is None or keep >= samples.shape[1]:
        return None
    importance = fit_forest(samples, targets, parameters).feature_importances_
    return tuple(sorted(int(channel) for channel in np.argsort(-importance, kind="stable")[:keep]))


def drawn_held_out(
    masks: NDArray[np.integer], chosen: NDArray[np.int64], seed: int
) -> NDArray[np.bool_] | None:
    """Which drawn pixels to hold out; tiles are shared out among the drawn pixels alone, the ones fitted and scored."""
    drawn = np.full(masks.shape, UNLABELLED, np.int8)
    drawn.reshape(-1)[chosen] = masks.reshape(-1)[chosen]
    held_out = hold_out_tiles(drawn, HELD_OUT_FRACTION, seed)
    return None if held_out is None else held_out.reshape(-1)[chosen]


def training_features(
    slices: NDArray[np.floating],
    chosen: NDArray[np.int64],
    parameters: RandomForestParameters,
    device: str,
    report: ProgressCallback,
) -> NDArray[np.float32]:
    """Features (pixel, feature) of the `chosen` flat pixels, computed block by block of their slices."""
    pixels_per_slice = slices.shape[1] * slices.shape[2]
    slice_of_pixel = chosen // pixels_per_slice
    labelled_slices = np.unique(slice_of_pixel)
    batch = slices_per_block(slices.shape[1:], len(feature_names(parameters)))
    samples = np.empty((chosen.size, len(feature_names(parameters))), np.float32)
    report({"event": "stage", "stage": "features", "done": 0, "of": int(labelled_slices.size)})
    for first in range(0, labelled_slices.size, batch):
        block_slices = labelled_slices[first : first + batch]
        features = compute_features(np.asarray(slices[block_slices]), parameters, device)
        in_block = np.isin(slice_of_pixel, block_slices)
        position_in_block = np.searchsorted(block_slices, slice_of_pixel[in_block])
        flat_in_block = position_in_block * pixels_per_slice + chosen[in_block] % pixels_per_slice
        samples[in_block] = features.reshape(-1, features.shape[-1])[flat_in_block]
        done = min(first + batch, labelled_slices.size)
        report({"event": "stage", "stage": "features", "done": int(done), "of": int(labelled_slices.size)})
    return samples


def fit_forest(
    samples: NDArray[np.float32], targets: NDArray[np.uint8], parameters: RandomForestParameters
) -> RandomForestClassifier:
    model = RandomForestClassifier(
        n_estimators=parameters.n_estimators,
        max_depth=parameters.max_depth,
        n_jobs=-1,
        random_state=parameters.seed,
    )
    return model.fit(samples, targets)


def sample_training_pixels(
    masks: NDArray[np.integer], max_pixels: int, seed: int
) -> NDArray[np.int64]:
    """Sorted flat indices of at most `max_pixels` labelled pixels, as evenly shared by class as possible."""
    flat = masks.reshape(-1)
    members = [np.flatnonzero(flat == label) for label in np.unique(flat[flat != UNLABELLED])]
    quotas = balanced_quotas([member.size for member in members], max_pixels)
    rng = np.random.default_rng(seed)
    chosen = [
        member if quota == member.size else rng.choice(member, quota, replace=False)
        for member, quota in zip(members, quotas)
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)


def balanced_quotas(counts: list[int], budget: int) -> list[int]:
    """Equal shares of the budget; a class short of its share leaves the rest to the others."""
    quotas = [0] * len(counts)
    remaining = budget
    for position, index in enumerate(np.argsort(counts, kind="stable")):
        quotas[index] = min(counts[index], remaining // (len(counts) - position))
        remaining -= quotas[index]
    return quotas


def slices_per_block(shape: tuple[int, int], feature_count: int) -> int:
    """Slices whose `feature_count` features fit in BLOCK_FEATURE_BYTES (at least one)."""
    per_slice = shape[0] * shape[1] * feature_count * 4
    return max(1, BLOCK_FEATURE_BYTES // per_slice)


def classify_pixels(
    model: RandomForestClassifier | ExtraTreesClassifier, pixels: NDArray[np.float32]
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """The forest's predict_proba, chunk by chunk on threads, reduced to label and uncertainty.

    Summing the trees over cache-sized chunks runs ~1.5x faster than one predict_proba
    over a block, whose trees each stream the whole block from memory.
    """
    classes = model.classes_.astype(np.uint8)
    labels = np.empty(len(pixels), np.uint8)
    uncertainty = np.empty(len(pixels), np.float32)

    def classify_chunk(start: int) -> None:
        chunk = pixels[start : start + PREDICT_CHUNK_PIXELS]
        total = np.zeros((len(chunk), classes.size))
        for tree in model.estimators_:
            total += tree.predict_proba(chunk, check_input=False)
        labels[start : start + len(chunk)] = classes[np.argmax(total, axis=1)]
        uncertainty[start : start + len(chunk)] = 1.0 - total.max(axis=1) / len(model.estimators_)

    with ThreadPoolExecutor(worker_count()) as pool:
        list(pool.map(classify_chunk, range(0, len(pixels), PREDICT_CHUNK_PIXELS)))
    return labels, uncertainty
