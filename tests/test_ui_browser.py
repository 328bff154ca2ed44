"""The web app in a real headless Chromium, driven by Playwright, against a real Tiled server."""

from __future__ import annotations

import re

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from tests.browser import (
    SCREENSHOTS, WAIT_MILLISECONDS, needs_chromium, on_screen, paint, paint_on_slice, pick_scan, set_field, wait_for_overlay,
    wait_for_slice_on_screen, write_scan,
)
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
    for _ in range(12):  # until the view needs every pixel, whatever its width
        page.mouse.wheel(0, -200)
    expect(slice_image).to_have_attribute("href", re.compile(r"/z/1\.jpeg.*max_size=2048$"))
    page.keyboard.press("ArrowLeft")  # the zoom stays while moving through slices
    expect(slice_image).to_have_attribute("href", re.compile(r"/z/0\.jpeg.*max_size=2048$"))
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2 + 20, steps=4)
    expect(slice_image).to_have_attribute("href", re.compile(r"/z/0\.jpeg"))  # Plotly redraws images while panning
    page.mouse.up()


def test_arrow_keys_on_a_slider_handle_move_that_slider_and_not_the_slice(page):
    pick_scan(page, "sample (64 x 64 x 64, float32)")
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    handle = page.locator("#label-opacity [role=slider]")
    handle.focus()
    page.keyboard.press("ArrowRight")
    expect(handle).to_have_attribute("aria-valuenow", "0.55")
    page.wait_for_timeout(500)
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")


def test_a_stroke_waits_for_the_slice_on_screen(page, services):
    """While Tiled stalls, the label moves on but the image does not: a stroke must not land on the slice asked for."""
    write_scan(services.tiled(writable=True), "stalled", "2026-11-23T02:00:00+00:00")
    page.reload()
    pick_scan(page, "stalled (64 x 64 x 64, float32)")
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    held, stalling = [], [True]
    page.route(re.compile(r"/slices/stalled/z/22\.jpeg"), lambda route: held.append(route) if stalling[0] else route.continue_())
    page.keyboard.press("PageDown")
    expect(page.locator("#slice-label")).to_have_text("z = 22 / 63")
    expect(page.locator("#slice-view")).to_have_class(re.compile("loading"))
    paint(page, (200, 200), (400, 260), wait_for_the_slice=False)
    expect(page.locator("#annotation-status")).to_have_text("The slice is still loading: paint again once it shows.")

    stalling[0] = False
    for route in held:
        route.continue_()
    expect(page.locator("#slice-view")).not_to_have_class(re.compile("loading"))
    paint(page, (220, 300), (420, 340))
    expect(page.locator("#annotation-status")).to_have_text("1 stroke on 1 slice, saved.")
    assert wait_for_overlay(page, lambda source: source is not None).endswith("/22.png")


def test_the_window_markers_follow_the_handles_and_a_typed_value_applies_on_enter(page):
    pick_scan(page, "sample (64 x 64 x 64, float32)")
    low_box = page.locator("#window input[type=number]").first
    expect(low_box).not_to_have_value("0")
    handle = page.locator("#window [role=slider]").first
    middle = (float(handle.get_attribute("aria-valuemin")) + float(handle.get_attribute("aria-valuemax"))) / 2
    low_box.fill(f"{middle:.3f}")
    low_box.press("Enter")
    page.wait_for_function(  # applied, to the slider's step
        "low => Math.abs(Number(document.querySelector('#window [role=slider]').getAttribute('aria-valuenow')) - low) < 2e-3", arg=middle
    )
    page.wait_for_function(
        "low => Math.abs(document.querySelector('#histogram .js-plotly-plot').layout.shapes[0].x0 - low) < 1e-3", arg=middle
    )


