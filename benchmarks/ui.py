"""Browsing slices in the web app, in Chromium, next to the floor of reading and encoding one slice.

    python -m benchmarks.ui [--changes 200] [--depth 256] [--size 2048] [--large-depth 2048]
                            [--scrub-seconds 4] [--skip-large] [--work-dir DIR]

Starts what the web app talks to as `mlex-tomo up` defines it (Tiled, Prefect's server
with the deployments registered, the web app) in a temporary data directory on free
ports; writes reconstruction-like uint16 volumes (size x size x depth, then size x
size x large-depth) as HDF5 under the recons root, one at a time, and registers each
in place with `mlex-tomo ingest FILE`, the ingester's own path; then drives the app
in headless Chromium.

"Painted" is measured in the page. A capturing `load` listener on the document sees
the SVG `<image>` that Plotly puts in `#slice-view` finish loading the slice's JPEG URL;
the slice counts as painted at the first task after the next animation frame
(`requestAnimationFrame`, then `setTimeout 0`), once the frame showing it has been
produced (rasterising it is left to the compositor and not included). A change starts
when the page sets the slice slider's value and fires its `input` event, as the browser
does for each step of a drag or a click on the slider (the arrow keys take the same path
in the app), so the time covers the app's script, the image swap in Plotly's figure, the
HTTP request (Tiled read, window, JPEG encode on the server) and the image's decode.
The image's resource timing splits it: change -> request sent, -> response received,
-> painted. Measured for each volume, each part on a freshly started web app (empty
slice cache) in a fresh browser context (empty HTTP cache):
- walk: `--changes` consecutive slices from 0 (+1 each, as the arrow key or a slow
  drag), each change waiting for its paint; p50 and p95;
- scrub: from slice 0, the next change as soon as the previous slice is painted, for
  `--scrub-seconds`; slices painted per second;
- drag: the slider dragged at 20 and at 60 slices per second for `--scrub-seconds`,
  the slice under the pointer set once a frame whatever has been painted, as a slider
  drag does; distinct slices painted per second;
- jumps: up to `--changes` slices at least 3 apart in random order, so that neither
  the slice nor a prefetched neighbour is cached; p50 and p95;
- web app memory: RSS of its process and children, sampled every 20 ms throughout.
The floor, in the same run and on the walk's slices: `h5py` read of the slice from the
file, then the server's own downsample, window and JPEG encode (`dash_app.imaging`).
Tiled client reads of the same slices are printed next to it.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h5py
import httpx
import numpy as np
import psutil
import tiled
from numpy.typing import NDArray
from playwright.sync_api import Browser, Page, sync_playwright

from benchmarks.common import machine
from benchmarks.ingest import percentile
from benchmarks.harness import free_ports
from dash_app.imaging import downsample, encode, to_display
from flows.deploy import register_deployments
from mlex_tomo.phantom import (
    INCLUSION,
    PHASE_INTENSITY,
    VOID,
    PhantomSpec,
    generate,
    to_dtype,
)
from mlex_tomo.settings import StackSettings, load_settings, secrets_as_environment
from stack.processes import ManagedProcess
from stack.services import (
    Service,
    child_settings_path,
    prefect_server_service,
    tiled_service,
    ui_service,
    write_child_settings,
)
from mlex_tomo.tiled_layout import connect, ensure_containers
from mlex_tomo.tiled_names import RECONS
from mlex_tomo.volume_writers import HDF5_DATASET, write_hdf5

CHROMIUM_ARGUMENTS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 900}
TEMPLATE_DEPTH = 16
NOISE = 0.05 * (PHASE_INTENSITY[INCLUSION] - PHASE_INTENSITY[VOID])  # the phantom's default noise level
DRAG_RATES = (20, 60)  # slices per second
JUMP_SPACING = 3  # the app prefetches 2 neighbours each side
RSS_INTERVAL_SECONDS = 0.02
PAINT_TIMEOUT_MILLISECONDS = 60_000
WAIT_MILLISECONDS = 120_000
SERVICE_START_SECONDS = 120

PAINT_PROBE = """
(() => {
  performance.setResourceTimingBufferSize(100000);
  const SLICE_URL = /\\/slices\\/[^/]+\\/[zyx]\\/(\\d+)\\.jpeg/;
  const painted = new Map();  // slice index -> its paint: times (performance.now()), JPEG size, URL
  const waiters = new Map();  // slice index -> resolve functions
  document.addEventListener("load", (event) => {
    const image = event.target;
    if (!(image instanceof SVGImageElement)) return;
    const match = SLICE_URL.exec(image.href.baseVal);
    if (!match) return;
    const index = Number(match[1]);
    const fetched = performance.getEntriesByName(new URL(image.href.baseVal, location.href).href).pop();
    requestAnimationFrame(() => setTimeout(() => {
      const record = {
        painted: performance.now(), requestStart: fetched ? fetched.startTime : NaN,
        responseEnd: fetched ? fetched.responseEnd : NaN, bytes: fetched ? fetched.encodedBodySize : NaN,
        url: image.href.baseVal,
      };
      if (!painted.has(index)) painted.set(index, record);
      (waiters.get(index) || []).forEach((resolve) => resolve(record));
      waiters.delete(index);
    }, 0));
  }, true);
  const setSlice = (index) => {  // as a drag or click on the slider does
    const slider = document.querySelector("#slice-slider input[type=range]");
    slider.value = String(index);
    slider.dispatchEvent(new Event("input", { bubbles: true }));
  };
  const whenPainted = (index) => new Promise((resolve, reject) => {
    if (painted.has(index)) return resolve(painted.get(index));
    waiters.set(index, [...(waiters.get(index) || []), resolve]);
    setTimeout(() => reject(new Error(`slice ${index} not painted in TIMEOUT ms`)), TIMEOUT);
  });
  // Milliseconds from the change to: the image request starting, its response ending, the slice painted;
  // and the JPEG's size.
  const show = async (index) => {
    painted.delete(index);
    const started = performance.now();
    const shown = whenPainted(index);
    setSlice(index);
    const record = await shown;
    return {
      requested: record.requestStart - started, received: record.responseEnd - started,
      painted: record.painted - started, bytes: record.bytes, url: record.url,
    };
  };
  window.slicePaints = {
    whenPainted: async (index) => (await whenPainted(index)).painted,
    show,
    scrub: async (first, last, seconds) => {
      const started = performance.now();
      const changes = [];
      for (let index = first; performance.now() - started < 1000 * seconds && index <= last; index++) changes.push(await show(index));
      return { changes, seconds: (performance.now() - started) / 1000 };
    },
    // A drag moving at `rate` slices per second: each frame shows the slice under the pointer, as
    // a slider drag does (pointer events come once a frame); counts the distinct slices painted.
    drag: (first, last, rate, seconds) => new Promise((resolve) => {
      painted.clear();
      const started = performance.now();
      let changes = 0;
      let shown = null;
      const step = () => {
        const now = performance.now();
        const index = Math.min(last, first + Math.floor((now - started) * rate / 1000));
        if (now - started >= 1000 * seconds) {
          const paints = [...painted.values()].filter((record) => record.painted >= started && record.painted <= now);
          resolve({ changes, painted: paints.length, seconds: (now - started) / 1000 });
          return;
        }
        if (index !== shown) {
          setSlice(index);
          shown = index;
          changes++;
        }
        requestAnimationFrame(step);
      };
      requestAnimationFrame(step);
    }),
  };
})();
""".replace("TIMEOUT", str(PAINT_TIMEOUT_MILLISECONDS))


class ReconstructionLike:
    """A noisy, structured uint16 volume, cheap enough to stream at 2048³ on two cores.

    Structures are the first `TEMPLATE_DEPTH` noise-free planes of the project's
    phantom (a cylinder of matrix with pores and inclusions, blurred edges) walked
    forwards and back along z, so neighbouring planes stay alike; every plane gets its
    own Gaussian noise at the phantom's default level. Rendering every plane with the
    phantom itself costs about 0.5 s a plane here, 17 minutes for 2048 planes.
    """

    def __init__(self, shape: tuple[int, int, int], seed: int = 1) -> None:
        self.shape = shape
        self.dtype = np.dtype(np.uint16)
        self.seed = seed
        self.spec = PhantomSpec(shape=(TEMPLATE_DEPTH, *shape[1:]), seed=seed, noise_sigma=0.0)
        self.templates = generate(self.spec)[0]

    @property
    def description(self) -> dict[str, Any]:
        return {
            "kind": "benchmark volume", "program": "benchmarks.ui", "noise": NOISE,
            "phantom_spec": self.spec.model_dump(mode="json"),
        }

    def plane(self, z: int) -> NDArray[np.uint16]:
        period = 2 * TEMPLATE_DEPTH - 2
        template = self.templates[min(z % period, period - z % period)]
        image = np.random.default_rng([self.seed, z]).standard_normal(template.shape, dtype=np.float32)
        image *= np.float32(NOISE)
        image += template
        return to_dtype(image, "uint16")

    def iter_slabs(self, depth: int) -> Iterator[tuple[int, NDArray[np.uint16]]]:
        for z_start in range(0, self.shape[0], depth):
            z_stop = min(z_start + depth, self.shape[0])
            yield z_start, np.stack([self.plane(z) for z in range(z_start, z_stop)])


@dataclass
class Stack:
    """Tiled, Prefect's server and the web app, built from `mlex-tomo up`'s own service definitions."""

    settings: StackSettings
    running: dict[str, ManagedProcess] = field(default_factory=dict)

    def start(self, service: Service) -> ManagedProcess:
        process = ManagedProcess(service.name, service.command, self.settings.logs_path / f"{service.name}.log", env=service.env)
        process.start()
        self.running[service.name] = process
        deadline = time.monotonic() + SERVICE_START_SECONDS
        while not service.probe(self.settings).healthy:
            if process.exit_code() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{service.name} did not start:\n{process.log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        return process

    def stop(self, name: str) -> None:
        self.running.pop(name).stop()

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)


def stack_settings(data_dir: Path) -> StackSettings:
    tiled_port, prefect_port, ui_port = free_ports(3)
    settings = load_settings(
        overrides={
            "data_dir": str(data_dir),
            "tiled": {"port": tiled_port, "api_key": secrets.token_hex(32)},
            "prefect": {"port": prefect_port},
            "ui": {"port": ui_port},
        },
        environ={},
    )
    for folder in (settings.logs_path, settings.data_path / "tiled", settings.recons_path, settings.writable_path):
        folder.mkdir(parents=True, exist_ok=True)
    write_child_settings(settings)
    return settings


def start_servers(stack: Stack) -> None:
    """What the web app talks to; the deployments registered as `mlex-tomo up` does, so the Jobs panel finds them."""
    stack.start(tiled_service(stack.settings))
    ensure_containers(connect(stack.settings, writable=True))
    stack.start(prefect_server_service(stack.settings))
    register_deployments(stack.settings)


@dataclass(frozen=True)
class Scan:
    key: str
    path: Path
    shape: tuple[int, int, int]

    @property
    def label(self) -> str:
        return " x ".join(str(extent) for extent in self.shape)


def write_and_register(settings: StackSettings, shape: tuple[int, int, int]) -> Scan:
    """Write the volume under the recons root and register it in place, as an announcement would."""
    key = f"bench-{shape[0]}"
    path = settings.recons_path / f"{key}.h5"
    needed = 1.05 * np.dtype(np.uint16).itemsize * int(np.prod(shape))
    free = shutil.disk_usage(settings.recons_path).free
    if free < needed:
        raise SystemExit(f"{key} needs {needed / 2**30:.1f} GiB on disk, {free / 2**30:.1f} GiB is free")
    started = time.perf_counter()
    write_hdf5(path, ReconstructionLike(shape))
    written = time.perf_counter() - started
    ingested = subprocess.run(
        [sys.executable, "-m", "stack.cli", "ingest", str(path), "--config", str(child_settings_path(settings))],
        env={**os.environ, **secrets_as_environment(settings)}, capture_output=True, text=True, check=False,
    )
    if ingested.returncode != 0:
        raise SystemExit(f"mlex-tomo ingest {path} failed: {ingested.stdout}{ingested.stderr}")
    print(f"wrote {path.name} ({path.stat().st_size / 2**30:.1f} GiB) in {written:.0f} s; {ingested.stdout.strip()}", flush=True)
    return Scan(key, path, shape)


@dataclass
class PeakRss:
    """Largest RSS of a process and its children, sampled by a thread."""

    pid: int
    at_start: int = 0
    peak: int = 0

    def sample(self) -> int:
        try:
            process = psutil.Process(self.pid)
            members = [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for member in members:
            try:
                total += member.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total


@contextmanager
def fresh_web_app(stack: Stack) -> Iterator[PeakRss]:
    """Restart the web app, so its slice cache is empty, and follow its memory meanwhile."""
    if "ui" in stack.running:
        stack.stop("ui")
    memory = PeakRss(stack.start(ui_service(stack.settings)).pid)
    memory.at_start = memory.peak = memory.sample()
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(RSS_INTERVAL_SECONDS):
            memory.peak = max(memory.peak, memory.sample())

    sampler = threading.Thread(target=follow, daemon=True)
    sampler.start()
    try:
        yield memory
    finally:
        stop.set()
        sampler.join()


@contextmanager
def open_scan(browser: Browser, stack: Stack, scan: Scan) -> Iterator[tuple[Page, float]]:
    """A fresh browser context showing the scan; with the milliseconds from choosing it to its first slice painted."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(PAINT_PROBE)
    page = context.new_page()
    page.set_default_timeout(WAIT_MILLISECONDS)
    try:
        page.goto(stack.settings.ui.url)
        page.click("#scan")
        option = page.get_by_role("option", name=f"{scan.key} ({scan.label},")
        option.wait_for()
        started = page.evaluate("performance.now()")
        option.click()
        painted = page.evaluate("index => slicePaints.whenPainted(index)", scan.shape[0] // 2)
        yield page, painted - started
    finally:
        context.close()


def summary(milliseconds: list[float]) -> str:
    return f"n={len(milliseconds)}, p50 {statistics.median(milliseconds):.0f} ms, p95 {percentile(milliseconds, 0.95):.0f} ms"


def report_changes(label: str, changes: list[dict[str, float]]) -> None:
    """Change -> painted, and its parts from the image's resource timing."""
    size = statistics.median(change["bytes"] for change in changes) / 1024
    print(f"  {label}: {summary([change['painted'] for change in changes])} (JPEGs of {size:.0f} KiB)", flush=True)
    parts = {
        "change -> request sent (Dash, Plotly)": [change["requested"] for change in changes],
        "request -> response (server)": [change["received"] - change["requested"] for change in changes],
        "response -> painted (decode, frame)": [change["painted"] - change["received"] for change in changes],
    }
    for part, values in parts.items():
        print(f"    {part}: p50 {statistics.median(values):.0f} ms, p95 {percentile(values, 0.95):.0f} ms", flush=True)


def timed(action: Callable[[int], Any], indices: list[int]) -> list[float]:
    """Milliseconds of `action(index)` for each index, one after another."""
    durations = []
    for index in indices:
        started = time.perf_counter()
        action(index)
        durations.append(1000 * (time.perf_counter() - started))
    return durations


def browse(stack: Stack, browser: Browser, scan: Scan, walk: list[int], jumps: list[int], scrub_seconds: float) -> int:
    """Everything the browser measures on one scan, each part on a fresh web app and browser context.

    Returns the image size (`max_size`) the app asked for most often in the walk.
    """
    depth = scan.shape[0]
    show = "index => slicePaints.show(index)"
    peaks = []
    with fresh_web_app(stack) as memory, open_scan(browser, stack, scan) as (page, opened):
        print(f"  web app RSS after start: {memory.at_start / 2**20:.0f} MiB", flush=True)
        print(f"  scan chosen -> first slice painted: {opened:.0f} ms (display defaults from 8 slices included)", flush=True)
        walked = [page.evaluate(show, index) for index in walk]
        report_changes("walk, +1 slice per change, each waiting for its paint", walked)
    peaks.append(memory.peak)

    with fresh_web_app(stack) as memory, open_scan(browser, stack, scan) as (page, _):
        scrub = page.evaluate("([first, last, seconds]) => slicePaints.scrub(first, last, seconds)", [0, depth - 1, scrub_seconds])
        painted = len(scrub["changes"])
        report_changes(
            f"scrub, next change once the slice is painted: {painted / scrub['seconds']:.1f} slices/s ({painted} in {scrub['seconds']:.1f} s)",
            scrub["changes"],
        )
    peaks.append(memory.peak)

    for rate in DRAG_RATES:
        with fresh_web_app(stack) as memory, open_scan(browser, stack, scan) as (page, _):
            drag = page.evaluate(
                "([first, last, rate, seconds]) => slicePaints.drag(first, last, rate, seconds)",
                [0, depth - 1, rate, min(scrub_seconds, (depth - 1) / rate)],
            )
            print(
                f"  drag at {rate} slices/s, the slice under the pointer set once a frame: "
                f"{drag['painted'] / drag['seconds']:.1f} slices/s painted ({drag['painted']} of {drag['changes']} in {drag['seconds']:.1f} s)",
                flush=True,
            )
        peaks.append(memory.peak)

    with fresh_web_app(stack) as memory, open_scan(browser, stack, scan) as (page, _):
        report_changes(f"jumps to slices {JUMP_SPACING} or more apart, nothing cached", [page.evaluate(show, index) for index in jumps])
    peaks.append(memory.peak)
    parts = ["walk", "scrub", *(f"drag at {rate}/s" for rate in DRAG_RATES), "jumps"]
    print(
        f"  web app RSS, peak while browsing: {max(peaks) / 2**20:.0f} MiB "
        f"({', '.join(f'{part} {peak / 2**20:.0f}' for part, peak in zip(parts, peaks))})", flush=True,
    )
    sizes = Counter(int(parse_qs(urlsplit(change["url"]).query)["max_size"][0]) for change in walked)
    return sizes.most_common(1)[0][0]


def floor(stack: Stack, scan: Scan, walk: list[int], max_size: int) -> None:
    """h5py read + the server's downsample, window and encode, at the app's window and image size; then Tiled reads."""
    defaults = httpx.get(f"{stack.settings.ui.url}/scans/{scan.key}/display", timeout=WAIT_MILLISECONDS / 1000).json()
    read, window_and_encode = [], []
    with h5py.File(scan.path, "r") as file:
        for index in walk:
            started = time.perf_counter()
            plane = file[HDF5_DATASET][index]
            read.append(1000 * (time.perf_counter() - started))
            started = time.perf_counter()
            encode(to_display(downsample(plane, max_size), defaults["low"], defaults["high"]), "jpeg")
            window_and_encode.append(1000 * (time.perf_counter() - started))
    total = [reading + encoding for reading, encoding in zip(read, window_and_encode)]
    print(f"  floor, h5py read + downsample to {max_size} + window + JPEG encode of the walk's slices: {summary(total)}", flush=True)
    print(f"    h5py read p50 {statistics.median(read):.0f} ms; downsample + window + encode p50 {statistics.median(window_and_encode):.0f} ms", flush=True)
    node = connect(stack.settings)[RECONS][scan.key]["data"]
    through_tiled = timed(lambda index: np.asarray(node[index]), walk)
    print(f"  Tiled client read of one whole slice, the walk's slices: {summary(through_tiled)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200, help="slice changes in the walk and the jumps")
    parser.add_argument("--size", type=int, default=2048, help="y and x extent of the volumes")
    parser.add_argument("--depth", type=int, default=256, help="z extent of the first volume")
    parser.add_argument("--large-depth", type=int, default=2048, help="z extent of the second volume")
    parser.add_argument("--scrub-seconds", type=float, default=4.0)
    parser.add_argument("--skip-large", action="store_true", help="measure the first volume only")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the temporary data directory goes")
    arguments = parser.parse_args()
    depths = [arguments.depth] if arguments.skip_large else [arguments.depth, arguments.large_depth]
    for name in [name for name in os.environ if name.startswith(("MLEX_TOMO_", "PREFECT_", "TILED_"))]:
        del os.environ[name]  # the stack's settings come from its data directory, not the caller's shell

    data_dir = Path(tempfile.mkdtemp(prefix="mlex-ui-bench-", dir=arguments.work_dir))
    stack = Stack(stack_settings(data_dir))
    try:
        start_servers(stack)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGUMENTS)
            print(
                f"machine: {platform.node()}, {machine()}, Python {platform.python_version()}, "
                f"Chromium {browser.version}, Tiled {tiled.__version__}", flush=True,
            )
            for depth in depths:
                scan = write_and_register(stack.settings, (depth, arguments.size, arguments.size))
                walk = list(range(min(arguments.changes, depth)))
                jumps = [int(index) for index in np.random.default_rng(1).permutation(np.arange(0, depth, JUMP_SPACING))[: arguments.changes]]
                print(
                    f"\nvolume {scan.label} uint16 ({scan.path.stat().st_size / 2**30:.1f} GiB), /{RECONS}/{scan.key}; "
                    f"load average {os.getloadavg()[0]:.1f}", flush=True,
                )
                max_size = browse(stack, browser, scan, walk, jumps, arguments.scrub_seconds)
                floor(stack, scan, walk, max_size)
                print(f"  load average {os.getloadavg()[0]:.1f}", flush=True)
                scan.path.unlink()
            browser.close()
    finally:
        stack.stop_all()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
