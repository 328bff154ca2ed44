"""The job's Tiled input and output against a real Tiled server."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.tiled_io import InvalidInput, ResultWriter, TiledVolume, open_node, read_mask
from tests.services import Services

pytestmark = pytest.mark.stack

VOLUME = np.random.default_rng(0).random((12, 20, 24), dtype=np.float32)
CLASSES = {"0": {"label": "void", "color": "#000000"}, "1": {"label": "matrix", "color": "#888888"}}


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    services = Services(tmp_path_factory.mktemp("job-io"))
    try:
        services.start("tiled")
        writer = services.tiled(writable=True)
        scan = writer["recons"].create_container("scan")
        scan.write_array(VOLUME, key="data")
        other = writer["recons"].create_container("other-name")
        other.write_array(VOLUME, key="volume")
        writer["recons"].write_array(VOLUME, key="bare")
        yield services
    finally:
        services.stop_all()


@pytest.fixture
def api_key(tiled, monkeypatch):
    monkeypatch.setenv("TILED_API_KEY", tiled.settings.tiled.api_key.get_secret_value())


def node_url(services, path: str) -> str:
    return f"{services.settings.tiled.base_url}/api/v1/metadata/{path}"


@pytest.mark.parametrize("path", ["recons/scan", "recons/scan/data", "recons/other-name", "recons/bare"])
def test_a_volume_is_found_in_any_accepted_layout(tiled, path):
    volume = TiledVolume(open_node(node_url(tiled, path)))
    assert volume.shape == VOLUME.shape and volume.dtype == np.float32
    np.testing.assert_array_equal(volume.read(3, 7), VOLUME[3:7])
    np.testing.assert_array_equal(volume.read_slices([0, 11]), VOLUME[[0, 11]])


def test_a_container_without_an_obvious_volume_is_refused(tiled):
    writer = tiled.tiled(writable=True)
    two = writer["recons"].create_container("two-arrays")
    two.write_array(VOLUME, key="a")
    two.write_array(VOLUME, key="b")
    with pytest.raises(InvalidInput, match="2 arrays"):
        TiledVolume(open_node(node_url(tiled, "recons/two-arrays")))


def write_mask(services, key: str, labels: np.ndarray, **metadata) -> str:
    masks = services.tiled(writable=True)["masks"]
    masks.write_array(labels, key=key, metadata={"mask_idx": [2, 5], "classes": CLASSES, **metadata})
    return node_url(services, f"masks/{key}")


def sparse_labels() -> np.ndarray:
    labels = np.full((2, 20, 24), -1, np.int8)
    labels[0, 2:5, 2:5] = 0
    labels[1, 10:12, 10:14] = 1
    return labels


def test_a_sparse_mask_reads_with_its_slices_and_classes(tiled):
    mask = read_mask(open_node(write_mask(tiled, "good", sparse_labels())), VOLUME.shape)
    np.testing.assert_array_equal(mask.labels, sparse_labels())
    assert mask.slice_indices == [2, 5]
    assert mask.num_classes == 2 and mask.classes[1]["label"] == "matrix"


@pytest.mark.parametrize(
    ("labels", "metadata", "message"),
    [
        (sparse_labels()[:1], {}, "does not match 2 indices"),
        (sparse_labels(), {"mask_idx": [5, 2]}, "sorted"),
        (sparse_labels(), {"mask_idx": [2, 12]}, "within 0..11"),
        (sparse_labels(), {"classes": {"0": {}, "2": {}}}, "numbered 0..K-1"),
        (np.full((2, 20, 24), -1, np.int8), {}, "no labelled pixel"),
        (np.where(sparse_labels() == 1, 3, sparse_labels()).astype(np.int8), {}, "found 0..3"),
        (np.full((2, 20, 20), 0, np.int8), {}, "slices are"),
    ],
)
def test_invalid_masks_are_explained(tiled, labels, metadata, message):
    key = f"bad-{abs(hash(message)) % 10**8}"
    with pytest.raises(InvalidInput, match=message):
        read_mask(open_node(write_mask(tiled, key, labels, **metadata)), VOLUME.shape)


def test_results_are_written_in_slabs_one_slice_per_chunk(tiled, api_key):
    results = open_node(node_url(tiled, "results"))
    labels = np.random.default_rng(1).integers(0, 3, (12, 20, 24), dtype=np.uint8)
    uncertainty = np.random.default_rng(2).integers(0, 256, (12, 20, 24), dtype=np.uint8)
    writer = ResultWriter(results, "job-42", labels.shape, {"model": "TUNet", "job_id": "job-42"}, uncertainty=True)
    for z_start in range(0, 12, 5):
        writer.write_labels(z_start, labels[z_start : z_start + 5])
        writer.write_uncertainty(z_start, uncertainty[z_start : z_start + 5])
    writer.annotate(mean_iou=0.9)

    stored = open_node(node_url(tiled, "results/job-42"))
    np.testing.assert_array_equal(stored["seg_result"].read(), labels)
    np.testing.assert_array_equal(stored["probabilities"].read(), uncertainty)
    assert stored["seg_result"].chunks[0] == (1,) * 12
    assert stored.metadata["model"] == "TUNet" and stored.metadata["mean_iou"] == 0.9


def test_writing_needs_the_api_key_from_the_environment(tiled, monkeypatch):
    monkeypatch.delenv("TILED_API_KEY", raising=False)
    results = open_node(node_url(tiled, "results"))
    with pytest.raises(Exception, match="401|403|Unauthorized|Forbidden|permission"):
        ResultWriter(results, "job-anonymous", (2, 4, 4), {})
