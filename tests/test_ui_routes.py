"""The web app's image routes against a real Tiled server, and the image functions behind them."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
from concurrent import futures

import httpx
import numpy as np
import pytest
from PIL import Image

from dash_app.annotations import Annotations, ClassInfo, Stroke
from dash_app.app import create_app
from dash_app.masks import save_annotations
from dash_app.imaging import colour_labels, display_range, downsample, outline_labels, palette_png, to_display
from dash_app.volumes import FIRST_SLAB, PREFETCH_SLAB, READ_AHEAD, Rendering, ScanLibrary
from mlex_tomo.settings import load_settings
from mlex_tomo.tiled_layout import connect_http
from segmentation.tiled_io import ResultWriter
from mlex_tomo.settings import secrets_as_environment
from mlex_tomo.health import ui_health
from stack.services import ui_service
from tests.services import Services, wait_for

VOLUME = (np.arange(6 * 40 * 50, dtype=np.float32).reshape(6, 40, 50) % 997) / 997


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    services = Services(tmp_path_factory.mktemp("ui"))
    try:
        services.start("tiled")
        writer = services.tiled(writable=True)
        writer["recons"].create_container("scan").write_array(VOLUME, key="data", metadata={})
        pair = writer["recons"].create_container("pair")
        pair.write_array(VOLUME, key="first")
        pair.write_array(VOLUME, key="second")
        writer["recons"].write_array(VOLUME[0], key="flat")
        yield services
    finally:
        services.stop_all()


RESULT_LABELS = np.array([[[0, 1], [2, 1]], [[2, 2], [0, 0]]], np.uint8).repeat(20, axis=1).repeat(25, axis=2)
RESULT_CLASSES = {"0": {"label": "void", "color": "#000000"}, "1": {"label": "grain", "color": "#ff0000"}, "2": {"label": "pore", "color": "#0000ff"}}


@pytest.fixture(scope="module")
def result(services):
    """A job's labels of slices 1 and 4, written as the segmentation job writes them; still running."""
    metadata = {"job_id": "labels-job", "status": "running", "model": "RandomForest", "slices": [1, 4], "classes": RESULT_CLASSES}
    writer = ResultWriter(services.tiled(writable=True)["results"], "labels-job", RESULT_LABELS.shape, metadata)
    writer.write_labels(0, RESULT_LABELS)
    return writer


@pytest.fixture(scope="module")
def client(services):
    return create_app(services.settings).server.test_client()


def decoded(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.data)))


@pytest.mark.stack
def test_a_slice_is_served_as_png_with_the_window_applied(client):
    response = client.get("/slices/scan/z/3.png?low=0.2&high=0.8")
    assert response.status_code == 200 and response.mimetype == "image/png"
    np.testing.assert_array_equal(decoded(response), to_display(VOLUME[3], 0.2, 0.8))
    assert "max-age" in response.headers["Cache-Control"]


@pytest.mark.stack
@pytest.mark.parametrize(("axis", "index", "expected"), [("y", 7, VOLUME[:, 7, :]), ("x", 49, VOLUME[:, :, 49])])
def test_other_axes_are_served(client, axis, index, expected):
    response = client.get(f"/slices/scan/{axis}/{index}.png?low=0&high=1")
    assert response.status_code == 200
    np.testing.assert_array_equal(decoded(response), to_display(expected, 0, 1))


@pytest.mark.stack
def test_jpeg_and_downsampling_for_small_viewports(client):
    response = client.get("/slices/scan/z/0.jpeg?low=0&high=1&max_size=20")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert decoded(response).shape == (14, 17)


@pytest.mark.stack
def test_display_defaults_come_from_percentiles_of_a_sample(client):
    response = client.get("/scans/scan/display")
    assert response.status_code == 200
    body = response.get_json()
    assert body["shape"] == [6, 40, 50]
    low, high = np.percentile(VOLUME, [1, 99])
    assert body["low"] == pytest.approx(low, abs=0.01) and body["high"] == pytest.approx(high, abs=0.01)
    assert sum(body["counts"]) == VOLUME.size
    default = client.get("/slices/scan/z/2.png")
    np.testing.assert_array_equal(decoded(default), to_display(VOLUME[2], body["low"], body["high"]))


