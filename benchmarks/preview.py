"""The live preview (issue #20) in Chromium: stroke -> prediction shown, new slice -> prediction shown.

    python -m benchmarks.preview [--strokes 50] [--stroke-slices 5] [--new-slices 24] [--changes 60]
                                 [--depth 256] [--size 2048] [--brush 15] [--think 3] [--seed 1]
                                 [--work-dir DIR]

Starts the servers as benchmarks/ui.py does (Tiled, Prefect's server with the
deployments, the web app) in a temporary data directory, writes and registers a
reconstruction-like uint16 volume (size x size x depth), opens it in headless Chromium
with brush size `--brush`, switches the "live preview (V)" layer on and paints.

Measured in the page (performance.now()):
- stroke -> prediction shown: from the stroke's `pointerup` (a capturing listener on the
  window, the event's own timestamp) to the first task after the frame that follows the
  `load` of the `<image>` in `#slice-view` whose href is the object URL of the preview
  fetched for the mask saved from that stroke (`/previews/<scan>/<mask_id>/z/<index>.png`).
  The first stroke paints class 1 alone, which has no preview (two classes are needed),
  and is not timed; then `--strokes` strokes alternate classes 2 and 1, on
  `--stroke-slices` slices (stay on a slice for several strokes, then step 6 slices
  down), each waiting for its preview, with a pause of 0.5 to `--think` seconds
  before the next, as a person looks at it. Every stroke saves a new mask and so fits a
  new forest: none is warm-up, and the first (the first forest of the session) is in the
  figures and also printed alone. Strokes are short brush strokes inside the phantom's
  phases (class 1 in matrix, class 2 in void), at random places. Split by the page's
  own events and the fetch's resource timing: pointer-up -> "saved." in
  `#annotation-status` (Dash's callbacks and the mask written to Tiled) -> preview
  request sent -> response received (the server, which waits for the preview the save
  callback began; its own `X-Preview-Seconds`, read from the response headers, is the
  computation from that beginning, overlapping the save) -> shown (blob, object URL,
  image swap, frame).
- arriving on the next slice to paint (a step of 6): the change -> its preview shown.
- new slice -> prediction shown: `--new-slices` slices never shown before, in an order
  where each move is more than 8 slices (the app reads ahead on steps of 8 or less), each
  change made as the slider does (its `input` event), after a pause as above; the slice's
  own paint (benchmarks/ui.py's probe) is printed next to it.
- the slice viewer while the preview runs: once the uncertainty survey of the last mask
  has finished (the server idle), benchmarks/ui.py's walk (`--changes` consecutive
  slices, each waiting for its paint, not for the preview) with the preview layer off,
  then on, on slices not seen before; then, from the walk's last paint, the wait for the
  preview of the slice it stopped on, and how long the preview requests made during the
  walk took.
- memory: RSS of the web app's process and children, sampled every 20 ms from its start.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import tiled
from numpy.typing import NDArray
from playwright.sync_api import Page, Response, sync_playwright
from scipy import ndimage

from benchmarks.common import machine
from benchmarks.ingest import percentile
from benchmarks.ui import (
    CHROMIUM_ARGUMENTS,
    TEMPLATE_DEPTH,
    Scan,
    Stack,
    fresh_web_app,
    open_scan,
    report_changes,
    stack_settings,
    start_servers,
    write_and_register,
)
from dash_app.preview import IDLE_SECONDS, SURVEY_SLICES
from mlex_tomo.phantom import MATRIX, VOID, PhantomSpec, generate_label_slab
from segmentation.preview import preview_stride
from tests.browser import paint_on_slice

STROKE_GOAL_SECONDS = 1.0
NEW_SLICE_GOAL_SECONDS = 1.5
STROKE_SLICE_STEP = 6  # slices between the slices painted
READ_AHEAD_MOVE = 8  # dash_app.volumes.PREFETCH_SLAB: moves up to this far read ahead
NEW_SLICE_SPACING = 3
MARGIN = 8  # slices between the walks' ranges and the others
STROKE_LENGTH = (120, 260)  # slice pixels
CLASS_PHASES = {0: MATRIX, 1: VOID}  # "class 1" in the matrix, "class 2" in pores and outside the sample
WAIT_MILLISECONDS = 180_000  # a preview may wait for the survey's feature computation, 1-2 s a slice
SURVEY_WAIT_SECONDS = 240

PREVIEW_PROBE = r"""
(() => {
  const probe = window.previewProbe = { pointerUps: [], statuses: [], blobPaints: new Map() };
  window.addEventListener("pointerup", (event) => probe.pointerUps.push(event.timeStamp), true);
  const status = document.getElementById("annotation-status");
  new MutationObserver(() => probe.statuses.push({ t: performance.now(), text: status.textContent }))
    .observe(status, { childList: true, characterData: true, subtree: true });
  // A preview is an object URL: shown once its <image> in the slice view has loaded and a frame has followed.
  document.addEventListener("load", (event) => {
    const image = event.target;
    if (!(image instanceof SVGImageElement) || !image.closest("#slice-view")) return;
    const href = image.href.baseVal;
    if (!href.startsWith("blob:")) return;
    const loaded = performance.now();
    requestAnimationFrame(() => setTimeout(() => {
      if (!probe.blobPaints.has(href)) probe.blobPaints.set(href, { loaded: loaded, painted: performance.now() });
    }, 0));
  }, true);
  const until = (condition, what) => new Promise((resolve, reject) => {
    const deadline = performance.now() + TIMEOUT;
    const check = () => {
      let value;
      try { value = condition(); } catch (error) { return reject(error); }
      if (value) return resolve(value);
      if (performance.now() > deadline) return reject(new Error(`timed out waiting for ${what()}`));
      setTimeout(check, 4);
    };
    check();
  });
  const previewText = () => document.getElementById("preview-status").textContent;
  probe.maskId = () => {
    const inputs = viewerState.inputs;
    return inputs && inputs[8] ? inputs[8].split("/")[2] : null;
  };
  // The preview of slice `index` by the forest of `mask`, once on screen: absolute times.
  probe.previewShown = async (mask, index) => {
    const part = `/${mask}/z/${index}.png`;
    const found = await until(() => {
      for (const [url, kept] of previewState.images) {
        if (!url.includes(part)) continue;
        if (!kept.source) return { url: url, error: kept.status };
        if (probe.blobPaints.has(kept.source)) return { url: url, source: kept.source };
      }
      return null;
    }, () => `the preview ${part} (preview status: ${previewText()})`);
    if (found.error) throw new Error(`the preview ${part} failed: ${found.error}`);
    const paint = probe.blobPaints.get(found.source);
    const fetched = performance.getEntriesByName(new URL(found.url, location.href).href).pop();
    const onScreen = [...document.querySelectorAll("#slice-view image")].some((image) => image.href.baseVal === found.source);
    return {
      url: found.url, loaded: paint.loaded, painted: paint.painted, onScreen: onScreen, status: previewText(),
      requestStart: fetched ? fetched.startTime : NaN, responseStart: fetched ? fetched.responseStart : NaN,
      responseEnd: fetched ? fetched.responseEnd : NaN,
    };
  };
  // After the stroke numbered `strokes` was released: its save, then its mask's preview of `index` on screen.
  probe.strokeShown = async (previousMask, index, upsBefore, strokes) => {
    const up = await until(() => probe.pointerUps.length > upsBefore && probe.pointerUps[probe.pointerUps.length - 1], () => "the pointerup");
    const saved = await until(() => {
      const after = probe.statuses.filter((entry) => entry.t >= up);
      const wrong = after.find((entry) => /still loading|NOT saved|refused/.test(entry.text));
      if (wrong) throw new Error(`stroke ${strokes}: ${wrong.text}`);
      return after.find((entry) => entry.text.startsWith(`${strokes} strokes on`) && entry.text.includes("saved."));
    }, () => `the save of stroke ${strokes} (status: ${status.textContent})`);
    const mask = await until(() => probe.maskId() !== previousMask && probe.maskId(), () => "the new mask");
    const shown = await probe.previewShown(mask, index);
    return { up: up, saved: saved.t, mask: mask, ...shown };
  };
  // A change of slice as the slider makes it; the slice's paint and its preview's, from the change.
  probe.newSlice = async (index) => {
    const mask = probe.maskId();
    const started = performance.now();
    const preview = probe.previewShown(mask, index);
    const slice = await slicePaints.show(index);
    const shown = await preview;
    return { started: started, slicePainted: slice.painted, mask: mask, ...shown };
  };
  const previewEntries = (from) => performance.getEntriesByType("resource")
    .filter((entry) => /\/previews\/.*\.png/.test(entry.name) && entry.responseEnd >= from);
  probe.previewRequests = (from) => previewEntries(from).map((entry) => [entry.name, entry.startTime, entry.responseEnd]);
  probe.previewsPainted = (from, to) => [...probe.blobPaints.values()].filter((paint) => paint.painted >= from && paint.painted <= to).length;
})();
""".replace("TIMEOUT", str(WAIT_MILLISECONDS))


@dataclass(frozen=True)
class Plan:
    painted: list[int]  # slices painted, in order
    new_slices: list[int]
    walk_off: list[int]  # the first is a jump to the walk's start, not timed
    walk_on: list[int]


def plan(depth: int, stroke_slices: int, new_slices: int, changes: int, rng: np.random.Generator) -> Plan:
    """Slices for each part, so that no part sees a slice (or a neighbour read ahead) of another."""
    walk_off = list(range(changes + 1))
    walk_on = list(range(depth - changes - 1, depth))
    painted = [depth // 2 - STROKE_SLICE_STEP * step for step in range(stroke_slices)]
    low, high = walk_off[-1] + MARGIN, walk_on[0] - MARGIN
    candidates = [
        z for z in range(low, high, NEW_SLICE_SPACING) if all(abs(z - slice_painted) > NEW_SLICE_SPACING for slice_painted in painted)
    ]
    if painted[-1] < low or len(candidates) < new_slices:
        raise SystemExit(
            f"a depth of {depth} is too small for {changes} changes in each walk, {stroke_slices} slices painted and "
            f"{new_slices} new slices; pass a larger --depth or smaller --changes / --new-slices"
        )
    order: list[int] = []
    left = [int(z) for z in rng.permutation(candidates)]
    previous = painted[-1]
    while len(order) < new_slices:
        far = [z for z in left if abs(z - previous) > READ_AHEAD_MOVE] or left
        previous = far[0]
        order.append(previous)
        left.remove(previous)
    return Plan(painted, order, walk_off, walk_on)


def phases(shape: tuple[int, int, int], slices: list[int]) -> dict[int, NDArray[np.uint8]]:
    """The phantom's ground truth of the given z slices of `ReconstructionLike(shape)` (walked templates)."""
    spec = PhantomSpec(shape=(TEMPLATE_DEPTH, *shape[1:]), seed=1, noise_sigma=0.0)  # as ReconstructionLike's
    period = 2 * TEMPLATE_DEPTH - 2
    template = {z: min(z % period, period - z % period) for z in slices}
    first, last = min(template.values()), max(template.values())
    labels = generate_label_slab(spec, first, last + 1)
    return {z: labels[index - first] for z, index in template.items()}


