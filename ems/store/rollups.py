"""Register aggregates of the embedded store: stage 1 pushed down, kept up to date as written.

What time-series databases call continuous aggregates (TimescaleDB) or downsampling tasks
(InfluxDB): per site, the stage-1 rows (:mod:`ems.accounting.energy`: register energy per
hour, local day and tariff period, and the anomalies) of the *finished* local days are kept
in files beside the raw segments; a query reads them and computes only the days
after them from the raw readings (a "real-time aggregate"). Because stage 1 of whole local
days is bit-identical to stage 1 of everything, the answer is exactly
:func:`ems.accounting.energy.stage1` of all the site's readings.

Layout::

    rollups/site=<site>/manifest.json                  what is materialized (below)
    rollups/site=<site>/<seq>-daily.arrow              daily rows of every materialized day
    rollups/site=<site>/<seq>-anomalies.arrow          their resets, rollovers, gaps
    rollups/site=<site>/<seq>-hourly.arrow             hourly rows of a chunk of days (hourly matching)

The files are Arrow IPC (Feather v2, lz4): a site-year of hourly rows writes in ~1 ms
(Parquet with zstd: ~13 ms) and reads memory-mapped.

The manifest says which intervals are materialized: every interval that *starts* before
``watermark`` (a local midnight of the site), in chunks ``[lo, hi)`` of whole days, and
which segments they were computed from: every segment of the site with ``seq <= through``.
For each register series it keeps its newest reading (``last``), its last reading at or
before the watermark with its value (``base``) and its readings just before and at or
after the watermark (``series``). It is replaced atomically after the files it names are
durable, and old files are deleted after that, so a reader sees one consistent set (or
retries).

**Visibility.** A reader's :meth:`RegisterAggregates.stage1` is always exactly stage 1 of
the segments it lists. Segments with ``seq > through`` are not folded in yet (a write in
progress, a bulk load not finished, a writer without aggregates); when one of them holds a
reading that could change a materialized interval (:func:`ems.store.registers.safe_from`),
the reader computes that site from the raw readings instead. When ``write_readings``
returns, the aggregates include its segments.

**Kept up to date** after every ``write_readings``, under the site's lock
(``rollups/site=<site>.lock``: writers of other sites go on meanwhile):

* an *append* (nothing written before a series' first reading at or after the watermark,
  every other segment folded in) is computed from the rows the write has in hand: each
  series' ``base`` reading and the written rows (:func:`ems.store.registers.table_series`),
  with no read of the store; if the watermark moves and other segments hold readings after
  it, those are read too;
* anything else (late data, a backfill, a rewrite, a series back after a silence,
  segments of another writer) makes the chunks holding the affected intervals be computed
  again from the raw readings, from the reading before the written ones; segments not
  folded in are scanned for their series' first and newest readings;
* the watermark then moves to the last local midnight that every series of the site has
  reached (series silent for ``active_s`` do not hold it back), and the days in between are
  materialized (days added one by one are merged into chunks of about a month).

Inside :meth:`RegisterAggregates.deferred` (a bulk load, ``ems run``) the same happens in
memory and each site's files and manifest are published once, at the end.
:meth:`RegisterAggregates.rebuild` drops the files and materializes again from raw data.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from ems.accounting.energy import (
    ANOMALY_COLUMNS,
    HOURLY_COLUMNS,
    STAGE1_COLUMNS,
    Stage1,
    empty_anomalies,
    stage1,
    stage1_series,
)
from ems.durable import atomic_write_bytes, fsync_dir, stage
from ems.errors import EmsError
from ems.readings import QUANTITIES, MeterInfo, ReadingSet, SiteInfo, empty_events, empty_readings
from ems.store import registers as reg
from ems.store.context import StoreContext
from ems.store.reader import SegmentReader
from ems.store.registry import Registry
from ems.store.segments import FileLock, Segment
from ems.store.writer import SiteBatch

__all__ = ["Manifest", "RegisterAggregates", "day_start"]

log = logging.getLogger(__name__)

_NS_D = 86_400_000_000_000
_LOOK_NS = 2 * _NS_D
_REGISTERS = {q.name for q in QUANTITIES.values() if q.kind == "register"}


@dataclass
class Manifest:
    """What is materialized for one site (see module docs).

    ``series`` holds, for every register series with readings, its last reading before the
    watermark and its first at or after it ([ns]; None: none): a later write that lands
    between them changes an interval that starts before the watermark.
    """

    watermark: int | None = None  # [ns]; None: nothing yet
    chunks: list[dict[str, int]] = field(default_factory=list)  # hourly files {"seq", "lo", "hi"} [ns], in time order
    tables: int | None = None  # seq of the daily and anomalies files of every materialized day
    series: dict[str, list[int | None]] = field(default_factory=dict)  # "meter/quantity" -> [before, after]
    next_seq: int = 1
    through: int | None = None  # every segment with seq <= through is folded in; None: none is
    base: dict[str, list[float]] = field(default_factory=dict)  # "meter/quantity" -> [ts [ns], value] at or before the watermark
    last: dict[str, int] = field(default_factory=dict)  # "meter/quantity" -> newest reading folded in [ns]
    rev: int = 0  # publications so far (0: never published)

    def to_json(self) -> bytes:
        return json.dumps({"version": 1, "rev": self.rev, "watermark": self.watermark, "through": self.through,
                           "chunks": self.chunks, "tables": self.tables, "next_seq": self.next_seq,
                           "series": self.series, "base": self.base, "last": self.last}).encode()

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except ValueError as exc:
            raise EmsError(f"{path}: unreadable register aggregates manifest ({exc}); rebuild them") from exc
        return cls(d.get("watermark"), list(d.get("chunks") or []), d.get("tables"), dict(d.get("series") or {}),
                   int(d.get("next_seq", 1)), d.get("through"), dict(d.get("base") or {}), dict(d.get("last") or {}),
                   int(d.get("rev", 1)))

    def outdated(self) -> bool:
        """True for a manifest of an older ems (materialized rows, no record of what from)."""
        return self.watermark is not None and self.through is None

    def covers(self, segments: list[Segment]) -> bool:
        """True if the materialized rows hold for ``segments`` (the visibility rule): every
        segment not folded in starts after the time from which no reading can change them."""
        if self.watermark is None:
            return True
        if self.through is None:
            return False
        new = [s.tmin * 1000 for s in segments if s.seq > self.through]
        return not new or min(new) >= reg.safe_from(self.watermark, self.series)


def day_start(t_ns: int, tz: str) -> int:
    """First instant [ns, UTC] of the local day (zone ``tz``) that contains ``t_ns``."""
    local = pd.Timestamp(t_ns, unit="ns", tz="UTC").tz_convert(tz)
    midnight = pd.Timestamp(local.date()).tz_localize(tz, nonexistent="shift_forward", ambiguous=True)
    return int(midnight.tz_convert("UTC").value)


@dataclass
class Written:
    """What writes put into one site: their time span [µs], each register series' first and
    newest reading [ns], the meters, the segments' seq, and (for one write in hand) its
    register series as arrays."""

    site: str
    tmin: int
    tmax: int
    first: dict[str, int]
    last: dict[str, int]
    meters: set[str]
    seqs: set[int]
    series: reg.Series | None = None

    @classmethod
    def of(cls, b: SiteBatch) -> Written:
        series = reg.table_series(b.site, b.table)
        meters = set(b.table.column("meter").combine_chunks().dictionary.to_pylist()) if b.table.num_rows else set()
        return cls(b.site, b.tmin, b.tmax, reg.firsts(series), reg.lasts(series), meters, {b.seq}, series)

    @classmethod
    def scanned(cls, site: str, t: pa.Table, seqs: set[int]) -> Written:
        """From a scan's rows (meter, quantity, first and newest ts [µs])."""
        rows = list(zip(*(t.column(c).to_pylist() for c in ("meter", "quantity", "t0", "t1")), strict=True))
        first = {f"{m}/{q}": int(a) * 1000 for m, q, a, _ in rows if q in _REGISTERS}
        last = {f"{m}/{q}": int(b) * 1000 for m, q, _, b in rows if q in _REGISTERS}
        return cls(site, min(int(r[2]) for r in rows), max(int(r[3]) for r in rows), first, last,
                   {str(r[0]) for r in rows}, seqs)

    def merge(self, other: Written) -> Written:
        first = {k: min(v, other.first.get(k, v)) for k, v in self.first.items()} | {
            k: v for k, v in other.first.items() if k not in self.first}
        return Written(self.site, min(self.tmin, other.tmin), max(self.tmax, other.tmax), first,
                       _newest(self.last, other.last), self.meters | other.meters, self.seqs | other.seqs)


