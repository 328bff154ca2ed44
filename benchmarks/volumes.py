"""Families of generated volumes with ground truth, unlike the project's own phantom, to judge models fairly.

Each family stands for a kind of sample a beamline segments: porous rock, a filtered
back-projection with photon noise and rings, fibres barely brighter than their matrix,
phases of low contrast, five phases, odd non-square shapes in raw detector units,
structure stretched along one axis, and phases told apart by texture alone, where no
threshold can work. Every volume is seeded, so a run can be repeated,
and several seeds of a family keep a model from being tuned to one draw.

Structures are thresholded Gaussian random fields (a classic model of porous media,
e.g. Torquato's) and random cylinders; intensities are the phases' grey levels, blurred
by the optics' point spread and with noise added, or reconstructed from noisy
projections with `mlex_tomo.tomography`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from mlex_tomo.tomography import (
    AcquisitionParameters,
    detect,
    filtered_back_projection,
    forward_project,
    projection_angles,
)


@dataclass(frozen=True)
class GeneratedVolume:
    family: str
    seed: int
    image: NDArray[np.float32]
    truth: NDArray[np.uint8]
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def random_field(shape: tuple[int, ...], correlation: float | tuple[float, ...], rng: np.random.Generator) -> NDArray[np.float32]:
    """A zero-mean, unit-variance Gaussian random field whose features span about `correlation` pixels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), correlation, mode="wrap")
    field -= field.mean()
    field /= field.std() or 1.0
    return field


