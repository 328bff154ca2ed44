"""Where to paint next (issue #20): does painting the slice the live preview is least sure of pay off?

    python -m benchmarks.where_to_paint [--size 96] [--seeds 3] [--families ...] [--max-slices 8]
        [--also spread balanced balanced-ends farthest cover] [--spread] [--quick]

A simulated user with the ground truth of each generated volume (the families of
`benchmarks.volumes`, and two made here whose content changes along z: `stitched`, `band`)
paints a few brush strokes per class on one z slice at a time (`benchmarks.painting.paint_slice`,
the classes present on that slice), by one of two strategies:

- uncertain: first the middle z slice; then, as the web app does after every stroke
  (`dash_app.preview.LivePreviews`), the preview's small forest is fitted on the painted
  slices at the preview's resolution (`segmentation.preview`), its mean uncertainty
  (1 - the top class probability) is estimated on SURVEY_SLICES evenly spaced z slices
  from the features of tiles of them (`survey_features`), and the user presses U: the
  most uncertain survey slice not painted yet is painted next;
- even: k slices evenly spaced through the volume (the centres of k equal parts; k = 1 is
  the middle slice, the other strategy's start), for every k.

With --also, other rankings of the survey slices, none of them the web app's (each a
function of a slice's uncertainty u and its distance d in slices to the nearest painted
one, or e, the same with the volume's ends counting as painted at half the distance; in
RANKINGS; the highest wins, ties to the lower z):

- spread (also --spread): U passing over survey slices within SPREAD_GAP of the depth of a
  painted slice while any other is left;
- balanced: u x min(1, d / (BALANCE_SCALE x depth)), uncertainty damped near painted slices;
- balanced-ends: u x min(1, e / (BALANCE_SCALE x depth)), where e = min(d, 2z + 1, 2(depth - 1 - z) + 1):
  damped near the volume's ends too, as near a painted slice at half the distance;
- farthest: the largest d (ties: the larger u), coverage alone, a baseline: the ends come first;
- cover: the largest e (ties: the larger u), coverage alone, even spacing grown one slice at a time
  (from the middle slice: depth/6, 5 depth/6, the centres of three equal parts, then the gaps' middles).

A slice is painted the same way whichever strategy reaches it (its strokes are seeded
by family, seed and z), so the strategies differ only in which slices they choose. After each slice, the job's random
forest (default `RandomForestParameters`, on the painted z slices, normalised as the
accuracy suite does) segments the whole volume, scored by mean IoU against the truth:
what the user finally gets. Per family, over seeds: the IoU curve of each strategy, and
how many slices each needs to reach the target, TARGET_FRACTION of the best IoU the
uncertain or even strategy reaches on that volume. Also printed: how well the survey's
uncertainty ranks the slices where the job's forest then errs (Spearman's rho between
each unpainted survey slice's uncertainty and the job's error on it), and how often a
guided pick lands next to a slice already painted. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.stats import spearmanr

from benchmarks.common import machine
from benchmarks.painting import paint_slice
from benchmarks.volumes import (
    FAMILIES,
    GeneratedVolume,
    porous_rock,
    random_field,
    render,
)
from dash_app.preview import SURVEY_SLICES
from segmentation.metrics import confusion_matrix, iou_from_confusion
from segmentation.models import RandomForestParameters
from segmentation.normalization import normalize, robust_range
from segmentation.preview import (
    SURVEY_GRID,
    SURVEY_TILE,
    PaintedSamples,
    fit_preview,
    mean_uncertainty,
    painted_samples,
    preview_stride,
    reduce_image,
    reduce_labels,
    slice_features,
    survey_features,
)
from segmentation.random_forest import train_random_forest

TARGET_FRACTION = 0.98  # of the best mean IoU the uncertain or even strategy reaches on a volume
STRATEGIES = ("uncertain", "even")  # compared; the rankings of --also are reported beside them
SPREAD_GAP = 1 / 16  # of the depth: the spread variant passes over survey slices this close to a painted one
BALANCE_SCALE = 1 / 8  # of the depth: the balanced ranking damps the uncertainty of survey slices closer than this
QUICK = {"families": ["band"], "size": 48, "seeds": 1, "max_slices": 3, "also": ["spread"]}

# How a guided strategy ranks an unpainted survey slice z: (its uncertainty u; d, its distance in slices to the
# nearest painted slice; e, the same with the volume's ends counting as painted at half weight,
# min(d, 2z + 1, 2(depth - 1 - z) + 1), so that k slices spaced by e alone sit at the centres of k equal
# parts; the depth) -> a sort key; the highest key is painted next, ties going to the lower z.
Ranking = Callable[[float, float, float, int], tuple[float, ...]]


def rank_uncertain(u: float, d: float, e: float, depth: int) -> tuple[float, ...]:
    """U, the web app's: the most uncertain."""
    return (u,)


