"""Reading announced files' headers in a child process, each read bounded in time.

A file can take for ever to read (a stalled network mount, a file built to stall a
reader) or crash the reader (libhdf5 on a corrupt file). Read in a thread, a stalled
read would also hold h5py's global lock and stall every HDF5 file behind it. Read in a
child process, it is killed after `ingester.file_read_seconds`, the message is
dead-lettered with that reason and a fresh reader takes the next file.

The reader is one long-lived process (`python -m ingester.file_reader`), started on the
first file, so a file costs a round trip through a pipe, not a process start. It
ignores SIGINT and SIGTERM: a Ctrl-C reaches the whole process group, and the ingester
finishes the message in hand before it stops; the reader leaves when the ingester closes
its pipe, or the ingester exits and the system closes it.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ingester.errors import Rejected, Unreadable
from ingester.paths import resolve_within_roots
from ingester.sources import ScanDescription, describe

START_SECONDS = 60.0  # for the reader's imports, on top of the first file's bound
REAP_SECONDS = 5.0  # for a killed reader to go


class FileReader:
    """`read_announced` in the reader process, or Rejected when it is slower than `seconds` or dies."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None

    def describe(self, path: str, roots: list[Path], hdf5_dataset: str | None) -> ScanDescription:
        with self._lock:
            started_now = self._process is None
            if started_now:
                self._start()
            try:
                self._requests.send((path, roots, hdf5_dataset))
            except BrokenPipeError:  # gone since the last file (the OOM killer, say)
                self.close()
                self._start()
                started_now = True
                self._requests.send((path, roots, hdf5_dataset))
            if not self._replies.poll(self.seconds + (START_SECONDS if started_now else 0)):
                self.close()
                raise Rejected(f"reading {path} took longer than {self.seconds:g} s (ingester.file_read_seconds); the reader was stopped")
            try:
                succeeded, outcome = self._replies.recv()
            except EOFError:
                reader = self._process
                self.close()
                raise Rejected(f"reading {path} crashed the reader (exit code {reader.returncode})") from None
        if not succeeded:
            raise outcome
        return outcome

    def close(self) -> None:
        if self._process is None:
            return
        self._requests.close()
        self._replies.close()
        self._process.kill()
        try:
            self._process.wait(REAP_SECONDS)
        except subprocess.TimeoutExpired:  # stuck in the kernel on a hung mount: it goes when the mount answers
            pass
        self._process = self._requests = self._replies = None

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def _start(self) -> None:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ingester.file_reader", str(request_read), str(reply_write)],
            pass_fds=(request_read, reply_write), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )
        os.close(request_read)
        os.close(reply_write)
        self._requests = Connection(request_write, readable=False)
        self._replies = Connection(reply_read, writable=False)


def read_announced(path: str, roots: list[Path], hdf5_dataset: str | None) -> ScanDescription:
    """The announced scan, read here (even resolving a path can hang on a stalled mount)."""
    resolved = resolve_within_roots(path, roots)
    if not resolved.exists():
        raise Unreadable(f"{path} does not exist")
    return describe(resolved, roots, hdf5_dataset)


def serve(requests: Connection, replies: Connection) -> None:
    """The reader's loop: one file read per request, until the ingester closes the pipe (or exits)."""
    while True:
        try:
            path, roots, hdf5_dataset = requests.recv()
        except EOFError:
            return
        try:
            outcome: tuple[bool, Any] = (True, read_announced(path, roots, hdf5_dataset))
        except Exception as error:  # sent back and raised there, as if read in the ingester itself
            outcome = (False, error)
        try:
            replies.send(outcome)
        except (pickle.PicklingError, TypeError, AttributeError) as error:  # what does not pickle still says what went wrong
            problem = outcome[1] if not outcome[0] else error
            replies.send((False, Rejected(f"reading {path} failed: {problem}")))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