def contrast_ratio(foreground: str, background: str) -> float:
    """WCAG's contrast ratio of two `rgb(...)` colours."""
    def luminance(colour: str) -> float:
        channels = [int(value) / 255 for value in re.findall(r"[\d.]+", colour)[:3]]
        linear = [value / 12.92 if value <= 0.03928 else ((value + 0.055) / 1.055) ** 2.4 for value in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_inputs_are_readable_and_nothing_offers_to_publish(page):
    pick_scan(page, "sample (64 x 64 x 64, float32)")
    page.locator("#model-form details").first.evaluate("section => { section.open = true; }")
    for selector in ("#class-name", "#class-colour", "#window input[type=number]", "#model-form input[type=number]"):
        field = page.locator(selector).first
        colour, background = field.evaluate("element => [getComputedStyle(element).color, getComputedStyle(element).backgroundColor]")
        if "rgba(0, 0, 0, 0)" in background:  # transparent: the field shows its container's background
            background = field.evaluate("element => getComputedStyle(element.closest('.dash-input-container, .sidebar, .workspace')).backgroundColor")
        assert contrast_ratio(colour, background) >= 4.5, (selector, colour, background)
    page.locator("#slice-view").hover()
    titles = page.locator("#slice-view .modebar-btn").evaluate_all("buttons => buttons.map(button => button.dataset.title)")
    assert titles and not [title for title in titles if "Cloud" in title or "Chart Studio" in title or "share" in title.lower()]


def test_segment_volume_without_a_scan_asks_for_one(page):
    page.click("#segment-volume")
    expect(page.locator("#job-start-status")).to_have_text("Pick a scan first.")


def test_a_reload_returns_to_the_same_scan_axis_slice_and_zoom(page):
    pick_scan(page, "sample (64 x 64 x 64, float32)")
    page.locator("#axis").get_by_label("y", exact=True).check()
    expect(page.locator("#slice-label")).to_have_text("y = 32 / 63")
    page.keyboard.press("PageUp")
    expect(page.locator("#slice-label")).to_have_text("y = 42 / 63")
    page.wait_for_function("() => new URLSearchParams(location.search).get('slice') === '42'")
    box = page.locator("#slice-view .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -300)
    page.wait_for_function("() => new URLSearchParams(location.search).has('zoom')")
    zoomed = page.evaluate("() => document.querySelector('#slice-view .js-plotly-plot').layout.xaxis.range")

    page.reload()
    expect(page.locator("#slice-label")).to_have_text("y = 42 / 63")
    expect(page.locator("#scan")).to_contain_text("sample")
    page.wait_for_function(
        "zoomed => { const range = document.querySelector('#slice-view .js-plotly-plot').layout.xaxis.range;"
        " return Math.abs(range[0] - zoomed[0]) < 0.2 && Math.abs(range[1] - zoomed[1]) < 0.2; }",
        arg=zoomed,
    )




def test_an_invalid_model_field_is_marked_where_it_is(page):
    expect(page.locator("#train")).to_be_enabled()  # the form's first validation has answered
    set_field(page, "n estimators", "0")
    expect(page.locator("#model-errors")).to_contain_text("n_estimators")
    expect(page.locator("#model-form .invalid")).to_have_count(1)
    expect(page.locator("#train")).to_be_disabled()
    set_field(page, "n estimators", "20")
    expect(page.locator("#model-form .invalid")).to_have_count(0)


def test_three_planes_share_a_crosshair_and_a_stroke_on_y_reaches_the_mask(page, services):
    write_scan(services.tiled(writable=True), "planes", "2026-11-23T03:00:00+00:00", seed=3)
    page.reload()
    pick_scan(page, "planes (64 x 64 x 64, float32)")
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    captions = page.locator("#side-views .plane-caption")
    expect(captions.nth(0)).to_contain_text("y = 32")
    expect(captions.nth(1)).to_contain_text("x = 32")

    page.keyboard.down("Control")  # Ctrl+click: the crosshair moves to the voxel, nothing is painted
    page.mouse.click(*on_screen(page, column=40, row=20))
    page.keyboard.up("Control")
    expect(captions.nth(0)).to_contain_text("y = 20")
    expect(captions.nth(1)).to_contain_text("x = 40")
    side_slices = page.locator("#side-views img.plane-slice")
    expect(side_slices.nth(0)).to_have_attribute("src", re.compile(r"/slices/planes/y/20\.jpeg"))
    expect(side_slices.nth(1)).to_have_attribute("src", re.compile(r"/slices/planes/x/40\.jpeg"))
    crosshair = page.evaluate("() => document.querySelector('#slice-view .js-plotly-plot').data.slice(1).map(trace => trace.name)")
    assert crosshair == ["x = 40", "y = 20"]
    assert page.locator("#annotation-status").inner_text() == ""

    page.mouse.move(*on_screen(page, column=12, row=50))  # the readout: where the pointer is, and the value there
    expect(page.locator("#cursor-readout")).to_contain_text("z 32 · y 50 · x 12 = ")
    shown = float(page.locator("#cursor-readout").inner_text().rsplit("= ", 1)[1])
    assert shown == pytest.approx(float(services.tiled()["recons"]["planes"]["data"][32, 50, 12]), rel=1e-5)

    page.locator("#side-view-1").click()  # paint on y, at the crosshair
    expect(page.locator("#slice-label")).to_have_text("y = 20 / 63")
    expect(captions.nth(0)).to_contain_text("z = 32")
    page.keyboard.press("2")
    paint_on_slice(page, (10, 24), (10, 40))  # x = 10, z from 24 to 40
    expect(page.locator("#annotation-status")).to_have_text("1 stroke on 1 slice, saved.")
    assert wait_for_overlay(page, lambda source: source is not None).endswith("/y/20.png")
    side_labels = page.locator("#side-views img.plane-labels")
    expect(side_labels.nth(0)).to_have_attribute("src", re.compile(r"/masks/planes/[0-9a-f]+/z/32\.png"))
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "three-planes.png")

    masks = services.tiled()["masks"]["planes"]
    mask = masks[masks.metadata["current_annotation"]["mask_id"]]["mask"]
    labelled = mask.metadata["mask_idx"]
    assert set(range(26, 39)) <= set(labelled) and len(labelled) < 25  # the z slices the stroke crosses
    labels = mask.read()
    assert all(labels[labelled.index(z), 20, 10] == 1 for z in range(26, 39))  # class 2, on y = 20, at x = 10

    page.keyboard.press("t")
    expect(page.locator("#side-views")).to_be_hidden()
    page.keyboard.press("t")
    expect(page.locator("#side-views")).to_be_visible()


def test_a_save_arriving_while_the_next_stroke_is_drawn_keeps_that_stroke_whole(page, services):
    """The figure is redrawn when a save comes back: mid-stroke, that redraw must wait, or the stroke is lost."""
    write_scan(services.tiled(writable=True), "quick", "2026-11-23T01:00:00+00:00")
    page.reload()
    pick_scan(page, "quick (64 x 64 x 64, float32)")
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    held = []

    def hold_the_first_save(route):
        if not held and "pending-strokes" in (route.request.post_data or ""):
            held.append(route)
        else:
            route.continue_()

    page.route(re.compile(r"/_dash-update-component"), hold_the_first_save)
    paint(page, (200, 200), (400, 260))
    page.wait_for_function("() => document.querySelector('#annotation-status').textContent === 'Saving…'")

    wait_for_slice_on_screen(page)
    start, end = on_screen(page, column=8, row=50), on_screen(page, column=56, row=50)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(start[0] + (end[0] - start[0]) / 2, start[1], steps=5)
    held[0].continue_()  # the first stroke's save comes back now
    expect(page.locator("#annotation-status")).to_have_text("1 stroke on 1 slice, saved.")
    page.mouse.move(*end, steps=5)
    page.mouse.up()
    expect(page.locator("#annotation-status")).to_have_text("2 strokes on 1 slice, saved.")

    masks = services.tiled()["masks"]["quick"]
    labels = masks[masks.metadata["current_annotation"]["mask_id"]]["mask"].read()[0]
    painted_columns = np.flatnonzero(labels[50] != -1)
    assert painted_columns.min() <= 10 and painted_columns.max() >= 54, painted_columns


def test_a_stroke_keeps_the_class_chosen_when_it_began_whatever_key_follows(page, services):
    """A class key pressed as the mouse is released must not recolour the stroke just drawn."""
    write_scan(services.tiled(writable=True), "quickkeys", "2026-11-23T00:30:00+00:00")
    page.reload()
    pick_scan(page, "quickkeys (64 x 64 x 64, float32)")
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    page.keyboard.press("1")
    expect(page.locator("#active-class input").nth(0)).to_be_checked()
    paint_on_slice(page, (8, 20), (56, 20))
    page.keyboard.press("2")  # at once, before the stroke's callback has run
    expect(page.locator("#annotation-status")).to_have_text("1 stroke on 1 slice, saved.")
    masks = services.tiled()["masks"]["quickkeys"]
    labels = masks[masks.metadata["current_annotation"]["mask_id"]]["mask"].read()[0]
    assert set(np.unique(labels[20])) == {-1, 0}, "the stroke took the class chosen after it"