class StrokePlanner:
    """Short straight brush strokes well inside a phase, at random places: (start, end) as (column, row)."""

    def __init__(self, truth: dict[int, NDArray[np.uint8]], brush: int, rng: np.random.Generator) -> None:
        self.truth = truth
        self.margin = brush + 4
        self.rng = rng
        self.inside: dict[tuple[int, int], NDArray[np.bool_]] = {}
        self.candidates: dict[tuple[int, int], NDArray[np.int64]] = {}

    def stroke(self, z: int, class_id: int) -> tuple[tuple[int, int], tuple[int, int]]:
        key = (z, class_id)
        if key not in self.inside:
            self.inside[key] = ndimage.distance_transform_edt(self.truth[z] == CLASS_PHASES[class_id]) > self.margin
            self.candidates[key] = np.argwhere(self.inside[key])
        inside, candidates = self.inside[key], self.candidates[key]
        if not len(candidates):
            raise SystemExit(f"no room for a stroke of class {class_id + 1} on slice {z}")
        for _ in range(200):
            row, column = candidates[self.rng.integers(len(candidates))]
            angle = self.rng.uniform(0, 2 * np.pi)
            length = 0
            for step in range(1, int(self.rng.integers(*STROKE_LENGTH))):
                y, x = round(row + step * np.sin(angle)), round(column + step * np.cos(angle))
                if not (0 <= y < inside.shape[0] and 0 <= x < inside.shape[1] and inside[y, x]):
                    break
                length = step
            if length >= STROKE_LENGTH[0] // 2:
                end = (round(column + length * np.cos(angle)), round(row + length * np.sin(angle)))
                return (int(column), int(row)), (int(end[0]), int(end[1]))
        raise SystemExit(f"no stroke of class {class_id + 1} fits on slice {z}")


