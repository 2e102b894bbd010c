"""Reading the embedded store's segments back: readings, events, counts, SQL views.

Readers take no lock. A reading is identified by (site, meter, quantity, ts): segments
that overlap in time are de-duplicated with DuckDB, the latest segment winning; a lone
segment is read with pyarrow as is (it never holds a key twice, and it is sorted by ts).
A file that vanishes under a reader (compaction) makes the read start again.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ems.readings import EVENT_COLUMNS, empty_events, empty_readings
from ems.store.arrays import READINGS_SCHEMA, TS, to_us
from ems.store.context import StoreContext
from ems.store.registry import SITE_RE
from ems.store.segments import Segment, list_segments, overlap_groups

__all__ = ["SegmentReader", "readings_frame"]


def _code_dtype(n: int) -> type[np.signedinteger[Any]]:
    """Smallest signed integer type for ``n`` categorical codes (what pandas keeps)."""
    if n < 2**7:
        return np.int8
    if n < 2**15:
        return np.int16
    return np.int32


class SegmentReader:
    """Reads readings and events of one store (see module docs)."""

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    def site_ids(self) -> list[str]:
        """The sites that have readings segments."""
        try:
            names = [e.name for e in os.scandir(self.ctx.root / "readings") if e.is_dir()]
        except FileNotFoundError:
            return []
        return sorted(n[5:] for n in names if n.startswith("site="))

    def site_segments(self, site: str) -> list[Segment]:
        return list_segments(self.ctx.root / "readings" / f"site={site}")

    def segments(self) -> int:
        """Number of readings segments on disk."""
        return sum(len(self.site_segments(s)) for s in self.site_ids())

    def site_groups(self, site: str, lo: int | None, hi: int | None) -> list[list[Segment]]:
        segs = [s for s in self.site_segments(site) if (lo is None or s.tmax >= lo) and (hi is None or s.tmin <= hi)]
        return overlap_groups(segs)

    def read_group(self, group: list[Segment], lo: int | None, hi: int | None) -> pa.Table:
        """One overlap group of segments in ``[lo, hi]`` [µs], de-duplicated, sorted by ts."""
        if len(group) == 1:
            s = group[0]
            filters: list[tuple[str, str, Any]] = []
            if lo is not None and s.tmin < lo:
                filters.append(("ts", ">=", pa.scalar(lo, TS)))
            if hi is not None and s.tmax > hi:
                filters.append(("ts", "<=", pa.scalar(hi, TS)))
            t = pq.read_table(s.path, read_dictionary=["meter", "quantity"], filters=filters or None)
            return t.select(READINGS_SCHEMA.names).cast(READINGS_SCHEMA)
        where = [f"epoch_us(ts) >= {int(lo)}"] if lo is not None else []
        where += [f"epoch_us(ts) <= {int(hi)}"] if hi is not None else []
        sql = (
            "SELECT ts, meter, quantity, arg_max(value, filename) AS value "
            "FROM read_parquet($files, filename = true) "
            + ("WHERE " + " AND ".join(where) + " " if where else "")
            + "GROUP BY ts, meter, quantity ORDER BY ts, meter, quantity"
        )
        t = self.ctx.arrow(sql, {"files": [str(s.path) for s in group]})
        return pa.table(
            [t.column("ts").cast(TS), pc.dictionary_encode(t.column("meter")),
             pc.dictionary_encode(t.column("quantity")), t.column("value")],
            schema=READINGS_SCHEMA,
        )

    def read_readings(self, sites: list[str], lo: int | None, hi: int | None) -> pd.DataFrame:
        """The readings frame of ``sites`` in ``[lo, hi]`` [µs]: by site, then ts."""
        jobs = [(site, g) for site in sites for g in self.site_groups(site, lo, hi)]
        if not jobs:
            return empty_readings()
        tables: dict[int, pa.Table] = {}
        singles = [k for k, j in enumerate(jobs) if len(j[1]) == 1]
        with ThreadPoolExecutor(self.ctx.threads) as ex:
            for k, t in zip(singles, ex.map(lambda k: self.read_group(jobs[k][1], lo, hi), singles), strict=True):
                tables[k] = t
        for k, (_, g) in enumerate(jobs):
            if len(g) > 1:
                tables[k] = self.read_group(g, lo, hi)
        ordered = [tables[k] for k in range(len(jobs))]
        if sum(t.num_rows for t in ordered) == 0:
            return empty_readings()
        return readings_frame([site for site, _ in jobs], ordered)

    def read_events(self, sites: set[str] | None, lo: int | None, hi: int | None) -> pd.DataFrame:
        """The event ledger of ``sites`` in ``[lo, hi]`` [µs], the last write of each event winning."""
        segs = [s for s in list_segments(self.ctx.root / "events")
                if (lo is None or s.tmax >= lo) and (hi is None or s.tmin <= hi)]
        if not segs:
            return empty_events()
        frames = []
        for k, s in enumerate(segs):
            df = pq.read_table(s.path).to_pandas()
            df["_seq"] = k
            frames.append(df)
        ev = pd.concat(frames, ignore_index=True).sort_values("_seq", kind="stable")
        ev = ev.drop_duplicates(["site", "kind", "subject", "ts"], keep="last")
        t = pd.DatetimeIndex(ev["ts"]).tz_convert("UTC").as_unit("ns")
        mask = np.ones(len(ev), dtype=bool)
        if lo is not None:
            mask &= t.asi8 >= lo * 1000
        if hi is not None:
            mask &= t.asi8 <= hi * 1000
        if sites is not None:
            mask &= ev["site"].isin(list(sites)).to_numpy()
        ev = ev[mask]
        out = pd.DataFrame({c: ev[c].to_numpy() for c in EVENT_COLUMNS}, index=pd.DatetimeIndex(t[mask], name="ts"))
        for c in EVENT_COLUMNS:
            if c != "value":
                out[c] = out[c].astype(object)
        out["value"] = out["value"].astype("float64")
        return out.sort_index(kind="stable")

    def read(self, sites: Iterable[str] | None, start: dt.datetime | None, end: dt.datetime | None,
             *, readings: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Readings (unless ``readings`` is False) and events in UTC ``[start, end]`` of ``sites``."""
        self.ctx.check_open()
        lo, hi = to_us(start, "start"), to_us(end, "end")
        wanted = None if sites is None else sorted(set(sites))
        site_list = self.site_ids() if wanted is None else [s for s in wanted if SITE_RE.match(s)]
        frame = self.ctx.retry(lambda: self.read_readings(site_list, lo, hi)) if readings else empty_readings()
        events = self.ctx.retry(lambda: self.read_events(None if wanted is None else set(wanted), lo, hi))
        return frame, events

    def count(self) -> int:
        """Number of distinct readings held (site, meter, quantity, ts)."""
        self.ctx.check_open()

        def run() -> int:
            total = 0
            for site in self.site_ids():
                for g in self.site_groups(site, None, None):
                    if len(g) == 1:
                        total += pq.read_metadata(g[0].path).num_rows
                        continue
                    t = self.ctx.arrow(
                        "SELECT count(*) AS n FROM (SELECT DISTINCT ts, meter, quantity FROM read_parquet($files))",
                        {"files": [str(s.path) for s in g]},
                    )
                    total += int(t.column("n")[0].as_py())
            return total

        return self.ctx.retry(run)

    def sql(self, query: str, **params: Any) -> pd.DataFrame:
        """Run SQL on views ``readings`` (de-duplicated, with ``site``) and ``events``."""
        con = self.ctx.con
        base = (self.ctx.root / "readings").as_posix()
        if not self.site_ids():
            con.sql(
                "CREATE OR REPLACE TEMP VIEW readings AS SELECT NULL::TIMESTAMPTZ AS ts, NULL::VARCHAR AS site, "
                "NULL::VARCHAR AS meter, NULL::VARCHAR AS quantity, NULL::DOUBLE AS value WHERE false"
            )
        else:
            con.sql(
                "CREATE OR REPLACE TEMP VIEW readings AS SELECT ts, site, meter, quantity, "
                f"arg_max(value, filename) AS value FROM read_parquet('{base}/site=*/*.parquet', "
                "hive_partitioning = true, filename = true, union_by_name = true) GROUP BY ts, site, meter, quantity"
            )
        if list_segments(self.ctx.root / "events"):
            ev = (self.ctx.root / "events").as_posix()
            con.sql(
                "CREATE OR REPLACE TEMP VIEW events AS SELECT ts, site, kind, subject, arg_max(value, filename) "
                "AS value, arg_max(unit, filename) AS unit, arg_max(detail, filename) AS detail "
                f"FROM read_parquet('{ev}/*.parquet', filename = true) GROUP BY ts, site, kind, subject"
            )

        def run() -> pd.DataFrame:
            rel = con.sql(query, params=params or None)
            return pd.DataFrame() if rel is None else rel.df()

        return self.ctx.retry(run)


