"""The web app in a real headless Chromium, driven by Playwright, against a real Tiled server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from mlex_tomo.phantom import PhantomSpec, generate
from tests.services import Services

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (make test installs it)"),
]

SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
CHROMIUM_ARGUMENTS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
WAIT_MILLISECONDS = 30_000


def write_scan(services: Services, key: str, ingested_at: str) -> None:
    image, _ = generate(PhantomSpec(shape=(64, 64, 64), seed=1))
    metadata = {"shape": [64, 64, 64], "dtype": "float32", "format": "nxtomo", "ingested_at": ingested_at}
    services.tiled(writable=True)["recons"].create_container(key, metadata=metadata).write_array(image, key="data")


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    services = Services(tmp_path_factory.mktemp("ui-browser"))
    try:
        services.start("tiled")
        write_scan(services, "sample", "2026-11-23T05:00:00+00:00")
        services.start("ui")
        yield services
    finally:
        services.stop_all()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGUMENTS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, services) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(WAIT_MILLISECONDS)
    page.goto(services.settings.ui.url)
    yield page
    page.close()


def pick_scan(page: Page, label: str) -> None:
    page.click("#scan")
    page.get_by_role("option", name=label).click()


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
    assert "/slices/sample/z/23.jpeg" in image.get_attribute("href")
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
    page.get_by_label("y").check()
    expect(page.locator("#slice-label")).to_have_text("y = 32 / 63")
    assert "/slices/sample/y/32.jpeg" in page.locator("#slice-view image").get_attribute("href")


def test_a_newly_ingested_scan_appears_without_a_reload(page, services):
    expect(page.locator("#service-status")).to_contain_text("tiled")
    write_scan(services, "fresh", "2026-11-23T06:00:00+00:00")
    page.click("#scan")
    expect(page.get_by_role("option", name="fresh (64 x 64 x 64, float32)")).to_be_visible()
