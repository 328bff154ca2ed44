"""`mlex-tomo demo` and `mlex-tomo check` on a running `mlex-tomo up` stack, as a newcomer and an operator run them."""

from __future__ import annotations

import re

import pytest

from mlex_tomo.tiled_layout import connect
from mlex_tomo.tiled_names import MASKS, RECONS, RESULTS
from tests.services import RunningStack

pytestmark = pytest.mark.stack

LOOP_SECONDS = 900  # a job starts a Python with torch: slow on a busy 2-core runner


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with RunningStack(tmp_path_factory.mktemp("demo")) as running:
        yield running


def loop(stack: RunningStack, command: str, *options: str):
    return stack.cli(command, "--size", "64", "--device", "cpu", *options, timeout=LOOP_SECONDS)


def test_the_demo_runs_the_whole_loop_and_reports_the_iou_and_each_stage(stack):
    result = loop(stack, "demo", "--scan", "first-demo")
    assert result.returncode == 0, result.stdout + result.stderr
    iou = float(re.search(r"mean IoU against the ground truth: ([0-9.]+)", result.stdout).group(1))
    assert iou >= 0.8
    assert re.search(r"stages: simulate [0-9.]+ s, ingest [0-9.]+ s, label [0-9.]+ s, segment [0-9.]+ s, score [0-9.]+ s", result.stdout)
    assert "Completed, 100 %" in result.stdout  # the progress it followed
    tiled = connect(stack.settings)
    assert "first-demo" in tiled[RECONS] and "first-demo" in tiled[MASKS]  # kept, to look at in the web app
    assert any(key.startswith("first-demo-") and key.endswith("-infer") for key in tiled[RESULTS])


def test_the_check_passes_on_a_working_stack_and_leaves_nothing_behind(stack):
    result = loop(stack, "check", "--scan", "passing-check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("PASS")
    tiled = connect(stack.settings)
    assert "passing-check" not in tiled[RECONS] and "passing-check" not in tiled[MASKS]
    assert not [key for key in tiled[RESULTS] if key.startswith("passing-check-")]
    assert not (stack.settings.recons_path / "passing-check").exists()
    assert not list((stack.settings.data_path / "ground_truth").glob("passing-check*"))


def test_a_failing_check_says_why_exits_non_zero_and_still_cleans_up(stack):
    result = loop(stack, "check", "--scan", "failing-check", "--via", "tiled", "--min-iou", "0.9999")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL mean IoU" in result.stderr and "is below --min-iou 0.9999" in result.stderr
    assert "failing-check" not in connect(stack.settings)[RECONS]


@pytest.mark.parametrize(
    ("options", "message"),
    [(("--size", "8"), "--size: Input should be greater than or equal to 32"), (("--model", "UNet"), "--model: Input should be"),
     (("--scan", "../escape"), "--scan: String should match pattern")],
)
def test_bad_options_are_refused_before_anything_is_created(stack, options, message):
    result = stack.cli("check", *options)
    assert result.returncode == 2
    assert message in result.stderr