def _newest(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: max(a.get(k, v), b.get(k, v)) for k, v in (a | b).items()}


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
        self._held: dict[str, Manifest] | None = None  # inside deferred(): manifests not yet published
        self._pending: dict[str, dict[str, pa.Table]] = {}  # and their files not yet written

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
        energy = _frames([p[0] for p in parts])  # each site's rows in order, sites sorted
        anomalies = _sorted_anomalies(_frames([p[1] for p in parts if len(p[1])]) if any(len(p[1]) for p in parts)
                                      else empty_anomalies())
        return Stage1(energy=energy, anomalies=anomalies, hourly=lambda: _concat_hourly([p[2]() for p in parts]))

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
        segs = self.reader.site_segments(site)
        cols = ["site", "meter", "quantity", "hour", "value"]
        if man.tables is None or not man.covers(segs):  # nothing materialized, or a write not folded in yet
            out = [_table(self._computed(site, meta, None, None).hourly, "hourly").select(cols)]
        else:
            assert man.watermark is not None
            out = [_read(self.folder(site) / _name(c["seq"], "hourly"), None, cols) for c in man.chunks]
            if max((s.tmax for s in segs), default=0) * 1000 > man.watermark:
                out.append(_table(self._computed(site, meta, man.watermark, None).hourly, "hourly").select(cols))
        return [t.filter(_series_mask(t, pairs)) if pairs is not None else t for t in out]

    def _site_stage1(self, site: str, meta: _Meta) -> tuple[pa.Table | pd.DataFrame, pa.Table | pd.DataFrame,
                                                           Callable[[], pd.DataFrame]]:
        """A site's stage-1 daily rows and anomalies (Arrow tables as read from the aggregates,
        frames where days after the watermark were computed) and its hourly rows on first use."""
        man = Manifest.load(self.folder(site) / "manifest.json")
        segs = self.reader.site_segments(site)
        if man.tables is None or not man.covers(segs):  # nothing materialized, or a write not folded in yet
            got = self._computed(site, meta, None, None)
            return got.energy, got.anomalies, lambda: got.hourly
        tables = self._site_tables(site, man)
        chunks = list(man.chunks)
        daily, anomalies = tables["daily"].drop_columns(["chunk"]), tables["anomalies"].drop_columns(["chunk"])
        chunk = tables["daily"].column("chunk")
        if len(chunk) and pc.min(chunk).as_py() != pc.max(chunk).as_py():  # chunks of days, each in series order
            daily = daily.sort_by([(c, "ascending") for c in ("meter", "quantity", "date", "period")])  # stable
        def hours() -> pd.DataFrame:
            return _hourly_frame([self._hourly(site, c) for c in chunks])

        assert man.watermark is not None
        if max((s.tmax for s in segs), default=0) * 1000 <= man.watermark:
            return daily, anomalies, hours
        after = self._computed(site, meta, man.watermark, None)  # the days after the watermark continue each series
        out = _concat_stage1([Stage1(daily.to_pandas(), _anomalies_frame(anomalies.to_pandas()), hours), after])
        return _in_series_order(out.energy), out.anomalies, lambda: out.hourly

    def _computed(self, site: str, meta: _Meta, lo: int | None, hi: int | None,
                  series: reg.Series | None = None) -> Stage1:
        """Stage 1 of the site's intervals starting in ``[lo, hi)`` [ns], from ``series`` or the raw readings."""
        if series is None:
            series = self._window(site, lo, hi)
        keyed = {}
        for k, v in series.items():
            meter, quantity = k.rsplit("/", 1)
            keyed[(site, meter, quantity)] = v
        return stage1_series(keyed, meta.meters(site), meta.sites(site), start=lo, end=hi)

    def _hourly(self, site: str, chunk: dict[str, int]) -> pa.Table:
        return _read(self.folder(site) / _name(chunk["seq"], "hourly"), SCHEMAS["hourly"])

    def _site_tables(self, site: str, man: Manifest) -> dict[str, pa.Table]:
        """The daily rows and anomalies of every materialized day (column ``chunk``: the start
        of the chunk of days they were computed in)."""
        pending = self._pending.get(site, {})
        if man.tables is None:
            return {k: STORED[k].empty_table() for k in ("daily", "anomalies")}
        names = {k: _name(man.tables, k) for k in ("daily", "anomalies")}
        return {k: pending[n] if n in pending else _read(self.folder(site) / n, STORED[k]) for k, n in names.items()}

    # -- raw readings ------------------------------------------------------------
    def _window(self, site: str, lo: int | None, hi: int | None) -> reg.Series:
        """The site's raw register series around ``[lo, hi)`` [ns]: widened until every series
        has a reading at or before ``lo`` and at or after ``hi``, or the data ends."""
        segs = self.reader.site_segments(site)
        first = min((s.tmin for s in segs), default=0) * 1000
        last = max((s.tmax for s in segs), default=0) * 1000
        look = _LOOK_NS
        while True:
            a = None if lo is None or lo - look <= first else lo - look
            b = None if hi is None or hi + look >= last else hi + look
            series = reg.frame_series(self.reader.read_readings([site], None if a is None else a // 1000,
                                                                None if b is None else b // 1000))
            if reg.covers(series, None if a is None else lo, None if b is None else hi):
                return series
            look *= 8

    # -- keeping up to date ------------------------------------------------------
    def lock(self, site: str) -> FileLock:
        """The lock of one site's aggregates (writers of other sites go on meanwhile)."""
        return FileLock(self.ctx.root / "rollups" / f"site={site}.lock", self.ctx.lock_timeout_s)

    def after_write(self, batches: list[SiteBatch]) -> None:
        """Bring the aggregates of the sites of published segments up to date."""
        meta = _Meta(self.registry)
        for b in batches:
            try:
                with self.lock(b.site).hold():
                    self._update(Written.of(b), meta)
            except EmsError as exc:  # e.g. readings before their site's registration: computed at query time
                log.debug("register aggregates of site %s not updated: %s", b.site, exc)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A bulk load: the aggregates are kept up to date in memory and each written site's
        files and manifest are published once, at the end (readers meanwhile compute the
        sites' new readings from the raw segments)."""
        self._held, self._pending = {}, {}
        try:
            yield
        finally:
            held, self._held = self._held, None
            for site, man in (held or {}).items():
                with self.lock(site).hold():
                    if Manifest.load(self.folder(site) / "manifest.json").rev == man.rev:  # else another writer
                        self._flush(site, man)  # published since; it folded these segments in
            self._pending = {}

    def _manifest(self, site: str) -> Manifest:
        """The site's manifest: held in memory in a bulk load while no other writer published one."""
        disk = Manifest.load(self.folder(site) / "manifest.json")
        held = None if self._held is None else self._held.get(site)
        if held is not None and held.rev == disk.rev:
            return copy.deepcopy(held)  # kept only if the update succeeds (:meth:`_done`)
        self._pending.pop(site, None)
        return disk

    def _update(self, w: Written, meta: _Meta) -> None:
        info = meta.site(w.site)
        if info is None:
            return
        man = self._manifest(w.site)
        segs = self.reader.site_segments(w.site)
        if man.outdated():
            self._rebuild_site(w.site, meta, info, segs)
            return
        if self._appends(man, segs, w):
            man.last = _newest(man.last, w.last)
            self._advance(w.site, meta, man, info.tz, w)
        else:
            self._fold_from_disk(w, meta, man, info.tz, segs)
        man.through = max((s.seq for s in segs), default=man.through)
        self._done(w.site, man)

    def _appends(self, man: Manifest, segs: list[Segment], w: Written) -> bool:
        """True if the write only appends to what the manifest holds: every other segment is
        folded in and no written reading changes a materialized interval."""
        others = [s for s in segs if s.seq not in w.seqs]
        if man.rev == 0 and man.through is None:
            return not others
        if man.through is None or any(s.seq > man.through for s in others):
            return False
        return self._stale_from(w, man) is None

    def _fold_from_disk(self, w: Written, meta: _Meta, man: Manifest, tz: str, segs: list[Segment]) -> None:
        """Fold in the write and every segment not folded in yet, reading the raw segments."""
        others = [s for s in segs if s.seq not in w.seqs and (man.through is None or s.seq > man.through)]
        if others:
            w = w.merge(self._scan(w.site, others))
        man.last = _newest(man.last, w.last)
        stale = self._stale_from(w, man)
        if stale is not None:
            self._recompute(w.site, meta, man, stale)
        self._advance(w.site, meta, man, tz, None)

    def _scan(self, site: str, segs: list[Segment]) -> Written:
        """Each series' first and newest reading in ``segs``."""
        t = self.ctx.arrow("SELECT meter, quantity, min(epoch_us(ts)) AS t0, max(epoch_us(ts)) AS t1 "
                           "FROM read_parquet($files) GROUP BY ALL", {"files": [str(s.path) for s in segs]})
        return Written.scanned(site, t, {s.seq for s in segs})

    def _target(self, man: Manifest, tz: str) -> int | None:
        """The local midnight [ns] up to which every series of the site that speaks has its
        readings: the day of the oldest newest reading of the series heard from in the last
        ``active_s`` (None: none)."""
        if not man.last:
            return None
        newest = max(man.last.values())
        return day_start(min(x for x in man.last.values() if x >= newest - self.active_ns), tz)

    def _stale_from(self, w: Written, man: Manifest) -> int | None:
        """The earliest interval start [ns] a write changes below the watermark, or None.

        A written reading before the watermark, or one at or before a series' first reading
        at or after it (or any reading of a series that has readings before it and none
        after), changes intervals that start before the watermark. A series that had no
        reading before the watermark changes none, but a rewrite of its base reading (at the
        watermark) changes the base: the last chunk is computed again.
        """
        if man.watermark is None:
            return None
        stale: list[int] = []
        for key, t in w.first.items():
            before, after = man.series.get(key, [None, None])
            if t < man.watermark:
                stale.append(t)
            elif before is not None and (after is None or t <= after):
                stale.append(before)
            elif key in man.base and t <= man.base[key][0]:
                stale.append(t)
        return min(stale) if stale else None

    def _recompute(self, site: str, meta: _Meta, man: Manifest, stale: int) -> None:
        """Compute the chunks holding intervals from ``stale`` on again, widened back to the
        readings before it."""
        assert man.watermark is not None
        around = self._window(site, stale, man.watermark)
        lo = reg.widen(around, stale)
        hit = [c for c in man.chunks if c["hi"] > lo]
        if not hit:  # no materialized interval changes; the readings at the watermark may
            man.series = reg.around(around, man.watermark, man.series)
            man.base = reg.bases(around, man.watermark, man.base)
            return
        a, z = hit[0]["lo"], man.watermark
        series = self._window(site, a, z)
        s1 = self._computed(site, meta, a, z, series)
        man.series = reg.around(series, z, man.series)
        man.base = reg.bases(series, z, man.base)
        tables = self._site_tables(site, man)
        kept = {k: t.filter(pc.less(t.column("chunk"), a)) for k, t in tables.items()}
        self._put_tables(site, man, kept, s1, a)
        man.chunks = [*(c for c in man.chunks if c["hi"] <= lo), self._put_hourly(site, man, [_table(s1.hourly, "hourly")], a, z)]
        log.info("site %s: register aggregates from %s computed again after a late write", site,
                 pd.Timestamp(a, tz="UTC"))

    def _advance(self, site: str, meta: _Meta, man: Manifest, tz: str, w: Written | None) -> None:
        """Materialize the days from the watermark to the target (:meth:`_target`): from the
        series written (``w``) and the bases when no other segment holds readings after the
        watermark, else from the raw readings; merge a small last chunk."""
        target = self._target(man, tz)
        segs = self.reader.site_segments(site)
        lo = man.watermark
        if lo is None:
            lo = day_start(min(s.tmin for s in segs) * 1000, tz)
        if target is None or target <= lo:
            return
        if w is None or w.series is None or any(s.seq not in w.seqs and s.tmax * 1000 > lo for s in segs):
            series = self._window(site, lo, target)  # readings after the watermark in other segments
        else:
            series = reg.with_bases(w.series, man.base)
        s1 = self._computed(site, meta, lo, target, series)
        man.series = reg.around(series, target, man.series)
        man.base = reg.bases(series, target, man.base)
        self._put_tables(site, man, self._site_tables(site, man), s1, lo)
        parts = [_table(s1.hourly, "hourly")]
        prev = man.chunks[-1] if man.chunks else None
        if prev is not None and prev["hi"] == lo and lo - prev["lo"] < _SMALL_CHUNK_NS:  # days one by one (live)
            parts.insert(0, self._chunk(site, prev))
            man.chunks = man.chunks[:-1]
            lo = prev["lo"]
        man.chunks.append(self._put_hourly(site, man, parts, lo, target))
        man.watermark = target

    # -- files --------------------------------------------------------------------
    def _seq(self, man: Manifest) -> int:
        seq = man.next_seq
        man.next_seq += 1
        return seq

    def _chunk(self, site: str, chunk: dict[str, int]) -> pa.Table:
        pending = self._pending.get(site, {})
        name = _name(chunk["seq"], "hourly")
        return pending[name] if name in pending else self._hourly(site, chunk)

    def _put(self, site: str, name: str, table: pa.Table) -> None:
        self._pending.setdefault(site, {})[name] = table

    def _put_tables(self, site: str, man: Manifest, old: dict[str, pa.Table], s1: Stage1, chunk: int) -> None:
        """Write the daily rows and anomalies: ``old`` and those of ``s1`` (computed in the chunk of days
        starting at ``chunk`` [ns])."""
        seq = self._seq(man)
        for kind, frame in (("daily", s1.energy), ("anomalies", s1.anomalies)):
            new = _table(frame, kind)
            new = new.append_column("chunk", pa.array(np.full(new.num_rows, chunk, dtype=np.int64)))
            self._put(site, _name(seq, kind), pa.concat_tables([old[kind], new.cast(STORED[kind])]))
        man.tables = seq

    def _put_hourly(self, site: str, man: Manifest, parts: list[pa.Table], lo: int, hi: int) -> dict[str, int]:
        """Write consecutive chunks' hourly rows as one chunk ``[lo, hi)`` [ns]; return its manifest entry."""
        seq = self._seq(man)
        self._put(site, _name(seq, "hourly"), pa.concat_tables(parts).unify_dictionaries())
        return {"seq": seq, "lo": int(lo), "hi": int(hi)}

    def _done(self, site: str, man: Manifest) -> None:
        """Publish the site's aggregates now, or at the end of a bulk load."""
        if self._held is not None:
            self._held[site] = man
        else:
            self._flush(site, man)

    def _flush(self, site: str, man: Manifest) -> None:
        """Write the files the manifest names that are not on disk, durably; then the manifest; then
        delete the files it no longer names."""
        folder = self.folder(site)
        folder.mkdir(parents=True, exist_ok=True)
        keep = {_name(c["seq"], "hourly") for c in man.chunks}
        keep |= {_name(man.tables, k) for k in ("daily", "anomalies")} if man.tables is not None else set()
        for name, table in self._pending.pop(site, {}).items():
            if name in keep:
                _write_durably(folder / name, table)
        fsync_dir(folder)
        man.rev += 1
        atomic_write_bytes(folder / "manifest.json", man.to_json())
        for f in folder.iterdir():
            if f.name not in keep and f.suffix in (".arrow", ".parquet"):  # .parquet: files of an older ems
                f.unlink(missing_ok=True)

    def rebuild(self, sites: Iterable[str] | None = None) -> None:
        """Drop the aggregates of ``sites`` (default all) and materialize them again from raw data."""
        self.ctx.writable("rebuild register aggregates")
        meta = _Meta(self.registry)
        for site in self.reader.site_ids() if sites is None else sorted(set(sites)):
            with self.lock(site).hold():
                info = meta.site(site)
                if info is None:
                    shutil.rmtree(self.folder(site), ignore_errors=True)
                    continue
                self._rebuild_site(site, meta, info, self.reader.site_segments(site))

    def _rebuild_site(self, site: str, meta: _Meta, info: SiteInfo, segs: list[Segment]) -> None:
        """Materialize a site again from its raw segments; the new files get new names, so a
        reader sees the old set or the new one."""
        self._pending.pop(site, None)
        if self._held is not None:
            self._held.pop(site, None)
        if not segs:
            shutil.rmtree(self.folder(site), ignore_errors=True)
            return
        try:
            old = Manifest.load(self.folder(site) / "manifest.json")
        except EmsError:  # unreadable: start the numbering after any file left
            old = Manifest(next_seq=1 + max((int(f.name[:16]) for f in self.folder(site).glob("*-*.*")
                                             if f.name[:16].isdigit()), default=0), rev=1)
        man = Manifest(next_seq=old.next_seq, rev=old.rev)
        man.last = self._scan(site, segs).last
        self._advance(site, meta, man, info.tz, None)
        man.through = max(s.seq for s in segs)
        self._flush(site, man)


def _name(seq: int, kind: str) -> str:
    """File name of an aggregate file (``kind``: daily, anomalies, hourly)."""
    return f"{seq:016d}-{kind}.arrow"


def _read(path: Path, schema: pa.Schema | None, columns: list[str] | None = None) -> pa.Table:
    """An aggregate file (only ``columns``, if given), cast to ``schema`` if given."""
    t = feather.read_table(path, columns=columns, memory_map=True)
    return t if schema is None else t.cast(schema)


def _write_durably(path: Path, table: pa.Table) -> None:
    """Write an Arrow IPC file under a temporary name, fsync it, rename it into place (the
    caller fsyncs the directory before publishing a manifest that names it)."""
    stage(path.parent, lambda f: feather.write_feather(table, f, compression="lz4")).replace(path)


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


def _frames(parts: list[pa.Table | pd.DataFrame]) -> pd.DataFrame:
    """One frame of parts in order: Arrow tables converted together (one conversion, not one each)."""
    if all(isinstance(p, pa.Table) for p in parts):
        return pa.concat_tables(parts).to_pandas() if len(parts) > 1 else parts[0].to_pandas()
    return pd.concat([p.to_pandas() if isinstance(p, pa.Table) else p for p in parts], ignore_index=True)


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