@pytest.mark.stack
@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/slices/missing/z/0.png", 404, "no scan 'missing'"),
        ("/slices/scan/w/0.png", 400, "axis must be one of z, y, x"),
        ("/slices/scan/z/6.png", 400, "z index 6 is outside 0..5"),
        ("/slices/scan/z/0.gif", 400, "format must be png or jpeg"),
        ("/slices/scan/z/0.png?low=1&high=0.5", 400, "must exceed low"),
        ("/slices/scan/z/0.png?low=a&high=1", 400, "must be numbers"),
        ("/slices/scan/z/0.png?max_size=1000000", 400, "max_size must be within"),
        ("/scans/missing/display", 404, "no scan 'missing'"),
        ("/scans/pair/display", 422, "/recons/pair holds 2 arrays (first, second) and no 'data'"),
        ("/scans/flat/display", 422, "/recons/flat is not a 3-D (z, y, x) array"),
        ("/slices/flat/z/0.png", 400, "/recons/flat is not a 3-D (z, y, x) array"),
        ("/results/scan/no-such-job/z/0.png", 404, "no result 'no-such-job'"),
        ("/results/scan/labels-job/z/9.png", 400, "z index 9 is outside 0..5"),
        ("/results/scan/labels-job/w/0.png", 400, "axis must be one of z, y, x"),
        ("/results/scan/labels-job/z/0.png?hidden=one", 400, "hidden must be comma-separated class numbers"),
        ("/masks/scan/no-such-mask/y/0.png", 404, "no mask 'no-such-mask' for scan 'scan'"),
        ("/masks/scan/no-such-mask/w/0.png", 400, "axis must be one of z, y, x"),
        ("/masks/scan/no-such-mask/x/50.png", 400, "x index 50 is outside 0..49"),
        ("/scans/scan/voxels/6/0/0", 400, "z index 6 is outside 0..5"),
        ("/scans/scan/voxels/0/0/50", 400, "x index 50 is outside 0..49"),
        ("/scans/missing/voxels/0/0/0", 404, "no scan 'missing'"),
    ],
)
def test_bad_requests_say_what_is_wrong(client, result, url, status, message):
    response = client.get(url)
    assert response.status_code == status
    assert message in response.get_json()["error"]


@pytest.mark.stack
@pytest.mark.parametrize("z", [2, 5])
def test_the_value_under_the_pointer_is_the_voxels(client, z):
    if z == 2:
        client.get("/slices/scan/z/2.png?max_size=1024")  # a full-resolution slice held: read from it
    for y, x in [(0, 0), (17, 33), (39, 49)]:
        response = client.get(f"/scans/scan/voxels/{z}/{y}/{x}")
        assert response.status_code == 200
        assert response.get_json() == {"z": z, "y": y, "x": x, "value": pytest.approx(float(VOLUME[z, y, x]))}


@pytest.mark.stack
def test_painted_labels_are_overlaid_on_slices_along_every_axis(client, services):
    painted = Annotations(
        scan="scan", volume_shape=VOLUME.shape,
        classes={0: ClassInfo(label="pore", color="#ff0000"), 1: ClassInfo(label="grain", color="#0000ff")},
        strokes=[
            Stroke(axis="z", index=2, tool="rectangle", class_id=0, points=[(10, 5), (20, 5)]),  # y = 5, x 10..20
            Stroke(axis="y", index=30, tool="rectangle", class_id=1, points=[(40, 1), (40, 4)]),  # x = 40, z 1..4
        ],
    )
    path = save_annotations(connect_http(services.settings, writable=True), painted, "uri", "user")
    mask_id = path.split("/")[2]

    def overlay(axis: str, index: int, hidden: str = "") -> np.ndarray:
        response = client.get(f"/masks/scan/{mask_id}/{axis}/{index}.png{hidden}")
        assert response.status_code == 200 and response.mimetype == "image/png"
        assert response.headers["Cache-Control"].startswith("private, max-age=")  # a mask never changes
        return decoded(response)

    def painted_pixels(image: np.ndarray, colour: tuple[int, int, int]) -> set[tuple[int, int]]:
        return {(int(row), int(column)) for row, column in zip(*np.nonzero((image[..., :3] == colour).all(axis=-1) & (image[..., 3] > 0)))}

    assert painted_pixels(overlay("z", 2), (255, 0, 0)) >= {(5, column) for column in range(11, 20)}
    assert painted_pixels(overlay("z", 3), (0, 0, 255)) == {(30, 40)}  # the y stroke crosses z = 3 in one voxel
    assert painted_pixels(overlay("y", 5), (255, 0, 0)) >= {(2, column) for column in range(11, 20)}  # the z stroke, along x
    assert painted_pixels(overlay("x", 40), (0, 0, 255)) >= {(z, 30) for z in (2, 3)}  # the y stroke, along z
    assert overlay("x", 40, "?hidden=1")[..., 3].max() == 0
    assert overlay("x", 41)[..., 3].max() == 0


