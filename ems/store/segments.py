"""Immutable segment files on disk: naming, atomic publication, locks, overlap groups.

The embedded store (:mod:`ems.store.duckdb_store`) keeps its data as immutable
Parquet *segments*. This module holds the file mechanics that make that safe
with one writer process and any number of reader processes:

* A segment is written under a temporary name, fsync'ed, renamed into place and
  its directory fsync'ed (:func:`ems.durable.publish`; in two steps,
  :func:`ems.durable.stage` and :func:`ems.durable.commit`, so that a writer encodes
  outside the writers' lock), so a reader
  sees either the whole file or nothing, and a segment is durable once its writer
  returns.
* Segment names carry their ordering and time range:
  ``{seq:016d}-{gen:04d}-{tmin}-{tmax}.parquet`` where ``seq`` is a store-wide
  write sequence number, ``gen`` the compaction generation, and ``tmin``/``tmax``
  the first and last timestamp held [µs since the Unix epoch, UTC]. Readers list a
  directory and know, without opening a file, which segments can overlap.
* Writers serialise on an advisory ``flock`` (:class:`FileLock`); readers take no
  lock at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ems.errors import StoreError

__all__ = [
    "FileLock",
    "Segment",
    "list_segments",
    "overlap_groups",
    "segment_name",
]

_NAME = re.compile(r"^(\d{16})-(\d{4})-(-?\d+)-(-?\d+)\.parquet$")


@dataclass(frozen=True, order=True)
class Segment:
    """One published segment file.

    Attributes
    ----------
    seq : int
        Write sequence number; a higher one was written later.
    gen : int
        Compaction generation (0: written by a writer).
    tmin, tmax : int [µs since the Unix epoch, UTC]
        First and last timestamp held.
    path : Path
        Location of the file.
    """

    seq: int
    gen: int
    tmin: int
    tmax: int
    path: Path


def segment_name(seq: int, gen: int, tmin: int, tmax: int) -> str:
    """Return the file name of a segment (see module docs)."""
    return f"{seq:016d}-{gen:04d}-{tmin}-{tmax}.parquet"


def list_segments(folder: Path) -> list[Segment]:
    """List the published segments of ``folder`` in (seq, gen) order.

    Temporary files (names starting with ``.``) and foreign files are ignored. A
    missing folder holds no segments.
    """
    out: list[Segment] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return out
    for e in entries:
        m = _NAME.match(e.name)
        if m:
            out.append(Segment(int(m[1]), int(m[2]), int(m[3]), int(m[4]), Path(folder) / e.name))
    out.sort()
    return out


def overlap_groups(segments: list[Segment]) -> list[list[Segment]]:
    """Group segments whose time ranges overlap (transitively), in time order.

    A group of one segment needs no de-duplication on read (a segment never holds
    a key twice); a larger group does. Within a group, segments keep (seq, gen)
    order, so the last one wins.
    """
    groups: list[list[Segment]] = []
    hi: int | None = None
    for s in sorted(segments, key=lambda s: (s.tmin, s.tmax, s.seq, s.gen)):
        if groups and hi is not None and s.tmin <= hi:
            groups[-1].append(s)
            hi = max(hi, s.tmax)
        else:
            groups.append([s])
            hi = s.tmax
    return [sorted(g) for g in groups]


class FileLock:
    """An exclusive advisory lock on a file (``flock``), across processes.

    Parameters
    ----------
    path : Path
        Lock file (created if missing; its content is irrelevant).
    timeout_s : float [s], optional
        Longest wait for a blocking :meth:`hold`; then :class:`StoreError`. None waits forever.
    """

    def __init__(self, path: Path, timeout_s: float | None = None) -> None:
        self.path = path
        self.timeout_s = timeout_s

    @contextlib.contextmanager
    def hold(self, *, blocking: bool = True) -> Iterator[bool]:
        """Hold the lock for the ``with`` block; yield False if not blocking and busy."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            timed = blocking and self.timeout_s is not None
            flags = fcntl.LOCK_EX | (0 if blocking and not timed else fcntl.LOCK_NB)
            deadline = time.monotonic() + (self.timeout_s or 0.0)
            while True:
                try:
                    fcntl.flock(fd, flags)
                    break
                except BlockingIOError:
                    if not timed:
                        yield False
                        return
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            f"cannot lock {self.path}: another process held it for more than "
                            f"{self.timeout_s:g} s"
                        ) from None
                    time.sleep(0.05)
                except OSError as exc:
                    raise StoreError(f"cannot lock {self.path}: {exc}") from exc
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