def split_by_fractions(field: NDArray[np.float32], fractions: tuple[float, ...]) -> NDArray[np.uint8]:
    """Phase 0 where the field is lowest, up to phase K-1 where it is highest, taking the given volume fractions."""
    cuts = np.quantile(field[:: max(1, field.shape[0] // 32)], np.cumsum(fractions)[:-1])
    return np.searchsorted(cuts, field).astype(np.uint8)


def render(
    truth: NDArray[np.uint8],
    grey_levels: tuple[float, ...],
    rng: np.random.Generator,
    blur: float = 1.0,
    noise: float = 0.05,
) -> NDArray[np.float32]:
    """The phases' grey levels, blurred by the point spread function, with Gaussian noise."""
    image = np.asarray(grey_levels, np.float32)[truth]
    image = ndimage.gaussian_filter(image, blur)
    image += rng.normal(0, noise, truth.shape).astype(np.float32)
    return image


def porous_rock(size: int, seed: int) -> GeneratedVolume:
    """Pores, matrix and bright mineral grains, from two independent fields."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    pores = random_field(shape, size / 40, rng) < -0.7
    grains = random_field(shape, size / 60, rng) > 1.1
    truth = np.ones(shape, np.uint8)
    truth[grains] = 2
    truth[pores] = 0
    return GeneratedVolume("porous rock", seed, render(truth, (0.15, 0.5, 0.8), rng, noise=0.08), truth, ("pore", "matrix", "grain"))


def reconstructed_rock(size: int, seed: int) -> GeneratedVolume:
    """A three-phase rock scanned and reconstructed: Poisson noise on few photons, ring artefacts, FBP streaks."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    truth = split_by_fractions(random_field(shape, size / 30, rng), (0.3, 0.5, 0.2))
    grey = np.asarray((0.0, 0.45, 1.0), np.float32)[truth]
    attenuation_scale = -math.log(0.2) / (grey.mean() * size)  # about a fifth of the beam gets through
    acquisition = AcquisitionParameters(photons_per_pixel=2000, ring_artifact_strength=0.01, seed=seed)
    angles = projection_angles(acquisition.resolved_n_angles(shape))
    line_integrals = forward_project(grey * np.float32(attenuation_scale), angles)
    measured = detect(line_integrals, acquisition, seed, 0)
    image = filtered_back_projection(measured, angles, shape[1:], acquisition.filter_name) / np.float32(attenuation_scale)
    return GeneratedVolume("FBP, noise and rings", seed, image, truth, ("void", "matrix", "dense"))


def fibres(size: int, seed: int) -> GeneratedVolume:
    """Straight fibres in random directions, only a little brighter than the matrix around them."""
    rng = np.random.default_rng(seed)
    shape = np.array((size,) * 3)
    coordinates = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"), axis=-1)
    truth = np.zeros(tuple(shape), np.uint8)
    for _ in range(max(8, size // 3)):
        direction = rng.normal(size=3) * np.array((0.4, 1.0, 1.0))  # mostly lying in the slices
        direction /= np.linalg.norm(direction)
        centre = rng.uniform(0, shape)
        radius = rng.uniform(1.5, 1.5 + size / 40)
        offset = coordinates - centre.astype(np.float32)
        along = offset @ direction.astype(np.float32)
        distance_squared = np.einsum("...i,...i->...", offset, offset) - along**2
        truth[distance_squared <= radius**2] = 1
    return GeneratedVolume("low-contrast fibres", seed, render(truth, (0.45, 0.6), rng, blur=1.0, noise=0.07), truth, ("matrix", "fibre"))


def low_contrast(size: int, seed: int) -> GeneratedVolume:
    """Two phases whose grey levels differ by the noise's standard deviation: shape tells them apart more than level."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    truth = split_by_fractions(random_field(shape, size / 25, rng), (0.55, 0.45))
    return GeneratedVolume("low contrast, 2 phases", seed, render(truth, (0.47, 0.53), rng, noise=0.06), truth, ("phase A", "phase B"))


def five_phases(size: int, seed: int) -> GeneratedVolume:
    """Five phases, the rarest a few percent of the volume."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    truth = split_by_fractions(random_field(shape, size / 30, rng), (0.15, 0.35, 0.3, 0.15, 0.05))
    image = render(truth, (0.1, 0.3, 0.5, 0.7, 0.9), rng, noise=0.06)
    return GeneratedVolume("5 phases", seed, image, truth, ("pore", "clay", "quartz", "feldspar", "pyrite"))


def odd_shapes(size: int, seed: int) -> GeneratedVolume:
    """A non-square volume of odd edges in raw 16-bit detector units, far from [0, 1]."""
    rng = np.random.default_rng(seed)
    shape = (_odd(size * 0.6), _odd(size * 0.85), _odd(size * 1.15))
    truth = split_by_fractions(random_field(shape, size / 35, rng), (0.25, 0.5, 0.25))
    image = render(truth, (0.2, 0.5, 0.75), rng, noise=0.07) * np.float32(20_000) + np.float32(12_000)
    return GeneratedVolume("odd shapes, 16-bit units", seed, image, truth, ("pore", "matrix", "grain"))


def anisotropic(size: int, seed: int) -> GeneratedVolume:
    """Layers: structure long along z and x, thin along y, as in sediments or laminates."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    field = random_field(shape, (size / 10, size / 80, size / 20), rng)
    truth = split_by_fractions(field, (0.3, 0.4, 0.3))
    return GeneratedVolume("anisotropic layers", seed, render(truth, (0.25, 0.5, 0.7), rng, noise=0.07), truth, ("layer A", "layer B", "layer C"))


def textures(size: int, seed: int) -> GeneratedVolume:
    """Two phases of the same mean grey level, one smooth and one grainy: only texture tells them apart."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    truth = split_by_fractions(random_field(shape, size / 25, rng), (0.5, 0.5))
    grain = random_field(shape, 1.0, rng) * np.float32(0.12)
    image = np.float32(0.5) + np.where(truth == 1, grain, np.float32(0)) + rng.normal(0, 0.03, shape).astype(np.float32)
    return GeneratedVolume("texture, same grey level", seed, image, truth, ("smooth", "grainy"))


def _odd(length: float) -> int:
    return int(length) | 1


FAMILIES: dict[str, Callable[[int, int], GeneratedVolume]] = {
    "rock": porous_rock,
    "fbp": reconstructed_rock,
    "fibres": fibres,
    "low-contrast": low_contrast,
    "five-phases": five_phases,
    "odd": odd_shapes,
    "layers": anisotropic,
    "texture": textures,
}
