"""Tiled's HTTP API through a plain HTTP client, for the web app.

Tiled's own client imports Dask, xarray and pandas to read or write an array: about
180 MiB of memory and 8 s of imports per process. The web app reads slices and small
metadata documents and writes one small mask at a time, which needs none of that, and
one pooled connection serves all its threads. Jobs and flows, which move whole volumes,
keep Tiled's client.

Paths are node paths relative to the server's root, e.g. `recons/scan-001/data`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
from numpy.typing import NDArray

from mlex_tomo.backoff import Backoff

Selection = tuple[int | slice, ...]

API_PREFIX = "/api/v1"
PAGE_SIZE = 300
RETRIES = 3  # Tiled 0.2.18 may answer 500 for a node registered milliseconds ago
RETRY_BACKOFF = Backoff(first=0.2, longest=1.0)
RETRIED_STATUSES = (500, 502, 503, 504)

JSON_PATCH = "application/json-patch+json"


class TiledError(RuntimeError):
    """Tiled refused a request; the message carries Tiled's own explanation."""


class NodeNotFound(TiledError, LookupError):
    pass


@dataclass(frozen=True)
class Node:
    """One node as Tiled describes it: what it is, its metadata and, for arrays, its structure."""

    path: str
    structure_family: str
    metadata: dict[str, Any]
    structure: dict[str, Any]

    @classmethod
    def from_document(cls, path: str, document: dict[str, Any]) -> Node:
        attributes = document["attributes"]
        return cls(path, attributes["structure_family"], attributes.get("metadata") or {}, attributes.get("structure") or {})

    @property
    def is_array(self) -> bool:
        return self.structure_family == "array"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(extent) for extent in self.structure["shape"])

    @property
    def dtype(self) -> np.dtype:
        return dtype_from_tiled(self.structure["data_type"])


