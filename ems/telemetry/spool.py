"""A bounded, durable, append-only disk spool for the ingestor.

When the store cannot take a batch (the InfluxDB server is down, the embedded
store's disk refuses writes), the ingestor appends the batch here, ``fsync``\\ s
it, and only then acknowledges its messages to the broker. When the store is
back it replays the spool oldest first, in the order the batches arrived, and
deletes each segment once every record in it was written. A restarted ingestor
finds what an earlier process spooled and replays it too.

Layout: a directory of segment files ``0000000001.spool``, ``0000000002.spool``,
... Each holds records appended one after the other::

    magic b"EMSP" | kind (1 byte) | length (u64) | crc32 (u32) | body

Kinds: ``R`` readings and ``E`` events (the body an Arrow IPC stream of the frame, ``ts``
as int64 ns UTC), ``S`` site and ``M`` meter registrations (a JSON list). An append that
the disk refuses (full, read-only) is cut off again, so it never hides later records. A record
cut short by a crash (only possible for a record not yet acknowledged) fails
its length or CRC check and ends the segment; replay logs it and goes on.

Disk use is bounded by ``limit_bytes``: an append that would pass it is refused
(the ingestor then stops acknowledging, and the broker holds the messages).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from ems.durable import fsync_dir, write_fsync
from ems.errors import ConfigError

__all__ = ["Spool", "frame", "read_frames"]

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<4scQI")
_MAGIC = b"EMSP"
_SUFFIX = ".spool"


def frame(kind: bytes, body: bytes) -> bytes:
    """One record: ``magic | kind | length | crc32 | body`` (the spool's, and the gateway history's)."""
    return _HEADER.pack(_MAGIC, kind, len(body), zlib.crc32(body)) + body


def read_frames(p: Path) -> list[tuple[bytes, bytes]]:
    """The records of a segment file, in order, up to the first one cut short or corrupt (logged)."""
    data = p.read_bytes()
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            log.warning("segment %s: %d bytes of a cut record at its end ignored", p, len(data) - pos)
            break
        magic, kind, n, crc = _HEADER.unpack_from(data, pos)
        body = data[pos + _HEADER.size : pos + _HEADER.size + n]
        if magic != _MAGIC or len(body) != n or zlib.crc32(body) != crc:
            log.warning("segment %s: record at byte %d is cut or corrupt; the rest is ignored", p, pos)
            break
        out.append((kind, body))
        pos += _HEADER.size + n
    return out


def _to_bytes(df: pd.DataFrame) -> bytes:
    idx = pd.DatetimeIndex(df.index)
    cols: dict[str, pa.Array] = {"ts": pa.array(idx.as_unit("ns").asi8, pa.int64())}
    for c in df.columns:
        s = df[c]
        if s.dtype == "float64":
            cols[c] = pa.array(s.to_numpy(dtype="float64"), pa.float64())
        else:
            cols[c] = pa.array(s.astype(str).to_numpy(dtype=object), pa.string())
    table = pa.table(cols)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _from_bytes(body: bytes, categorical: bool) -> pd.DataFrame:
    table = pa.ipc.open_stream(pa.BufferReader(body)).read_all()
    ts = pd.DatetimeIndex(table.column("ts").to_numpy().astype("datetime64[ns]"), name="ts").tz_localize("UTC")
    data: dict[str, object] = {}
    for name in table.column_names:
        if name == "ts":
            continue
        arr = table.column(name).to_numpy(zero_copy_only=False)
        if arr.dtype == object:
            data[name] = pd.Categorical(arr) if categorical else arr
        else:
            data[name] = arr
    return pd.DataFrame(data, index=ts)


class Spool:
    """Durable FIFO of batches (readings and events frames) on disk.

    Parameters
    ----------
    path : path
        Directory (created if missing). Segments left by an earlier process are kept
        and replayed first.
    limit_bytes : int [B]
        Most disk the spool may use; an append beyond it is refused.
    segment_bytes : int [B]
        Start a new segment file after this size.
    alarm_fraction : float
        :attr:`alarm` is raised when the spool holds this fraction of ``limit_bytes``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        limit_bytes: int = 1 << 30,
        segment_bytes: int = 16 << 20,
        alarm_fraction: float = 0.8,
    ) -> None:
        if limit_bytes <= 0:
            raise ConfigError(f"spool limit must be > 0 bytes, found {limit_bytes}")
        if not 0 < alarm_fraction <= 1:
            raise ConfigError(f"spool alarm fraction must be in (0, 1], found {alarm_fraction}")
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"spool directory {self.path}: expected a writable directory; {exc.strerror}") from None
        self.limit_bytes = int(limit_bytes)
        self.segment_bytes = int(segment_bytes)
        self.alarm_fraction = float(alarm_fraction)
        self._sizes: dict[Path, int] = {p: p.stat().st_size for p in self._segments()}
        self._current: Path | None = None
        self._fh: object | None = None
        self._done: dict[Path, int] = {}  # records already replayed from a segment (this process)
        if self._sizes:
            log.warning("spool %s holds %d bytes from an earlier run; they are replayed first", self.path, self.used_bytes)

    # ------------------------------------------------------------------ state

    def _segments(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.name.endswith(_SUFFIX))

    @property
    def used_bytes(self) -> int:
        """Disk used by the segments [B]."""
        return sum(self._sizes.values())

    def empty(self) -> bool:
        """True when nothing waits for replay."""
        return not self._sizes

    @property
    def alarm(self) -> bool:
        """True when the spool holds at least ``alarm_fraction`` of its limit."""
        return self.used_bytes >= self.alarm_fraction * self.limit_bytes

    # ------------------------------------------------------------------ append

    def _close_current(self) -> None:
        fh = self._fh
        if fh is not None:
            fh.close()  # type: ignore[attr-defined]
        self._fh = None
        self._current = None

    def _open_new(self) -> None:
        self._close_current()
        last = self._segments()
        n = int(last[-1].name[: -len(_SUFFIX)]) + 1 if last else 1
        p = self.path / f"{n:010d}{_SUFFIX}"
        self._fh = open(p, "ab", buffering=0)  # noqa: SIM115 - kept open across appends
        self._current = p
        self._sizes[p] = 0
        fsync_dir(self.path)

    def append(
        self,
        readings: pd.DataFrame | None,
        events: pd.DataFrame | None = None,
        registrations: list[tuple[bytes, list[dict[str, Any]]]] | None = None,
    ) -> bool:
        """Append one batch durably (written and fsynced when this returns True).

        Parameters
        ----------
        readings, events : DataFrame, optional
        registrations : list of (kind, dicts), optional
            Site (``b"S"``) and meter (``b"M"``) registrations, written before the frames.

        Returns
        -------
        bool
            False if the batch would take the spool past ``limit_bytes`` (nothing written).

        Raises
        ------
        OSError
            The disk refused the write (full, read-only): nothing of the batch stays in the spool.
        """
        bodies = [(k, json.dumps(objs, default=str).encode()) for k, objs in registrations or [] if objs]
        if readings is not None and len(readings):
            bodies.append((b"R", _to_bytes(readings)))
        if events is not None and len(events):
            bodies.append((b"E", _to_bytes(events)))
        if not bodies:
            return True
        blob = b"".join(frame(k, b) for k, b in bodies)
        if self.used_bytes + len(blob) > self.limit_bytes:
            return False
        if self._fh is None or self._current is None or self._sizes.get(self._current, 0) >= self.segment_bytes:
            self._open_new()
        assert self._fh is not None and self._current is not None
        self._write_all(blob)
        self._sizes[self._current] += len(blob)
        return True

    def _write_all(self, blob: bytes) -> None:
        """Write and fsync ``blob`` at the end of the current segment, or leave the segment as it was."""
        assert self._fh is not None and self._current is not None
        fh: Any = self._fh
        start = self._sizes[self._current]
        try:
            write_fsync(fh, blob)
        except OSError:
            try:  # a partial record would end the segment at replay and hide what comes after it
                fh.truncate(start)
            except OSError:
                self._close_current()  # later appends go to a new segment
            raise

    # ------------------------------------------------------------------ replay

    def replay(
        self,
        write: Callable[[pd.DataFrame | None, pd.DataFrame | None], None],
        register: Callable[[bytes, list[dict[str, Any]]], None] | None = None,
    ) -> int:
        """Write every spooled record with ``write(readings, events)`` (registrations with ``register``), oldest first.

        A segment is deleted when all its records were written. If ``write``
        raises, replay stops there (the exception propagates) and the next call
        continues with the same record.

        Returns
        -------
        int
            Readings frames' rows replayed.
        """
        rows = 0
        for p in sorted(self._sizes):
            if p == self._current:
                self._close_current()  # new appends go to a new segment
            records = read_frames(p)
            start = self._done.get(p, 0)
            for i in range(start, len(records)):
                kind, body = records[i]
                if kind in (b"S", b"M"):
                    if register is not None:
                        register(kind, json.loads(body))
                elif kind == b"R":
                    df = _from_bytes(body, categorical=True)
                    write(df, None)
                    rows += len(df)
                else:
                    write(None, _from_bytes(body, categorical=False))
                self._done[p] = i + 1
            p.unlink()
            self._sizes.pop(p, None)
            self._done.pop(p, None)
            fsync_dir(self.path)
        return rows

    def close(self) -> None:
        """Close the open segment (what it holds stays for the next run)."""
        self._close_current()
