"""The scientist's loop behind a login in headless Chromium on `mlex-tomo up`: log in, paint, Train, follow, overlay.

Real Tiled, Prefect server and worker; the segmentation job runs as a local process.
Cancelling and failing jobs are walked in tests/test_user_journey.py.
"""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from mlex_tomo.tiled_layout import connect
from tests.browser import SCREENSHOTS, WAIT_MILLISECONDS, needs_chromium, paint, pick_scan, set_field, wait_for_overlay, write_scan
from tests.services import RunningStack

pytestmark = [pytest.mark.stack, needs_chromium]

USERNAME = "beamline"
PASSWORD = secrets.token_urlsafe(16)
SCAN = "phantom (64 x 64 x 64, float32)"
JOB_MILLISECONDS = 240_000  # a job starts a Python with torch: slow on a busy 2-core runner


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ui-jobs")
    password_file = data_dir / "ui-password"
    password_file.write_text(PASSWORD)
    running = RunningStack(data_dir)
    running.settings_arguments += [
        "--ui.username", USERNAME, "--ui.password_file", str(password_file),
        "--ui.jobs_refresh_seconds", "1", "--ui.scan_refresh_seconds", "1",
    ]
    try:
        running.start()
        running.truth = write_scan(connect(running.settings, writable=True), "phantom", "2026-11-30T08:00:00+00:00")
        yield running
    finally:
        running.stop()


@pytest.fixture
def page(browser, stack) -> Page:
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, http_credentials={"username": USERNAME, "password": PASSWORD})
    page = context.new_page()
    page.set_default_timeout(WAIT_MILLISECONDS)
    page.goto(stack.settings.ui.url)
    yield page
    context.close()


def test_the_app_asks_for_the_login_and_refuses_a_wrong_one(browser, stack):
    for credentials in (None, {"username": USERNAME, "password": "not-the-password"}):
        context = browser.new_context(http_credentials=credentials)
        for path in ("/", "/slices/phantom/z/0.jpeg", "/_dash-layout"):
            response = context.request.get(stack.settings.ui.url + path)
            assert response.status == 401, path
            assert response.headers["www-authenticate"].startswith("Basic")
        context.close()


def test_train_refuses_labels_of_one_class_before_any_job_starts(page, stack):
    pick_scan(page, SCAN)
    page.locator("#active-class").get_by_text("class 1").click()
    paint(page, (60, 60), (300, 80))
    expect(page.locator("#annotation-status")).to_have_text("1 stroke on 1 slice, saved.")
    page.click("#train")
    expect(page.locator("#job-start-status")).to_have_text(
        "Cannot train yet: only class 'class 1' is painted: paint at least one more, a model learns to tell classes apart."
    )
    expect(page.locator("#job-list .job")).to_have_count(0)
    page.click("#undo")
    expect(page.locator("#annotation-status")).to_have_text("0 strokes on 0 slices, saved.")


def paint_two_slices_in_two_classes(page: Page) -> None:
    """Scribbles over the phantom's phases on slices 32 and 42, one class at a time."""
    pick_scan(page, SCAN)
    expect(page.locator("#slice-label")).to_have_text("z = 32 / 63")
    for z in (32, 42):
        if z != 32:
            page.click("#slice-label")  # away from any field, so keys move through slices
            page.keyboard.press("PageUp")
            expect(page.locator("#slice-label")).to_have_text(f"z = {z} / 63")
        page.locator("#active-class").get_by_text("class 1").click()
        paint(page, (60, 60), (300, 80))
        page.locator("#active-class").get_by_text("class 2").click()
        paint(page, (200, 300), (420, 330))
    expect(page.locator("#annotation-status")).to_have_text("4 strokes on 2 slices, saved.")


def test_paint_train_follow_the_job_and_overlay_its_labels(page, stack):
    paint_two_slices_in_two_classes(page)
    expect(page.locator("#model-name")).to_contain_text("RandomForest")  # the default model
    expect(page.locator("#model-form details.model-parameters")).not_to_have_attribute("open", "")  # folded away
    set_field(page, "n estimators", "0")
    expect(page.locator("#model-errors")).to_contain_text("n_estimators: Input should be greater than or equal to 1")
    expect(page.locator("#train")).to_be_disabled()
    set_field(page, "n estimators", "20")
    expect(page.locator("#model-errors")).to_be_empty()

    page.click("#train")
    expect(page.locator("#job-start-status")).to_contain_text("Started: train with RandomForest")
    job = page.locator("#job-list .job").first
    expect(job.locator(".state")).to_have_text("Completed", timeout=JOB_MILLISECONDS)
    expect(job.get_by_role("link", name="Prefect")).to_have_attribute("href", f"{stack.settings.prefect.ui_url}/runs/flow-run/" + job_run_id(page))

    expect(page.locator("#result-details")).to_contain_text("RandomForest")
    expect(page.locator("#result-details")).to_contain_text("complete")
    painted_slice = wait_for_overlay(page, lambda source: source is not None, kind="results")
    assert painted_slice.startswith("/results/phantom/phantom-") and "/z/42.png" in painted_slice
    loaded = page.evaluate("url => fetch(url).then(response => [response.status, response.headers.get('content-type')])", painted_slice)
    assert loaded == [200, "image/png"]
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "training.png")
    page.locator("#result-classes").get_by_text("class 2").click()
    wait_for_overlay(page, lambda source: source is not None and "hidden=1" in source, kind="results")

    page.click("#segment-volume")
    expect(page.locator("#job-start-status")).to_contain_text("Started: infer")
    whole = page.locator("#job-list .job").first
    expect(whole).to_contain_text("infer")
    expect(whole.locator(".state")).to_have_text("Completed", timeout=JOB_MILLISECONDS)
    page.click("#slice-label")
    page.keyboard.press("PageDown")
    page.keyboard.press("PageDown")
    expect(page.locator("#slice-label")).to_have_text("z = 22 / 63")
    unpainted = wait_for_overlay(page, lambda source: source is not None and "-infer/z/22.png" in source, kind="results")
    labels = connect(stack.settings)["results"][unpainted.split("/")[3]]["seg_result"].read()
    assert labels.shape == (64, 64, 64)
    assert len(np.unique(labels)) == 2


def job_run_id(page: Page) -> str:
    return page.locator("#job-list .job").first.get_by_role("link", name="Prefect").get_attribute("href").rsplit("/", 1)[1]