class TiledHttpClient:
    """Reads and writes nodes over one pooled HTTP connection; safe to share between threads."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_seconds: float = 60.0) -> None:
        headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/") + API_PREFIX, headers=headers, timeout=timeout_seconds)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TiledHttpClient:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def node(self, path: str) -> Node:
        return Node.from_document(path.strip("/"), self._get(f"/metadata/{_quoted(path)}").json()["data"])

    def exists(self, path: str) -> bool:
        try:
            self.node(path)
        except NodeNotFound:
            return False
        return True

    def children(self, path: str) -> dict[str, Node]:
        """Every child of a container, in Tiled's order, fetched a page at a time."""
        parent = path.strip("/")
        children: dict[str, Node] = {}
        while True:
            page = self._get(
                f"/search/{_quoted(parent)}", params={"page[offset]": len(children), "page[limit]": PAGE_SIZE}
            ).json()
            for document in page["data"]:
                children[document["id"]] = Node.from_document(f"{parent}/{document['id']}", document)
            if not page["data"] or page["links"].get("next") is None:
                return children

    def read(self, array: Node, selection: Selection = (), compressed: bool = False) -> NDArray[Any]:
        """The selected part of an array (integers and slices, steps included), as NumPy.

        Sent raw unless `compressed`. Tiled compresses a response on the fly when the
        client accepts it, and noisy reconstructions hardly shrink: Tiled then sends them
        raw anyway, after trying (8 strided 2048² slices here: 170 ms accepting zstd,
        370 ms gzip, 100 ms raw). Labels, mostly zeros, shrink a hundredfold.
        """
        params = {"slice": selection_text(selection)} if selection else {}
        headers = {"Accept": "application/octet-stream"}
        if not compressed:
            headers["Accept-Encoding"] = "identity"
        response = self._get(f"/array/full/{_quoted(array.path)}", params=params, headers=headers)
        shape = selected_shape(array.shape, selection)
        expected = int(np.prod(shape)) * array.dtype.itemsize
        if len(response.content) != expected:
            raise TiledError(f"Tiled sent {len(response.content)} bytes for /{array.path}[{selection_text(selection)}], expected {expected}")
        return np.frombuffer(response.content, dtype=array.dtype).reshape(shape)

    def create_container(self, parent: str, key: str, metadata: dict[str, Any]) -> Node:
        return self._create(parent, key, "container", metadata, [], {})

    def set_metadata(self, path: str, key: str, value: Any) -> None:
        """Set one top-level metadata key of a node, as given (a JSON Patch `add`: None stays null)."""
        operation = {"op": "add", "path": "/" + key.replace("~", "~0").replace("/", "~1"), "value": value}
        self._send("PATCH", f"/metadata/{_quoted(path)}", json={"content-type": JSON_PATCH, "metadata": [operation], "specs": None})

    def write_array(self, parent: str, key: str, array: NDArray[Any], metadata: dict[str, Any]) -> Node:
        """A new array node holding `array`, stored by Tiled one first-axis slice per chunk."""
        array = np.ascontiguousarray(array)
        structure = {
            "data_type": dtype_to_tiled(array.dtype),
            "shape": list(array.shape),
            "chunks": [[1] * array.shape[0], *([extent] for extent in array.shape[1:])] if array.ndim else [],
            "dims": None,
            "resizable": False,
        }
        data_source = {
            "structure_family": "array", "structure": structure, "id": None, "mimetype": None,
            "parameters": {}, "properties": {}, "assets": [], "management": "writable",
        }
        node = self._create(parent, key, "array", metadata, [data_source], structure)
        try:
            self._send(
                "PUT", f"/array/full/{_quoted(node.path)}", content=array.tobytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
        except TiledError:
            self._delete_quietly(node.path)  # an array node without its data must not pass for written
            raise
        return node

    def _delete_quietly(self, path: str) -> None:
        try:
            self._send("DELETE", f"/metadata/{_quoted(path)}", params={"recursive": False, "external_only": False})
        except TiledError:
            pass

    def _create(
        self, parent: str, key: str, structure_family: str, metadata: dict[str, Any], data_sources: list,
        structure: dict[str, Any],
    ) -> Node:
        """The node as created; described from what was sent, not read back (a request less)."""
        parent = parent.strip("/")
        body = {
            "id": key, "structure_family": structure_family, "metadata": metadata, "specs": [],
            "data_sources": data_sources, "access_blob": {},
        }
        self._send("POST", f"/metadata/{_quoted(parent)}", json=body)
        return Node(f"{parent}/{key}", structure_family, metadata, structure)

    def _get(self, url: str, **options: Any) -> httpx.Response:
        attempt = 1
        while True:
            try:
                response = self.http.get(url, **options)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as error:
                if attempt >= RETRIES:
                    raise TiledError(f"Tiled at {self.http.base_url} cannot be reached: {error}") from error
            except httpx.TransportError as error:  # a timeout: asking again would pile onto a stuck server
                raise TiledError(f"Tiled at {self.http.base_url} did not answer {url}: {error!r}") from error
            else:
                if response.status_code not in RETRIED_STATUSES or attempt >= RETRIES:
                    return _checked(response)
            time.sleep(RETRY_BACKOFF.delay(attempt))
            attempt += 1

    def _send(self, method: str, url: str, **options: Any) -> httpx.Response:
        """Writes are not retried: a timed-out write may have happened."""
        try:
            return _checked(self.http.request(method, url, **options))
        except httpx.TransportError as error:
            raise TiledError(f"Tiled at {self.http.base_url} cannot be reached: {error}") from error


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    message = f"Tiled answered {response.status_code} to {response.request.method} {response.request.url.path}: {detail}"
    raise (NodeNotFound if response.status_code == 404 else TiledError)(message)


def _quoted(path: str) -> str:
    return quote(path.strip("/"), safe="/")


def selection_text(selection: Selection) -> str:
    """NumPy's notation, as Tiled's `slice` parameter takes it: `5,::2,10:20`."""
    parts = []
    for item in selection:
        if isinstance(item, slice):
            start, stop, step = ("" if value is None else str(int(value)) for value in (item.start, item.stop, item.step))
            parts.append(f"{start}:{stop}:{step}" if step else f"{start}:{stop}")
        else:
            parts.append(str(int(item)))
    return ",".join(parts)


def selected_shape(shape: tuple[int, ...], selection: Selection) -> tuple[int, ...]:
    if len(selection) > len(shape):
        raise ValueError(f"{len(selection)} indices for an array of {len(shape)} dimensions")
    result = []
    for extent, item in zip(shape, selection):
        if isinstance(item, slice):
            result.append(len(range(*item.indices(extent))))
    return (*result, *shape[len(selection):])


def dtype_from_tiled(data_type: dict[str, Any]) -> np.dtype:
    order = {"little": "<", "big": ">"}.get(data_type.get("endianness"), "|")
    return np.dtype(f"{order}{data_type['kind']}{data_type['itemsize']}")


def dtype_to_tiled(dtype: np.dtype) -> dict[str, Any]:
    order = {"<": "little", ">": "big", "=": "little" if np.little_endian else "big"}.get(dtype.byteorder, "not_applicable")
    return {"endianness": order, "kind": dtype.kind, "itemsize": dtype.itemsize, "dt_units": None}
