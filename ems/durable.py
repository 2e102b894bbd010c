"""Durable files: writes that are on disk when they return, and files replaced whole or not at all.

* :func:`stage` writes a file under a temporary name and fsyncs it; :func:`commit` renames
  it into place and fsyncs the directory; :func:`publish` does both, so a reader sees
  either the whole file or nothing, and the file is durable once its writer returns
  (the store's segments, its registry and aggregates, the telemetry ledger).
* :func:`write_fsync` appends all of some bytes to an open file and fsyncs it (the
  spool's records, the dead-letter file); the caller decides what to do with a partial
  write when it fails.
* :func:`fsync_dir` makes a rename or unlink in a directory durable.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write_bytes", "commit", "fsync_dir", "publish", "stage", "write_fsync"]


def fsync_dir(folder: Path) -> None:
    """fsync a directory so that a rename or unlink in it is durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(folder: Path, name: str, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically and durably: temp name, fsync, rename, fsync dir.

    Parameters
    ----------
    folder : Path
        Destination directory (created if missing).
    name : str
        Final file name.
    write : callable
        Called with a binary file object to write the content to.

    Returns
    -------
    Path
        The published file.
    """
    return commit(stage(folder, write), name)


def stage(folder: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file under a temporary name in ``folder`` (invisible to readers) and fsync it;
    :func:`commit` publishes it. Nothing is left behind if ``write`` fails."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


def commit(tmp: Path, name: str) -> Path:
    """Publish a staged file under its final ``name``: rename (atomic), fsync of the directory."""
    final = tmp.parent / name
    try:
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(tmp.parent)
    return final


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""

    def write(f: IO[bytes]) -> None:
        f.write(data)

    publish(path.parent, path.name, write)


def write_fsync(fh: Any, data: bytes) -> None:
    """Write all of ``data`` to the open binary file ``fh`` (a short write is continued) and fsync it.

    Raises
    ------
    OSError
        The write or the fsync failed; part of ``data`` may have been written.
    """
    view = memoryview(data)
    while view:
        n = fh.write(view)
        view = view[n or 0 :]
    os.fsync(fh.fileno())
