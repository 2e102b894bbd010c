"""What a gateway published, kept on disk for a bounded time, to answer backfill requests.

``ems stream`` answers a backfill request (:mod:`ems.telemetry.backfill`) from the
readings it streams; a gateway that polls meters (``ems gateway``) has no such source:
once published, a reading exists only at the broker. :class:`History` keeps every data
message the gateway published, exactly as published, in append-only segment files of the
spool's record format (:func:`ems.telemetry.spool.frame`: length and CRC32 per record),
so a request for a meter's ``from_seq..to_seq`` is answered with the same bytes.

It is **bounded** by ``limit_bytes``: when a new record would pass the limit the oldest
segment is deleted, so the history covers the latest ``limit_bytes`` of messages (about
255 bytes a reading of a three-quantity meter with full-precision values: 256 MiB hold about
a million readings, three weeks of 500 meters at 15-minute intervals). It is **durable** up to the last
:meth:`History.sync` (the gateway syncs it every second, before it saves its ledger, so
whatever the saved ledger counts as acknowledged is on disk), and a restarted gateway
reads the segments an earlier process left.

Record body: ``site/meter`` (UTF-8), a zero byte, ``seq`` (u64, little-endian), the payload.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ems.durable import fsync_dir
from ems.errors import ConfigError
from ems.telemetry.spool import frame, read_frames

__all__ = ["History"]

log = logging.getLogger(__name__)

_KIND = b"H"
_SEQ = struct.Struct("<Q")
_SUFFIX = ".history"


def _body(key: str, seq: int, payload: bytes) -> bytes:
    return key.encode() + b"\x00" + _SEQ.pack(seq) + payload


def _unpack(body: bytes) -> tuple[str, int, bytes]:
    cut = body.index(b"\x00")
    (seq,) = _SEQ.unpack_from(body, cut + 1)
    return body[:cut].decode(), int(seq), body[cut + 1 + _SEQ.size :]


class History:
    """Durable, bounded journal of published data messages, by (site, meter, seq) (see module docs).

    Parameters
    ----------
    path : path
        Directory (created if missing); segments an earlier process left are kept.
    limit_bytes : int [B]
        Most disk the history may use; the oldest segment goes first.
    segment_bytes : int [B]
        Start a new segment after this size (the unit of retention and of a look-up's read).
    """

    def __init__(self, path: str | os.PathLike[str], limit_bytes: int = 256 << 20, segment_bytes: int = 4 << 20) -> None:
        if limit_bytes < 2 * segment_bytes:
            raise ConfigError(f"history limit must be at least two segments ({2 * segment_bytes} bytes), "
                              f"found {limit_bytes}")
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"history directory {self.path}: expected a writable directory; {exc.strerror}") from None
        self.limit_bytes, self.segment_bytes = int(limit_bytes), int(segment_bytes)
        self._sizes: dict[Path, int] = {}
        self._ranges: dict[Path, dict[str, list[int]]] = {}  # per segment: key -> [lowest seq, highest seq]
        self._fh: Any = None
        self._current: Path | None = None
        self.dropped_segments = 0
        for p in sorted(self.path.glob(f"*{_SUFFIX}")):
            self._index(p)

    def _index(self, p: Path) -> None:
        ranges: dict[str, list[int]] = {}
        for _, body in read_frames(p):
            key, seq, _ = _unpack(body)
            r = ranges.setdefault(key, [seq, seq])
            r[0], r[1] = min(r[0], seq), max(r[1], seq)
        self._sizes[p], self._ranges[p] = p.stat().st_size, ranges

    @property
    def used_bytes(self) -> int:
        """Disk used by the segments [B]."""
        return sum(self._sizes.values())

    def first_seq(self, site: str, meter: str) -> int | None:
        """The oldest seq of a meter still held (None: none)."""
        key = f"{site}/{meter}"
        lows = [r[key][0] for r in self._ranges.values() if key in r]
        return min(lows) if lows else None

    # ------------------------------------------------------------------ writing

    def append(self, site: str, meter: str, seq: int, payload: bytes) -> None:
        """Add one published message (buffered: durable after :meth:`sync`).

        Raises
        ------
        OSError
            The disk refused the write.
        """
        key = f"{site}/{meter}"
        blob = frame(_KIND, _body(key, seq, payload))
        if self._current is None or self._sizes[self._current] >= self.segment_bytes:
            self._open_new()
        self._evict(len(blob))
        assert self._current is not None
        self._fh.write(blob)
        self._sizes[self._current] += len(blob)
        r = self._ranges[self._current].setdefault(key, [seq, seq])
        r[0], r[1] = min(r[0], seq), max(r[1], seq)

    def _open_new(self) -> None:
        self.sync()
        if self._fh is not None:
            self._fh.close()
        names = sorted(self._sizes)
        n = int(names[-1].name[: -len(_SUFFIX)]) + 1 if names else 1
        self._current = self.path / f"{n:010d}{_SUFFIX}"
        self._fh = open(self._current, "ab")  # noqa: SIM115 - kept open across appends
        self._sizes[self._current], self._ranges[self._current] = 0, {}
        fsync_dir(self.path)

    def _evict(self, incoming: int) -> None:
        """Delete the oldest segments (never the current one) until ``incoming`` more bytes fit."""
        while self.used_bytes + incoming > self.limit_bytes:
            old = next((p for p in sorted(self._sizes) if p != self._current), None)
            if old is None:
                return
            old.unlink(missing_ok=True)
            self._sizes.pop(old)
            self._ranges.pop(old)
            self.dropped_segments += 1
            log.info("history %s: dropped the oldest segment %s (limit %d bytes)", self.path, old.name, self.limit_bytes)

    def sync(self) -> None:
        """Make what was appended durable (flush and fsync the current segment)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Sync and close the current segment."""
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh, self._current = None, None

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def payloads(self, site: str, meter: str, from_seq: int, to_seq: int) -> Iterator[bytes]:
        """The messages of a meter with ``from_seq <= seq <= to_seq`` still held, in seq order (each once)."""
        key = f"{site}/{meter}"
        if self._fh is not None:
            self._fh.flush()
        found: dict[int, bytes] = {}
        for p in sorted(self._ranges):
            r = self._ranges[p].get(key)
            if r is None or r[1] < from_seq or r[0] > to_seq:
                continue
            for _, body in read_frames(p):
                k, seq, payload = _unpack(body)
                if k == key and from_seq <= seq <= to_seq:
                    found[seq] = payload
        for seq in sorted(found):
            yield found[seq]
