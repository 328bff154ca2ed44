"""What the browser tests share: Chromium driven by Playwright, and the gestures of a scientist."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from mlex_tomo.phantom import PhantomSpec, generate

SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
CHROMIUM_ARGUMENTS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
WAIT_MILLISECONDS = 30_000
expect.set_options(timeout=WAIT_MILLISECONDS)  # a 2-core CI runner needs more than the default 5 s

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (make test installs it)")


@pytest.fixture(scope="module")
def browser():
    """One Chromium for a module's tests (tests/conftest.py makes this fixture visible everywhere)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGUMENTS)
        yield browser
        browser.close()


def write_scan(tiled, key: str, ingested_at: str, seed: int = 1):
    """A 64^3 phantom under /recons, with the metadata the ingester writes; returns its ground truth."""
    image, truth = generate(PhantomSpec(shape=(64, 64, 64), seed=seed))
    metadata = {"shape": [64, 64, 64], "dtype": "float32", "format": "nxtomo", "ingested_at": ingested_at}
    tiled["recons"].create_container(key, metadata=metadata).write_array(image, key="data")
    return truth


def pick_scan(page: Page, label: str) -> None:
    page.click("#scan")
    page.get_by_role("option", name=label).click()


def choose_model(page: Page, name: str) -> None:
    page.click("#model-name")
    page.get_by_role("option", name=name, exact=True).click()
    expect(page.locator("#model-name")).to_contain_text(name)
    expect(page.locator(f'#model-form [data-model="{name}"]')).to_be_attached()  # its form replaced the one on screen


def set_field(page: Page, label: str, value: str) -> None:
    """Type into a field of the model form, opening the folded sections ("Parameters", "Training") it is in."""
    field = page.locator("#model-form").get_by_label(label).first
    field.evaluate(
        "element => { for (let section = element.closest('details'); section;"
        " section = section.parentElement && section.parentElement.closest('details')) { section.open = true; } }"
    )
    field.fill(value)
    field.press("Enter")


def paint(page: Page, start: tuple[float, float], end: tuple[float, float], wait_for_the_slice: bool = True) -> None:
    """Drag across the slice view, as a person paints, in screen pixels from its corner.

    A person paints on the slice they see: this waits until the slice the label names has
    loaded, as the app refuses a stroke on a slice still loading.
    """
    if wait_for_the_slice:
        wait_for_slice_on_screen(page)
    box = page.locator("#slice-view .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + start[0], box["y"] + start[1])
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(
            box["x"] + start[0] + (end[0] - start[0]) * step / 10, box["y"] + start[1] + (end[1] - start[1]) * step / 10
        )
    page.mouse.up()


def paint_on_slice(page: Page, start: tuple[int, int], end: tuple[int, int]) -> None:
    """Drag across the slice view from one slice pixel (column, row) to another, whatever the layout's scale."""
    wait_for_slice_on_screen(page)
    box = page.locator("#slice-view .nsewdrag").first.bounding_box()
    (start_x, start_y), (end_x, end_y) = on_screen(page, *start), on_screen(page, *end)
    paint(page, (start_x - box["x"], start_y - box["y"]), (end_x - box["x"], end_y - box["y"]), wait_for_the_slice=False)


def wait_for_slice_on_screen(page: Page) -> None:
    """Until the image on screen is the slice under the slider ("z = 42 / 63"), not one still loading."""
    page.wait_for_function(
        "() => { const label = document.querySelector('#slice-label').textContent.match(/^([zyx]) = (\\d+) /);"
        " return label !== null && sliceLoads.view !== null && sliceLoads.view.endsWith('/' + label[1])"
        " && sliceOnScreen(sliceLoads.view) === Number(label[2]); }"
    )


def on_screen(page: Page, column: int, row: int) -> tuple[float, float]:
    """The page position of the centre of a pixel of the slice in the main view."""
    return tuple(page.evaluate(
        "([column, row]) => { const plot = document.querySelector('#slice-view .js-plotly-plot');"
        " const box = plot.getBoundingClientRect(), x = plot._fullLayout.xaxis, y = plot._fullLayout.yaxis;"
        " return [box.left + x._offset + x.d2p(column + 0.5), box.top + y._offset + y.d2p(row + 0.5)]; }",
        [column, row],
    ))


def overlay_source(page: Page, kind: str = "masks") -> str | None:
    """The URL of the slice view's `/masks/` (painted labels) or `/results/` overlay, if shown."""
    return page.evaluate(
        "kind => { const image = [...document.querySelectorAll('#slice-view image')]"
        ".find(element => (element.getAttribute('href') || '').includes(`/${kind}/`));"
        " return image ? image.getAttribute('href') : null; }",
        kind,
    )


def wait_for_overlay(page: Page, condition, kind: str = "masks") -> str | None:
    """Poll the overlay's URL until `condition` holds (figures are redrawn after the callbacks answer)."""
    deadline = time.monotonic() + WAIT_MILLISECONDS / 1000
    while not condition(source := overlay_source(page, kind)):
        if time.monotonic() > deadline:
            raise AssertionError(f"the {kind} overlay did not change as expected; it shows {source!r}")
        page.wait_for_timeout(100)
    return source
