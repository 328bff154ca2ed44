"""Parallel-beam tomography of phantoms: projections, a simulated detector, and FBP.

A phantom's noise-free image is read as an attenuation map; every z-plane is projected
on its own (parallel beam, rotation axis along z), so volumes stream slab by slab. The
detector adds Poisson noise to the transmitted intensity (Beer-Lambert) and a fixed
gain error per detector pixel that flat-fielding did not remove, which filtered back
projection turns into ring artefacts, as in real reconstructions.

Projection splats each pixel onto the detector with linear interpolation, and back
projection reads the detector with the same interpolation, so the two are exact
adjoints of each other; both loop over angles and are vectorised over pixels and
planes with one small sparse matrix per angle.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import scipy.fft
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse

from mlex_tomo.phantom import (
    GENERATOR_VERSION,
    MATRIX,
    PHASE_INTENSITY,
    VOID,
    ImageArray,
    PhantomSpec,
    to_dtype,
    generate_slab,
    sample_radius,
)

# Bumped whenever the same spec and acquisition would reconstruct to different data.
TOMOGRAPHY_VERSION = "1"

ANGLES_PER_WIDTH = 1.2  # projections per pixel of width: a little above the Nyquist pi/2
MAX_ANGLES = 1800  # what a typical scan of a 2048-pixel detector records
MIN_ANGLES = 8

# Independent random streams derived from the acquisition seed.
_PHOTON_STREAM, _GAIN_STREAM = 1, 2

FilterName = Literal["ram-lak", "shepp-logan"]


def projection_angles(n_angles: int) -> NDArray[np.float64]:
    """Evenly spaced over half a turn, which is all a parallel beam needs."""
    return np.linspace(0.0, math.pi, n_angles, endpoint=False)


def detector_width(ny: int, nx: int) -> int:
    """Detector pixels covering the whole (y, x) plane at every angle, centred on the axis.

    Odd, with a spare pixel at each end, so the interpolation partner of the outermost
    pixel centre stays on the detector.
    """
    return 2 * math.ceil(math.hypot((ny - 1) / 2, (nx - 1) / 2)) + 3


def _projection_matrix(angle: float, ny: int, nx: int, n_detector: int) -> sparse.csc_matrix:
    """(n_detector, ny * nx): each pixel centre shared between its two nearest detector pixels."""
    y = np.arange(ny) - (ny - 1) / 2
    x = np.arange(nx) - (nx - 1) / 2
    position = x[None, :] * math.cos(angle) + y[:, None] * math.sin(angle) + (n_detector - 1) / 2
    position = position.ravel()
    lower = np.floor(position).astype(np.int32)
    upper_weight = (position - lower).astype(np.float32)
    n_pixels = ny * nx
    rows = np.empty(2 * n_pixels, np.int32)
    rows[0::2], rows[1::2] = lower, lower + 1
    weights = np.empty(2 * n_pixels, np.float32)
    weights[0::2], weights[1::2] = 1.0 - upper_weight, upper_weight
    column_starts = np.arange(0, 2 * n_pixels + 1, 2, dtype=np.int32)
    return sparse.csc_matrix((weights, rows, column_starts), shape=(n_detector, n_pixels))


def forward_project(
    image: NDArray[np.floating], angles: NDArray[np.floating], n_detector: int | None = None
) -> NDArray[np.float32]:
    """Line integrals (pixel size 1) of a (y, x) slice, or of each plane of a (z, y, x) stack.

    Returns (n_angles, n_detector) for a slice and (z, n_angles, n_detector) for a stack.
    """
    stack = _as_stack(image)
    planes, ny, nx = stack.shape
    n_detector = n_detector or detector_width(ny, nx)
    if n_detector < detector_width(ny, nx):
        raise ValueError(
            f"n_detector must be at least {detector_width(ny, nx)} for a {ny}x{nx} slice"
        )
    # Pixels along the rows, planes along the columns: one sparse product serves every plane.
    pixels_by_plane = np.ascontiguousarray(stack.reshape(planes, ny * nx).T, dtype=np.float32)
    sinograms = np.empty((planes, len(angles), n_detector), np.float32)
    for index, angle in enumerate(angles):
        sinograms[:, index, :] = (_projection_matrix(angle, ny, nx, n_detector) @ pixels_by_plane).T
    return sinograms[0] if image.ndim == 2 else sinograms


def ramp_filter(
    n_detector: int, filter_name: FilterName = "ram-lak"
) -> tuple[int, NDArray[np.float32]]:
    """(padded length, rfft response) of the band-limited ramp for unit detector spacing.

    Built from the spatial-domain Ram-Lak kernel (Kak & Slaney, eq. 61) rather than a
    sampled |f|, which gets the zero-frequency term right and so the grey levels. The
    padding to twice the detector keeps the circular convolution from wrapping around.
    """
    size = max(64, 1 << (2 * n_detector - 1).bit_length())
    kernel = np.zeros(size)
    kernel[0] = 0.25
    offsets = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    kernel[1::2] = -1.0 / (math.pi * offsets) ** 2
    response = np.fft.rfft(kernel).real
    if filter_name == "shepp-logan":
        response *= np.sinc(np.fft.rfftfreq(size))
    return size, response.astype(np.float32)


def filtered_back_projection(
    sinogram: NDArray[np.floating],
    angles: NDArray[np.floating],
    output_size: int | tuple[int, int],
    filter_name: FilterName = "ram-lak",
) -> NDArray[np.float32]:
    """Reconstruct a slice from (n_angles, n_detector), or a stack from (z, n_angles, n_detector).

    The detector is taken as centred on the rotation axis, as `forward_project` makes it.
    """
    ny, nx = (output_size, output_size) if isinstance(output_size, int) else output_size
    stack = sinogram[None] if sinogram.ndim == 2 else sinogram
    planes, n_angles, n_detector = stack.shape
    if n_angles != len(angles):
        raise ValueError(f"sinogram has {n_angles} angles, but {len(angles)} angles were given")
    if n_detector < detector_width(ny, nx):
        raise ValueError(
            f"a {ny}x{nx} slice needs at least {detector_width(ny, nx)} detector pixels"
        )
    size, response = ramp_filter(n_detector, filter_name)
    filtered = np.empty((planes, n_angles, n_detector), np.float32)
    for plane in range(planes):  # one plane at a time bounds the padded spectrum's memory
        spectrum = scipy.fft.rfft(stack[plane].astype(np.float32), n=size, axis=-1)
        spectrum *= response
        filtered[plane] = scipy.fft.irfft(spectrum, n=size, axis=-1)[:, :n_detector]
    pixels_by_plane = np.zeros((ny * nx, planes), np.float32)
    for index, angle in enumerate(angles):
        detector_by_plane = np.ascontiguousarray(filtered[:, index, :].T)
        pixels_by_plane += _projection_matrix(angle, ny, nx, n_detector).T @ detector_by_plane
    pixels_by_plane *= np.float32(math.pi / n_angles)
    slices = pixels_by_plane.T.reshape(planes, ny, nx)
    return np.ascontiguousarray(slices[0] if sinogram.ndim == 2 else slices)


def _as_stack(image: NDArray[np.floating]) -> NDArray[np.floating]:
    if image.ndim not in (2, 3):
        raise ValueError(f"expected a (y, x) slice or a (z, y, x) stack, got shape {image.shape}")
    return image[None] if image.ndim == 2 else image


class AcquisitionParameters(BaseModel):
    """How the simulated scan was taken; with the phantom spec it determines the data."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    n_angles: int | None = Field(None, ge=MIN_ANGLES)
    photons_per_pixel: float = Field(10_000.0, gt=0.0)
    ring_artifact_strength: float = Field(0.005, ge=0.0, le=0.2)
    # Fraction of the beam crossing the sample's diameter if it were all matrix: the
    # attenuation scale, kept independent of the voxel count so phantoms look alike.
    matrix_transmission: float = Field(0.25, gt=0.0, lt=1.0)
    filter_name: FilterName = "shepp-logan"
    seed: int = Field(0, ge=0)

    def resolved_n_angles(self, shape: tuple[int, int, int]) -> int:
        if self.n_angles is not None:
            return self.n_angles
        return max(MIN_ANGLES, min(MAX_ANGLES, round(ANGLES_PER_WIDTH * max(shape[1:]))))