def choose_class(page: Page, class_id: int) -> None:
    """Keys 1 and 2, as a person switches classes; until the radio button shows it (a stroke takes the class shown)."""
    page.keyboard.press(str(class_id + 1))
    page.wait_for_function(
        "value => { const chosen = document.querySelector('#active-class input:checked'); return chosen && Number(chosen.value) === value; }",
        arg=class_id,
    )


def set_layer(page: Page, layer: str, shown: bool) -> None:
    box = page.locator(f"#shown-layers input[value={layer}]")
    box.set_checked(shown)
    page.wait_for_function(
        "([layer, shown]) => viewerState.inputs && (viewerState.inputs[15] || []).includes(layer) === shown", arg=[layer, shown]
    )


def think(page: Page, rng: np.random.Generator, most: float) -> None:
    """A person's pause before the next action; Playwright's wait, so response events are handled meanwhile."""
    page.wait_for_timeout(1000 * (most if most <= 0.5 else rng.uniform(0.5, most)))


def quantiles(values: list[float], unit: str = "ms", scale: float = 1.0) -> str:
    values = [scale * value for value in values if not math.isnan(value)]
    if not values:
        return "n=0"
    return (
        f"n={len(values)}, p50 {statistics.median(values):.0f} {unit}, p95 {percentile(values, 0.95):.0f} {unit}, "
        f"max {max(values):.0f} {unit}"
    )


