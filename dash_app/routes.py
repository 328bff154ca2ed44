"""HTTP routes of the web app's server: slice images and display defaults, as the browser asks.

Images are plain URLs (`<img src>` or a figure's layout image), never base64 inside
figure JSON, so the browser caches them and Dash callbacks stay small.
"""

from __future__ import annotations

import logging
import math
import re

from flask import Blueprint, Response, jsonify, request

from dash_app.imaging import encode
from dash_app.masks import MaskOverlays
from dash_app.preview import LivePreviews, PreviewUnavailable
from dash_app.results import ResultNotFound, ResultOverlays
from dash_app.volumes import InvalidSlice, Rendering, ScanLibrary, ScanNotFound, UnreadableScan, check_slice

DEFAULT_MAX_SIZE = 1024
LARGEST_MAX_SIZE = 8192
IMAGE_CACHE_SECONDS = 3600  # a slice of a registered scan never changes
MASK_ID = re.compile(r"[0-9a-f]{32}")  # `Annotations.mask_id`

logger = logging.getLogger(__name__)


def slice_routes(library: ScanLibrary, masks: MaskOverlays, results: ResultOverlays, previews: LivePreviews) -> Blueprint:
    routes = Blueprint("slices", __name__)

    @routes.get("/previews/<scan>/<mask_id>/<axis>/<int:index>.png")
    def preview_overlay(scan: str, mask_id: str, axis: str, index: int) -> Response:
        """The live preview of one slice by the forest of a saved mask; what it trained on, in headers.

        409 while nothing can be previewed (one class painted); any failure is a JSON
        message the app shows, never a broken page.
        """
        try:
            if not MASK_ID.fullmatch(mask_id):
                raise ValueError(f"{mask_id!r} is not a mask id (32 hexadecimal digits)")
            check_slice(library.volume(scan).shape, axis, index)
            preview = previews.preview(scan, mask_id, axis, index)
            image = previews.overlay_png(scan, mask_id, preview, _hidden_classes())
        except PreviewUnavailable as error:
            return _problem(409, str(error))
        except (ScanNotFound, LookupError) as error:
            return _problem(404, str(error))
        except (InvalidSlice, ValueError) as error:
            return _problem(400, str(error))
        except Exception as error:  # Tiled down, out of memory, a bug: said, and painting goes on
            logger.exception("preview of %s %s=%d failed", scan, axis, index)
            return _problem(500, f"the preview failed: {error}")
        response = _png_response(image, cacheable=True)  # a mask id is its content's hash: its preview never changes
        response.headers.update(preview.headers())
        return response

    @routes.post("/previews/<scan>/<axis>/<int:index>/warm")
    def warm_preview(scan: str, axis: str, index: int) -> Response:
        """Prepare the preview of a slice before anything is painted (202: it computes in the background)."""
        try:
            check_slice(library.volume(scan).shape, axis, index)
        except ScanNotFound as error:
            return _problem(404, str(error))
        except InvalidSlice as error:
            return _problem(400, str(error))
        previews.warm(scan, axis, index)
        response = jsonify({"warming": f"{axis} = {index}"})
        response.status_code = 202
        return response

    @routes.get("/previews/<scan>/<mask_id>/uncertainty")
    def preview_uncertainty(scan: str, mask_id: str) -> Response:
        """What follows a forest's first preview: its held-out score, and its mean uncertainty on the z slices estimated so far."""
        if not MASK_ID.fullmatch(mask_id):
            return _problem(400, f"{mask_id!r} is not a mask id (32 hexadecimal digits)")
        estimates = previews.slice_uncertainty(scan, mask_id)
        slices = sorted(estimates)
        scored, score = previews.held_out_score(scan, mask_id)
        return jsonify({
            "slices": slices,
            "mean_uncertainty": [round(estimates[z], 4) for z in slices],
            "scored": scored,
            "held_out": None if score is None else {"pixels": score.pixels, "mean_iou": round(score.mean_iou, 4)},
        })

    @routes.get("/masks/<scan>/<mask_id>/<axis>/<int:index>.png")
    def mask_overlay(scan: str, mask_id: str, axis: str, index: int) -> Response:
        """The painted labels of one slice along any axis in their classes' colours (less `hidden`), transparent elsewhere."""
        try:
            shape = library.volume(scan).shape
            check_slice(shape, axis, index)
            image = masks.overlay(scan, mask_id, axis, index, shape, _hidden_classes())
        except (ScanNotFound, LookupError) as error:
            return _problem(404, str(error))
        except (InvalidSlice, ValueError) as error:
            return _problem(400, str(error))
        return _png(image, cacheable=True)

    @routes.get("/results/<scan>/<job_id>/<axis>/<int:index>.png")
    def result_overlay(scan: str, job_id: str, axis: str, index: int) -> Response:
        """A job's labels of one slice along any axis; cached by the browser only once the job has finished."""
        try:
            shape = library.volume(scan).shape
            check_slice(shape, axis, index)
            image, final = results.overlay(job_id, axis, index, shape, _hidden_classes())
        except (ScanNotFound, ResultNotFound) as error:
            return _problem(404, str(error))
        except (InvalidSlice, ValueError) as error:
            return _problem(400, str(error))
        return _png(image, cacheable=final)

    @routes.get("/slices/<scan>/<axis>/<int:index>.<image_format>")
    def slice_image(scan: str, axis: str, index: int, image_format: str) -> Response:
        if image_format not in ("png", "jpeg"):
            return _problem(400, f"format must be png or jpeg, not {image_format!r}")
        try:
            low, high, max_size = _window_arguments(library, scan)
            body = library.image(scan, axis, index, max_size, Rendering(low, high, image_format))
        except ScanNotFound as error:
            return _problem(404, str(error))
        except (InvalidSlice, ValueError) as error:
            return _problem(400, str(error))
        response = Response(body, mimetype=f"image/{image_format}")
        response.headers["Cache-Control"] = f"private, max-age={IMAGE_CACHE_SECONDS}"
        return response

    @routes.get("/scans/<scan>/voxels/<int:z>/<int:y>/<int:x>")
    def voxel_value(scan: str, z: int, y: int, x: int) -> Response:
        """The value under the pointer; null when it is not a finite number (JSON has no NaN)."""
        try:
            value = library.voxel(scan, z, y, x)
        except ScanNotFound as error:
            return _problem(404, str(error))
        except InvalidSlice as error:
            return _problem(400, str(error))
        return jsonify({"z": z, "y": y, "x": x, "value": value if math.isfinite(value) else None})

    @routes.get("/scans/<scan>/display")
    def display_defaults(scan: str) -> Response:
        try:
            defaults = library.display_defaults(scan)
            shape = library.volume(scan).shape
        except ScanNotFound as error:
            return _problem(404, str(error))
        except UnreadableScan as error:
            return _problem(422, str(error))
        return jsonify({"shape": list(shape), **defaults.__dict__})

    return routes


