"""Synthetic tomography reconstructions with known ground truth.

A phantom is a cylindrical sample along z (air outside it) made of matrix, with pores
and inclusions modelled as two independent Boolean models of overlapping spheres.
Ground-truth labels come first; intensities follow from them: one grey level per
phase, a Gaussian point spread (partial-volume edges) and additive Gaussian noise.

Everything is a pure function of a `PhantomSpec`, and any z-slab can be generated on
its own, bit for bit equal to the same planes of the whole volume, so volumes far
larger than memory can be streamed slab by slab.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Annotated, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from scipy.ndimage import gaussian_filter

VOID, MATRIX, INCLUSION = 0, 1, 2
CLASS_NAMES: Mapping[int, str] = {VOID: "void", MATRIX: "matrix", INCLUSION: "inclusion"}
# Grey levels keep clear of 0 and 1 so that noise is rarely clipped in integer output.
PHASE_INTENSITY: Mapping[int, float] = {VOID: 0.15, MATRIX: 0.5, INCLUSION: 0.85}

# Bumped whenever the same spec would produce different data, so stale files can be told apart.
GENERATOR_VERSION = "1"

MAX_TOTAL_FRACTION = 0.8
SAMPLE_RADIUS_FRACTION = 0.45  # of the smaller in-plane size: the cylinder fills 90 % of it
DEFAULT_RADIUS_FRACTION = 0.05  # of the smaller in-plane size, so phantoms look alike at any size
RADIUS_LOG_SIGMA = 0.25  # lognormal spread of sphere radii
MIN_RADIUS = 1.0  # voxels: smaller spheres would mostly miss every voxel centre
MAX_RADIUS_FACTOR = 2.0  # of the mean radius; bounds how far outside the sample a centre matters
BLUR_TRUNCATE = 4.0  # Gaussian kernel radius in sigmas; also the z-halo of a slab

# Independent random streams derived from the seed, so changing one phase leaves the other.
_PORE_STREAM, _INCLUSION_STREAM, _NOISE_STREAM = 1, 2, 3

_PHASE_LEVELS = np.array([PHASE_INTENSITY[label] for label in sorted(PHASE_INTENSITY)], np.float32)

ImageArray = NDArray[np.float32] | NDArray[np.uint16] | NDArray[np.uint8]
Extent = Annotated[int, Field(ge=16)]
Fraction = Annotated[float, Field(ge=0.0)]


class PhantomSpec(BaseModel):
    """Everything that determines a phantom; equal specs give identical data."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    shape: tuple[Extent, Extent, Extent]
    seed: int = Field(0, ge=0)
    pore_fraction: Fraction = 0.15
    inclusion_fraction: Fraction = 0.10
    mean_radius: float | None = Field(None, gt=0.0)
    blur_sigma: float = Field(1.0, ge=0.0)
    noise_sigma: float = Field(0.05, ge=0.0)
    dtype: Literal["float32", "uint16", "uint8"] = "float32"

    @field_validator("inclusion_fraction")
    @classmethod
    def _leave_room_for_matrix(cls, inclusion_fraction: float, info: ValidationInfo) -> float:
        pore_fraction = info.data.get("pore_fraction")
        if pore_fraction is not None and pore_fraction + inclusion_fraction >= MAX_TOTAL_FRACTION:
            raise ValueError(
                f"pore_fraction + inclusion_fraction must be below {MAX_TOTAL_FRACTION}, "
                f"got {pore_fraction} + {inclusion_fraction}"
            )
        return inclusion_fraction

    @property
    def resolved_mean_radius(self) -> float:
        """The mean sphere radius in voxels, scaled with the field of view unless given."""
        if self.mean_radius is not None:
            return self.mean_radius
        return DEFAULT_RADIUS_FRACTION * min(self.shape[1:])


class Spheres(NamedTuple):
    centres: NDArray[np.float64]  # (n, 3) as (z, y, x) in voxel coordinates
    radii: NDArray[np.float64]  # (n,)


class PhantomLayout(NamedTuple):
    pores: Spheres
    inclusions: Spheres


def sample_radius(shape: tuple[int, int, int]) -> float:
    return SAMPLE_RADIUS_FRACTION * min(shape[1:])


def sample_cross_section(shape: tuple[int, int, int]) -> NDArray[np.bool_]:
    """The (y, x) footprint of the sample cylinder; fractions are measured inside it."""
    _, ny, nx = shape
    y = np.arange(ny) - (ny - 1) / 2
    x = np.arange(nx) - (nx - 1) / 2
    return y[:, None] ** 2 + x[None, :] ** 2 <= sample_radius(shape) ** 2