def rank_spread(u: float, d: float, e: float, depth: int) -> tuple[float, ...]:
    """The most uncertain of the slices farther than SPREAD_GAP x depth from every painted one (of all, if none is)."""
    return (float(d > SPREAD_GAP * depth), u)


def rank_balanced(u: float, d: float, e: float, depth: int) -> tuple[float, ...]:
    """Uncertainty damped in proportion to the distance within BALANCE_SCALE x depth of a painted slice."""
    return (u * min(1.0, d / (BALANCE_SCALE * depth)),)


def rank_balanced_ends(u: float, d: float, e: float, depth: int) -> tuple[float, ...]:
    """As balanced, the ends of the volume damping as painted slices at half the distance do."""
    return (u * min(1.0, e / (BALANCE_SCALE * depth)),)


def rank_farthest(u: float, d: float, e: float, depth: int) -> tuple[float, ...]:
    """Coverage alone: the farthest from every painted slice (ties: the most uncertain); the ends come first."""
    return (d, u)


def rank_cover(u: float, d: float, e: float, depth: int) -> tuple[float, ...]:
    """Coverage alone, even spacing one slice at a time: the largest e (ties: the most uncertain)."""
    return (e, u)


RANKINGS: dict[str, Ranking] = {
    "uncertain": rank_uncertain,
    "spread": rank_spread,
    "balanced": rank_balanced,
    "balanced-ends": rank_balanced_ends,
    "farthest": rank_farthest,
    "cover": rank_cover,
}
EXTRA = tuple(name for name in RANKINGS if name not in STRATEGIES)  # the choices of --also


def stitched(size: int, seed: int) -> GeneratedVolume:
    """Porous rock scanned in three segments along z whose brightness and contrast were never matched.

    The families of `benchmarks.volumes` look alike at every z, so any slice teaches as
    much as another; here a slice teaches about its own segment only.
    """
    volume = porous_rock(size, seed)
    rng = np.random.default_rng([seed, 1])
    image = volume.image.copy()
    bounds = np.linspace(0, size, 4).round().astype(int)
    gains, offsets = rng.permutation([1.0, 0.7, 1.35]), rng.permutation([0.0, 0.12, -0.1])
    for start, stop, gain, offset in zip(bounds[:-1], bounds[1:], gains, offsets):
        image[start:stop] = (image[start:stop] - np.float32(0.5)) * np.float32(gain) + np.float32(0.5 + offset)
    return GeneratedVolume("stitched rock", seed, image, volume.truth, volume.class_names)


