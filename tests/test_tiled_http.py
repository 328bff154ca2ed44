"""The web app's plain HTTP client against a real Tiled server, compared with Tiled's own client."""

from __future__ import annotations

import numpy as np
import pytest

from dash_app.masks import latest_annotations
from mlex_tomo import tiled_http
from mlex_tomo.tiled_http import NodeNotFound, TiledError, TiledHttpClient, dtype_from_tiled, dtype_to_tiled, selected_shape, selection_text
from mlex_tomo.tiled_layout import connect_http, write_mask
from tests.services import Services

VOLUME = np.random.default_rng(3).random((7, 30, 20), dtype=np.float32)


def test_selections_are_written_in_numpy_notation():
    assert selection_text((5, slice(None, None, 2), slice(10, 20))) == "5,::2,10:20"
    assert selection_text((slice(3, None), -1)) == "3:,-1"


def test_the_shape_of_a_selection_is_numpy_s():
    shape = (7, 30, 20)
    for selection in [(3,), (3, slice(None, None, 4)), (slice(2, 6), slice(None, None, 7), 5), (slice(None, None, -2),)]:
        assert selected_shape(shape, selection) == np.empty(shape)[selection].shape
    with pytest.raises(ValueError, match="4 indices for an array of 3 dimensions"):
        selected_shape(shape, (1, 2, 3, 4))


@pytest.mark.parametrize("dtype", ["<u2", ">f4", "|u1", "<i8", "|b1"])
def test_dtypes_survive_tiled_s_description(dtype):
    assert dtype_from_tiled(dtype_to_tiled(np.dtype(dtype))) == np.dtype(dtype)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    services = Services(tmp_path_factory.mktemp("tiled-http"))
    try:
        services.start("tiled")
        scan = services.tiled(writable=True)["recons"].create_container("scan", metadata={"beamline": "8.3.2"})
        scan.write_array(VOLUME, key="data")
        scan.write_array(VOLUME.astype(">f4"), key="big-endian")
        yield services
    finally:
        services.stop_all()


@pytest.mark.stack
def test_reads_match_tiled_s_own_client(services, request):
    client = connect_http(services.settings)
    request.addfinalizer(client.close)
    array = client.node("recons/scan/data")
    assert array.is_array and array.shape == VOLUME.shape and array.dtype == VOLUME.dtype
    for selection in [(), (4,), (2, slice(None, None, 3), slice(None, None, 3)), (slice(1, 5), 7), (slice(None), slice(None), 19)]:
        np.testing.assert_array_equal(client.read(array, selection), VOLUME[selection])
    assert client.node("recons/scan").metadata == {"beamline": "8.3.2"}
    swapped = client.node("recons/scan/big-endian")
    assert swapped.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(client.read(swapped, (2, slice(None, None, 2))), VOLUME[2, ::2])


@pytest.mark.stack
def test_arrays_come_raw_unless_compression_is_asked_for(services, request):
    """Reconstructions hardly shrink and Tiled's gzip costs more than it saves; labels are mostly zeros."""
    client = connect_http(services.settings, writable=True)
    request.addfinalizer(client.close)
    client.create_container("masks", "sparse", {})
    sparse = client.write_array("masks/sparse", "mask", np.zeros((2, 256, 256), np.uint8), {})
    encodings = []
    client.http.event_hooks["response"].append(lambda response: encodings.append(response.headers.get("content-encoding")))
    np.testing.assert_array_equal(client.read(sparse), 0)
    np.testing.assert_array_equal(client.read(sparse, compressed=True), 0)
    assert encodings[0] is None and encodings[1] in {"zstd", "gzip"}


@pytest.mark.stack
def test_children_are_listed_page_by_page(services, monkeypatch):
    writer = services.tiled(writable=True)
    many = writer["recons"].create_container("many")
    for number in range(5):
        many.create_container(f"child-{number}", metadata={"number": number})
    monkeypatch.setattr(tiled_http, "PAGE_SIZE", 2)
    with connect_http(services.settings) as client:
        children = client.children("recons/many")
    assert {key: node.metadata["number"] for key, node in children.items()} == {f"child-{number}": number for number in range(5)}
    assert children["child-3"].path == "recons/many/child-3"


@pytest.mark.stack
def test_written_arrays_and_containers_read_back_through_tiled_s_client(services):
    client = connect_http(services.settings, writable=True)
    client.create_container("masks", "written", {"created_at": "now"})
    labels = np.random.default_rng(4).integers(-1, 3, (3, 30, 20), dtype=np.int8)
    node = client.write_array("masks/written", "mask", labels, {"mask_idx": [1, 3, 5]})
    assert node.path == "masks/written/mask" and node.shape == labels.shape
    stored = services.tiled()["masks"]["written"]["mask"]
    np.testing.assert_array_equal(stored.read(), labels)
    assert stored.metadata["mask_idx"] == [1, 3, 5]
    assert services.tiled()["masks"]["written"].metadata["created_at"] == "now"
    np.testing.assert_array_equal(client.read(node, (1,)), labels[1])


@pytest.mark.stack
def test_refusals_say_what_tiled_said(services):
    client = connect_http(services.settings)
    assert not client.exists("recons/absent") and client.exists("recons/scan")
    with pytest.raises(NodeNotFound, match="404 to GET /api/v1/metadata/recons/absent"):
        client.node("recons/absent")
    with pytest.raises(TiledError, match="401|403"):
        TiledHttpClient(services.settings.tiled.base_url, api_key="wrong").node("recons/scan")
    with pytest.raises(TiledError, match="cannot be reached"):
        TiledHttpClient("http://127.0.0.1:9", timeout_seconds=1).node("recons")


@pytest.mark.stack
def test_a_mask_save_that_failed_half_way_is_completed_by_the_next(services):
    with connect_http(services.settings, writable=True) as client:
        client.create_container("masks", "half", {})
        client.create_container("masks/half", "abc", {"created_at": "2099-01-01"})  # what a failed save leaves
        assert latest_annotations(client, "half") is None
        labels = np.array([[[0, 1], [-1, 1]]], np.int8)
        classes = {"0": {"label": "a", "color": "#000000"}, "1": {"label": "b", "color": "#ffffff"}}
        path = write_mask(client, "half", [0], labels, classes, "uri", "user", mask_id="abc")
        assert path == "masks/half/abc/mask"
        np.testing.assert_array_equal(client.read(client.node(path)), labels)
