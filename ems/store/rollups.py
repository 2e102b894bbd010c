"""Register aggregates of the embedded store: stage 1 pushed down, kept up to date as written.

What time-series databases call continuous aggregates (TimescaleDB) or downsampling tasks
(InfluxDB): per site, the stage-1 rows (:mod:`ems.accounting.energy`: register energy per
hour, local day and tariff period, and the anomalies) of the *finished* local days are kept
in Parquet files beside the raw segments; a query reads them and computes only the days
after them from the raw readings (a "real-time aggregate"). Because stage 1 of whole local
days is bit-identical to stage 1 of everything, the answer is exactly
:func:`ems.accounting.energy.stage1` of all the site's readings.

Layout::

    rollups/site=<site>/manifest.json                  watermark, files, series at the watermark
    rollups/site=<site>/<seq>-daily.parquet            daily rows of every materialized day
    rollups/site=<site>/<seq>-anomalies.parquet        their resets, rollovers, gaps
    rollups/site=<site>/<seq>-hourly.parquet           hourly rows of a chunk of days (hourly matching)

The manifest says which intervals are materialized: every interval that *starts* before
``watermark`` (a local midnight of the site), in chunks ``[lo, hi)`` of whole days. It is
replaced atomically after the chunk files it names are published, and old files are
deleted after that, so a reader sees one consistent set (or retries).

Kept up to date under the writers' lock, after every ``write_readings``:

1. a write that reaches into materialized days (late data, a backfill, a rewrite), or
   that continues a series which had no reading at or after the watermark when it was set
   (``open``), makes the chunks holding the affected intervals be computed again from the
   raw readings: from the reading before the written ones to the reading after them;
2. the watermark then moves to the last local midnight that every series of the site
   has reached (series silent for two days do not hold it back), and the days in between
   are materialized (days added one by one are merged into chunks of about a month).

:meth:`RegisterAggregates.rebuild` drops the files and materializes again from raw data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ems.accounting.energy import (
    ANOMALY_COLUMNS,
    HOURLY_COLUMNS,
    STAGE1_COLUMNS,
    Stage1,
    empty_anomalies,
    stage1,
)
from ems.errors import EmsError
from ems.readings import QUANTITIES, MeterInfo, ReadingSet, SiteInfo, empty_events, empty_readings
from ems.store.context import StoreContext
from ems.store.reader import SegmentReader, readings_frame
from ems.store.registry import Registry
from ems.store.segments import atomic_write_bytes
from ems.store.writer import SiteBatch

__all__ = ["Manifest", "RegisterAggregates", "day_start"]

log = logging.getLogger(__name__)

_NS_D = 86_400_000_000_000
_LOOK_NS = 2 * _NS_D
_REGISTERS = {q.name for q in QUANTITIES.values() if q.kind == "register"}


@dataclass
class Manifest:
    """What is materialized for one site (see module docs).

    ``series`` holds, for every register series at the watermark, its last reading before
    it and its first reading at or after it ([ns]; None: none): a later write that lands
    between them changes an interval that starts before the watermark.
    """

    watermark: int | None = None  # [ns]; None: nothing yet
    chunks: list[dict[str, int]] = field(default_factory=list)  # hourly files {"seq", "lo", "hi"} [ns], in time order
    tables: int | None = None  # seq of the daily and anomalies files of every materialized day
    series: dict[str, list[int | None]] = field(default_factory=dict)  # "meter/quantity" -> [before, after]
    next_seq: int = 1

    def to_json(self) -> bytes:
        return json.dumps({"version": 1, "watermark": self.watermark, "chunks": self.chunks, "tables": self.tables,
                           "series": self.series, "next_seq": self.next_seq}, indent=1).encode()

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except ValueError as exc:
            raise EmsError(f"{path}: unreadable register aggregates manifest ({exc}); rebuild them") from exc
        return cls(d.get("watermark"), list(d.get("chunks") or []), d.get("tables"), dict(d.get("series") or {}),
                   int(d.get("next_seq", 1)))


def day_start(t_ns: int, tz: str) -> int:
    """First instant [ns, UTC] of the local day (zone ``tz``) that contains ``t_ns``."""
    local = pd.Timestamp(t_ns, unit="ns", tz="UTC").tz_convert(tz)
    midnight = pd.Timestamp(local.date()).tz_localize(tz, nonexistent="shift_forward", ambiguous=True)
    return int(midnight.tz_convert("UTC").value)


@dataclass
class Written:
    """What a write (or several, merged) put into one site: its time span [µs], each register
    series' first and last reading [ns], the meters, and the rows when there is one batch."""

    site: str
    tmin: int
    tmax: int
    first: dict[str, int]
    last: dict[str, int]
    meters: set[str]
    table: pa.Table | None = None
    seq: int = 0

    @classmethod
    def of(cls, b: SiteBatch) -> Written:
        meters = set(b.table.column("meter").combine_chunks().dictionary.to_pylist()) if b.table.num_rows else set()
        return cls(b.site, b.tmin, b.tmax, _written(b.table, "min"), _written(b.table, "max"), meters, b.table, b.seq)

    def merge(self, other: Written) -> Written:
        first = {k: min(v, other.first.get(k, v)) for k, v in self.first.items()} | {
            k: v for k, v in other.first.items() if k not in self.first}
        last = {k: max(v, other.last.get(k, v)) for k, v in self.last.items()} | {
            k: v for k, v in other.last.items() if k not in self.last}
        return Written(self.site, min(self.tmin, other.tmin), max(self.tmax, other.tmax), first, last,
                       self.meters | other.meters)