def goal(values: list[float], seconds: float) -> str:
    p95 = percentile(values, 0.95)
    return f"goal p95 <= {seconds:g} s: {'met' if p95 <= 1000 * seconds else 'NOT met'} ({p95 / 1000:.2f} s)"


class ServerTimes:
    """The preview responses' headers, by URL path, as the browser received them."""

    def __init__(self) -> None:
        self.headers: dict[str, dict[str, str]] = {}

    def __call__(self, response: Response) -> None:
        path = urlsplit(response.url).path
        if path.startswith("/previews/") and path.endswith(".png"):
            self.headers[path] = response.headers

    def seconds(self, url: str) -> float:
        value = self.headers.get(urlsplit(url).path, {}).get("x-preview-seconds")
        return float(value) * 1000 if value is not None else math.nan


def parts(records: list[dict[str, Any]], server: ServerTimes, start: str) -> dict[str, list[float]]:
    """Each record's time from `start` to the preview shown, split at the page's events."""
    response = {"request -> response (server)": [record["responseEnd"] - record["requestStart"] for record in records]}
    shown = {"response -> shown (blob, swap, frame)": [record["painted"] - record["responseEnd"] for record in records]}
    computed = [server.seconds(record["url"]) for record in records]
    if start == "up":  # the save callback began the preview: the request waits for what is left of it
        return {
            "pointer-up -> saved (Dash callbacks, mask written to Tiled)": [record["saved"] - record["up"] for record in records],
            "saved -> preview requested": [record["requestStart"] - record["saved"] for record in records],
            **response,
            "  the preview's computation (X-Preview-Seconds), begun with the save and overlapping it": computed,
            **shown,
        }
    return {
        "change -> preview requested": [record["requestStart"] - record["started"] for record in records],
        **response,
        "  of which the preview computed (X-Preview-Seconds)": computed,
        "  the rest (waiting for the preview lock, overlay and PNG encode, transfer)": [
            record["responseEnd"] - record["requestStart"] - seconds for record, seconds in zip(records, computed)
        ],
        **shown,
    }


def print_parts(split: dict[str, list[float]]) -> None:
    for label, values in split.items():
        print(f"    {label}: {quantiles(values)}", flush=True)


