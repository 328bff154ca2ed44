"""Parallel-beam projection, FBP, and the simulated detector behind realistic reconstructions."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.ndimage import binary_erosion

from mlex_tomo.phantom import (
    INCLUSION,
    MATRIX,
    PHASE_INTENSITY,
    VOID,
    PhantomSpec,
    generate,
    sample_cross_section,
)
from mlex_tomo.tomography import (
    AcquisitionParameters,
    RealisticReconstruction,
    detector_width,
    filtered_back_projection,
    forward_project,
    projection_angles,
)
from mlex_tomo.volume_writers import VolumeSource

MATRIX_CONTRAST = PHASE_INTENSITY[MATRIX] - PHASE_INTENSITY[VOID]
PHASE_LEVELS = np.array([PHASE_INTENSITY[label] for label in sorted(PHASE_INTENSITY)])


def _disk(size: int, radius: float) -> np.ndarray:
    y, x = np.indices((size, size)) - (size - 1) / 2
    return (np.hypot(y, x) <= radius).astype(np.float32)


def test_projections_are_line_integrals() -> None:
    disk = _disk(64, 20.0)
    angles = projection_angles(30)
    sinogram = forward_project(disk, angles)

    assert sinogram.shape == (30, detector_width(64, 64))
    # Every pixel lands on the detector whole, at every angle.
    assert np.allclose(sinogram.sum(axis=1), disk.sum(), rtol=1e-5)
    centre = (sinogram.shape[1] - 1) // 2
    assert np.allclose(sinogram[:, centre], 2 * 20.0, rtol=0.03)
    assert np.allclose(sinogram[:, centre + 30], 0.0)


def test_a_stack_projects_plane_by_plane() -> None:
    planes = np.stack([_disk(40, radius) for radius in (5.0, 12.0, 18.0)])
    angles = projection_angles(12)
    stacked = forward_project(planes, angles)
    assert stacked.shape == (3, 12, detector_width(40, 40))
    for plane, sinogram in zip(planes, stacked):
        assert np.allclose(forward_project(plane, angles), sinogram)


@pytest.mark.parametrize("filter_name", ["ram-lak", "shepp-logan"])
def test_fbp_of_a_projected_slice_reproduces_its_grey_levels(filter_name: str) -> None:
    spec = PhantomSpec(shape=(16, 128, 128), seed=4, noise_sigma=0.0)
    image, _ = generate(spec)
    # Air is the zero of attenuation; the sample is then compact, as in a real scan.
    attenuation = image[8] - PHASE_INTENSITY[VOID]
    angles = projection_angles(200)

    reconstructed = filtered_back_projection(
        forward_project(attenuation, angles), angles, 128, filter_name
    )

    assert reconstructed.shape == (128, 128)
    inside = sample_cross_section(spec.shape)
    error = reconstructed - attenuation
    assert np.mean(np.abs(error[inside])) < 0.05 * MATRIX_CONTRAST
    assert abs(np.mean(error[inside])) < 0.01 * MATRIX_CONTRAST


def test_fbp_refuses_mismatched_angles_and_a_narrow_detector() -> None:
    sinogram = forward_project(_disk(32, 10.0), projection_angles(20))
    with pytest.raises(ValueError, match="angles"):
        filtered_back_projection(sinogram, projection_angles(21), 32)
    with pytest.raises(ValueError, match="detector pixels"):
        filtered_back_projection(sinogram, projection_angles(20), 64)


def test_realistic_reconstruction_is_a_deterministic_volume_source() -> None:
    spec = PhantomSpec(shape=(20, 48, 40), seed=3)
    acquisition = AcquisitionParameters(seed=5)
    source = RealisticReconstruction(spec, acquisition)
    assert isinstance(source, VolumeSource)

    whole = np.concatenate([slab for _, slab in source.iter_slabs(20)])
    again = np.concatenate(
        [slab for _, slab in RealisticReconstruction(spec, acquisition).iter_slabs(20)]
    )
    other_noise = RealisticReconstruction(spec, acquisition.model_copy(update={"seed": 6}))

    assert whole.shape == (20, 48, 40) and whole.dtype == np.float32
    assert np.array_equal(whole, again)
    assert not np.allclose(whole, other_noise.reconstruct_slab(0, 20), atol=1e-3)
    # Any slab gets the noise and rings of the same planes of the whole volume.
    starts, slabs = zip(*source.iter_slabs(7))
    assert starts == (0, 7, 14)
    assert np.allclose(np.concatenate(slabs), whole, atol=1e-5)

    description = source.description
    assert PhantomSpec.model_validate(description["phantom_spec"]) == spec
    assert description["acquisition"]["n_angles"] == round(1.2 * 48)
    assert AcquisitionParameters.model_validate(description["acquisition"]).seed == 5


@pytest.mark.parametrize(("dtype", "numpy_dtype"), [("uint16", np.uint16), ("uint8", np.uint8)])
def test_integer_reconstructions_use_the_type_range(dtype: str, numpy_dtype: type) -> None:
    float_spec = PhantomSpec(shape=(16, 40, 40), seed=1)
    float_volume = RealisticReconstruction(float_spec).reconstruct_slab(0, 16)
    volume = RealisticReconstruction(
        float_spec.model_copy(update={"dtype": dtype})
    ).reconstruct_slab(0, 16)
    full_scale = np.iinfo(numpy_dtype).max

    assert volume.dtype == numpy_dtype
    expected = np.rint(np.clip(float_volume, 0.0, 1.0) * full_scale)
    assert np.allclose(volume, expected, atol=1)


@pytest.fixture(scope="module")
def reconstructed_64() -> tuple[PhantomSpec, np.ndarray]:
    spec = PhantomSpec(shape=(64, 64, 64), seed=8)
    return spec, RealisticReconstruction(spec).reconstruct_slab(0, 64)


def test_realistic_reconstruction_is_noisy_but_keeps_grey_levels(reconstructed_64) -> None:
    spec, volume = reconstructed_64
    clean, labels = generate(spec.model_copy(update={"noise_sigma": 0.0}))
    deep_matrix = binary_erosion(labels == MATRIX, np.ones((3, 3, 3)), iterations=4)
    assert deep_matrix.sum() > 500

    assert np.std(clean[deep_matrix]) < 1e-6
    assert np.std(volume[deep_matrix]) > 0.005
    assert np.mean(volume[deep_matrix]) == pytest.approx(PHASE_INTENSITY[MATRIX], abs=0.02)
    fewer_photons = RealisticReconstruction(spec, AcquisitionParameters(photons_per_pixel=1_000))
    noisier = fewer_photons.reconstruct_slab(0, 64)
    assert np.std(noisier[deep_matrix]) > 2 * np.std(volume[deep_matrix])


def test_nearest_grey_level_still_finds_the_phases(reconstructed_64) -> None:
    spec, volume = reconstructed_64
    _, labels = generate(spec)
    classes = np.abs(volume[..., None] - PHASE_LEVELS).argmin(axis=-1)
    inside = sample_cross_section(spec.shape)

    assert np.mean(classes[:, inside] == labels[:, inside]) > 0.8
    for phase in (VOID, MATRIX, INCLUSION):
        assert np.mean(classes[labels == phase] == phase) > 0.5, phase


def _ring_share(plane: np.ndarray) -> float:
    """Variance explained by the mean over circles about the axis, in the upper half-plane.

    A 180-degree scan draws each detector pixel's ring over one half of the circle
    only (its mirror pixel draws the other half), so one half-plane is compared.
    """
    size = plane.shape[0]
    y, x = np.indices(plane.shape) - (size - 1) / 2
    upper = y > 2
    radius = np.rint(np.hypot(y, x)).astype(int)[upper]
    values = plane[upper]
    circle_means = np.bincount(radius, values) / np.maximum(np.bincount(radius), 1)
    return 1.0 - np.var(values - circle_means[radius]) / np.var(values)


def test_detector_gain_errors_make_rings() -> None:
    spec = PhantomSpec(shape=(16, 64, 64), seed=2)

    def reconstruct(ring_strength: float, seed: int = 0) -> np.ndarray:
        acquisition = AcquisitionParameters(
            ring_artifact_strength=ring_strength, photons_per_pixel=1e4, seed=seed
        )
        return RealisticReconstruction(spec, acquisition).reconstruct_slab(0, 3)

    rings = reconstruct(0.05) - reconstruct(0.0)
    noise_only = reconstruct(0.0, seed=1) - reconstruct(0.0, seed=2)
    for ring_plane, noise_plane in zip(rings, noise_only):
        assert _ring_share(ring_plane) > 0.5
        assert _ring_share(noise_plane) < 0.1


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"n_angles": 2}, "n_angles"),
        ({"photons_per_pixel": 0.0}, "photons_per_pixel"),
        ({"ring_artifact_strength": -0.1}, "ring_artifact_strength"),
        ({"matrix_transmission": 1.0}, "matrix_transmission"),
        ({"filter_name": "hann"}, "filter_name"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_acquisition_names_the_field(fields: dict, bad_field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        AcquisitionParameters(**fields)
    assert [error["loc"][0] for error in raised.value.errors()] == [bad_field]


def test_default_angle_count_follows_the_width_up_to_a_cap() -> None:
    acquisition = AcquisitionParameters()
    assert acquisition.resolved_n_angles((64, 64, 100)) == 120
    assert acquisition.resolved_n_angles((16, 4096, 4096)) == 1800
    assert AcquisitionParameters(n_angles=90).resolved_n_angles((64, 64, 100)) == 90