def readings_frame(sites: list[str], tables: list[pa.Table]) -> pd.DataFrame:
    """The readings frame of tables (one per job, ``sites`` naming each), assembled column by
    column into arrays allocated once: this is most of a read's time at ~10 M rows."""
    n = sum(t.num_rows for t in tables)
    site_names = sorted(set(sites))
    pos = {s: k for k, s in enumerate(site_names)}
    site_codes = np.repeat(np.asarray([pos[s] for s in sites], dtype=_code_dtype(len(site_names))),
                           [t.num_rows for t in tables])
    ts_ns = np.empty(n, dtype=np.int64)
    values = np.empty(n, dtype=np.float64)
    at = 0
    for t in tables:
        for tc, vc in zip(t.column("ts").cast(TS).chunks, t.column("value").chunks, strict=True):
            k = len(tc)
            np.multiply(tc.to_numpy().view(np.int64), 1000, out=ts_ns[at: at + k])
            values[at: at + k] = vc.to_numpy()
            at += k
    idx = pd.DatetimeIndex(ts_ns.view("M8[ns]"), dtype="datetime64[ns, UTC]", name="ts")
    return pd.DataFrame(
        {
            "site": pd.Categorical.from_codes(site_codes, site_names, validate=False),
            "meter": _categorical(tables, "meter", n),
            "quantity": _categorical(tables, "quantity", n),
            "value": values,
        },
        index=idx,
        copy=False,
    )


def _categorical(tables: list[pa.Table], name: str, n: int) -> pd.Categorical:
    """Categorical of a dictionary column; categories in first-seen dictionary order."""
    chunks = [c for t in tables for c in t.column(name).chunks]
    index: dict[str, int] = {}
    luts = [np.asarray([index.setdefault(s, len(index)) for s in c.dictionary.to_pylist()]) for c in chunks]
    dtype = _code_dtype(len(index))
    codes = np.empty(n, dtype=dtype)
    at = 0
    for c, lut in zip(chunks, luts, strict=True):
        k = len(c)
        if k:
            codes[at: at + k] = lut.astype(dtype)[c.indices.to_numpy(zero_copy_only=False)]
        at += k
    return pd.Categorical.from_codes(codes, list(index), validate=False)
