"""The live preview and "where to paint next" in a real headless Chromium, against a real Tiled server."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import Page, expect
from scipy import ndimage

from dash_app.annotations import PALETTE, Annotations, ClassInfo, Stroke
from dash_app.imaging import rgb
from dash_app.masks import MaskOverlays
from dash_app.preview import LivePreviews
from dash_app.volumes import ScanLibrary
from mlex_tomo.tiled_layout import connect_http
from tests.browser import SCREENSHOTS, WAIT_MILLISECONDS, needs_chromium, paint_on_slice, pick_scan, write_scan
from tests.services import Services

pytestmark = [pytest.mark.stack, needs_chromium]
SCAN_LABEL = "sample (64 x 64 x 64, float32)"
PAINTED = 32


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
    pick_scan(page, SCAN_LABEL)
    expect(page.locator("#slice-label")).to_have_text(f"z = {PAINTED} / 63")
    yield page
    page.close()


def inside(truth: np.ndarray, label: int, skip: int = 0) -> tuple[tuple[int, int], tuple[int, int]]:
    """A short horizontal stroke (start, end) in slice pixels, well inside a region of class `label`."""
    core = ndimage.binary_erosion(truth[PAINTED] == label, iterations=3)
    rows, columns = np.nonzero(core)
    row = np.argsort(-np.bincount(rows), kind="stable")[skip]  # the rows crossing the most of it
    in_row = np.sort(columns[rows == row])
    return (int(in_row[0]), int(row)), (int(in_row[min(len(in_row) - 1, 6)]), int(row))


def mask_id(page: Page) -> str:
    return page.evaluate("() => viewerState.inputs[8].split('/')[2]")


def preview_url(services, mask: str, index: int = PAINTED) -> str:
    return f"{services.settings.ui.url}/previews/sample/{mask}/z/{index}.png"


def classes_of(png: bytes) -> np.ndarray:
    """The class of each preview pixel from its colour (the default classes' colours); -1 where transparent."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    classes = np.full(pixels.shape[:2], -1)
    for label, colour in enumerate(PALETTE[:2]):
        classes[(pixels[..., :3] == rgb(colour)).all(axis=-1) & (pixels[..., 3] > 0)] = label
    return classes


def test_the_preview_follows_each_stroke_and_says_what_it_trained_on(page, services):
    truth = services.truth
    page.click("#slice-view", position={"x": 5, "y": 5})
    page.keyboard.press("v")
    status = page.locator("#preview-status")
    expect(status).to_have_text("Preview: paint at least two classes to see one.")

    paint_on_slice(page, *inside(truth, 0))
    expect(page.locator("#annotation-status")).to_have_text("1 stroke on 1 slice, saved.")
    expect(status).to_have_text("Preview: paint at least two classes to see a preview")  # the server's word, not a broken page
    one_class = mask_id(page)
    assert requests.get(preview_url(services, one_class), timeout=30).status_code == 409

    page.get_by_text("class 2").click()
    paint_on_slice(page, *inside(truth, 1))
    expect(page.locator("#annotation-status")).to_have_text("2 strokes on 1 slice, saved.")
    expect(status).to_contain_text("Preview: trained on")
    expect(status).to_contain_text("this slice's uncertainty")
    page.wait_for_function("before => viewerState.inputs[8].split('/')[2] !== before", arg=one_class)
    two_classes = mask_id(page)
    assert page.evaluate("() => [...document.querySelectorAll('#slice-view image')].some(image => image.getAttribute('href').startsWith('blob:'))")

    response = requests.get(preview_url(services, two_classes), timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
    trained = int(response.headers["X-Preview-Trained-Pixels"])
    assert trained > 0 and f"trained on {trained} painted pixels" in status.text_content()
    predicted = classes_of(response.content)
    assert predicted.shape == truth[PAINTED].shape  # a 64-voxel volume is previewed at full resolution
    painted_classes = truth[PAINTED] < 2  # the third phase is not painted: the forest cannot know it
    # Two short strokes: the forest gets 0.82-0.90 of these pixels right, by its seed; either class alone, 0.52.
    assert np.mean(predicted[painted_classes] == truth[PAINTED][painted_classes]) > 0.8

    # The forest is scored after its first preview, and the line says so when the score arrives.
    expect(status).not_to_contain_text("scoring it")
    expect(status).to_contain_text(re.compile(r"mean IoU \d\.\d{3} on [\d,]+ held-out painted pixels|too few painted pixels to hold any out"))
    follow_up = requests.get(f"{services.settings.ui.url}/previews/sample/{two_classes}/uncertainty", timeout=30).json()
    assert follow_up["scored"] is True and PAINTED in follow_up["slices"]

    # Another stroke: a new mask, whose preview replaces the last.
    page.get_by_text("class 1").click()
    paint_on_slice(page, *inside(truth, 0, skip=4))
    expect(page.locator("#annotation-status")).to_have_text("3 strokes on 1 slice, saved.")
    page.wait_for_function("before => viewerState.inputs[8].split('/')[2] !== before", arg=two_classes)
    three = mask_id(page)
    page.wait_for_function(
        "mask => { const url = previewState.latestForPlane.get('sample/z/32'); return url && url.includes(mask); }", arg=three
    )


def test_a_preview_begun_while_its_mask_is_saved_is_served_without_reading_the_mask_back(services):
    """The save callback begins the preview before writing the mask: the request that follows finds it computed."""
    truth = services.truth
    classes = {0: ClassInfo(label="class 1", color=PALETTE[0]), 1: ClassInfo(label="class 2", color=PALETTE[1])}
    strokes = [
        Stroke(axis="z", index=PAINTED, tool="brush", class_id=label, points=list(inside(truth, label, skip=2)), width=3)
        for label in (0, 1)
    ]
    annotations = Annotations(scan="sample", volume_shape=(64, 64, 64), classes=classes, strokes=strokes)
    tiled = connect_http(services.settings)
    previews = LivePreviews(ScanLibrary(tiled, 2**24), MaskOverlays(tiled), 2**24)
    previews.begin(annotations, "z", PAINTED)
    preview = previews.preview("sample", annotations.mask_id(), "z", PAINTED)  # never saved: Tiled has no such mask
    assert preview.trained_pixels > 0 and preview.labels.shape == (64, 64)
    assert previews.preview("sample", annotations.mask_id(), "z", PAINTED) is preview
    with pytest.raises(LookupError, match="no mask"):
        previews.preview("sample", "0" * 32, "z", PAINTED)

    previews.warm("sample", "x", 10)  # as the page asks before the first stroke
    previews.starter.submit(lambda: None).result()  # after the warming, in the same queue
    assert ("sample", "x", 10) in previews.features


def test_requests_for_a_preview_are_checked(services):
    base = f"{services.settings.ui.url}/previews/sample"
    for path, status, words in [
        ("/not-a-mask/z/32.png", 400, "is not a mask id"),
        (f"/{'0' * 32}/z/32.png", 404, "no mask"),
        (f"/{'0' * 32}/z/64.png", 400, "outside"),
        (f"/{'0' * 32}/w/1.png", 400, ""),
        ("/not-a-mask/uncertainty", 400, "is not a mask id"),
    ]:
        response = requests.get(base + path, timeout=30)
        assert response.status_code == status, (path, response.text)
        assert words in response.json()["error"]
    missing = requests.get(f"{services.settings.ui.url}/previews/elsewhere/{'0' * 32}/z/1.png", timeout=30)
    assert missing.status_code == 404
    for path, status in [("/z/3/warm", 202), ("/z/64/warm", 400), ("/w/3/warm", 400)]:
        assert requests.post(base + path, timeout=30).status_code == status, path
    assert requests.post(f"{services.settings.ui.url}/previews/elsewhere/z/3/warm", timeout=30).status_code == 404


def test_next_uncertain_slice_goes_to_where_the_forest_is_least_sure(page, services):
    """The strokes of the first test are loaded with the scan; the survey estimates 32 slices in the background."""
    page.click("#slice-view", position={"x": 5, "y": 5})
    page.keyboard.press("v")
    expect(page.locator("#preview-status")).to_contain_text("Preview: trained on")
    estimate_url = f"{services.settings.ui.url}/previews/sample/{mask_id(page)}/uncertainty"
    deadline = time.monotonic() + WAIT_MILLISECONDS / 1000
    while len((estimate := requests.get(estimate_url, timeout=30).json())["slices"]) < 32:
        assert time.monotonic() < deadline, f"the survey stopped at {estimate}"
        time.sleep(0.5)
    expect(page.locator("#uncertainty-caption")).to_contain_text("from the preview (33 of 64 slices estimated)", timeout=10_000)
    expect(page.locator("#uncertainty-strip canvas")).to_be_visible()

    ranked = sorted(
        (z for z in estimate["slices"] if z != PAINTED),
        key=lambda z: -estimate["mean_uncertainty"][estimate["slices"].index(z)],
    )
    page.keyboard.press("u")
    expect(page.locator("#slice-label")).to_have_text(f"z = {ranked[0]} / 63")
    expect(page.locator("#paint-next-message")).to_contain_text(f"Went to z = {ranked[0]}")
    page.get_by_role("button", name="Next uncertain slice (U)").click()
    expect(page.locator("#slice-label")).to_have_text(f"z = {ranked[1]} / 63")
    page.wait_for_function(  # a slice not seen before is previewed too
        "z => { const url = previewState.latestForPlane.get('sample/z/' + z); return url && [...document.querySelectorAll("
        "'#slice-view image')].some(image => image.getAttribute('href') === previewState.images.get(url).source); }",
        arg=ranked[1],
    )
    expect(page.locator("#preview-status.pending")).to_have_count(0)
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "preview.png")