@lru_cache(maxsize=16)
def phantom_layout(spec: PhantomSpec) -> PhantomLayout:
    """Place all spheres once per spec; slabs then only rasterise the ones they meet.

    Inclusions take precedence over pores, and the two are placed independently, so
    a voxel shows a pore with probability q_pore * (1 - inclusion_fraction); the pore
    coverage q_pore is raised to make up for that.
    """
    pore_coverage = spec.pore_fraction / (1.0 - spec.inclusion_fraction)
    return PhantomLayout(
        pores=_place_spheres(spec, pore_coverage, _PORE_STREAM),
        inclusions=_place_spheres(spec, spec.inclusion_fraction, _INCLUSION_STREAM),
    )


def _place_spheres(spec: PhantomSpec, coverage: float, stream: int) -> Spheres:
    """A Boolean model of spheres covering `coverage` of the sample on average.

    Centres are uniform in the sample cylinder grown by the largest radius, so every
    voxel of the sample is equally exposed. For n spheres with volumes V_i in a region
    of volume W a point stays uncovered with probability prod(1 - V_i / W); spheres
    are added until that reaches 1 - coverage. Summing the drawn volumes rather than
    an expected count removes the scatter of the count and of the radii.
    """
    rng = np.random.default_rng([spec.seed, stream])
    mean_radius = spec.resolved_mean_radius
    max_radius = MAX_RADIUS_FACTOR * mean_radius
    nz = spec.shape[0]
    reach = sample_radius(spec.shape) + max_radius
    z_low, z_high = -0.5 - max_radius, nz - 0.5 + max_radius
    region_volume = math.pi * reach**2 * (z_high - z_low)
    target = -math.log1p(-coverage)  # sum of -log(1 - V_i / W) that gives the coverage
    if target == 0.0:
        return Spheres(np.empty((0, 3)), np.empty(0))

    expected_volume = 4 / 3 * math.pi * mean_radius**3 * math.exp(3 * RADIUS_LOG_SIGMA**2)
    batch = math.ceil(1.2 * target * region_volume / expected_volume) + 8
    radii = np.empty(0)
    exposure = np.empty(0)
    while exposure.size == 0 or exposure[-1] < target:
        # Lognormal with arithmetic mean `mean_radius`, clipped to a rasterisable range.
        drawn = mean_radius * rng.lognormal(-RADIUS_LOG_SIGMA**2 / 2, RADIUS_LOG_SIGMA, batch)
        radii = np.concatenate([radii, np.clip(drawn, MIN_RADIUS, max_radius)])
        exposure = np.cumsum(-np.log1p(-(4 / 3 * math.pi * radii**3) / region_volume))
    count = int(np.searchsorted(exposure, target)) + 1
    radii = radii[:count]

    distance = reach * np.sqrt(rng.random(count))  # uniform over the disc
    angle = 2 * math.pi * rng.random(count)
    centres = np.column_stack(
        [
            rng.uniform(z_low, z_high, count),
            (spec.shape[1] - 1) / 2 + distance * np.sin(angle),
            (spec.shape[2] - 1) / 2 + distance * np.cos(angle),
        ]
    )
    for array in (centres, radii):
        array.flags.writeable = False  # shared through the cache
    return Spheres(centres, radii)


def generate_label_slab(spec: PhantomSpec, z_start: int, z_stop: int) -> NDArray[np.uint8]:
    """Ground truth for planes z_start..z_stop-1 without the cost of rendering intensities."""
    _check_z_range(spec, z_start, z_stop)
    _, ny, nx = spec.shape
    cross_section = sample_cross_section(spec.shape)
    labels = np.empty((z_stop - z_start, ny, nx), np.uint8)
    labels[:] = np.where(cross_section, MATRIX, VOID).astype(np.uint8)
    layout = phantom_layout(spec)
    # Inclusions are painted last so they win where they overlap pores.
    _paint_spheres(labels, z_start, layout.pores, VOID, None)
    _paint_spheres(labels, z_start, layout.inclusions, INCLUSION, cross_section)
    return labels


