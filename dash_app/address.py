"""The view kept in the page's address (`?scan=…&axis=y&slice=12&zoom=…`), as the browser writes it.

assets/view_address.js writes the address as the view changes, so a reload or a shared
link returns to the same scan, axis, slice and zoom; the server reads it once, when the
page opens. A hand-edited address that names nothing valid opens the default view.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from pydantic import BaseModel, Field, ValidationError

from dash_app.volumes import Axis


class AddressedView(BaseModel):
    scan: str = Field(min_length=1, max_length=256)
    axis: Axis = "z"
    slice: int | None = Field(default=None, ge=0)


def view_from_address(search: str | None) -> AddressedView | None:
    """The view the address names, or None when it names none (or nothing valid)."""
    values = {name: found[0] for name, found in parse_qs((search or "").lstrip("?")).items()}
    if "scan" not in values:
        return None
    try:
        return AddressedView.model_validate({name: values[name] for name in ("scan", "axis", "slice") if name in values})
    except ValidationError:
        return None
