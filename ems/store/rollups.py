"""Register aggregates of the embedded store: stage 1 pushed down, kept up to date as written.

What time-series databases call continuous aggregates (TimescaleDB) or downsampling tasks
(InfluxDB): per site, the stage-1 rows (:mod:`ems.accounting.energy`: register energy per
hour, local day and tariff period, and the anomalies) of the *finished* local days are kept
in Parquet files beside the raw segments; a query reads them and computes only the days
after them from the raw readings (a "real-time aggregate"). Because stage 1 of whole local
days is bit-identical to stage 1 of everything, the answer is exactly
:func:`ems.accounting.energy.stage1` of all the site's readings.

Layout::

    rollups/site=<site>/manifest.json                  watermark, chunks, open series
    rollups/site=<site>/<seq>-daily.parquet            daily rows of a chunk of days
    rollups/site=<site>/<seq>-hourly.parquet           hourly rows (for hourly matching)
    rollups/site=<site>/<seq>-anomalies.parquet        resets, rollovers, gaps

The manifest says which intervals are materialized: every interval that *starts* before
``watermark`` (a local midnight of the site), in chunks ``[lo, hi)`` of whole days. It is
replaced atomically after the chunk files it names are published, and old files are
deleted after that, so a reader sees one consistent set (or retries).

Kept up to date under the writers' lock, after every ``write_readings``:

1. a write that reaches into materialized days (late data, a backfill, a rewrite), or
   that continues a series which had no reading at or after the watermark when it was set
   (``open``), makes the chunks holding the affected intervals be computed again from the
   raw readings: from the reading before the written ones to the reading after them;
2. the watermark then moves to the last local midnight at least ``margin`` before the
   site's newest reading, and the days in between are materialized (small chunks are
   merged with the one before, so a year stays a few files).

:meth:`RegisterAggregates.rebuild` drops the files and materializes again from raw data.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
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
from ems.store.reader import SegmentReader
from ems.store.registry import Registry
from ems.store.segments import atomic_write_bytes
from ems.store.writer import SiteBatch

__all__ = ["Manifest", "RegisterAggregates", "day_start"]

log = logging.getLogger(__name__)

_NS_D = 86_400_000_000_000
_LOOK_NS = 2 * _NS_D
_SMALL_CHUNK_DAYS = 31
_REGISTERS = {q.name for q in QUANTITIES.values() if q.kind == "register"}


@dataclass
class Manifest:
    """What is materialized for one site (see module docs).

    ``series`` holds, for every register series at the watermark, its last reading before
    it and its first reading at or after it ([ns]; None: none): a later write that lands
    between them changes an interval that starts before the watermark.
    """

    watermark: int | None = None  # [ns]; None: nothing yet
    chunks: list[dict[str, int]] = field(default_factory=list)  # {"seq", "lo", "hi"} [ns], in time order
    series: dict[str, list[int | None]] = field(default_factory=dict)  # "meter/quantity" -> [before, after]
    next_seq: int = 1

    def to_json(self) -> bytes:
        return json.dumps({"version": 1, "watermark": self.watermark, "chunks": self.chunks,
                           "series": self.series, "next_seq": self.next_seq}, indent=1).encode()

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except ValueError as exc:
            raise EmsError(f"{path}: unreadable register aggregates manifest ({exc}); rebuild them") from exc
        return cls(d.get("watermark"), list(d.get("chunks") or []), dict(d.get("series") or {}),
                   int(d.get("next_seq", 1)))


def day_start(t_ns: int, tz: str) -> int:
    """First instant [ns, UTC] of the local day (zone ``tz``) that contains ``t_ns``."""
    local = pd.Timestamp(t_ns, unit="ns", tz="UTC").tz_convert(tz)
    midnight = pd.Timestamp(local.date()).tz_localize(tz, nonexistent="shift_forward", ambiguous=True)
    return int(midnight.tz_convert("UTC").value)


class RegisterAggregates:
    """Materialized stage 1 of one store, per site (see module docs).

    Parameters
    ----------
    ctx : StoreContext
    reader : SegmentReader
    registry : Registry
    margin_s : float [s]
        A day is materialized once the site's newest reading is this far past its end.
    """

    def __init__(self, ctx: StoreContext, reader: SegmentReader, registry: Registry, margin_s: float = 3600.0) -> None:
        self.ctx = ctx
        self.reader = reader
        self.registry = registry
        self.margin_ns = int(margin_s * 1e9)

    def folder(self, site: str) -> Path:
        return self.ctx.root / "rollups" / f"site={site}"

    # -- queries ----------------------------------------------------------------
    def stage1(self, sites: Iterable[str] | None = None) -> Stage1:
        """Stage 1 of every reading of ``sites`` (default all): the materialized days from the
        aggregates, the rest from the raw readings; equal to stage 1 of a full read."""
        self.ctx.con  # noqa: B018 - raises when closed
        wanted = self.reader.site_ids() if sites is None else sorted(set(sites) & set(self.reader.site_ids()))
        meta = _Meta(self.registry)
        parts = [self.ctx.retry(functools.partial(self._site_stage1, s, meta)) for s in wanted]
        if not parts:
            return stage1(ReadingSet(empty_readings(), empty_events(), [], []))
        energy = pd.concat([p.energy for p in parts], ignore_index=True)
        energy = energy.sort_values(["site", "meter", "quantity", "date", "period"], kind="stable", ignore_index=True)
        anomalies = _sorted_anomalies(pd.concat([p.anomalies for p in parts if len(p.anomalies)] or [empty_anomalies()],
                                                ignore_index=True))
        return Stage1(energy=energy, anomalies=anomalies, hourly=lambda: _concat_hourly([p.hourly for p in parts]))

    def _site_stage1(self, site: str, meta: _Meta) -> Stage1:
        man = Manifest.load(self.folder(site) / "manifest.json")
        done = [self._read_chunk(site, c) for c in man.chunks]
        if self._has_after(site, man.watermark):
            done.append(stage1(self._window(site, meta, man.watermark, None), start=man.watermark))
        return _concat_stage1(done)

    def _has_after(self, site: str, watermark: int | None) -> bool:
        """True if the site has readings after the watermark (or nothing is materialized)."""
        segs = self.reader.site_segments(site)
        return bool(segs) and (watermark is None or max(s.tmax for s in segs) * 1000 > watermark)

    def _read_chunk(self, site: str, chunk: dict[str, int]) -> Stage1:
        """A materialized chunk; its hourly rows are read on first use."""
        def read(kind: str) -> pd.DataFrame:
            return _from_arrow(pq.read_table(self.folder(site) / f"{chunk['seq']:016d}-{kind}.parquet"), kind)

        return Stage1(read("daily"), read("anomalies"), lambda: read("hourly"))

    # -- raw readings ------------------------------------------------------------
    def _window(self, site: str, meta: _Meta, lo: int | None, hi: int | None) -> ReadingSet:
        """The site's raw readings around ``[lo, hi)`` [ns]: widened until every register series
        has a reading at or before ``lo`` and at or after ``hi``, or the data ends."""
        segs = self.reader.site_segments(site)
        first = min((s.tmin for s in segs), default=0) * 1000
        last = max((s.tmax for s in segs), default=0) * 1000
        look = _LOOK_NS
        while True:
            a = None if lo is None or lo - look <= first else lo - look
            b = None if hi is None or hi + look >= last else hi + look
            df = self.reader.read_readings([site], None if a is None else a // 1000, None if b is None else b // 1000)
            ends = _series_ends(df)
            if (a is None or bool((ends["first"] <= lo).all())) and (b is None or bool((ends["last"] >= hi).all())):
                return ReadingSet(df, empty_events(), meta.meters(site), meta.sites(site))
            look *= 8

    # -- keeping up to date ------------------------------------------------------
    def after_write(self, batches: list[SiteBatch]) -> None:
        """Bring the aggregates of the written sites up to date (hold the writers' lock)."""
        meta = _Meta(self.registry)
        for b in batches:
            try:
                self._update(b, meta)
            except EmsError as exc:  # e.g. readings before their site's registration: computed at query time
                log.debug("register aggregates of site %s not updated: %s", b.site, exc)

    def _update(self, b: SiteBatch, meta: _Meta) -> None:
        info = meta.site(b.site)
        if info is None:
            return
        man = Manifest.load(self.folder(b.site) / "manifest.json")
        changed = False
        stale = self._stale_from(b, man)
        if stale is not None:
            self._recompute(b.site, meta, man, stale)
            changed = True
        newest = max(s.tmax for s in self.reader.site_segments(b.site)) * 1000
        target = day_start(newest - self.margin_ns, info.tz)
        if man.watermark is None or target > man.watermark:
            changed |= self._advance(b.site, meta, man, target, info.tz)
        if changed:
            self._publish(b.site, man)

    def _stale_from(self, b: SiteBatch, man: Manifest) -> int | None:
        """The earliest interval start [ns] a write changes below the watermark, or None.

        A written reading before the watermark, or one between a series' last reading before
        the watermark and its first after it (or any reading of a series that had none
        after it), changes intervals that start before the watermark.
        """
        if man.watermark is None:
            return None
        afters = [a for _, a in man.series.values() if a is not None]
        known = {k.split("/", 1)[0] for k in man.series}
        meters = set(b.table.column("meter").combine_chunks().dictionary.to_pylist()) if b.table.num_rows else set()
        if (b.tmin * 1000 >= man.watermark and len(afters) == len(man.series) and meters <= known
                and b.tmin * 1000 >= max(afters, default=0)):
            return None  # an append after every series' first reading past the watermark
        stale: list[int] = []
        for key, t in _first_written(b).items():
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
        rs = self._window(site, meta, stale, man.watermark)
        lo = _widen(rs.readings, stale)
        hit = [c for c in man.chunks if c["hi"] > lo]
        if not hit:
            return
        a, z = hit[0]["lo"], man.watermark
        s1 = stage1(self._window(site, meta, a, z), start=a, end=z)
        man.chunks = [*(c for c in man.chunks if c["hi"] <= lo), self._write_chunk(site, man, s1, a, z)]
        log.info("site %s: register aggregates from %s computed again after a late write", site,
                 pd.Timestamp(a, tz="UTC"))

    def _advance(self, site: str, meta: _Meta, man: Manifest, target: int, tz: str) -> bool:
        """Materialize the days from the watermark to ``target``; merge a small last chunk."""
        lo = man.watermark
        if lo is None:
            lo = day_start(min(s.tmin for s in self.reader.site_segments(site)) * 1000, tz)
        if target <= lo:
            return False
        rs = self._window(site, meta, lo, target)
        s1 = stage1(rs, start=lo, end=target)
        man.series = _around(rs.readings, target)
        prev = man.chunks[-1] if man.chunks else None
        if prev is not None and prev["hi"] == lo and (lo - prev["lo"]) < _SMALL_CHUNK_DAYS * _NS_D:
            s1 = _concat_stage1([self._read_chunk(site, prev), s1])
            man.chunks = man.chunks[:-1]
            lo = prev["lo"]
        man.chunks.append(self._write_chunk(site, man, s1, lo, target))
        man.watermark = target
        return True

    def _write_chunk(self, site: str, man: Manifest, s1: Stage1, lo: int, hi: int) -> dict[str, int]:
        seq = man.next_seq
        man.next_seq += 1
        folder = self.folder(site)
        folder.mkdir(parents=True, exist_ok=True)
        for kind, frame in (("daily", s1.energy), ("hourly", s1.hourly), ("anomalies", s1.anomalies)):
            tmp = folder / f".{seq:016d}-{kind}.parquet.tmp"
            pq.write_table(_to_arrow(frame, kind), tmp, compression=self.ctx.compression)
            tmp.replace(folder / f"{seq:016d}-{kind}.parquet")
        return {"seq": seq, "lo": int(lo), "hi": int(hi)}

    def _publish(self, site: str, man: Manifest) -> None:
        folder = self.folder(site)
        atomic_write_bytes(folder / "manifest.json", man.to_json())
        keep = {f"{c['seq']:016d}-{k}.parquet" for c in man.chunks for k in ("daily", "hourly", "anomalies")}
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
                target = day_start(max(s.tmax for s in segs) * 1000 - self.margin_ns, info.tz)
                if self._advance(site, meta, man, target, info.tz):
                    self._publish(site, man)


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


def _register_times(df: pd.DataFrame) -> pd.DataFrame:
    """Register rows as (key "meter/quantity", t [ns])."""
    reg = df[df["quantity"].astype(str).isin(_REGISTERS).to_numpy()]
    key = reg["meter"].astype(str).to_numpy(dtype=object) + "/" + reg["quantity"].astype(str).to_numpy(dtype=object)
    return pd.DataFrame({"key": key, "t": pd.DatetimeIndex(reg.index).as_unit("ns").asi8})


def _series_ends(df: pd.DataFrame) -> pd.DataFrame:
    """First and last reading [ns] of each register series."""
    rt = _register_times(df)
    return rt.groupby("key")["t"].agg(first="min", last="max")


def _widen(df: pd.DataFrame, lo: int) -> int:
    """The earliest, over register series, of each one's last reading before ``lo`` [ns]."""
    rt = _register_times(df)
    before = rt[rt["t"] < lo].groupby("key")["t"].max()
    return int(before.min()) if len(before) else lo


def _around(df: pd.DataFrame, t: int) -> dict[str, list[int | None]]:
    """Each register series' last reading before ``t`` and first at or after it [ns] (None: none)."""
    rt = _register_times(df)
    before = rt[rt["t"] < t].groupby("key")["t"].max()
    after = rt[rt["t"] >= t].groupby("key")["t"].min()
    return {k: [None if k not in before.index else int(before[k]), None if k not in after.index else int(after[k])]
            for k in sorted(set(before.index) | set(after.index))}


def _first_written(b: SiteBatch) -> dict[str, int]:
    """Each written series' first reading [ns] in a batch."""
    g = b.table.group_by(["meter", "quantity"]).aggregate([("ts", "min")])
    out = {}
    for m, q, t in zip(g.column("meter").to_pylist(), g.column("quantity").to_pylist(),
                       g.column("ts_min").cast(pa.int64()).to_pylist(), strict=True):
        if q in _REGISTERS:
            out[f"{m}/{q}"] = int(t) * 1000
    return out


_DTYPES = {"daily": STAGE1_COLUMNS, "hourly": HOURLY_COLUMNS, "anomalies": ANOMALY_COLUMNS}


def _to_arrow(frame: pd.DataFrame, kind: str) -> pa.Table:
    df = frame.copy()
    for c in ("site", "meter", "quantity", "period", "kind", "detail"):
        if c in df:
            df[c] = df[c].astype(str)
    if kind == "anomalies" and not len(df):
        df = df.astype({"ts": "datetime64[ns, UTC]", "prev_value": float, "value": float, "energy": float})
    return pa.Table.from_pandas(df[list(_DTYPES[kind])], preserve_index=False)


def _from_arrow(table: pa.Table, kind: str) -> pd.DataFrame:
    df = table.to_pandas()
    if kind == "hourly":
        for c in ("site", "meter", "quantity", "period"):
            df[c] = df[c].astype("category")
    return df


def _concat_hourly(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: [] for c in HOURLY_COLUMNS})
    out = pd.concat([f.astype({c: str for c in ("site", "meter", "quantity", "period")}) for f in frames],
                    ignore_index=True)
    if len(frames) > 1:  # chunks in time order: by series, then hour (periods keep their order)
        out = out.sort_values(["site", "meter", "quantity", "hour"], kind="stable", ignore_index=True)
    for c in ("site", "meter", "quantity", "period"):
        out[c] = out[c].astype("category")
    return out


def _sorted_anomalies(a: pd.DataFrame) -> pd.DataFrame:
    """Resets and rollovers, then gaps; each by series, then ts (as stage 1 lists them)."""
    if len(a) < 2:
        return a
    return a.assign(_gap=a["kind"] == "gap").sort_values(
        ["_gap", "site", "meter", "quantity", "ts"], kind="stable", ignore_index=True).drop(columns="_gap")


def _concat_stage1(parts: list[Stage1]) -> Stage1:
    energy = pd.concat([p.energy for p in parts], ignore_index=True)
    anomalies = pd.concat([p.anomalies for p in parts if len(p.anomalies)] or [empty_anomalies()], ignore_index=True)
    hourly = _concat_hourly([p.hourly for p in parts])
    return Stage1(energy, anomalies, hourly)