def attenuation_per_grey_level(shape: tuple[int, int, int], matrix_transmission: float) -> float:
    """Attenuation per pixel length per unit of grey level above void (air and pores)."""
    matrix_contrast = PHASE_INTENSITY[MATRIX] - PHASE_INTENSITY[VOID]
    return -math.log(matrix_transmission) / (matrix_contrast * 2 * sample_radius(shape))


def detect(
    line_integrals: NDArray[np.float32],
    acquisition: AcquisitionParameters,
    phantom_seed: int,
    z_start: int,
) -> NDArray[np.float32]:
    """The line integrals a detector reports for planes z_start.. of a (z, angle, pixel) stack.

    Counts are Poisson around I0 * gain * exp(-p); normalising by I0 alone leaves
    -log(gain), constant over angles, on each detector pixel. Streams are seeded per
    detector row (z), so any slab gets the same values as the whole volume; the gains
    belong to the detector and so do not depend on the phantom.
    """
    measured = np.empty_like(line_integrals)
    photons = acquisition.photons_per_pixel
    for offset, plane in enumerate(line_integrals):
        z = z_start + offset
        gain_rng = np.random.default_rng([acquisition.seed, _GAIN_STREAM, z])
        log_gain = acquisition.ring_artifact_strength * gain_rng.standard_normal(plane.shape[-1])
        photon_rng = np.random.default_rng([acquisition.seed, _PHOTON_STREAM, phantom_seed, z])
        counts = photon_rng.poisson(photons * np.exp(log_gain - plane.astype(np.float64)))
        measured[offset] = -np.log(np.maximum(counts, 1) / photons)
    return measured


