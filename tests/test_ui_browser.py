"""The web app in a real headless Chromium, driven by Playwright, against a real Tiled server."""

from __future__ import annotations

import re

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from tests.browser import SCREENSHOTS, WAIT_MILLISECONDS, needs_chromium, paint, pick_scan, wait_for_overlay, write_scan
from tests.services import Services

pytestmark = [pytest.mark.stack, needs_chromium]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    services = Services(tmp_path_factory.mktemp("ui-browser"))
    try:
        services.start("tiled")
        write_scan(services.tiled(writable=True), "sample", "2026-11-23T05:00:00+00:00")
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


def test_pick_a_scan_and_move_through_slices_with_the_keys(page):
    pick_scan(page, "sample (64 x 64 x 64, float32)")
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    expect(page.locator("#scan-details")).to_contain_text("nxtomo")
    image = page.locator("#slice-view image")
    assert "/slices/sample/z/32.jpeg?low=" in image.get_attribute("href")

    page.click("#slice-view", position={"x": 50, "y": 50})
    page.keyboard.press("ArrowRight")
    expect(page.locator("#slice-label")).to_have_text("z = 33 / 63")
    page.keyboard.press("PageDown")
    expect(page.locator("#slice-label")).to_have_text("z = 23 / 63")
    expect(image).to_have_attribute("href", re.compile(r"/slices/sample/z/23\.jpeg"))  # once it has loaded
    loaded = page.evaluate(
        "url => fetch(url).then(response => [response.status, response.headers.get('content-type')])",
        image.get_attribute("href"),
    )
    assert loaded == [200, "image/jpeg"]
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "viewer.png")


def test_another_axis_shows_its_own_extent(page):
    pick_scan(page, "sample (64 x 64 x 64, float32)")
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    page.locator("#axis").get_by_label("y", exact=True).check()
    expect(page.locator("#slice-label")).to_have_text("y = 32 / 63")
    assert "/slices/sample/y/32.jpeg" in page.locator("#slice-view image").get_attribute("href")


def test_a_newly_ingested_scan_appears_without_a_reload(page, services):
    expect(page.locator("#service-status")).to_contain_text("tiled")
    write_scan(services.tiled(writable=True), "fresh", "2026-11-23T06:00:00+00:00")
    page.click("#scan")
    expect(page.get_by_role("option", name="fresh (64 x 64 x 64, float32)")).to_be_visible()


def test_paint_two_classes_undo_redo_and_find_the_strokes_after_a_reload(page, services):
    write_scan(services.tiled(writable=True), "painted", "2026-11-23T04:00:00+00:00")
    page.reload()
    pick_scan(page, "painted (64 x 64 x 64, float32)")
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    paint(page, (200, 200), (400, 260))
    expect(page.locator("#annotation-status")).to_have_text("1 stroke on 1 slice, saved.")
    one_stroke = wait_for_overlay(page, lambda source: source is not None)
    page.get_by_text("class 2").click()
    paint(page, (250, 400), (450, 420))
    expect(page.locator("#annotation-status")).to_have_text("2 strokes on 1 slice, saved.")
    two_strokes = wait_for_overlay(page, lambda source: source not in (None, one_stroke))
    assert two_strokes.startswith("/masks/painted/") and two_strokes.endswith("/32.png")
    page.wait_for_function(  # the drawn shapes give way to the saved mask's overlay
        "() => !(document.querySelector('#slice-view .js-plotly-plot').layout.shapes || []).length"
    )

    page.get_by_role("button", name="Undo").click()
    expect(page.locator("#annotation-status")).to_have_text("1 stroke on 1 slice, saved.")
    wait_for_overlay(page, lambda source: source == one_stroke)
    page.get_by_role("button", name="Redo").click()
    expect(page.locator("#annotation-status")).to_have_text("2 strokes on 1 slice, saved.")
    wait_for_overlay(page, lambda source: source == two_strokes)
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "painting.png")

    page.reload()
    pick_scan(page, "painted (64 x 64 x 64, float32)")
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    wait_for_overlay(page, lambda source: source == two_strokes)
    page.locator("#visible-classes input").nth(1).uncheck()
    wait_for_overlay(page, lambda source: source == two_strokes + "?hidden=1")
    mask = services.tiled()["masks"]["painted"]
    newest = max(mask, key=lambda key: mask[key].metadata["created_at"])
    labels = mask[newest]["mask"].read()
    assert mask[newest]["mask"].metadata["mask_idx"] == [32]
    assert set(np.unique(labels)) == {-1, 0, 1}


def test_the_slider_keys_and_jumps_to_painted_slices_agree_on_the_slice(page, services):
    """The slider and keys move the image without Dash; the jumps, run by Dash, start from where they left it."""
    write_scan(services.tiled(writable=True), "jumps", "2026-11-23T03:00:00+00:00")
    page.reload()
    pick_scan(page, "jumps (64 x 64 x 64, float32)")
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    paint(page, (200, 200), (400, 260))
    expect(page.locator("#annotation-status")).to_have_text("1 stroke on 1 slice, saved.")

    slider = page.locator("#slice-slider input[type=range]")
    box = slider.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] - 20, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    expect(page.locator("#slice-label")).to_have_text("z = 0 / 63")
    expect(page.locator("#slice-view image").first).to_have_attribute("href", re.compile(r"/slices/jumps/z/0\.jpeg"))
    page.get_by_role("button", name="annotated ▶").click()
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    expect(slider).to_have_value("32")

    page.keyboard.press("PageUp")
    expect(page.locator("#slice-label")).to_have_text("z = 42 / 63")
    expect(slider).to_have_value("42")
    page.get_by_role("button", name="◀ annotated").click()
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")


def test_zooming_in_asks_for_a_finer_image(page, services):
    wide = np.tile(np.arange(2048, dtype=np.uint8), (2, 2048, 1))
    metadata = {"shape": list(wide.shape), "dtype": "uint8", "format": "zarr", "ingested_at": "2026-11-30T03:00:00+00:00"}
    services.tiled(writable=True)["recons"].create_container("wide", metadata=metadata).write_array(wide, key="data")
    page.reload()
    pick_scan(page, "wide (2 x 2048 x 2048, uint8)")
    expect(page.locator("#slice-label")).to_have_text("z = 1 / 1")
    slice_image = page.locator("#slice-view image").first
    whole_view = int(slice_image.get_attribute("href").rsplit("max_size=", 1)[1])
    assert whole_view < 2048  # the view is narrower than the slice: no need for every pixel
    page.get_by_role("radio", name="Pan").check()
    box = page.locator("#slice-view .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(6):
        page.mouse.wheel(0, -200)
    expect(slice_image).to_have_attribute("href", re.compile(r"/z/1\.jpeg.*max_size=2048$"))
    page.keyboard.press("ArrowLeft")  # the zoom stays while moving through slices
    expect(slice_image).to_have_attribute("href", re.compile(r"/z/0\.jpeg.*max_size=2048$"))
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2 + 20, steps=4)
    expect(slice_image).to_have_attribute("href", re.compile(r"/z/0\.jpeg"))  # Plotly redraws images while panning
    page.mouse.up()
