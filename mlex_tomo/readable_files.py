"""Where a registered file's bytes really come from, and the refusal of any source outside the data roots.

An HDF5 file under the roots can still serve bytes from elsewhere: an external link on
the way to the dataset (to another HDF5 file), external raw storage (any file at all,
`/etc/passwd` or Tiled's own API key, read byte for byte), or a virtual dataset whose
sources are other files, each of which may do the same again. The ingester checks all
of them before registering a scan (`locate_dataset`, then `check_storage`), and the
Tiled adapter checks the registered dataset again at every read, because a file can
change after it was registered (`check_registered_dataset`).

Names are resolved as libhdf5 resolves them when no prefix is configured (the stack
sets none): an external link or a virtual source named relatively is looked for beside
the file that names it. External raw storage named relatively is refused: libhdf5 looks
for it relative to the reading process's working folder, which is not under the roots.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import h5py

MAX_FILES = 16  # files one dataset may lead through (links, virtual sources): a loop or a maze is refused


class OutsideRoots(ValueError):
    """A dataset's bytes would come from a file outside the data roots, or from something that is not a plain file."""


def within_roots(path: Path, roots: list[Path], directory: bool = False) -> Path:
    """The path with symlinks and `..` resolved, if it is a regular file (or a folder) under one of the roots."""
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise OutsideRoots(f"{path} is outside the data roots ({', '.join(str(root) for root in roots)})")
    if resolved.exists() and not (resolved.is_dir() if directory else resolved.is_file()):
        raise OutsideRoots(f"{path} is not a {'folder' if directory else 'regular file'}")
    return resolved


def check_folder(folder: Path, roots: list[Path]) -> None:
    """Refuse a folder (a Zarr store) holding a link out of the roots or anything but files and folders.

    Reads the folder listings only: symlinks are resolved, nothing else is opened.
    """
    pending = [within_roots(folder, roots, directory=True)]
    seen = set(pending)
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    linked_folder = Path(entry.path).is_dir()
                    target = within_roots(Path(entry.path), roots, directory=linked_folder)
                    if linked_folder and target not in seen:
                        seen.add(target)
                        pending.append(target)
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif not entry.is_file(follow_symlinks=False):
                    raise OutsideRoots(f"{entry.path} is not a regular file")


def locate_dataset(file_path: Path, dataset_path: str, roots: list[Path], visited: int = 0) -> tuple[Path, str]:
    """(file, path in it) that hold the dataset once every external link on the way is followed.

    Each file on the way must lie under the roots. Soft links are followed within a file,
    since one may lead on through an external link.
    """
    if visited >= MAX_FILES:
        raise OutsideRoots(f"{file_path}:{dataset_path} leads through more than {MAX_FILES} files")
    file_path = within_roots(file_path, roots)
    with h5py.File(file_path, "r") as file:
        found = external_link_on_the_way(file, dataset_path)
    if found is None:
        return file_path, _normalised(dataset_path)
    link, remainder = found
    target = Path(link.filename)
    target = target if target.is_absolute() else file_path.parent / target
    return locate_dataset(target, posixpath.join(link.path, remainder), roots, visited + 1)


def check_storage(file_path: Path, dataset_path: str, roots: list[Path], visited: int = 0) -> int:
    """Refuse a dataset, or a group (a whole file registered as a container), whose bytes are stored outside the roots.

    Returns how many files were checked in all. `dataset_path` must lead to the object
    without external links (see `locate_dataset`); in a group, every dataset beneath it
    is checked, and every external link or soft link out of it is followed as a source.
    `visited` counts the files checked before this one, against MAX_FILES.
    """
    if visited >= MAX_FILES:
        raise OutsideRoots(f"{file_path}:{dataset_path} reads from more than {MAX_FILES} files")
    file_path = within_roots(file_path, roots)
    sources: list[tuple[Path, str]] = []  # (file, path in it) read from: virtual sources, links out of a group
    with h5py.File(file_path, "r") as file:
        node = file[dataset_path]
        datasets = [node] if isinstance(node, h5py.Dataset) else []
        if isinstance(node, h5py.Group):
            datasets, sources = _group_contents(node, file_path)
        for dataset in datasets:
            _check_external_storage(dataset, file_path, roots)
            for source in dataset.virtual_sources() if dataset.is_virtual else []:
                name = Path(source.file_name)
                source_file = file_path if source.file_name == "." else (name if name.is_absolute() else file_path.parent / name)
                sources.append((source_file, source.dset_name))
    visited += 1
    for source_file, source_path in sources:
        try:
            located_file, located_path = locate_dataset(source_file, source_path, roots, visited)
        except KeyError:  # a dangling link reads nothing; a missing virtual source reads the fill value
            continue
        visited = check_storage(located_file, located_path, roots, visited)
    return visited