def band(size: int, seed: int) -> GeneratedVolume:
    """Porous rock with a fourth phase, bright inclusions, only in a band a fifth of the depth thick, away from the middle."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    pores = random_field(shape, size / 40, rng) < -0.7
    grains = random_field(shape, size / 60, rng) > 1.1
    inclusions = random_field(shape, size / 50, rng) > 0.6
    centre = rng.choice([rng.uniform(0.15, 0.3), rng.uniform(0.7, 0.85)]) * size
    outside = np.abs(np.arange(size) - centre) > size / 10
    inclusions[outside] = False
    truth = np.ones(shape, np.uint8)
    truth[grains] = 2
    truth[inclusions] = 3
    truth[pores] = 0
    image = render(truth, (0.15, 0.5, 0.8, 1.05), rng, noise=0.08)
    return GeneratedVolume("inclusions in a band of z", seed, image, truth, ("pore", "matrix", "grain", "inclusion"))


# The accuracy suite's families, and two whose content changes along z, where the choice of slice can matter.
VOLUMES: dict[str, Callable[[int, int], GeneratedVolume]] = {**FAMILIES, "stitched": stitched, "band": band}


@dataclass
class Curve:
    """Slices in the order painted, and the whole volume's mean IoU by the job's forest after each (k = 1..)."""

    slices: list[int] = field(default_factory=list)  # labelled at the last k ("uncertain": in the order painted)
    sets: list[list[int]] = field(default_factory=list)  # labelled at each k
    iou: list[float] = field(default_factory=list)


@dataclass
class Trial:
    family: str
    seed: int
    shape: tuple[int, ...]
    curves: dict[str, Curve]
    rank_correlation: list[float]  # per uncertain step: rho(survey uncertainty, job's per-slice error), unpainted slices
    seconds: dict[str, float]  # spent per stage

    def target(self, fraction: float = TARGET_FRACTION) -> float:
        return fraction * max(max(self.curves[strategy].iou) for strategy in STRATEGIES)

    def slices_to_target(self, strategy: str, fraction: float = TARGET_FRACTION) -> int | None:
        """The fewest labelled slices whose IoU reaches the target; None: never within the run."""
        target = self.target(fraction)
        return next((k + 1 for k, iou in enumerate(self.curves[strategy].iou) if iou >= target), None)


class Simulation:
    """One volume: the painted strokes of each slice, the preview's features, the job's scores, all computed once."""

    def __init__(self, volume: GeneratedVolume, seed: int) -> None:
        self.volume = volume
        self.seed = seed
        self.depth = volume.image.shape[0]
        self.stride = preview_stride(volume.image.shape)
        self.low, self.high = robust_range(volume.image)
        self.normalised = normalize(volume.image, self.low, self.high)
        self.strokes: dict[int, NDArray[np.int8]] = {}
        self.samples: dict[int, PaintedSamples] = {}
        self.scores: dict[tuple[int, ...], tuple[float, NDArray[np.uint8]]] = {}
        self.seconds = {"preview": 0.0, "survey": 0.0, "job": 0.0}
        self.survey = np.unique(np.linspace(0, self.depth - 1, min(SURVEY_SLICES, self.depth)).round().astype(int)).tolist()
        started = time.perf_counter()
        # The survey's features, computed once per scan as the web app does (tiles spread over each slice).
        self.survey_features = {
            z: survey_features(self._reduced_image(z))
            for z in self.survey
        }
        self.seconds["survey"] += time.perf_counter() - started

    def painted(self, z: int) -> NDArray[np.int8]:
        """The user's strokes on slice z, the same whichever strategy paints it."""
        if z not in self.strokes:
            truth = self.volume.truth[z]
            rng = np.random.default_rng([self.seed, zlib.crc32(self.volume.family.encode()), z])
            self.strokes[z] = paint_slice(truth, np.unique(truth).astype(int).tolist(), rng)
        return self.strokes[z]

    def job_score(self, slices: list[int]) -> tuple[float, NDArray[np.uint8]]:
        """Mean IoU of the job's forest trained on `slices`' strokes over the whole volume, and its labels."""
        key = tuple(sorted(slices))
        if key not in self.scores:
            started = time.perf_counter()
            masks = np.stack([self.painted(z) for z in key])
            try:
                forest = train_random_forest(
                    self.normalised[list(key)], masks, RandomForestParameters(), device="numpy", normalisation=(self.low, self.high)
                )
            except ValueError:  # fewer than two classes painted: the job would refuse
                self.scores[key] = (0.0, np.zeros(self.volume.truth.shape, np.uint8))
            else:
                labels, _ = forest.predict_slices(self.normalised, "numpy")
                mean, _ = iou_from_confusion(confusion_matrix(labels, self.volume.truth, self.volume.num_classes))
                self.scores[key] = (mean, labels)
            self.seconds["job"] += time.perf_counter() - started
        return self.scores[key]

    def survey_uncertainty(self, painted: list[int]) -> dict[int, float] | None:
        """The preview forest's mean uncertainty per survey slice, as the web app estimates it; None below two classes."""
        started = time.perf_counter()
        samples = []
        for z in painted:
            if z not in self.samples:
                labels = reduce_labels(self.painted(z), self.stride)
                self.samples[z] = painted_samples(slice_features(self._reduced_image(z)), labels)
            samples.append(self.samples[z])
        try:
            model = fit_preview(samples)
        except ValueError:
            return None
        finally:
            self.seconds["preview"] += time.perf_counter() - started
        started = time.perf_counter()
        estimates = {z: mean_uncertainty(model.predict(features)[1]) for z, features in self.survey_features.items()}
        self.seconds["survey"] += time.perf_counter() - started
        return estimates

    def next_slice(self, estimates: dict[int, float] | None, painted: list[int], ranking: Ranking = rank_uncertain) -> int | None:
        """The unpainted survey slice `ranking` puts first (ties: the lower z, as the browser's stable sort)."""
        candidates = [z for z in self.survey if z not in painted]  # ascending z: max keeps the first of equals
        if not candidates:
            return None
        distance = {z: float(min(abs(z - p) for p in painted)) for z in candidates}
        if estimates is None:  # no preview yet: the user would scroll to the survey slice farthest from the painted ones
            return max(candidates, key=lambda z: distance[z])
        room = {z: min(distance[z], 2.0 * z + 1, 2.0 * (self.depth - 1 - z) + 1) for z in candidates}
        return max(candidates, key=lambda z: ranking(estimates[z], distance[z], room[z], self.depth))

    def per_slice_error(self, labels: NDArray[np.uint8], slices: list[int]) -> NDArray[np.float64]:
        return np.array([np.mean(labels[z] != self.volume.truth[z]) for z in slices])

    def _reduced_image(self, z: int) -> NDArray[np.float32]:
        return reduce_image(self.volume.image[z], self.stride)  # the raw plane, as the web app reads it