class RealisticReconstruction:
    """A phantom as a beamline would reconstruct it: a volume source for the writers.

    The phantom's noise-free image is the attenuation map (its own noise is replaced
    by the detector's); ground truth labels are the phantom's, unchanged.
    """

    def __init__(self, spec: PhantomSpec, acquisition: AcquisitionParameters | None = None) -> None:
        acquisition = acquisition or AcquisitionParameters()
        self.spec = spec
        self.acquisition = acquisition.model_copy(
            update={"n_angles": acquisition.resolved_n_angles(spec.shape)}
        )
        self._attenuation_map_spec = spec.model_copy(
            update={"noise_sigma": 0.0, "dtype": "float32"}
        )
        self._angles = projection_angles(self.acquisition.n_angles)
        self._attenuation_scale = attenuation_per_grey_level(
            spec.shape, self.acquisition.matrix_transmission
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.spec.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.spec.dtype)

    @property
    def description(self) -> dict[str, Any]:
        return {
            "kind": "reconstructed phantom",
            "program": "mlex_tomo.tomography",
            "version": TOMOGRAPHY_VERSION,
            "phantom_generator_version": GENERATOR_VERSION,
            "phantom_spec": self.spec.model_dump(mode="json"),
            "acquisition": self.acquisition.model_dump(mode="json"),
        }

    def reconstruct_slab(self, z_start: int, z_stop: int) -> ImageArray:
        """Planes z_start..z_stop-1, equal (to rounding) to the same planes of any other slab."""
        grey, _ = generate_slab(self._attenuation_map_spec, z_start, z_stop)
        void_level = np.float32(PHASE_INTENSITY[VOID])
        attenuation = (grey - void_level) * np.float32(self._attenuation_scale)
        line_integrals = forward_project(attenuation, self._angles)
        measured = detect(line_integrals, self.acquisition, self.spec.seed, z_start)
        _, ny, nx = self.shape
        reconstructed = filtered_back_projection(
            measured, self._angles, (ny, nx), self.acquisition.filter_name
        )
        reconstructed *= np.float32(1.0 / self._attenuation_scale)
        reconstructed += void_level
        return to_dtype(reconstructed, self.spec.dtype)

    def iter_slabs(self, depth: int) -> Iterator[tuple[int, ImageArray]]:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        nz = self.shape[0]
        for z_start in range(0, nz, depth):
            yield z_start, self.reconstruct_slab(z_start, min(z_start + depth, nz))
