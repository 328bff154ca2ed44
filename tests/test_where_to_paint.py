"""The where-to-paint benchmark (issue #20) runs its quick mode and reports well-formed curves."""

from __future__ import annotations

import math

from benchmarks.where_to_paint import QUICK, STRATEGIES, evenly_spaced, quick, summary


def test_quick_mode_paints_each_slice_once_and_scores_every_step():
    lines: list[str] = []
    trials = quick(lines.append)
    max_slices = QUICK["max_slices"]
    assert len(trials) == len(QUICK["families"]) * QUICK["seeds"]
    for trial in trials:
        depth = trial.shape[0]
        uncertain, even = trial.curves["uncertain"], trial.curves["even"]
        assert len(uncertain.iou) == len(uncertain.sets) == len(uncertain.slices) == max_slices
        assert len(even.iou) == len(even.sets) == max_slices
        assert set(trial.curves) == {"uncertain", "even", "spread"}
        for guided in (uncertain, trial.curves["spread"]):
            assert len(guided.iou) == len(guided.slices) == max_slices
            assert len(set(guided.slices)) == len(guided.slices), "a guided strategy painted a slice twice"
            assert guided.iou[0] == even.iou[0]
        assert uncertain.slices[0] == even.sets[0][0] == depth // 2  # both start from the middle slice
        assert uncertain.iou[0] == even.iou[0]
        for k, (chosen, spaced) in enumerate(zip(uncertain.sets, even.sets), start=1):
            assert chosen == uncertain.slices[:k]
            assert spaced == evenly_spaced(depth, k) and len(spaced) == k
        for strategy in trial.curves:
            assert all(0.0 <= iou <= 1.0 for iou in trial.curves[strategy].iou)
            needed = trial.slices_to_target(strategy)
            assert needed is None or 1 <= needed <= max_slices
        assert min(trial.slices_to_target(strategy) or math.inf for strategy in STRATEGIES) <= max_slices
        assert all(math.isnan(rho) or -1.0 <= rho <= 1.0 for rho in trial.rank_correlation)
    assert len(lines) == len(trials)
    table = summary(trials, max_slices)
    for strategy in ("uncertain", "even", "spread"):
        assert f"| band | {strategy} |" in table
    assert "overall, 1 volumes, uncertain vs even" in table and "overall, 1 volumes, spread vs even" in table