def _window_arguments(library: ScanLibrary, scan: str) -> tuple[float, float, int]:
    """`low`, `high` (default: the scan's display defaults) and `max_size` from the query string."""
    try:
        max_size = int(request.args.get("max_size", DEFAULT_MAX_SIZE))
        low_text, high_text = request.args.get("low"), request.args.get("high")
        if low_text is None or high_text is None:
            defaults = library.display_defaults(scan)
            low, high = defaults.low, defaults.high
        else:
            low, high = float(low_text), float(high_text)
    except ValueError as error:
        raise ValueError(f"low, high and max_size must be numbers: {error}") from None
    if not 16 <= max_size <= LARGEST_MAX_SIZE:
        raise ValueError(f"max_size must be within 16..{LARGEST_MAX_SIZE}, got {max_size}")
    if not high > low:
        raise ValueError(f"high ({high:g}) must exceed low ({low:g})")
    return low, high, max_size


def _hidden_classes() -> set[int]:
    """`hidden=0,2`: the classes an overlay leaves out."""
    text = request.args.get("hidden", "")
    try:
        return {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise ValueError(f"hidden must be comma-separated class numbers, got {text!r}") from None


def _png(image, cacheable: bool) -> Response:
    return _png_response(encode(image, "png"), cacheable)


def _png_response(data: bytes, cacheable: bool) -> Response:
    response = Response(data, mimetype="image/png")
    response.headers["Cache-Control"] = f"private, max-age={IMAGE_CACHE_SECONDS}" if cacheable else "no-store"
    return response


def _problem(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response