def evenly_spaced(depth: int, count: int) -> list[int]:
    """The centres of `count` equal parts of the depth (count = 1: the middle slice)."""
    return sorted({min(depth - 1, int((2 * index + 1) * depth / (2 * count))) for index in range(count)})


def guided(simulation: Simulation, max_slices: int, ranking: Ranking = rank_uncertain) -> tuple[Curve, list[float]]:
    """Paint the middle slice, then after each the survey slice `ranking` puts first: the curve, and rho at each step."""
    curve = Curve()
    correlations: list[float] = []
    painted = [evenly_spaced(simulation.depth, 1)[0]]
    while True:
        mean, labels = simulation.job_score(painted)
        curve.slices, curve.sets, curve.iou = list(painted), [*curve.sets, list(painted)], [*curve.iou, mean]
        if len(painted) >= max_slices:
            break
        estimates = simulation.survey_uncertainty(painted)
        if estimates is not None:
            open_slices = [z for z in estimates if z not in painted]
            if len(open_slices) >= 3:
                errors = simulation.per_slice_error(labels, open_slices)
                values = [estimates[z] for z in open_slices]
                rho = spearmanr(values, errors).statistic if np.ptp(errors) > 0 and np.ptp(values) > 0 else math.nan
                correlations.append(float(rho))
        following = simulation.next_slice(estimates, painted, ranking)
        if following is None:
            break
        painted.append(following)
    return curve, correlations


def simulate(volume: GeneratedVolume, seed: int, max_slices: int, family: str | None = None, also: tuple[str, ...] = ()) -> Trial:
    simulation = Simulation(volume, seed)
    depth = simulation.depth
    uncertain, correlations = guided(simulation, max_slices)
    even = Curve()
    for count in range(1, max_slices + 1):
        slices = evenly_spaced(depth, count)
        even.sets.append(slices)
        even.iou.append(simulation.job_score(slices)[0])
    even.slices = even.sets[-1]
    curves = {"uncertain": uncertain, "even": even}
    for name in also:
        curves[name], _ = guided(simulation, max_slices, RANKINGS[name])
    return Trial(family or volume.family, seed, tuple(volume.image.shape), curves, correlations, simulation.seconds)


