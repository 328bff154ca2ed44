"""A new user's whole loop, in Chromium, on a stack started the way `make run` starts it.

The stack runs `mlex-tomo up` from a copy of the checkout with the default, relative data
directory, and nothing registers a scan for it: the user finds the sample shipped in
data/. (Only the ports are chosen, so that the suite never collides with a running
stack.) Services started in absolute temporary folders once passed while Segment volume
failed on these defaults.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from mlex_tomo.tiled_layout import connect
from tests.browser import (
    SCREENSHOTS, WAIT_MILLISECONDS, choose_model, needs_chromium, overlay_source, paint_on_slice, set_field, wait_for_overlay,
)
from tests.services import RunningStack

pytestmark = [pytest.mark.stack, needs_chromium]

REPOSITORY = Path(__file__).resolve().parents[1]
SAMPLE = "phantom_nxtomo_64"
JOB_MILLISECONDS = 240_000  # a job starts a Python with torch: slow on a busy 2-core runner


def copy_of_the_checkout(destination: Path) -> Path:
    """The files a clone has (tracked, and new ones not ignored), without any state of a stack run here."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPOSITORY, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPOSITORY / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    running = RunningStack(checkout=copy_of_the_checkout(tmp_path_factory.mktemp("checkout")))
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def page(browser, stack) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MILLISECONDS)
    page.goto(stack.settings.ui.url)
    yield page
    context.close()


def status(page: Page):
    return page.locator("#annotation-status")


def pick_the_sample(page: Page) -> None:
    page.click("#scan")
    page.get_by_role("option", name=SAMPLE).click()
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")


def overlay_pixels(page: Page, url: str) -> np.ndarray:
    response = page.request.get(page.evaluate("location.origin") + url)  # the page's address carries the view
    assert response.status == 200, url
    return np.asarray(Image.open(io.BytesIO(response.body())))


def image_order(page: Page) -> list[str]:
    """Which layers the slice view draws, bottom first."""
    return page.evaluate(
        "() => [...document.querySelectorAll('#slice-view image')].map(image => { const href = image.getAttribute('href') || '';"
        " return href.includes('/masks/') ? 'labels' : href.includes('/results/') ? 'result' : 'slice'; })"
    )


def job_card(page: Page, title: str):
    return page.locator("#job-list .job").filter(has_text=title).first


def test_1_the_shipped_sample_is_listed_on_first_start(page, stack):
    assert "2 registered" in "".join(stack.output)
    pick_the_sample(page)
    expect(page.locator("#scan-details")).to_contain_text("float32")  # not NumPy's <f4


def test_2_paint_with_keys_undo_and_a_reload_shows_the_undone_state(page):
    page.keyboard.press("b")
    paint_on_slice(page, (6, 7), (40, 9))  # class 1, the first in the list
    expect(status(page)).to_have_text("1 stroke on 1 slice, saved.")
    page.keyboard.press("2")
    page.keyboard.press("r")
    expect(page.locator("#active-class input").nth(1)).to_be_checked()
    expect(page.locator("#tool input[value=rectangle]")).to_be_checked()
    paint_on_slice(page, (18, 28), (40, 38))
    expect(status(page)).to_have_text("2 strokes on 1 slice, saved.")
    page.keyboard.press("b")
    page.keyboard.press("1")
    expect(page.locator("#active-class input").nth(0)).to_be_checked()
    paint_on_slice(page, (6, 44), (30, 46))
    expect(status(page)).to_have_text("3 strokes on 1 slice, saved.")
    page.keyboard.press("Control+z")
    expect(status(page)).to_have_text("2 strokes on 1 slice, saved.")

    page.reload()
    pick_the_sample(page)
    expect(status(page)).to_have_text("Loaded 2 strokes on 1 slice.")