def _paint_spheres(
    labels: NDArray[np.uint8],
    z_start: int,
    spheres: Spheres,
    label: int,
    within: NDArray[np.bool_] | None,
) -> None:
    """Set `label` on the voxel centres inside any sphere, visiting only bounding boxes.

    Each voxel's test uses only its own coordinates, so it comes out the same
    whichever slab it is rendered in.
    """
    depth, ny, nx = labels.shape
    z_stop = z_start + depth
    z_centres, radii = spheres.centres[:, 0], spheres.radii
    meets_slab = (z_centres + radii >= z_start) & (z_centres - radii <= z_stop - 1)
    for centre, radius in zip(spheres.centres[meets_slab], radii[meets_slab]):
        bounds = []
        for axis_centre, low, high in zip(centre, (z_start, 0, 0), (z_stop - 1, ny - 1, nx - 1)):
            first = max(math.ceil(axis_centre - radius), low)
            last = min(math.floor(axis_centre + radius), high)
            bounds.append((first, last))
        if any(first > last for first, last in bounds):
            continue
        (z0, z1), (y0, y1), (x0, x1) = bounds
        dz2 = (np.arange(z0, z1 + 1) - centre[0]) ** 2
        dy2 = (np.arange(y0, y1 + 1) - centre[1]) ** 2
        dx2 = (np.arange(x0, x1 + 1) - centre[2]) ** 2
        inside = dz2[:, None, None] + dy2[None, :, None] + dx2[None, None, :] <= radius**2
        if within is not None:
            inside &= within[y0 : y1 + 1, x0 : x1 + 1]
        labels[z0 - z_start : z1 - z_start + 1, y0 : y1 + 1, x0 : x1 + 1][inside] = label


def blur_halo(spec: PhantomSpec) -> int:
    """Planes of context a slab needs on each side for its blur to match the whole volume."""
    return math.ceil(BLUR_TRUNCATE * spec.blur_sigma) if spec.blur_sigma > 0 else 0


def generate_slab(
    spec: PhantomSpec, z_start: int, z_stop: int
) -> tuple[ImageArray, NDArray[np.uint8]]:
    """Image and labels for planes z_start..z_stop-1, identical to those of `generate`.

    The slab is rendered with a z-halo of the blur radius, clipped at the volume's
    faces; there 'reflect' sees the same planes as a whole-volume blur would. Noise is
    drawn per plane from a generator seeded by (seed, z).
    """
    _check_z_range(spec, z_start, z_stop)
    halo = blur_halo(spec)
    padded_start, padded_stop = max(z_start - halo, 0), min(z_stop + halo, spec.shape[0])
    padded_labels = generate_label_slab(spec, padded_start, padded_stop)
    image = _PHASE_LEVELS[padded_labels]
    if halo:
        image = gaussian_filter(image, spec.blur_sigma, mode="reflect", radius=halo)
    inner = slice(z_start - padded_start, z_stop - padded_start)
    image = np.ascontiguousarray(image[inner])
    _add_noise(image, spec, z_start)
    return to_dtype(image, spec.dtype), np.ascontiguousarray(padded_labels[inner])


def iter_slabs(
    spec: PhantomSpec, slab_depth: int
) -> Iterator[tuple[int, ImageArray, NDArray[np.uint8]]]:
    """(z_start, image, labels) for consecutive slabs; the last one may be shallower."""
    if slab_depth < 1:
        raise ValueError(f"slab_depth must be at least 1, got {slab_depth}")
    nz = spec.shape[0]
    for z_start in range(0, nz, slab_depth):
        image, labels = generate_slab(spec, z_start, min(z_start + slab_depth, nz))
        yield z_start, image, labels


def generate(spec: PhantomSpec) -> tuple[ImageArray, NDArray[np.uint8]]:
    """The whole volume at once: for small phantoms; stream large ones with `iter_slabs`."""
    return generate_slab(spec, 0, spec.shape[0])


def _add_noise(image: NDArray[np.float32], spec: PhantomSpec, z_start: int) -> None:
    if spec.noise_sigma == 0:
        return
    scale = np.float32(spec.noise_sigma * (PHASE_INTENSITY[INCLUSION] - PHASE_INTENSITY[VOID]))
    for offset, plane in enumerate(image):
        rng = np.random.default_rng([spec.seed, _NOISE_STREAM, z_start + offset])
        noise = rng.standard_normal(plane.shape, dtype=np.float32)
        noise *= scale
        plane += noise


def to_dtype(
    image: NDArray[np.float32], dtype: Literal["float32", "uint16", "uint8"]
) -> ImageArray:
    """Map [0, 1] onto the integer type's full range, as integer reconstructions use it."""
    if dtype == "float32":
        return image
    full_scale = np.iinfo(dtype).max
    np.clip(image, 0.0, 1.0, out=image)
    image *= full_scale
    np.rint(image, out=image)
    return image.astype(dtype)


def _check_z_range(spec: PhantomSpec, z_start: int, z_stop: int) -> None:
    if not 0 <= z_start < z_stop <= spec.shape[0]:
        raise ValueError(f"z range [{z_start}, {z_stop}) is empty or outside 0..{spec.shape[0]}")