def _group_contents(group: h5py.Group, file_path: Path) -> tuple[list[h5py.Dataset], list[tuple[Path, str]]]:
    """The datasets beneath a group, and the (file, path) its external links and outward soft links lead to."""
    datasets: list[h5py.Dataset] = []
    leads: list[tuple[Path, str]] = []

    def visit(name: str, link: h5py.HardLink | h5py.SoftLink | h5py.ExternalLink) -> None:
        path = posixpath.join(group.name, name)
        if isinstance(link, h5py.ExternalLink):
            target = Path(link.filename)
            leads.append((target if target.is_absolute() else file_path.parent / target, link.path))
        elif isinstance(link, h5py.SoftLink):
            target = _normalised(link.path if link.path.startswith("/") else posixpath.join(posixpath.dirname(path), link.path))
            if not (target + "/").startswith(group.name.rstrip("/") + "/"):  # beneath it, it is visited anyway
                leads.append((file_path, target))
        elif isinstance(group.get(name), h5py.Dataset):
            datasets.append(group[name])

    group.visititems_links(visit)
    return datasets, leads


def check_registered_dataset(file_path: Path, dataset_path: str, roots: list[Path]) -> None:
    """What the Tiled adapter asks before each read: the registered dataset reads nothing outside the roots.

    A registered dataset was reached without external links; one found on the way now
    means the file changed, and it is refused rather than followed.
    """
    file_path = within_roots(file_path, roots)
    with h5py.File(file_path, "r") as file:
        found = external_link_on_the_way(file, dataset_path)
    if found is not None:
        raise OutsideRoots(f"{file_path}:{dataset_path} now goes through an external link to {found[0].filename}")
    check_storage(file_path, dataset_path, roots)


def _check_external_storage(dataset: h5py.Dataset, file_path: Path, roots: list[Path]) -> None:
    for name, _, _ in dataset.external or []:
        name = name.decode() if isinstance(name, bytes) else name
        if not Path(name).is_absolute():
            raise OutsideRoots(
                f"{file_path}:{dataset.name} stores its data in the external file {name!r}, named relative "
                "to the reading process's folder; only absolute names under the data roots are accepted"
            )
        try:
            within_roots(Path(name), roots)
        except OutsideRoots as reason:
            raise OutsideRoots(f"{file_path}:{dataset.name} stores its data in an external file: {reason}") from None


def external_link_on_the_way(file: h5py.File, dataset_path: str) -> tuple[h5py.ExternalLink, str] | None:
    """The first external link met walking to `dataset_path` (soft links followed), with the path left after it."""
    parts = [part for part in _normalised(dataset_path).split("/") if part]
    current, hops = "/", 0
    while parts:
        part = parts.pop(0)
        here = posixpath.join(current, part)
        link = file.get(here, getlink=True)
        if link is None:
            raise KeyError(f"no {here} in {file.filename}")
        if isinstance(link, h5py.ExternalLink):
            return link, "/".join(parts)
        if isinstance(link, h5py.SoftLink):
            hops += 1
            if hops > 64:
                raise OutsideRoots(f"{file.filename}:{dataset_path} loops through soft links")
            target = link.path if link.path.startswith("/") else posixpath.join(current, link.path)
            parts = [piece for piece in _normalised(target).split("/") if piece] + parts
            current = "/"
            continue
        current = here
    return None


def _normalised(dataset_path: str) -> str:
    return posixpath.normpath("/" + dataset_path.lstrip("/"))