def test_3_train_a_random_forest_and_see_the_scribbles_above_its_labels(page):
    expect(page.locator("#model-name")).to_contain_text("RandomForest")
    page.click("#train")
    card = job_card(page, "Train · RandomForest · " + SAMPLE)
    expect(card.locator(".state")).to_have_text("Completed", timeout=JOB_MILLISECONDS)
    wait_for_overlay(page, lambda source: source is not None and "/z/32.png" in source, kind="results")
    assert image_order(page) == ["slice", "result", "labels"]
    expect(page.locator("#result-details")).to_contain_text("on held-out painted pixels")


def test_4_segment_the_volume_and_read_its_labels_on_another_slice_and_axis(page, stack):
    page.click("#segment-volume")
    card = job_card(page, "Segment volume · trained model · " + SAMPLE)
    expect(card.locator(".state")).to_have_text("Completed", timeout=JOB_MILLISECONDS)
    page.keyboard.press("PageDown")
    page.keyboard.press("PageDown")
    expect(page.locator("#slice-label")).to_have_text("z = 12 / 63")
    other_slice = wait_for_overlay(page, lambda source: source is not None and "/z/12.png" in source, kind="results")
    assert overlay_pixels(page, other_slice)[..., 3].mean() > 200  # a whole segmented slice, not just scribbles

    page.locator("#axis").get_by_label("y", exact=True).check()
    across = wait_for_overlay(page, lambda source: source is not None and "/y/32.png" in source, kind="results")
    assert overlay_pixels(page, across)[..., 3].mean() > 200
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "segmented-y.png")
    page.locator("#axis").get_by_label("z", exact=True).check()

    # Where to paint next: the job measured each slice's uncertainty; U goes to the most uncertain slice not painted.
    expect(page.locator("#uncertainty-caption")).to_contain_text("from job")
    measured = connect(stack.settings)["results"][other_slice.split("/")[3]].metadata["slice_uncertainty"]
    assert measured["slices"] == list(range(64))
    painted = set(page.evaluate("() => viewerState.inputs[7].strokes.filter(stroke => stroke.axis === 'z').map(stroke => stroke.index)"))
    ranked = sorted(
        (z for z in measured["slices"] if z not in painted), key=lambda z: -measured["mean"][measured["slices"].index(z)]
    )
    page.keyboard.press("u")
    expect(page.locator("#slice-label")).to_have_text(f"z = {ranked[0]} / 63")
    page.screenshot(path=SCREENSHOTS / "where-to-paint-next.png")


def test_5_cancel_a_running_job(page):
    choose_model(page, "TUNet")
    set_field(page, "depth", "2")
    set_field(page, "base channels", "4")
    set_field(page, "num epochs", "10000")
    set_field(page, "patches per epoch", "32")
    set_field(page, "early stopping patience", "10000")
    page.click("#train")
    card = job_card(page, "Train · TUNet · " + SAMPLE)
    expect(card.locator(".state")).to_have_text("Running", timeout=JOB_MILLISECONDS)
    expect(card).to_contain_text("epoch", timeout=JOB_MILLISECONDS)
    card.get_by_role("button", name="Cancel").click()
    expect(card.locator(".state")).to_have_text("Cancelled", timeout=JOB_MILLISECONDS)


def test_6_a_failed_job_says_why_and_overlays_nothing(page):
    set_field(page, "num epochs", "1")
    set_field(page, "weights", "1, 2, 3")  # the mask has two classes
    page.click("#train")
    notification = page.locator("#notification-list .toast")
    expect(notification).to_contain_text("failed", timeout=JOB_MILLISECONDS)
    expect(notification).to_contain_text("model.weights: 3 weights given, the mask has 2 classes")
    failed = page.locator("#job-list .job").first
    expect(failed.locator(".state")).to_have_text("Failed")
    failed.locator(".job-name").click()
    expect(page.locator("#result-details")).to_contain_text("no labels")
    page.wait_for_timeout(500)
    assert overlay_source(page, "results") is None
    expect(page.locator("#slice-view image").first).to_be_visible()
    page.screenshot(path=SCREENSHOTS / "failed-job.png")
    page.set_viewport_size({"width": 1600, "height": 1000})
    page.wait_for_timeout(1000)
    page.screenshot(path=SCREENSHOTS / "failed-job-1600.png")