@pytest.mark.stack
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_web_app_stops_at_once_on_sigint_and_sigterm(services, stop_signal):
    """Even started as a shell's background job, which ignores SIGINT, and with a slice read in flight."""
    command = ui_service(services.settings).command
    ignoring_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731 - what `cmd &` does
    app = subprocess.Popen(command, env={**os.environ, **secrets_as_environment(services.settings)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=ignoring_sigint)
    try:
        wait_for(lambda: ui_health(services.settings).healthy, timeout=60, message="the web app")
        httpx.get(f"{services.settings.ui.url}/slices/scan/z/1.png", timeout=30)  # starts a read-ahead
        app.send_signal(stop_signal)
        assert app.wait(timeout=5) == 0
    finally:
        app.kill()


@pytest.mark.stack
def test_login_guards_every_route_but_the_health_check(services, tmp_path):
    overrides = {"data_dir": str(services.settings.data_dir), "tiled": {"port": services.settings.tiled.port},
                 "ui": {"username": "beamline", "password": "s3cret-words"}}
    guarded = create_app(load_settings(overrides=overrides, environ={})).server.test_client()
    assert guarded.get("/").status_code == 401
    assert guarded.get("/slices/scan/z/0.png").status_code == 401
    wrong = base64.b64encode(b"beamline:nope").decode()
    assert guarded.get("/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    right = base64.b64encode(b"beamline:s3cret-words").decode()
    assert guarded.get("/slices/scan/z/0.png", headers={"Authorization": f"Basic {right}"}).status_code == 200
    assert guarded.get("/healthz").status_code == 200
    for odd in ("Basic bé€ü", "Basic \u00ff\u00fe", "Bearer x", "Basic "):
        assert guarded.get("/", headers={"Authorization": odd}).status_code == 401, odd


@pytest.mark.stack
def test_a_results_labels_are_overlaid_in_their_colours_less_the_hidden_classes(client, result):
    running = client.get("/results/scan/labels-job/z/4.png")
    assert running.status_code == 200 and running.mimetype == "image/png"
    assert decoded(running)[..., 3].max() == 0  # unwritten slices hold zeros: nothing is shown until the job completes
    assert running.headers["Cache-Control"] == "no-store"  # the job may still write this slice

    result.annotate(status="complete")
    response = client.get("/results/scan/labels-job/z/4.png?hidden=2")
    overlay = decoded(response)
    assert overlay.shape == (40, 50, 4)
    assert overlay[0, 0].tolist() == [0, 0, 0, 0]  # pore, hidden
    assert decoded(client.get("/results/scan/labels-job/z/4.png"))[0, 0].tolist() == [0, 0, 255, 255]
    assert overlay[25, 0].tolist() == [0, 0, 0, 255]  # void, shown in its colour
    unsegmented = decoded(client.get("/results/scan/labels-job/z/2.png"))
    assert unsegmented[..., 3].max() == 0
    finished = client.get("/results/scan/labels-job/z/1.png")
    assert decoded(finished)[0, 25].tolist() == [255, 0, 0, 255]
    assert "max-age" in finished.headers["Cache-Control"]

    across = decoded(client.get("/results/scan/labels-job/y/0.png"))  # (z, x): rows 1 and 4 hold the job's slices
    assert across.shape == (6, 50, 4)
    assert across[1, 0].tolist() == [0, 0, 0, 255] and across[1, 30].tolist() == [255, 0, 0, 255]
    assert across[4, 0].tolist() == [0, 0, 255, 255]
    assert across[[0, 2, 3, 5], :, 3].max() == 0  # slices the job did not segment stay transparent
    assert decoded(client.get("/results/scan/labels-job/x/49.png")).shape == (6, 40, 4)


@pytest.mark.stack
@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_a_failed_or_cancelled_jobs_labels_are_never_overlaid(client, services, status):
    """Their array holds zeros where nothing was written: shown, it painted the whole slice in class 0."""
    metadata = {"job_id": f"{status}-job", "status": "running", "slices": [0, 1], "classes": RESULT_CLASSES}
    writer = ResultWriter(services.tiled(writable=True)["results"], f"{status}-job", (2, 40, 50), metadata)
    writer.annotate(status=status)
    assert decoded(client.get(f"/results/scan/{status}-job/z/0.png"))[..., 3].max() == 0


@pytest.mark.stack
def test_slices_are_read_strided_and_the_next_ones_are_prefetched_in_slabs(services):
    tall = np.random.default_rng(2).random((30, 12, 10), dtype=np.float32)
    services.tiled(writable=True)["recons"].create_container("tall").write_array(tall, key="data", metadata={})
    library = ScanLibrary(connect_http(services.settings), cache_bytes=2**20)

    def cached(of: ScanLibrary = library) -> set[int]:
        futures.wait([read.task for read in list(of.prefetches.values())])
        return {index for scan, _, index, _ in of.cache.entries if scan == "tall"}

    np.testing.assert_array_equal(library.slice("tall", "z", 3, max_size=5), tall[3, ::3, ::3])
    assert cached() == {2, 3, 4}  # a first look: the slice and one on each side
    assert (FIRST_SLAB, PREFETCH_SLAB, READ_AHEAD) == (2, 8, 16)
    library.slice("tall", "z", 4, max_size=5)
    assert cached() == set(range(2, 7))  # moving up: a small slab first, 5..6
    library.slice("tall", "z", 5, max_size=5)
    assert max(cached()) == 10  # then twice as large, 7..10
    library.slice("tall", "z", 6, max_size=5)
    assert max(cached()) == 18  # then PREFETCH_SLAB, 11..18
    library.slice("tall", "z", 7, max_size=5)
    assert max(cached()) == 26  # 11 held ahead, fewer than READ_AHEAD: the next slab
    for index in range(8, 11):
        library.slice("tall", "z", index, max_size=5)
    assert max(cached()) == 26  # 16 or more still ahead: nothing more read
    library.slice("tall", "z", 11, max_size=5)
    assert max(cached()) == 29  # 15 ahead: the rest of the volume
    np.testing.assert_array_equal(library.slice("tall", "z", 10, max_size=5), tall[10, ::3, ::3])  # from a slab
    jumping = ScanLibrary(connect_http(services.settings), cache_bytes=2**20)
    jumping.slice("tall", "z", 20, max_size=5)
    assert cached(jumping) == {19, 20, 21}
    jumping.slice("tall", "z", 4, max_size=5)
    assert cached(jumping) == {19, 20, 21, 3, 4, 5}  # a jump: one slice on each side again
    assert ("tall", "z", 6, 1) not in library.cache.entries
    library.slice("tall", "z", 6, max_size=12)
    assert ("tall", "z", 6, 1) in library.cache.entries  # another resolution is another read
    np.testing.assert_array_equal(library.slice("tall", "y", 7, max_size=6), tall[::5, 7, ::5])


@pytest.mark.stack
def test_the_slices_read_ahead_are_encoded_ahead_with_the_window_in_use(services):
    library = ScanLibrary(connect_http(services.settings), cache_bytes=2**20)
    rendering = Rendering(0.2, 0.8, "png")
    library.image("scan", "z", 0, 50, rendering)
    shown = library.image("scan", "z", 1, 50, rendering)  # moving up: the slices above are read and encoded
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(shown))), to_display(VOLUME[1], 0.2, 0.8))
    futures.wait([read.task for read in list(library.prefetches.values())])
    encoded = {key[2] for key in library.images.entries if key[-1] == rendering}
    assert encoded == {0, 1, 2, 3}  # 0 and 1 as asked for, 2 and 3 read and encoded ahead
    ahead = library.images.get(("scan", "z", 3, 1, rendering))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(ahead))), to_display(VOLUME[3], 0.2, 0.8))


