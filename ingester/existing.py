"""Register the reconstructions already under the data roots, as `mlex-tomo up` does.

The shipped sample scans, and scans written while the stack was down, were never
announced. Each goes through `Processor.process` as if announced, so the checks and
the registration are the ingester's own and a second start adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ingester.errors import Rejected, TiledUnavailable
from ingester.messages import IngestMessage
from ingester.processor import Processor
from ingester.sources import HDF5_SUFFIXES, SAVU_SUFFIX, TIFF_SUFFIXES, is_zarr_store
from mlex_tomo.settings import StackSettings


@dataclass
class ExistingScans:
    registered: list[str] = field(default_factory=list)
    """Tiled paths of the scans registered now."""
    unchanged: int = 0
    skipped: int = 0

    def summary(self) -> str:
        text = f"{len(self.registered)} registered, {self.unchanged} already registered"
        return text + (f", {self.skipped} skipped (reasons above)" if self.skipped else "")


def register_existing(settings: StackSettings, report: Callable[[str], None]) -> ExistingScans:
    """Register every scan `find_scans` lists; a file that cannot be registered is reported and skipped.

    Raises TiledUnavailable, or RuntimeError without an API key: nothing could be registered.
    """
    # A file on disk at start-up is as complete as it will get: waiting for a writer only delays the start.
    no_wait = settings.ingester.model_copy(update={"file_wait_seconds": 0})
    with Processor(settings.model_copy(update={"ingester": no_wait})) as processor:
        processor.registry  # noqa: B018 - connects: a Tiled problem stops here, not once per file
        result = ExistingScans()
        for root in settings.ingest_roots:
            for path in find_scans(root):
                try:
                    outcome = processor.process(IngestMessage(filePath=str(path)))
                except TiledUnavailable:
                    raise
                except Rejected as reason:
                    result.skipped += 1
                    report(f"not registering {path}: {reason}")
                except Exception as error:  # one file we cannot make sense of must not stop the others
                    result.skipped += 1
                    report(f"not registering {path}: internal error: {type(error).__name__}: {error}")
                else:
                    if outcome.kind == "registered":
                        result.registered.append(outcome.registration.path)
                        report(f"registered {path} at {outcome.registration.path}")
                    else:
                        result.unchanged += 1
    return result


def find_scans(root: Path) -> list[Path]:
    """What a reconstruction program would announce, for each scan in `root` or a folder directly below.

    Only two levels are read, where `simulate-scan` and the samples put scans, so a
    facility-wide root costs a directory listing, not a walk of the whole tree.
    """
    if not root.is_dir():
        return []
    scans: list[Path] = []
    for entry in _visible_entries(root):
        if _is_volume(entry):
            scans.append(entry)
        elif entry.is_dir():
            scans += _scans_in_folder(entry)
    return scans


def _scans_in_folder(folder: Path) -> list[Path]:
    if is_zarr_store(folder):
        return [folder]
    savu = sorted(folder.glob(f"*{SAVU_SUFFIX}.nxs"))
    if savu:  # its neighbours are the data it links to and its TiffSaver slices
        return savu
    try:
        entries = _visible_entries(folder)
    except OSError:
        return [folder]  # the processor reports why it cannot be read
    tiffs = [entry for entry in entries if entry.is_file() and entry.suffix.lower() in TIFF_SUFFIXES]
    scans = [entry for entry in entries if _is_volume(entry) and entry not in tiffs]
    return scans + ([folder] if len(tiffs) > 1 else tiffs)  # several TIFFs: a stack of slices


def _is_volume(path: Path) -> bool:
    suffix = path.suffix.lower()
    return is_zarr_store(path) or (path.is_file() and suffix in HDF5_SUFFIXES | TIFF_SUFFIXES)


def _visible_entries(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