def print_lock_waits(strokes: list[dict[str, Any]], arrivals: list[dict[str, Any]]) -> None:
    """Stroke -> shown, by how long the server had been idle before the stroke.

    After IDLE_SECONDS without a preview request, the survey computes one slice's
    tiles at a time under the lock every preview takes.
    """
    answered = sorted(record["responseEnd"] for record in [*strokes, *arrivals])
    idle, busy = [], []
    for record in strokes:
        earlier = [end for end in answered if end < record["up"]]
        (idle if earlier and record["up"] - earlier[-1] > 1000 * IDLE_SECONDS else busy).append(record["painted"] - record["up"])
    print(
        f"    stroke -> shown, strokes more than {IDLE_SECONDS:g} s after the previous preview's answer (the survey may hold the lock): "
        f"{quantiles(idle)}; the others: {quantiles(busy)}", flush=True,
    )


def paint_strokes(
    page: Page, slices: list[int], strokes: int, planner: StrokePlanner, server: ServerTimes,
    rng: np.random.Generator, most_think: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The untimed first stroke (class 1 alone), then `strokes` timed ones; and the previews on arriving at each next slice."""
    per_slice = math.ceil(strokes / len(slices))
    records, arrivals = [], []
    painted_count = 0
    slice_index = 0
    z = slices[0]
    for number in range(strokes + 1):
        if number > 1 and (number - 1) % per_slice == 0:
            slice_index += 1
            z = slices[slice_index]
            think(page, rng, most_think)
            arrival = page.evaluate("index => previewProbe.newSlice(index)", z)
            arrivals.append(arrival)
            print(
                f"    moved to slice {z}: its preview shown {arrival['painted'] - arrival['started']:.0f} ms after the change "
                f"(server {server.seconds(arrival['url']):.0f} ms)", flush=True,
            )
        class_id = number % 2
        choose_class(page, class_id)
        think(page, rng, most_think)
        previous = page.evaluate("previewProbe.maskId()")
        ups = page.evaluate("previewProbe.pointerUps.length")
        paint_on_slice(page, *planner.stroke(z, class_id))
        painted_count += 1
        if number == 0:  # one class alone: no preview, only the save
            page.wait_for_function("text => document.getElementById('annotation-status').textContent === text", arg="1 stroke on 1 slice, saved.")
            page.wait_for_function("() => document.getElementById('preview-status').textContent.includes('two classes')")
            continue
        record = page.evaluate(
            "([previous, index, ups, strokes]) => previewProbe.strokeShown(previous, index, ups, strokes)",
            [previous, z, ups, painted_count],
        )
        record.update(slice=z, first_on_slice=(number - 1) % per_slice == 0, stroke=number)
        records.append(record)
        if not record["onScreen"]:
            print(f"    stroke {number}: its preview loaded but was no longer on screen when measured", flush=True)
        if number == 1 or number % 10 == 0:
            print(
                f"    stroke {number} (slice {z}): {record['painted'] - record['up']:.0f} ms; save {record['saved'] - record['up']:.0f} ms, "
                f"server {server.seconds(record['url']):.0f} ms; {record['status']}", flush=True,
            )
    return records, arrivals


def wait_for_survey(settings_url: str, scan: Scan, mask: str) -> float:
    """Seconds until the last mask's survey of the volume's uncertainty has every slice it samples (it runs while idle)."""
    depth = scan.shape[0]
    wanted = set(np.unique(np.linspace(0, depth - 1, min(SURVEY_SLICES, depth)).round().astype(int)).tolist())
    started = time.monotonic()
    while time.monotonic() - started < SURVEY_WAIT_SECONDS:
        estimate = httpx.get(f"{settings_url}/previews/{scan.key}/{mask}/uncertainty", timeout=30).json()
        if wanted <= set(estimate["slices"]):
            return time.monotonic() - started
        time.sleep(1)
    return math.nan


def walk(page: Page, indices: list[int]) -> list[dict[str, float]]:
    page.evaluate("index => slicePaints.show(index)", indices[0])
    return [page.evaluate("index => slicePaints.show(index)", index) for index in indices[1:]]


def mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def run(stack: Stack, browser, scan: Scan, arguments: argparse.Namespace) -> None:
    rng = np.random.default_rng(arguments.seed)
    slices = plan(scan.shape[0], arguments.stroke_slices, arguments.new_slices, arguments.changes, rng)
    planner = StrokePlanner(phases(scan.shape, slices.painted), arguments.brush, rng)
    stride = preview_stride(scan.shape)
    print(
        f"  preview at 1/{stride} resolution ({math.ceil(scan.shape[1] / stride)} x {math.ceil(scan.shape[2] / stride)}); "
        f"brush {arguments.brush} voxels; pauses of 0.5-{arguments.think:g} s before each action; "
        f"slices painted {slices.painted}", flush=True,
    )
    server = ServerTimes()
    rss: dict[str, int] = {}
    with fresh_web_app(stack) as memory, open_scan(browser, stack, scan) as (page, opened):
        print(f"  web app RSS after start: {mib(memory.at_start)}; scan chosen -> first slice painted {opened:.0f} ms", flush=True)
        page.on("response", server)
        page.evaluate(PREVIEW_PROBE)
        page.evaluate("size => window.dash_clientside.set_props('brush-size', { value: size })", arguments.brush)
        set_layer(page, "preview", True)
        page.wait_for_function("() => document.getElementById('preview-status').textContent.includes('two classes')")
        rss["open, preview on"] = memory.sample()

        print(f"\n  1. strokes ({arguments.strokes} timed after one untimed stroke of class 1 alone); load average {os.getloadavg()[0]:.1f}", flush=True)
        started = time.monotonic()
        strokes, arrivals = paint_strokes(page, slices.painted, arguments.strokes, planner, server, rng, arguments.think)
        rss["after the strokes"] = memory.sample()
        shown = [record["painted"] - record["up"] for record in strokes]
        print(f"  stroke -> prediction shown: {quantiles(shown)}; {goal(shown, STROKE_GOAL_SECONDS)}", flush=True)
        print(f"    the first (the session's first forest): {shown[0]:.0f} ms", flush=True)
        first_on_slice = [record["painted"] - record["up"] for record in strokes if record["first_on_slice"]]
        later = [record["painted"] - record["up"] for record in strokes if not record["first_on_slice"]]
        print(f"    first stroke on each slice: {quantiles(first_on_slice)}; the others: {quantiles(later)}", flush=True)
        print_parts(parts(strokes, server, "up"))
        print_lock_waits(strokes, arrivals)
        for z in slices.painted:
            on_slice = [record for record in strokes if record["slice"] == z]
            print(
                f"    on slice {z} ({len(on_slice)} strokes, {slices.painted.index(z) + 1} slice(s) painted): shown p50 "
                f"{statistics.median(r['painted'] - r['up'] for r in on_slice):.0f} ms, save p50 "
                f"{statistics.median(r['saved'] - r['up'] for r in on_slice):.0f} ms, server p50 "
                f"{statistics.median(server.seconds(r['url']) for r in on_slice):.0f} ms", flush=True,
            )
        print(f"    {strokes[-1]['status']}", flush=True)
        print(f"    ({time.monotonic() - started:.0f} s with the pauses)", flush=True)
        if arrivals:
            print(f"  arriving on the next slice to paint (a step of {STROKE_SLICE_STEP}): change -> preview shown {quantiles([a['painted'] - a['started'] for a in arrivals])}", flush=True)

        print(
            f"\n  2. new slices ({len(slices.new_slices)}, each more than {READ_AHEAD_MOVE} slices from the last); "
            f"load average {os.getloadavg()[0]:.1f}", flush=True,
        )
        news = []
        for index in slices.new_slices:
            think(page, rng, arguments.think)
            news.append(page.evaluate("index => previewProbe.newSlice(index)", index))
        rss["after the new slices"] = memory.sample()
        shown_new = [record["painted"] - record["started"] for record in news]
        print(f"  new slice -> prediction shown: {quantiles(shown_new)}; {goal(shown_new, NEW_SLICE_GOAL_SECONDS)}", flush=True)
        print(f"    new slice -> the slice itself painted: {quantiles([record['slicePainted'] for record in news])}", flush=True)
        print_parts(parts(news, server, "change"))

        mask = page.evaluate("previewProbe.maskId()")
        waited = wait_for_survey(stack.settings.ui.url, scan, mask)
        print(f"\n  3. waited {waited:.0f} s for the last mask's uncertainty survey to finish (the server idle); load average {os.getloadavg()[0]:.1f}", flush=True)
        set_layer(page, "preview", False)
        report_changes(f"walk with the preview off, slices {slices.walk_off[1]}-{slices.walk_off[-1]}", walk(page, slices.walk_off))
        set_layer(page, "preview", True)
        before = page.evaluate("performance.now()")
        walked_on = walk(page, slices.walk_on)
        window = [before, page.evaluate("performance.now()")]
        previews = page.evaluate("([from, to]) => previewProbe.previewsPainted(from, to)", window)
        report_changes(
            f"walk with the preview on, slices {slices.walk_on[1]}-{slices.walk_on[-1]} "
            f"({previews} previews shown during the walk{': each arrived after the walk had moved on' if not previews else ''})", walked_on,
        )
        stopped = page.evaluate("([mask, index]) => previewProbe.previewShown(mask, index)", [mask, slices.walk_on[-1]])
        requests = page.evaluate("from => previewProbe.previewRequests(from)", window[0] - 1)
        print(
            f"    walk stopped (its last slice painted) -> that slice's preview shown: {stopped['painted'] - window[1]:.0f} ms; "
            "the preview requests answered since the walk began, request -> response (server's own): "
            + ", ".join(f"{end - start:.0f} ms ({server.seconds(url):.0f} ms)" for url, start, end in requests),
            flush=True,
        )
        rss["after the walks"] = memory.sample()
    print(
        f"\n  4. web app RSS (process and children): {mib(memory.at_start)} after start, peak {mib(memory.peak)}; "
        + ", ".join(f"{label} {mib(value)}" for label, value in rss.items()),
        flush=True,
    )
    for label, values in {
        "stroke -> prediction shown": shown, "new slice -> prediction shown": shown_new,
    }.items():
        print(f"  {label}: p50 {statistics.median(values) / 1000:.2f} s, p95 {percentile(values, 0.95) / 1000:.2f} s, max {max(values) / 1000:.2f} s", flush=True)
    seconds = [server.seconds(record["url"]) for record in strokes]
    print(f"  server's X-Preview-Seconds, strokes: {quantiles(seconds)}; new slices: {quantiles([server.seconds(r['url']) for r in news])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strokes", type=int, default=50, help="strokes timed, after one untimed")
    parser.add_argument("--stroke-slices", type=int, default=5, help="slices the strokes are shared among")
    parser.add_argument("--new-slices", type=int, default=24, help="slices never seen before, each timed to its preview")
    parser.add_argument("--changes", type=int, default=60, help="slice changes in each walk (preview off, then on)")
    parser.add_argument("--size", type=int, default=2048, help="y and x extent of the volume")
    parser.add_argument("--depth", type=int, default=256, help="z extent of the volume")
    parser.add_argument("--brush", type=int, default=15, help="brush size in voxels")
    parser.add_argument("--think", type=float, default=3.0, help="pauses before each action last 0.5 s to this long")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the temporary data directory goes")
    arguments = parser.parse_args()
    for name in [name for name in os.environ if name.startswith(("MLEX_TOMO_", "PREFECT_", "TILED_"))]:
        del os.environ[name]  # the stack's settings come from its data directory, not the caller's shell

    data_dir = Path(tempfile.mkdtemp(prefix="mlex-preview-bench-", dir=arguments.work_dir))
    stack = Stack(stack_settings(data_dir))
    started = time.monotonic()
    try:
        start_servers(stack)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGUMENTS)
            print(
                f"machine: {platform.node()}, {machine()}, Python {platform.python_version()}, "
                f"Chromium {browser.version}, Tiled {tiled.__version__}", flush=True,
            )
            scan = write_and_register(stack.settings, (arguments.depth, arguments.size, arguments.size))
            print(
                f"\nvolume {scan.label} uint16 ({scan.path.stat().st_size / 2**30:.1f} GiB), /recons/{scan.key}; "
                f"load average {os.getloadavg()[0]:.1f}", flush=True,
            )
            run(stack, browser, scan, arguments)
            print(f"  load average {os.getloadavg()[0]:.1f}; {(time.monotonic() - started) / 60:.1f} minutes in all", flush=True)
            browser.close()
    finally:
        stack.stop_all()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