def run(
    families: list[str], size: int, seeds: int, max_slices: int, log: Callable[[str], None] = print, also: tuple[str, ...] = ()
) -> list[Trial]:
    trials = []
    for family in families:
        for seed in range(seeds):
            started = time.perf_counter()
            volume = VOLUMES[family](size, seed)
            generated = time.perf_counter() - started
            trial = simulate(volume, seed, max_slices, family, also)
            trials.append(trial)
            extra_lines = "".join(
                f"  {name:<9} IoU {_curve(trial.curves[name].iou)}  (z = {trial.curves[name].slices}; slices needed "
                f"{_needed(trial.slices_to_target(name))})\n"
                for name in also
            )
            log(
                f"{family}, seed {seed}, {trial.shape}: generated in {generated:.1f} s, simulated in "
                f"{time.perf_counter() - started - generated:.1f} s (preview fits {trial.seconds['preview']:.1f} s, "
                f"survey {trial.seconds['survey']:.1f} s, job forests {trial.seconds['job']:.1f} s)\n"
                f"  uncertain painted z = {trial.curves['uncertain'].slices}\n"
                f"  uncertain IoU {_curve(trial.curves['uncertain'].iou)}\n"
                f"  even      IoU {_curve(trial.curves['even'].iou)}  (k = {max_slices}: z = {trial.curves['even'].slices})\n"
                f"{extra_lines}"
                f"  target {trial.target():.3f}: slices needed uncertain {_needed(trial.slices_to_target('uncertain'))}, "
                f"even {_needed(trial.slices_to_target('even'))}; rho(uncertainty, job error) per step "
                f"{', '.join('nan' if math.isnan(value) else f'{value:+.2f}' for value in trial.rank_correlation)}"
            )
    return trials


def quick(log: Callable[[str], None] = print) -> list[Trial]:
    """The --quick run: one small volume, a few slices."""
    return run(QUICK["families"], QUICK["size"], QUICK["seeds"], QUICK["max_slices"], log, tuple(QUICK["also"]))


def summary(trials: list[Trial], max_slices: int, fraction: float = TARGET_FRACTION) -> str:
    """A Markdown table per family (means over seeds), then the overall lines."""
    families = list(dict.fromkeys(trial.family for trial in trials))
    shown = [*STRATEGIES, *(name for name in EXTRA if all(name in trial.curves for trial in trials))]
    lines = [
        (
            f"mean IoU of the job's forest over the whole volume after k labelled slices (mean over seeds); "
            f"slices to reach {fraction} x the best IoU uncertain or even reaches on the volume "
            f"(mean over seeds; '>{max_slices}' counts as {max_slices + 1}); rho: the survey's uncertainty vs the job's "
            f"error on the unpainted survey slices (Spearman, mean over steps and seeds)"
        ),
        "",
        "| family | strategy | " + " | ".join(f"k={k}" for k in range(1, max_slices + 1)) + " | slices to target | rho |",
        "|---|---|" + "---|" * (max_slices + 2),
    ]
    for family in families:
        group = [trial for trial in trials if trial.family == family]
        for strategy in shown:
            means = np.mean([_padded(trial.curves[strategy].iou, max_slices) for trial in group], axis=0)
            needed = [_needed_number(trial.slices_to_target(strategy, fraction), max_slices) for trial in group]
            rho = [value for trial in group for value in trial.rank_correlation if not math.isnan(value)] if strategy == "uncertain" else []
            lines.append(
                f"| {family} | {strategy} | "
                + " | ".join(f"{value:.3f}" for value in means)
                + f" | {np.mean(needed):.1f} | {f'{np.mean(rho):+.2f}' if rho else '-'} |"
            )
    lines.append("")
    later = slice(1, max_slices)  # k = 1 is the middle slice for every strategy
    for strategy in shown:
        if strategy == "even":
            continue
        needed = np.array([[_needed_number(trial.slices_to_target(name, fraction), max_slices) for name in (strategy, "even")] for trial in trials])
        gain = np.mean([np.mean(_padded(trial.curves[strategy].iou, max_slices)[later] - _padded(trial.curves["even"].iou, max_slices)[later]) for trial in trials])
        distances = [
            min(abs(chosen[k] - earlier) for earlier in chosen[:k]) / trial.shape[0]
            for trial in trials
            for chosen in [trial.curves[strategy].slices]
            for k in range(1, len(chosen))
        ]
        close = f"{np.mean(np.array(distances) <= SPREAD_GAP):.0%}" if distances else "-"
        lines.append(
            f"overall, {len(trials)} volumes, {strategy} vs even: slices to reach the target {needed[:, 0].mean():.2f} vs "
            f"{needed[:, 1].mean():.2f}; {strategy} needed fewer on {int(np.sum(needed[:, 0] < needed[:, 1]))}, as many on "
            f"{int(np.sum(needed[:, 0] == needed[:, 1]))}, more on {int(np.sum(needed[:, 0] > needed[:, 1]))}; mean IoU difference "
            f"({strategy} - even) over k = 2..{max_slices}: {gain:+.4f}; {close} of its picks within {SPREAD_GAP:.4g} of the "
            f"depth of a slice already painted"
        )
    return "\n".join(lines)


