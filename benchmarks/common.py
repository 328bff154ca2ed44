"""What the benchmarks share: the machine they ran on, peak memory, scribbles painted as a person would."""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import psutil
from numpy.typing import NDArray
from scipy import ndimage

from mlex_tomo.phantom import PhantomSpec, iter_slabs
from segmentation.features import worker_count

NUM_CLASSES = 3
STROKES_PER_CLASS = 5
SLAB_DEPTH = 32


@dataclass
class PeakMemory:
    """Largest RSS seen by a sampling thread, above the RSS when measuring began."""

    start: int = 0
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def increase_mib(self) -> float:
        return (self.peak - self.start) / 2**20


@contextmanager
def peak_memory(interval: float = 0.02) -> Iterator[PeakMemory]:
    process = psutil.Process()
    memory = PeakMemory(start=process.memory_info().rss)
    memory.peak = memory.start

    def sample() -> None:
        while not memory._stop.wait(interval):
            memory.peak = max(memory.peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield memory
    finally:
        memory._stop.set()
        sampler.join()
        memory.peak = max(memory.peak, process.memory_info().rss)


def paint_scribbles(truth: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.int8]:
    """Brush strokes kept inside eroded ground-truth phases, sized with the slice as a person paints."""
    scale = truth.shape[0] / 128
    erosion, brush = max(2, round(2 * scale)), max(1, round(scale))
    mask = np.full(truth.shape, -1, np.int8)
    for label in range(NUM_CLASSES):
        inside = ndimage.binary_erosion(truth == label, iterations=erosion)
        candidates = np.argwhere(inside)
        if not len(candidates):
            continue
        for _ in range(STROKES_PER_CLASS):
            start_y, start_x = candidates[rng.integers(len(candidates))]
            angle = rng.uniform(0, 2 * np.pi)
            for step in range(round(rng.integers(8, 25) * scale)):
                y = round(start_y + step * np.sin(angle))
                x = round(start_x + step * np.cos(angle))
                if not (0 <= y < truth.shape[0] and 0 <= x < truth.shape[1] and inside[y, x]):
                    break
                mask[max(y - brush, 0) : y + brush + 1, max(x - brush, 0) : x + brush + 1] = label
    return mask


def generate_volume(spec: PhantomSpec) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
    image = np.empty(spec.shape, np.float32)
    truth = np.empty(spec.shape, np.uint8)
    for z_start, slab, labels in iter_slabs(spec, SLAB_DEPTH):
        image[z_start : z_start + len(slab)] = slab
        truth[z_start : z_start + len(slab)] = labels
    return image, truth


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{worker_count()} usable cores of {os.cpu_count()}, {model}, {memory:.0f} GiB RAM"


