"""The phantom generator and its writers: ground truth, intensities, chunking, files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
from pydantic import ValidationError
from scipy.ndimage import binary_erosion, gaussian_filter

from mlex_tomo.phantom import (
    CLASS_NAMES,
    INCLUSION,
    MATRIX,
    PHASE_INTENSITY,
    VOID,
    PhantomSpec,
    blur_halo,
    generate,
    generate_label_slab,
    generate_slab,
    iter_slabs,
    phantom_layout,
    sample_cross_section,
)
from mlex_tomo.volume_writers import write_labels, write_nxtomoproc, write_tiff_stack

# Uneven sides, so a swapped axis cannot go unnoticed.
SMALL_SHAPE = (37, 24, 20)
INTENSITY_RANGE = PHASE_INTENSITY[INCLUSION] - PHASE_INTENSITY[VOID]


def test_same_seed_gives_same_phantom_and_another_seed_does_not() -> None:
    spec = PhantomSpec(shape=(32, 32, 32), seed=3)
    image, labels = generate(spec)
    image_again, labels_again = generate(spec.model_copy())
    other_image, other_labels = generate(spec.model_copy(update={"seed": 4}))

    assert np.array_equal(image, image_again)
    assert np.array_equal(labels, labels_again)
    assert not np.array_equal(labels, other_labels)
    assert not np.array_equal(image, other_image)


@pytest.mark.parametrize(("pore_fraction", "inclusion_fraction"), [(0.15, 0.10), (0.20, 0.40)])
def test_label_fractions_within_the_sample_match_the_spec(
    pore_fraction: float, inclusion_fraction: float
) -> None:
    measured = []
    for seed in range(6):
        spec = PhantomSpec(
            shape=(128, 128, 128),
            seed=seed,
            pore_fraction=pore_fraction,
            inclusion_fraction=inclusion_fraction,
        )
        labels = generate_label_slab(spec, 0, spec.shape[0])
        cross_section = sample_cross_section(spec.shape)
        assert np.all(labels[:, ~cross_section] == VOID), "air outside the sample is void"
        inside = labels[:, cross_section]
        measured.append([np.mean(inside == VOID), np.mean(inside == INCLUSION)])

    configured = np.array([pore_fraction, inclusion_fraction])
    # Each phantom is near the target; their mean, nearer still, shows there is no bias.
    assert np.all(np.abs(np.array(measured) - configured) < 0.03), measured
    assert np.all(np.abs(np.mean(measured, axis=0) - configured) < 0.01), measured


def test_zero_fractions_leave_plain_matrix() -> None:
    spec = PhantomSpec(shape=(24, 32, 32), pore_fraction=0.0, inclusion_fraction=0.0)
    labels = generate_label_slab(spec, 0, 24)
    cross_section = sample_cross_section(spec.shape)
    assert np.all(labels[:, cross_section] == MATRIX)
    assert np.all(labels[:, ~cross_section] == VOID)


def test_default_radius_makes_small_and_large_phantoms_alike() -> None:
    small = phantom_layout(PhantomSpec(shape=(64, 64, 64)))
    large = phantom_layout(PhantomSpec(shape=(512, 512, 512)))
    for small_spheres, large_spheres in zip(small, large):
        assert len(large_spheres.radii) == pytest.approx(len(small_spheres.radii), rel=0.25)
        mean_radius_ratio = large_spheres.radii.mean() / small_spheres.radii.mean()
        assert mean_radius_ratio == pytest.approx(8.0, rel=0.1)


@pytest.mark.parametrize("blur_sigma", [1.5, 6.0])  # the second one's halo exceeds most slabs
@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_slabs_equal_the_whole_volume_bit_for_bit(blur_sigma: float, dtype: str) -> None:
    spec = PhantomSpec(shape=SMALL_SHAPE, seed=7, blur_sigma=blur_sigma, dtype=dtype)
    whole_image, whole_labels = generate(spec)

    for slab_depth in (1, 5, 8, 36, 37, 50):
        starts, images, labels = zip(*iter_slabs(spec, slab_depth))
        assert starts == tuple(range(0, SMALL_SHAPE[0], slab_depth))
        assert np.array_equal(np.concatenate(images), whole_image), slab_depth
        assert np.array_equal(np.concatenate(labels), whole_labels), slab_depth

    inner_image, inner_labels = generate_slab(spec, 11, 14)
    assert np.array_equal(inner_image, whole_image[11:14])
    assert np.array_equal(inner_labels, whole_labels[11:14])


@pytest.mark.parametrize(("z_start", "z_stop"), [(-1, 3), (5, 5), (30, 38)])
def test_slab_outside_the_volume_is_refused(z_start: int, z_stop: int) -> None:
    with pytest.raises(ValueError, match="z range"):
        generate_slab(PhantomSpec(shape=SMALL_SHAPE), z_start, z_stop)


def test_float32_stays_near_unit_range() -> None:
    # Without blur the phases keep their levels, so the extremes are those of void and inclusion.
    image, _ = generate(PhantomSpec(shape=(48, 48, 48), blur_sigma=0.0))
    assert image.dtype == np.float32
    low, high = np.percentile(image, [1, 99])
    assert 0.0 <= low < PHASE_INTENSITY[VOID] + 0.05
    assert PHASE_INTENSITY[INCLUSION] - 0.05 < high <= 1.0
    assert -0.25 < image.min() and image.max() < 1.25


@pytest.mark.parametrize(("dtype", "numpy_dtype"), [("uint16", np.uint16), ("uint8", np.uint8)])
def test_integer_output_spans_the_type_range(dtype: str, numpy_dtype: type) -> None:
    float_spec = PhantomSpec(shape=(48, 48, 48), seed=2, blur_sigma=0.0)
    float_image, labels = generate(float_spec)
    image, integer_labels = generate(float_spec.model_copy(update={"dtype": dtype}))
    full_scale = np.iinfo(numpy_dtype).max

    assert image.dtype == numpy_dtype
    assert np.array_equal(integer_labels, labels)
    expected = np.rint(np.clip(float_image, 0.0, 1.0) * full_scale).astype(numpy_dtype)
    assert np.array_equal(image, expected)
    for phase, level in PHASE_INTENSITY.items():
        phase_median = np.median(image[labels == phase]) / full_scale
        assert phase_median == pytest.approx(level, abs=0.05), CLASS_NAMES[phase]
    assert image.max() - image.min() > 0.8 * full_scale


def _deep_matrix(labels: np.ndarray, margin: int) -> np.ndarray:
    """Matrix voxels whose blurred value cannot feel any other phase."""
    return binary_erosion(labels == MATRIX, structure=np.ones((3, 3, 3)), iterations=margin)


def test_noise_has_the_configured_strength_and_is_independent_per_plane() -> None:
    spec = PhantomSpec(shape=(64, 64, 64), seed=5, pore_fraction=0.05, inclusion_fraction=0.05)
    image, labels = generate(spec)
    clean, _ = generate(spec.model_copy(update={"noise_sigma": 0.0}))
    deep_matrix = _deep_matrix(labels, blur_halo(spec) + 1)
    assert deep_matrix.sum() > 5_000

    assert np.std(clean[deep_matrix]) < 1e-6
    assert np.mean(clean[deep_matrix]) == pytest.approx(PHASE_INTENSITY[MATRIX], abs=1e-6)
    expected_sigma = spec.noise_sigma * INTENSITY_RANGE
    assert np.std(image[deep_matrix]) == pytest.approx(expected_sigma, rel=0.05)

    noise = image - clean
    assert np.mean(noise) == pytest.approx(0.0, abs=0.01 * expected_sigma)
    plane_correlation = np.corrcoef(noise[:-1].ravel(), noise[1:].ravel())[0, 1]
    assert abs(plane_correlation) < 0.02


def test_blur_is_the_configured_point_spread() -> None:
    sharp_spec = PhantomSpec(shape=(32, 40, 40), seed=1, blur_sigma=0.0, noise_sigma=0.0)
    sharp, labels = generate(sharp_spec)
    phase_levels = np.array([PHASE_INTENSITY[label] for label in sorted(PHASE_INTENSITY)])
    assert np.array_equal(sharp, phase_levels[labels].astype(np.float32))

    blurred, _ = generate(sharp_spec.model_copy(update={"blur_sigma": 1.5}))
    assert np.allclose(blurred, gaussian_filter(sharp, 1.5, mode="reflect"), atol=1e-4)
    # Edges carry partial-volume values strictly between the matrix and its neighbours.
    edge = (labels == MATRIX) & ~_deep_matrix(labels, 1)
    edge_values = blurred[edge]
    lowest_neighbour, matrix_level = PHASE_INTENSITY[VOID], PHASE_INTENSITY[MATRIX]
    between = (edge_values > lowest_neighbour + 0.02) & (edge_values < matrix_level - 0.02)
    assert between.mean() > 0.3


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"pore_fraction": -0.1}, "pore_fraction"),
        ({"inclusion_fraction": -0.01}, "inclusion_fraction"),
        ({"pore_fraction": 0.5, "inclusion_fraction": 0.3}, "inclusion_fraction"),
        ({"shape": (64, 8, 64)}, "shape"),
        ({"shape": (64, 64)}, "shape"),
        ({"dtype": "int32"}, "dtype"),
        ({"blur_sigma": -1.0}, "blur_sigma"),
        ({"noise_sigma": float("nan")}, "noise_sigma"),
        ({"mean_radius": 0.0}, "mean_radius"),
    ],
)
def test_invalid_spec_names_the_field(fields: dict, bad_field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        PhantomSpec(**{"shape": (64, 64, 64), **fields})
    assert [error["loc"][0] for error in raised.value.errors()] == [bad_field]


def test_fractions_just_below_the_limit_are_accepted() -> None:
    spec = PhantomSpec(shape=(16, 16, 16), pore_fraction=0.4, inclusion_fraction=0.39)
    assert spec.pore_fraction + spec.inclusion_fraction < 0.8


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_nxtomoproc_file_reads_back_the_phantom(tmp_path, dtype: str) -> None:
    spec = PhantomSpec(shape=SMALL_SHAPE, seed=9, dtype=dtype)
    path = write_nxtomoproc(tmp_path / "sample.nxs", spec, slab_depth=4, sample_name="sample")
    image, _ = generate(spec)

    with h5py.File(path, "r") as file:
        entry = file["entry"]
        assert entry.attrs["NX_class"] == "NXentry"
        assert entry["definition"][()].decode() == "NXtomoproc"
        assert entry["sample/name"][()].decode() == "sample"
        assert entry["data"].attrs["NX_class"] == "NXdata"
        assert entry["data"].attrs["signal"] == "data"
        volume = file["entry/data/data"]
        assert volume.chunks[0] == 1
        assert volume.dtype == image.dtype
        assert np.array_equal(volume[()], image)
        assert PhantomSpec.model_validate_json(file.attrs["phantom_spec"]) == spec


def test_tiff_stack_reads_back_the_phantom(tmp_path) -> None:
    spec = PhantomSpec(shape=SMALL_SHAPE, seed=10, dtype="uint16")
    stale = tmp_path / "slice_99999.tif"
    tifffile.imwrite(stale, np.zeros((4, 4), np.uint16))

    directory = write_tiff_stack(tmp_path, spec, slab_depth=6)
    image, _ = generate(spec)

    slices = sorted(directory.glob("*.tif"))
    assert [path.name for path in slices] == [f"slice_{z:05d}.tif" for z in range(SMALL_SHAPE[0])]
    assert np.array_equal(np.stack([tifffile.imread(path) for path in slices]), image)
    assert PhantomSpec.model_validate_json((directory / "phantom.json").read_text()) == spec


def test_labels_file_holds_the_ground_truth(tmp_path) -> None:
    spec = PhantomSpec(shape=SMALL_SHAPE, seed=11)
    path = write_labels(tmp_path / "truth" / "sample_labels.h5", spec, slab_depth=5)
    _, labels = generate(spec)

    with h5py.File(path, "r") as file:
        stored = file["labels"]
        assert stored.dtype == np.uint8
        assert stored.chunks[0] == 1
        assert np.array_equal(stored[()], labels)
        assert PhantomSpec.model_validate_json(file.attrs["phantom_spec"]) == spec
        class_names = json.loads(file.attrs["class_names"])
        assert {int(label): name for label, name in class_names.items()} == dict(CLASS_NAMES)