class RegisterAggregates:
    """Materialized stage 1 of one store, per site (see module docs).

    Parameters
    ----------
    ctx : StoreContext
    reader : SegmentReader
    registry : Registry
    active_s : float [s]
        A series whose newest reading is this much older than the site's newest counts as
        silent: the watermark does not wait for it (when it speaks again, the intervals it
        changes are computed again).
    """

    def __init__(self, ctx: StoreContext, reader: SegmentReader, registry: Registry, active_s: float = 2 * 86400.0) -> None:
        self.ctx = ctx
        self.reader = reader
        self.registry = registry
        self.active_ns = int(active_s * 1e9)
        self._last: dict[str, dict[str, int]] = {}  # site -> series -> newest reading [ns], this process's view
        self._deferred: dict[str, Written] | None = None

    def folder(self, site: str) -> Path:
        return self.ctx.root / "rollups" / f"site={site}"

    # -- queries ----------------------------------------------------------------
    def stage1(self, sites: Iterable[str] | None = None) -> Stage1:
        """Stage 1 of every reading of ``sites`` (default all): the materialized days from the
        aggregates, the rest from the raw readings; equal to stage 1 of a full read."""
        self.ctx.check_open()
        wanted = self.reader.site_ids() if sites is None else sorted(set(sites) & set(self.reader.site_ids()))
        meta = _Meta(self.registry)
        parts = [self.ctx.retry(functools.partial(self._site_stage1, s, meta)) for s in wanted]
        if not parts:
            return stage1(ReadingSet(empty_readings(), empty_events(), [], []))
        energy = pd.concat([p.energy for p in parts], ignore_index=True)  # each site's rows in order, sites sorted
        anomalies = _sorted_anomalies(pd.concat([p.anomalies for p in parts if len(p.anomalies)] or [empty_anomalies()],
                                                ignore_index=True))
        return Stage1(energy=energy, anomalies=anomalies, hourly=lambda: _concat_hourly([p.hourly for p in parts]))

    def hourly(self, sites: Iterable[str] | None = None,
               series: Iterable[tuple[str, str]] | None = None) -> pd.DataFrame:
        """Stage-1 hourly energy of some series: columns ``site``, ``meter``, ``quantity``, ``hour`` (UTC
        start of the local clock hour), ``value``; the rows of :meth:`stage1`'s ``hourly`` of those
        series without their tariff ``period`` (an hour split between two periods has two rows;
        in no particular order). ``series``: (meter, quantity) pairs, meter ``"*"`` for any
        (default every series). Hourly matching reads only the few it needs, so only they are read
        from the aggregates."""
        self.ctx.check_open()
        wanted = self.reader.site_ids() if sites is None else sorted(set(sites) & set(self.reader.site_ids()))
        meta = _Meta(self.registry)
        pairs = sorted(set(series)) if series is not None else None
        tables = [t for s in wanted for t in self.ctx.retry(functools.partial(self._site_hourly, s, meta, pairs))]
        cols = ["site", "meter", "quantity", "hour", "value"]
        schema = pa.schema([SCHEMAS["hourly"].field(c) for c in cols])
        if not tables:
            return schema.empty_table().to_pandas()
        out: pd.DataFrame = pa.concat_tables([t.select(cols).cast(schema) for t in tables]).unify_dictionaries().to_pandas()
        return out

    def _site_hourly(self, site: str, meta: _Meta, pairs: list[tuple[str, str]] | None) -> list[pa.Table]:
        man = Manifest.load(self.folder(site) / "manifest.json")
        cols = ["site", "meter", "quantity", "hour", "value"]
        out = [pq.ParquetFile(self.folder(site) / f"{c['seq']:016d}-hourly.parquet").read(columns=cols)
               for c in (man.chunks if man.tables is not None else [])]
        if self._has_after(site, man.watermark):
            h = stage1(self._window(site, meta, man.watermark, None)[0], start=man.watermark).hourly
            out.append(_table(h, "hourly").select(cols))
        return [t.filter(_series_mask(t, pairs)) if pairs is not None else t for t in out]

    def _site_stage1(self, site: str, meta: _Meta) -> Stage1:
        man = Manifest.load(self.folder(site) / "manifest.json")
        tables = self._site_tables(site, man)
        chunks = list(man.chunks)
        done = [Stage1(_frame(tables["daily"]), _anomalies_frame(_frame(tables["anomalies"])),
                       lambda: _hourly_frame([self._hourly(site, c) for c in chunks]))] if man.tables is not None else []
        if self._has_after(site, man.watermark):
            done.append(stage1(self._window(site, meta, man.watermark, None)[0], start=man.watermark))
        out = _concat_stage1(done)
        chunk = tables["daily"].column("chunk")
        if len(done) > 1 or (len(chunk) and pc.min(chunk).as_py() != pc.max(chunk).as_py()):  # chunks of days: merge
            out.energy = _in_series_order(out.energy)
        return out

    def _has_after(self, site: str, watermark: int | None) -> bool:
        """True if the site has readings after the watermark (or nothing is materialized)."""
        segs = self.reader.site_segments(site)
        return bool(segs) and (watermark is None or max(s.tmax for s in segs) * 1000 > watermark)

    def _hourly(self, site: str, chunk: dict[str, int]) -> pa.Table:
        return pq.read_table(self.folder(site) / f"{chunk['seq']:016d}-hourly.parquet").cast(SCHEMAS["hourly"])

    def _site_tables(self, site: str, man: Manifest) -> dict[str, pa.Table]:
        """The daily rows and anomalies of every materialized day (column ``chunk``: the start
        of the chunk of days they were computed in)."""
        if man.tables is None:
            return {k: STORED[k].empty_table() for k in ("daily", "anomalies")}
        return {k: pq.ParquetFile(self.folder(site) / f"{man.tables:016d}-{k}.parquet").read().cast(STORED[k])
                for k in ("daily", "anomalies")}

    # -- raw readings ------------------------------------------------------------
    def _window(self, site: str, meta: _Meta, lo: int | None, hi: int | None,
                batch: Written | None = None) -> tuple[ReadingSet, _Times]:
        """The site's raw readings around ``[lo, hi)`` [ns]: widened until every register series
        has a reading at or before ``lo`` and at or after ``hi``, or the data ends.

        ``batch``: the rows just written, if no other segment holds anything after their first
        reading (an append): they are used as read, and only what precedes them is read back.
        """
        segs = self.reader.site_segments(site)
        first = min((s.tmin for s in segs), default=0) * 1000
        last = max((s.tmax for s in segs), default=0) * 1000
        look = _LOOK_NS
        while True:
            a = None if lo is None or lo - look <= first else lo - look
            b = None if hi is None or hi + look >= last else hi + look
            df = self._read(site, segs, a, b, batch)
            times = _Times.of(df)
            if times.covers(None if a is None else lo, None if b is None else hi):
                return ReadingSet(df, empty_events(), meta.meters(site), meta.sites(site)), times
            look *= 8

    def _read(self, site: str, segs: list[Any], a: int | None, b: int | None, batch: Written | None) -> pd.DataFrame:
        """Raw readings of the site in ``[a, b]`` [ns]; the batch's rows taken as written when it is
        the newest data and the range reaches past its start."""
        lo_us, hi_us = None if a is None else a // 1000, None if b is None else b // 1000
        newest = batch is not None and batch.table is not None and (hi_us is None or hi_us >= batch.tmax) and all(
            s.tmax < batch.tmin or s.path.name.startswith(f"{batch.seq:016d}-") for s in segs)
        if not newest or batch is None or batch.table is None:
            return self.reader.read_readings([site], lo_us, hi_us)
        before = self.reader.read_readings([site], lo_us, batch.tmin - 1) if lo_us is None or lo_us < batch.tmin else None
        table = batch.table if lo_us is None or lo_us <= batch.tmin else batch.table.filter(
            pc.greater_equal(batch.table.column("ts"), pa.scalar(lo_us, pa.timestamp("us", tz="UTC"))))
        mine = _readings_frame(site, table)
        return mine if before is None or not len(before) else pd.concat([before, mine]).astype(
            {"site": "category", "meter": "category", "quantity": "category"})

    # -- keeping up to date ------------------------------------------------------
    def after_write(self, batches: list[SiteBatch]) -> None:
        """Bring the aggregates of the written sites up to date (hold the writers' lock)."""
        written = [Written.of(b) for b in batches]
        if self._deferred is not None:
            for w in written:
                had = self._deferred.get(w.site)
                self._deferred[w.site] = dataclasses.replace(w, table=None) if had is None else had.merge(w)
            return
        self._update_all(written)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold the updates during a bulk load: each written site is brought up to date once, at the end."""
        self._deferred = {}
        try:
            yield
        finally:
            pending, self._deferred = self._deferred, None
            if pending:
                with self.ctx.write_lock.hold():
                    self._update_all(list(pending.values()))

    def _update_all(self, written: list[Written]) -> None:
        meta = _Meta(self.registry)
        for w in written:
            try:
                self._update(w, meta)
            except EmsError as exc:  # e.g. readings before their site's registration: computed at query time
                log.debug("register aggregates of site %s not updated: %s", w.site, exc)

    def _update(self, w: Written, meta: _Meta) -> None:
        info = meta.site(w.site)
        if info is None:
            return
        man = Manifest.load(self.folder(w.site) / "manifest.json")
        changed = False
        stale = self._stale_from(w, man)
        if stale is not None:
            self._recompute(w.site, meta, man, stale)
            changed = True
        until = self._complete_until(w.site, w)
        target = None if until is None else day_start(until, info.tz)
        if target is not None and (man.watermark is None or target > man.watermark):
            changed |= self._advance(w.site, meta, man, target, info.tz, w)
        if changed:
            self._publish(w.site, man)

    def _complete_until(self, site: str, w: Written | None = None) -> int | None:
        """The time [ns] up to which every series of the site that speaks has its readings: the
        oldest newest reading of the series heard from in the last ``active_s`` (None: none)."""
        last = self._last.get(site)
        if last is None:  # first use in this process: from the raw segments (the batch included)
            t = self.ctx.arrow("SELECT meter, quantity, max(epoch_us(ts)) AS t FROM read_parquet($files) GROUP BY ALL",
                               {"files": [str(s.path) for s in self.reader.site_segments(site)]})
            last = self._last[site] = {
                f"{m}/{q}": int(x) * 1000 for m, q, x in zip(
                    t.column("meter").to_pylist(), t.column("quantity").to_pylist(), t.column("t").to_pylist(),
                    strict=True) if q in _REGISTERS}
        elif w is not None:
            for k, x in w.last.items():
                last[k] = max(x, last.get(k, x))
        if not last:
            return None
        newest = max(last.values())
        return min(x for x in last.values() if x >= newest - self.active_ns)

    def _stale_from(self, w: Written, man: Manifest) -> int | None:
        """The earliest interval start [ns] a write changes below the watermark, or None.

        A written reading before the watermark, or one between a series' last reading before
        the watermark and its first after it (or any reading of a series that had none
        after it), changes intervals that start before the watermark.
        """
        if man.watermark is None:
            return None
        afters = [a for _, a in man.series.values() if a is not None]
        known = {k.split("/", 1)[0] for k in man.series}
        if (w.tmin * 1000 >= man.watermark and len(afters) == len(man.series) and w.meters <= known
                and w.tmin * 1000 >= max(afters, default=0)):
            return None  # an append after every series' first reading past the watermark
        stale: list[int] = []
        for key, t in w.first.items():
            if key not in man.series:  # a series new here, or back after a long silence
                stale.append(min(t, man.watermark - 1))
                continue
            before, after = man.series[key]
            if t < man.watermark:
                stale.append(t)
            elif after is None or t < after:
                stale.extend([before] if before is not None else [])
        return min(stale) if stale else None

    def _recompute(self, site: str, meta: _Meta, man: Manifest, stale: int) -> None:
        """Compute the chunks holding intervals from ``stale`` on again, widened back to the
        readings before it."""
        assert man.watermark is not None
        lo = self._window(site, meta, stale, man.watermark)[1].widen(stale)
        hit = [c for c in man.chunks if c["hi"] > lo]
        if not hit:
            return
        a, z = hit[0]["lo"], man.watermark
        s1 = stage1(self._window(site, meta, a, z)[0], start=a, end=z)
        tables = self._site_tables(site, man)
        kept = {k: t.filter(pc.less(t.column("chunk"), a)) for k, t in tables.items()}
        self._put_tables(site, man, kept, s1, a)
        man.chunks = [*(c for c in man.chunks if c["hi"] <= lo), self._put_hourly(site, man, [_table(s1.hourly, "hourly")], a, z)]
        log.info("site %s: register aggregates from %s computed again after a late write", site,
                 pd.Timestamp(a, tz="UTC"))

    def _advance(self, site: str, meta: _Meta, man: Manifest, target: int, tz: str,
                 batch: Written | None = None) -> bool:
        """Materialize the days from the watermark to ``target``; merge a small last chunk."""
        lo = man.watermark
        if lo is None:
            lo = day_start(min(s.tmin for s in self.reader.site_segments(site)) * 1000, tz)
        if target <= lo:
            return False
        rs, times = self._window(site, meta, lo, target, batch)
        s1 = stage1(rs, start=lo, end=target)
        man.series = times.around(target)
        self._put_tables(site, man, self._site_tables(site, man), s1, lo)
        parts = [_table(s1.hourly, "hourly")]
        prev = man.chunks[-1] if man.chunks else None
        if prev is not None and prev["hi"] == lo and lo - prev["lo"] < _SMALL_CHUNK_NS:  # days one by one (live)
            parts.insert(0, self._hourly(site, prev))
            man.chunks = man.chunks[:-1]
            lo = prev["lo"]
        man.chunks.append(self._put_hourly(site, man, parts, lo, target))
        man.watermark = target
        return True

    def _seq(self, man: Manifest) -> int:
        seq = man.next_seq
        man.next_seq += 1
        return seq

    def _write(self, site: str, name: str, table: pa.Table) -> None:
        folder = self.folder(site)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp, compression=self.ctx.compression)
        tmp.replace(folder / name)

    def _put_tables(self, site: str, man: Manifest, old: dict[str, pa.Table], s1: Stage1, chunk: int) -> None:
        """Write the daily rows and anomalies: ``old`` and those of ``s1`` (computed in the chunk of days
        starting at ``chunk`` [ns])."""
        seq = self._seq(man)
        for kind, frame in (("daily", s1.energy), ("anomalies", s1.anomalies)):
            new = _table(frame, kind)
            new = new.append_column("chunk", pa.array(np.full(new.num_rows, chunk, dtype=np.int64)))
            self._write(site, f"{seq:016d}-{kind}.parquet", pa.concat_tables([old[kind], new.cast(STORED[kind])]))
        man.tables = seq

    def _put_hourly(self, site: str, man: Manifest, parts: list[pa.Table], lo: int, hi: int) -> dict[str, int]:
        """Write consecutive chunks' hourly rows as one chunk ``[lo, hi)`` [ns]; return its manifest entry."""
        seq = self._seq(man)
        self._write(site, f"{seq:016d}-hourly.parquet", pa.concat_tables(parts).unify_dictionaries())
        return {"seq": seq, "lo": int(lo), "hi": int(hi)}

    def _publish(self, site: str, man: Manifest) -> None:
        folder = self.folder(site)
        atomic_write_bytes(folder / "manifest.json", man.to_json())
        keep = {f"{c['seq']:016d}-hourly.parquet" for c in man.chunks}
        keep |= {f"{man.tables:016d}-{k}.parquet" for k in ("daily", "anomalies")} if man.tables is not None else set()
        for f in folder.glob("*.parquet"):
            if f.name not in keep:
                f.unlink(missing_ok=True)

    def rebuild(self, sites: Iterable[str] | None = None) -> None:
        """Drop the aggregates of ``sites`` (default all) and materialize them again from raw data."""
        self.ctx.writable("rebuild register aggregates")
        meta = _Meta(self.registry)
        with self.ctx.write_lock.hold():
            for site in self.reader.site_ids() if sites is None else sorted(set(sites)):
                shutil.rmtree(self.folder(site), ignore_errors=True)
                info = meta.site(site)
                segs = self.reader.site_segments(site)
                if info is None or not segs:
                    continue
                man = Manifest()
                self._last.pop(site, None)
                until = self._complete_until(site)
                if until is not None and self._advance(site, meta, man, day_start(until, info.tz), info.tz):
                    self._publish(site, man)