def test_window_maps_to_the_full_byte_range_and_clips():
    image = np.array([[-1.0, 0.0, 0.5], [1.0, 2.0, np.nan]], np.float32)
    np.testing.assert_array_equal(to_display(image, 0.0, 1.0), [[0, 0, 127], [255, 255, 0]])
    with pytest.raises(ValueError, match="must exceed"):
        to_display(image, 1.0, 1.0)


def test_display_range_ignores_outliers_and_never_collapses():
    values = np.concatenate([np.linspace(0, 1, 10_000), [1e9, -1e9, np.inf]])
    low, high = display_range(values)
    assert 0 <= low < 0.02 and 0.98 < high <= 1
    assert display_range(np.full(10, 3.0)) == (3.0, 4.0)


def test_downsampling_keeps_the_longer_side_within_bounds():
    image = np.zeros((2048, 1000))
    assert downsample(image, 1024).shape == (1024, 500)
    assert downsample(image, 4096) is image


def test_painted_labels_get_an_opaque_rim_so_they_show_over_a_prediction_of_their_colour():
    labels = np.full((7, 7), -1)
    labels[1:6, 1:6] = 0
    outlined = outline_labels(labels, colour_labels(labels, {0: (255, 0, 0)}))
    assert outlined[1, 3].tolist() == [255, 255, 255, 255] and outlined[3, 5].tolist() == [255, 255, 255, 255]
    assert outlined[3, 3].tolist() == [255, 0, 0, 255]  # the inside keeps its class colour
    assert outlined[0, 0, 3] == 0  # unlabelled stays transparent


