"""The live preview and "where to paint next" in a real headless Chromium, against a real Tiled server."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser import SCREENSHOTS, WAIT_MILLISECONDS, needs_chromium, paint_on_slice, pick_scan, write_scan
from tests.services import Services

pytestmark = [pytest.mark.stack, needs_chromium]
SCAN_LABEL = "sample (64 x 64 x 64, float32)"


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    services = Services(tmp_path_factory.mktemp("ui-preview"))
    try:
        services.start("tiled")
        services.truth = write_scan(services.tiled(writable=True), "sample", "2026-11-23T05:00:00+00:00")
        services.start("ui")
        yield services
    finally:
        services.stop_all()


@pytest.fixture
def page(browser, services) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(WAIT_MILLISECONDS)
    page.goto(services.settings.ui.url)
    yield page
    page.close()


def preview_status(page: Page):
    return page.locator("#preview-status")


def test_the_preview_follows_each_stroke_and_says_what_it_trained_on(page, services):
    pick_scan(page, SCAN_LABEL)
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    page.click("#slice-view", position={"x": 5, "y": 5})
    page.keyboard.press("v")
    expect(preview_status(page)).to_have_text("Preview: paint at least two classes to see one.")
    page.screenshot(path="/tmp/s14/a.png")


def inside(truth: np.ndarray, z: int, label: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """A short horizontal stroke (start, end) in slice pixels, well inside a region of class `label`."""
    from scipy import ndimage

    core = ndimage.binary_erosion(truth[z] == label, iterations=3)
    rows, columns = np.nonzero(core)
    row = int(np.bincount(rows).argmax())  # the row crossing the most of it
    in_row = np.sort(columns[rows == row])
    return (int(in_row[0]), row), (int(in_row[min(len(in_row) - 1, 6)]), row)


def test_paint_two_classes(page, services):
    pick_scan(page, SCAN_LABEL)
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    page.click("#slice-view", position={"x": 5, "y": 5})
    page.keyboard.press("v")
    truth = services.truth
    print(np.unique(truth[32], return_counts=True))
    paint_on_slice(page, *inside(truth, 32, 0))
    expect(page.locator("#annotation-status")).to_have_text("1 stroke on 1 slice, saved.")
    expect(preview_status(page)).to_contain_text("two classes")
    page.get_by_text("class 2").click()
    paint_on_slice(page, *inside(truth, 32, 1))
    expect(page.locator("#annotation-status")).to_have_text("2 strokes on 1 slice, saved.")
    expect(preview_status(page)).to_contain_text("trained on")
    page.screenshot(path="/tmp/s14/b.png")
    page.wait_for_timeout(4000)
    page.screenshot(path="/tmp/s14/c.png")
    print(page.locator("#uncertainty-caption").text_content())
    page.keyboard.press("u")
    page.wait_for_timeout(500)
    print(page.locator("#uncertainty-caption").text_content(), page.locator("#slice-label").text_content())
    page.screenshot(path="/tmp/s14/d.png")