def _readings_frame(site: str, table: pa.Table) -> pd.DataFrame:
    return readings_frame([site], [table])


class _Meta:
    """Registrations read once per operation."""

    def __init__(self, registry: Registry) -> None:
        self._sites = {s.site: s for s in registry.sites()}
        self._meters = registry.meters()

    def site(self, site: str) -> SiteInfo | None:
        return self._sites.get(site)

    def sites(self, site: str) -> list[SiteInfo]:
        return [self._sites[site]] if site in self._sites else []

    def meters(self, site: str) -> list[MeterInfo]:
        return [m for m in self._meters if m.site == site]


@dataclass
class _Times:
    """Register rows of a site's readings: series names ("meter/quantity"), series code, t [ns]."""

    names: list[str]
    code: np.ndarray
    t: np.ndarray

    @classmethod
    def of(cls, df: pd.DataFrame) -> _Times:
        if not len(df):
            return cls([], np.zeros(0, np.int64), np.zeros(0, np.int64))
        m, q = df["meter"].astype("category"), df["quantity"].astype("category")
        mn, qn = [str(x) for x in m.cat.categories], [str(x) for x in q.cat.categories]
        mc, qc = m.cat.codes.to_numpy().astype(np.int64), q.cat.codes.to_numpy().astype(np.int64)
        rows = np.asarray([x in _REGISTERS for x in qn], dtype=bool)[qc]
        return cls([f"{a}/{b}" for a in mn for b in qn], (mc * len(qn) + qc)[rows],
                   pd.DatetimeIndex(df.index).as_unit("ns").asi8[rows])

    def per_series(self, how: str, sel: np.ndarray | None = None) -> dict[str, int]:
        """``how`` (``min`` or ``max``) of the times ``sel`` selects, per series."""
        code, t = (self.code, self.t) if sel is None else (self.code[sel], self.t[sel])
        if not len(code):
            return {}
        g = pd.Series(t).groupby(code).agg(how)
        return {self.names[int(k)]: int(v) for k, v in g.items()}

    def covers(self, lo: int | None, hi: int | None) -> bool:
        """True if every series has a reading at or before ``lo`` and at or after ``hi``."""
        ok = lo is None or all(x <= lo for x in self.per_series("min").values())
        return ok and (hi is None or all(x >= hi for x in self.per_series("max").values()))

    def widen(self, lo: int) -> int:
        """The earliest, over series, of each one's last reading before ``lo`` [ns]."""
        before = self.per_series("max", self.t < lo)
        return min(before.values()) if before else lo

    def around(self, t: int) -> dict[str, list[int | None]]:
        """Each series' last reading before ``t`` and first at or after it [ns] (None: none)."""
        before = self.per_series("max", self.t < t)
        after = self.per_series("min", self.t >= t)
        return {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))}