def _padded(values: list[float], length: int) -> NDArray[np.float64]:
    """A curve cut short (the survey ran out of unpainted slices) holds its last value."""
    return np.array(values + [values[-1]] * (length - len(values)), np.float64)[:length]


def _needed(count: int | None) -> str:
    return "never" if count is None else str(count)


def _needed_number(count: int | None, max_slices: int) -> int:
    return max_slices + 1 if count is None else count


def _curve(values: list[float]) -> str:
    return " ".join(f"{value:.3f}" for value in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96, help="edge of the volumes (default 96)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per family, 0..n-1 (default 3)")
    parser.add_argument("--families", nargs="+", choices=list(VOLUMES), default=list(VOLUMES))
    parser.add_argument("--max-slices", type=int, default=8, help="labelled slices at most (default 8)")
    parser.add_argument("--target", type=float, default=TARGET_FRACTION, help=f"fraction of the best IoU to reach (default {TARGET_FRACTION})")
    parser.add_argument("--save", type=Path, help="write every trial's curves to this JSON file")
    parser.add_argument(
        "--also", nargs="+", choices=EXTRA, default=[],
        help="other rankings of the survey slices to run beside uncertain and even (see RANKINGS)",
    )
    parser.add_argument(
        "--spread", action="store_true",
        help=f"--also spread: U passing over survey slices within {SPREAD_GAP:.4g} of the depth of a painted one",
    )
    parser.add_argument("--quick", action="store_true", help="one small volume, 3 slices, with --also spread: a smoke test")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.families, arguments.size, arguments.seeds, arguments.max_slices, arguments.also = (
            QUICK["families"], QUICK["size"], QUICK["seeds"], QUICK["max_slices"], [*arguments.also, *QUICK["also"]]
        )
    also = tuple(name for name in EXTRA if name in arguments.also or (name == "spread" and arguments.spread))
    print(
        f"machine: {machine()}\nsize {arguments.size}, {arguments.seeds} seeds, families {' '.join(arguments.families)}, "
        f"up to {arguments.max_slices} slices; survey {SURVEY_SLICES} z slices in {SURVEY_GRID}x{SURVEY_GRID} tiles of {SURVEY_TILE}²; "
        f"strategies {' '.join([*STRATEGIES, *also])}",
        flush=True,
    )
    started = time.perf_counter()
    trials = run(
        arguments.families, arguments.size, arguments.seeds, arguments.max_slices, lambda line: print(line, flush=True), also
    )
    print("\n" + summary(trials, arguments.max_slices, arguments.target))
    if arguments.save:
        arguments.save.write_text(json.dumps([asdict(trial) for trial in trials], indent=1))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