def test_a_line_one_voxel_wide_keeps_its_colour():
    """What a stroke painted on a crossing slice leaves on this one: all rim, no inside."""
    labels = np.full((7, 7), -1)
    labels[3, 1:6] = 1
    labels[5, 0] = 0
    outlined = outline_labels(labels, colour_labels(labels, {0: (255, 0, 0), 1: (0, 0, 255)}))
    assert outlined[3, 1:6].tolist() == [[0, 0, 255, 255]] * 5 and outlined[5, 0].tolist() == [255, 0, 0, 255]


def test_label_overlay_colours_shown_classes_only():
    labels = np.array([[0, 1], [2, 1]])
    overlay = colour_labels(labels, {1: (255, 0, 0), 2: (0, 0, 255)}, hidden={2})
    assert overlay[0, 1].tolist() == [255, 0, 0, 255]
    assert overlay[1, 0, 3] == 0 and overlay[0, 0, 3] == 0


def test_a_palette_png_shows_what_the_rgba_overlay_shows():
    labels = np.array([[0, 1, -1], [2, 1, 0]], np.int8)
    colours = {0: (10, 20, 30), 1: (255, 0, 0), 2: (0, 0, 255)}
    decoded = np.asarray(Image.open(io.BytesIO(palette_png(labels, colours, hidden={2}))).convert("RGBA"))
    expected = colour_labels(labels, colours, hidden={2})
    shown = expected[..., 3] > 0
    assert (decoded[..., 3] == expected[..., 3]).all() and (decoded[shown] == expected[shown]).all()


def test_the_web_app_imports_neither_dask_nor_pandas_nor_xarray():
    """Tiled's array client would bring them, about 180 MiB; the app reads over plain HTTP (mlex_tomo.tiled_http)."""
    script = (
        "import sys; from mlex_tomo.settings import load_settings; from dash_app.app import create_app; "
        "create_app(load_settings(environ={})); "
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules} & {'dask', 'pandas', 'xarray'})))"
    )
    imported = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert imported == []


@pytest.mark.stack
def test_a_scan_removed_from_tiled_is_not_found_and_not_a_server_error(client, services):
    writer = services.tiled(writable=True)
    writer["recons"].create_container("doomed").write_array(VOLUME, key="data")
    assert client.get("/slices/doomed/z/0.png").status_code == 200  # the app now knows the scan
    writer["recons"]["doomed"].delete(recursive=True, external_only=False)
    response = client.get("/slices/doomed/y/5.png")  # y slices are read on demand, never from the read-ahead
    assert response.status_code == 404
    assert "removed from Tiled" in response.get_json()["error"]