def _written(table: pa.Table, how: str) -> dict[str, int]:
    """Each written register series' first (``min``) or last (``max``) reading [ns] in a batch."""
    g = table.group_by(["meter", "quantity"]).aggregate([("ts", how)])
    out = {}
    for m, q, t in zip(g.column("meter").to_pylist(), g.column("quantity").to_pylist(),
                       g.column(f"ts_{how}").cast(pa.int64()).to_pylist(), strict=True):
        if q in _REGISTERS:
            out[f"{m}/{q}"] = int(t) * 1000
    return out


_TEXT = pa.string()
_CAT = pa.dictionary(pa.int32(), pa.string())
SCHEMAS = {
    "daily": pa.schema([("site", _TEXT), ("meter", _TEXT), ("quantity", _TEXT), ("date", pa.timestamp("ns")),
                        ("period", _TEXT), ("value", pa.float64()), ("max_rate", pa.float64()), ("n", pa.int64())]),
    "hourly": pa.schema([("site", _CAT), ("meter", _CAT), ("quantity", _CAT), ("hour", pa.timestamp("ns", tz="UTC")),
                         ("date", pa.timestamp("ns")), ("period", _CAT), ("value", pa.float64()),
                         ("max_rate", pa.float64()), ("n", pa.int64())]),
    "anomalies": pa.schema([("site", _TEXT), ("meter", _TEXT), ("quantity", _TEXT), ("ts", pa.timestamp("ns", tz="UTC")),
                            ("kind", _TEXT), ("prev_value", pa.float64()), ("value", pa.float64()),
                            ("energy", pa.float64()), ("detail", _TEXT)]),
}
"""Arrow schemas of the chunk files (columns as :mod:`ems.accounting.energy` names them)."""
assert [f.name for f in SCHEMAS["daily"]] == list(STAGE1_COLUMNS)
assert [f.name for f in SCHEMAS["hourly"]] == list(HOURLY_COLUMNS)
assert [f.name for f in SCHEMAS["anomalies"]] == list(ANOMALY_COLUMNS)
STORED = {k: SCHEMAS[k].append(pa.field("chunk", pa.int64())) for k in ("daily", "anomalies")}
"""Schemas of the per-site files: every materialized day's rows, with the start of their chunk [ns]."""
_SMALL_CHUNK_NS = 31 * _NS_D


