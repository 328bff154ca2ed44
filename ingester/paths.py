"""Only files under the configured data roots may be registered.

Paths are resolved (symlinks followed, `..` collapsed) before the check, so neither
a symlink inside a root nor `root/../elsewhere` can expose a file outside it.
"""

from __future__ import annotations

from pathlib import Path

from ingester.errors import Rejected


def resolve_within_roots(file_path: str, roots: list[Path]) -> Path:
    if "\x00" in file_path:
        raise Rejected("filePath contains a NUL character")
    path = Path(file_path)
    if not path.is_absolute():
        raise Rejected(f"filePath must be absolute, got {file_path!r}")
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        shown = ", ".join(str(root) for root in roots)
        raise Rejected(f"{file_path} is outside the data roots ({shown})")
    return resolved
