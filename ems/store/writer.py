"""Writing the embedded store: readings and events as immutable segments, and compaction.

Each ``write_readings`` call publishes one immutable segment per site atomically and
durably: encoded and fsync'ed under a temporary name with no lock held
(:func:`ems.durable.stage`), then numbered and renamed into place under the
writers' lock (:func:`ems.durable.commit`). Within a frame a
repeated (site, meter, quantity, ts) keeps its last row; against earlier writes the later
segment wins on read. Tiered compaction merges a generation of a site's segments once it
has ``fanout`` of them; :meth:`SegmentWriter.compact` merges everything.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ems.durable import atomic_write_bytes, commit, fsync_dir, publish, stage
from ems.errors import ReadingError
from ems.readings import EVENT_COLUMNS
from ems.store.arrays import (
    EVENTS_SCHEMA,
    TS,
    arrow_columns,
    frame_columns,
    segment_table,
    site_parts,
    write_table,
)
from ems.store.context import StoreContext
from ems.store.reader import SegmentReader
from ems.store.registry import check_site
from ems.store.segments import Segment, list_segments, overlap_groups, segment_name

__all__ = ["SegmentWriter", "SiteBatch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteBatch:
    """The rows of one site in one write, as published: sorted by ts, no repeated key.

    Attributes
    ----------
    site : str
    table : pyarrow.Table
        Columns ``ts`` (µs, UTC), ``meter``, ``quantity`` (dictionaries), ``value``.
    tmin, tmax : int [µs since the epoch, UTC]
    seq : int
        Sequence number of its segment, once published.
    """

    site: str
    table: pa.Table
    tmin: int
    tmax: int
    seq: int = 0


def site_batches(readings: pd.DataFrame | pa.Table, threads: int) -> list[SiteBatch]:
    """Check readings (a frame, or an Arrow table with a ``ts`` column) and split them by site
    into sorted, de-duplicated Arrow tables."""
    if isinstance(readings, pa.Table):
        cols = arrow_columns(readings, where="write_readings")
    else:
        cols = frame_columns(readings, where="write_readings")
    ts_ns, (site_codes, site_cats), (m_codes, m_cats), (q_codes, q_cats), values = cols
    if len(values) == 0:
        return []
    for s in site_cats:
        check_site(s)

    def prepare(part: tuple[str, np.ndarray | None]) -> SiteBatch:
        site, take = part
        t, m, q, v = ((ts_ns, m_codes, q_codes, values) if take is None
                      else (ts_ns[take], m_codes[take], q_codes[take], values[take]))
        table, tmin, tmax = segment_table(t // 1000, m, q, v, m_cats, q_cats)
        return SiteBatch(site, table, tmin, tmax)

    parts = site_parts(site_codes, site_cats)
    if len(parts) == 1:
        return [prepare(parts[0])]
    with ThreadPoolExecutor(min(threads, len(parts))) as ex:
        return list(ex.map(prepare, parts))


class SegmentWriter:
    """Publishes and compacts the segments of one store (see module docs).

    Parameters
    ----------
    ctx : StoreContext
    reader : SegmentReader
        Used to merge segments.
    fanout : int or None
        Tiered compaction after writes (None: only explicit :meth:`compact`).
    """

    def __init__(self, ctx: StoreContext, reader: SegmentReader, fanout: int | None) -> None:
        self.ctx = ctx
        self.reader = reader
        self.fanout = fanout

    def _next_seq(self, n: int) -> int:
        """Reserve ``n`` sequence numbers (hold the write lock); return the first."""
        f = self.ctx.root / "seq"
        try:
            last = int(f.read_text() or 0)
        except FileNotFoundError:
            last = 0
        atomic_write_bytes(f, str(last + n).encode())
        return last + 1

    def write_readings(self, readings: pd.DataFrame | pa.Table,
                       after: Callable[[list[SiteBatch]], None] | None = None) -> int:
        """Write readings (the contract's tidy frame, or the same as an Arrow table with a ``ts``
        column); return the rows accepted.

        ``after`` runs with the published batches, before this returns (the register
        aggregates are brought up to date there, under their own per-site locks).
        """
        self.ctx.writable("write_readings")
        batches = site_batches(readings, self.ctx.threads)
        if not batches:
            return 0
        root, compression = self.ctx.root, self.ctx.compression

        def encode(b: SiteBatch) -> Path:
            return stage(root / "readings" / f"site={b.site}", lambda f: write_table(b.table, f, compression))

        with ThreadPoolExecutor(min(self.ctx.threads, len(batches))) as ex:
            staged = list(ex.map(encode, batches))  # Parquet encoding: no lock held
        try:
            with self.ctx.write_lock.hold():
                seq0 = self._next_seq(len(batches))
                batches = [dataclasses.replace(b, seq=seq0 + i) for i, b in enumerate(batches)]
                paths = [commit(tmp, segment_name(b.seq, 0, b.tmin, b.tmax)) for tmp, b in zip(staged, batches, strict=True)]
        finally:
            for tmp in staged:
                tmp.unlink(missing_ok=True)  # not published (the lock not had, an error)
        if after is not None:
            after(batches)
        log.debug("wrote %d readings in %d segments to %s", len(readings), len(paths), root)
        self._auto_compact([p.parent for p in paths])
        return len(readings)

    def write_events(self, events: pd.DataFrame) -> int:
        """Write an events frame (see :func:`ems.readings.events_frame`); return rows accepted.

        An event is identified by (site, kind, subject, ts); a repeat keeps the last write.
        """
        self.ctx.writable("write_events")
        if not isinstance(events.index, pd.DatetimeIndex) or events.index.tz is None:
            raise ReadingError(
                "write_events: expected a tz-aware DatetimeIndex named 'ts'; "
                f"found {type(events.index).__name__} (tz={getattr(events.index, 'tz', None)})"
            )
        missing = [c for c in EVENT_COLUMNS if c not in events.columns]
        if missing:
            raise ReadingError(f"write_events: expected columns {list(EVENT_COLUMNS)}, missing {missing}")
        if len(events) == 0:
            return 0
        n = len(events)
        keys = pd.DataFrame({c: events[c].astype(str).to_numpy() for c in ("site", "kind", "subject")}).assign(
            ts=events.index.asi8)
        events = events[~keys.duplicated(keep="last").to_numpy()]
        ts = events.index.tz_convert("UTC").as_unit("ns").asi8 // 1000
        for s in pd.unique(events["site"].astype(str)):
            check_site(str(s))
        cols: dict[str, Any] = {"ts": pa.array(ts, TS)}
        for c in EVENT_COLUMNS:
            cols[c] = (pa.array(events[c].to_numpy(dtype=np.float64)) if c == "value"
                       else pa.array(events[c].astype(str).tolist(), pa.string()))
        table = pa.table(cols, schema=EVENTS_SCHEMA)
        with self.ctx.write_lock.hold():
            seq = self._next_seq(1)
            publish(self.ctx.root / "events", segment_name(seq, 0, int(ts.min()), int(ts.max())),
                    lambda f: write_table(table, f, self.ctx.compression))
        self._auto_compact([self.ctx.root / "events"])
        return n

    # -- compaction -----------------------------------------------------------
    def compact(self) -> dict[str, int]:
        """Merge each site's segments into one, dropping superseded duplicates.

        Runs under the compaction lock; writers are held only while the list of
        segments is taken. The merged file is published before the old ones are
        deleted, so a reader sees old, both (and de-duplicates) or new.
        """
        self.ctx.writable("compact")
        before = after = 0
        with self.ctx.compact_lock.hold():
            folders = [self.ctx.root / "readings" / f"site={s}" for s in self.reader.site_ids()]
            folders.append(self.ctx.root / "events")
            for folder in folders:
                with self.ctx.write_lock.hold():
                    segs = list_segments(folder)
                before += len(segs)
                if len(segs) <= 1:
                    after += len(segs)
                    continue
                self._merge(folder, segs)
                after += 1
        log.info("compacted %s: %d segments -> %d", self.ctx.root, before, after)
        return {"before": before, "after": after}

    def _auto_compact(self, folders: list[Path]) -> None:
        """Tiered compaction: merge a generation of a folder once it has ``fanout`` segments.

        Every segment of a generation is newer than every segment of a higher one
        (a merge takes all segments of its generation and keeps their highest
        ``seq``), so merging one generation never reorders writes.
        """
        if self.fanout is None:
            return
        with self.ctx.compact_lock.hold(blocking=False) as got:
            if not got:
                return
            for folder in folders:
                while True:
                    with self.ctx.write_lock.hold():
                        segs = list_segments(folder)
                    gens: dict[int, list[Segment]] = {}
                    for sg in segs:
                        gens.setdefault(sg.gen, []).append(sg)
                    full = [g for g, lst in gens.items() if len(lst) >= self.fanout]
                    if not full:
                        break
                    log.debug("merging %d segments of generation %d in %s", len(gens[min(full)]), min(full), folder)
                    self._merge(folder, gens[min(full)])

    def _merge(self, folder: Path, segs: list[Segment]) -> None:
        name = segment_name(max(s.seq for s in segs), max(s.gen for s in segs) + 1, min(s.tmin for s in segs),
                            max(s.tmax for s in segs))
        if folder.name == "events":
            table = self.ctx.arrow(
                "SELECT ts, site, kind, subject, arg_max(value, filename) AS value, "
                "arg_max(unit, filename) AS unit, arg_max(detail, filename) AS detail "
                "FROM read_parquet($files, filename = true) "
                "GROUP BY ts, site, kind, subject ORDER BY ts, site, kind, subject",
                {"files": [str(s.path) for s in segs]},
            ).cast(EVENTS_SCHEMA)
        else:
            # time-ordered overlap groups: a lone segment is copied, overlapping ones are
            # de-duplicated by DuckDB (latest segment wins); the result stays sorted by ts
            groups = overlap_groups(segs)
            singles = [g for g in groups if len(g) == 1]
            with ThreadPoolExecutor(self.ctx.threads) as ex:  # pyarrow reads; DuckDB stays on this thread
                read = dict(zip([id(g) for g in singles],
                                ex.map(lambda g: self.reader.read_group(g, None, None), singles), strict=True))
            parts = [read[id(g)] if len(g) == 1 else self.reader.read_group(g, None, None) for g in groups]
            table = pa.concat_tables(parts).unify_dictionaries().combine_chunks()
        publish(folder, name, lambda f: write_table(table, f, self.ctx.compression))
        for s in segs:
            s.path.unlink()
        fsync_dir(folder)