def _frame(table: pa.Table) -> pd.DataFrame:
    return table.drop_columns(["chunk"]).to_pandas()


def _table(frame: pd.DataFrame, kind: str) -> pa.Table:
    schema = SCHEMAS[kind]
    cols = []
    for f in schema:
        col = frame[f.name]
        if pa.types.is_dictionary(f.type):
            cat = col.astype("category") if not isinstance(col.dtype, pd.CategoricalDtype) else col
            cols.append(pa.DictionaryArray.from_arrays(
                pa.array(cat.cat.codes.to_numpy().astype(np.int32)), pa.array([str(c) for c in cat.cat.categories], _TEXT)))
        else:
            cols.append(pa.Array.from_pandas(col, type=f.type))
    return pa.table(cols, schema=schema)


def _series_mask(t: pa.Table, pairs: list[tuple[str, str]]) -> pa.Array:
    """Rows of ``t`` whose (meter, quantity) is one of ``pairs`` (meter "*": any), decided once
    per dictionary entry and taken for every row."""
    def entries(col: str) -> tuple[list[str], pa.Array]:
        d = t[col].combine_chunks()
        if not pa.types.is_dictionary(d.type):
            d = d.dictionary_encode()
        return [str(x) for x in d.dictionary.to_pylist()], d.indices

    (meters, mi), (qs, qi) = entries("meter"), entries("quantity")
    anyq = {q for m, q in pairs if m == "*"}
    by_q: dict[str, set[str]] = {}
    for m, q in pairs:
        by_q.setdefault(q, set()).add(m)
    q_any = pa.array([q in anyq for q in qs], pa.bool_())
    q_some = pa.array([q in by_q and q not in anyq for q in qs], pa.bool_())
    keep_any = pc.take(q_any, qi)
    if not any(q_some.to_pylist()):
        return keep_any
    pair_ok = {(m, q) for m, q in pairs}
    code = pc.add(pc.multiply(pc.cast(mi, pa.int64()), len(qs)), pc.cast(qi, pa.int64()))
    table = pa.array([(meters[i // len(qs)], qs[i % len(qs)]) in pair_ok for i in range(len(meters) * len(qs))], pa.bool_())
    return pc.or_(keep_any, pc.take(table, code))


def _in_series_order(energy: pd.DataFrame) -> pd.DataFrame:
    """One site's stage-1 rows ordered by meter, quantity, date and period (as stage 1 orders them),
    from chunks of days each in that order."""
    keys = [energy["date"].to_numpy("datetime64[ns]").view(np.int64) if c == "date" else pd.factorize(energy[c], sort=True)[0]
            for c in ("period", "date", "quantity", "meter")]
    order = np.lexsort(keys)
    return energy.take(order).reset_index(drop=True)


def _anomalies_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame if len(frame) else empty_anomalies()


def _hourly_frame(tables: list[pa.Table]) -> pd.DataFrame:
    """Hourly rows of chunks in time order: by site, meter, quantity, then hour (periods keep their order)."""
    df = pa.concat_tables(tables).unify_dictionaries().to_pandas()
    for c in ("site", "meter", "quantity", "period"):
        df[c] = df[c].cat.reorder_categories(sorted(df[c].cat.categories))
    if len(tables) > 1:
        df = df.sort_values(["site", "meter", "quantity", "hour"], kind="stable", ignore_index=True)
    return df


def _concat_hourly(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return _hourly_frame([_table(f, "hourly") for f in frames if len(f)] or [SCHEMAS["hourly"].empty_table()])


def _sorted_anomalies(a: pd.DataFrame) -> pd.DataFrame:
    """Resets and rollovers, then gaps; each by series, then ts (as stage 1 lists them)."""
    if len(a) < 2:
        return a
    return a.assign(_gap=a["kind"] == "gap").sort_values(
        ["_gap", "site", "meter", "quantity", "ts"], kind="stable", ignore_index=True).drop(columns="_gap")


def _concat_stage1(parts: list[Stage1]) -> Stage1:
    """Stage 1 of consecutive chunks of days (hourly rows joined on first use)."""
    if len(parts) == 1:
        return parts[0]
    energy = pd.concat([p.energy for p in parts], ignore_index=True)
    anomalies = pd.concat([p.anomalies for p in parts if len(p.anomalies)] or [empty_anomalies()], ignore_index=True)
    return Stage1(energy, anomalies, lambda: _concat_hourly([p.hourly for p in parts]))


