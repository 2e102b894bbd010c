"""The embedded store: immutable Parquet segments in a directory, DuckDB as query engine.

Layout of a store directory (``docs/store.md`` explains the design)::

    ems-data/
      ems-store.json                   format marker and version
      readings/site=<site>/<segment>   readings segments, one site per directory
      events/<segment>                 event ledger segments
      sites.json, meters.json          registrations (upserted, replaced atomically)
      seq                              last write sequence number
      .write.lock, .compact.lock       advisory locks of writers and of compaction

Each ``write_readings`` call publishes one immutable segment per site atomically
and durably (see :mod:`ems.store.segments`). A reading is identified by (site,
meter, quantity, ts); when segments overlap in time, reads de-duplicate with
DuckDB keeping the value of the latest segment, so writing a reading twice stores
it once and the last write wins. :meth:`DuckDBStore.compact` merges the segments
of each site and drops the duplicates for good. Readers take no lock, so a report
in another process can read while an ingest process writes; a file that vanishes
under a reader (compaction) makes the read start again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ems.errors import ReadingError, StoreError
from ems.readings import (
    EVENT_COLUMNS,
    QUANTITIES,
    MeterInfo,
    ReadingSet,
    SiteInfo,
    empty_events,
    empty_readings,
)
from ems.store.arrays import (
    EVENTS_SCHEMA,
    READINGS_SCHEMA,
    TS,
    arrow_columns,
    frame_columns,
    local_us_sql,
    segment_table,
    site_parts,
    to_us,
    write_table,
)
from ems.store.segments import (
    FileLock,
    Segment,
    atomic_write_bytes,
    fsync_dir,
    list_segments,
    overlap_groups,
    publish,
    segment_name,
)

__all__ = ["DEFAULT_PATH", "READINGS_SCHEMA", "DuckDBStore"]

log = logging.getLogger(__name__)

DEFAULT_PATH = "ems-data"
"""Default store directory, relative to the working directory."""

FORMAT: dict[str, Any] = {"format": "ems-segments", "version": 1}
_SITE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_RETRIES = 20
T = TypeVar("T")


def _code_dtype(n: int) -> type[np.signedinteger[Any]]:
    """Smallest signed integer type for ``n`` categorical codes (what pandas keeps)."""
    if n < 2**7:
        return np.int8
    if n < 2**15:
        return np.int16
    return np.int32


class DuckDBStore:
    """The embedded store in a directory (see module docs).

    Parameters
    ----------
    path : str or Path
        Store directory; created if missing (unless ``read_only``).
    read_only : bool
        Open for reading only: never creates or changes a file.
    compression : str
        Parquet codec of new segments (``zstd``, ``snappy``, ``lz4``, ``none``).
    threads : int, optional
        Threads for writing segments and for DuckDB; default: CPU count.
    fanout : int or None
        Tiered compaction after writes: when a site has ``fanout`` segments of one
        compaction generation, they are merged into one of the next generation (in
        the writing process, skipped if another compaction runs). None: only
        explicit :meth:`compact`.
    lock_timeout_s : float [s], optional
        Longest wait for the writers' lock held by another process; then writes raise
        :class:`StoreError` (an ingestor with a spool then spools). None: wait forever.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        read_only: bool = False,
        compression: str = "zstd",
        threads: int | None = None,
        fanout: int | None = 64,
        lock_timeout_s: float | None = None,
    ) -> None:
        self.root = Path(path)
        self.read_only = read_only
        self.compression = compression
        self.threads = max(1, threads or os.cpu_count() or 1)
        if fanout is not None and fanout < 2:
            raise StoreError(f"fanout: expected an integer >= 2 or None; found {fanout!r}")
        self.fanout = fanout
        marker = self.root / "ems-store.json"
        if marker.exists():
            try:
                fmt = json.loads(marker.read_text())
            except (OSError, ValueError) as exc:
                raise StoreError(f"{marker}: unreadable store marker: {exc}") from exc
            if fmt.get("format") != FORMAT["format"] or int(fmt.get("version", 0)) > int(
                FORMAT["version"]
            ):
                raise StoreError(f"{marker}: expected store format {FORMAT}, found {fmt}")
        elif read_only:  # a reader never creates anything: say what is there and what to run
            found = "nothing there" if not self.root.exists() else "a folder without ems-store.json"
            raise StoreError(
                f"no store at {self.root} ({found}); write one first, e.g. "
                f"ems run scenarios/demo.yaml --store {self.root}"
            )
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise StoreError(
                    f"{self.root}: expected an empty or new directory for a new store; "
                    "found other files"
                )
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(marker, json.dumps(FORMAT).encode())
        self._write_lock = FileLock(self.root / ".write.lock", lock_timeout_s)
        self._compact_lock = FileLock(self.root / ".compact.lock")
        self._con: duckdb.DuckDBPyConnection | None = duckdb.connect(":memory:")
        self._con.sql(f"SET threads = {self.threads}")
        self._con.sql("SET TimeZone = 'UTC'")

    # -- lifecycle ------------------------------------------------------------
    def __repr__(self) -> str:
        return f"DuckDBStore({str(self.root)!r}, read_only={self.read_only})"

    def __enter__(self) -> DuckDBStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the DuckDB connection; every write is already durable."""
        if self._con is not None:
            self._con.close()
            self._con = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The store's in-memory DuckDB connection (the query engine)."""
        if self._con is None:
            raise StoreError(f"{self!r} is closed; open the store again to use it")
        return self._con

    def _writable(self, what: str) -> None:
        self.con  # noqa: B018 - raises when closed
        if self.read_only:
            raise StoreError(f"{what}: {self!r} was opened read-only")

    def _next_seq(self, n: int) -> int:
        """Reserve ``n`` sequence numbers (hold the write lock); return the first."""
        f = self.root / "seq"
        try:
            last = int(f.read_text() or 0)
        except FileNotFoundError:
            last = 0
        atomic_write_bytes(f, str(last + n).encode())
        return last + 1

    # -- metadata -------------------------------------------------------------
    def _load(self, name: str) -> dict[str, dict[str, Any]]:
        f = self.root / name
        try:
            data: dict[str, dict[str, Any]] = json.loads(f.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise StoreError(f"{f}: expected JSON registrations; {exc}") from exc
        return data

    def _upsert(self, name: str, items: Mapping[str, dict[str, Any]]) -> None:
        with self._write_lock.hold():
            data = self._load(name)
            data.update(items)
            atomic_write_bytes(
                self.root / name, json.dumps(data, indent=1, sort_keys=True, default=str).encode()
            )

    def register_sites(self, sites: Iterable[SiteInfo]) -> None:
        """Insert or update site registrations (keyed by site)."""
        self._writable("register_sites")
        items = {s.site: s.to_dict() for s in sites}
        for k in items:
            self._check_site(k)
        if items:
            self._upsert("sites.json", items)

    def register_meters(self, meters: Iterable[MeterInfo]) -> None:
        """Insert or update meter metadata (keyed by site and meter)."""
        self._writable("register_meters")
        items = {f"{m.site}/{m.meter}": m.to_dict() for m in meters}
        if items:
            self._upsert("meters.json", items)

    def sites(self) -> list[SiteInfo]:
        """Return every registered site."""
        return [SiteInfo.from_dict(d) for _, d in sorted(self._load("sites.json").items())]

    def meters(self) -> list[MeterInfo]:
        """Return every registered meter."""
        return [MeterInfo.from_dict(d) for _, d in sorted(self._load("meters.json").items())]

    @staticmethod
    def _check_site(site: str) -> None:
        if not _SITE_RE.match(site):
            raise StoreError(
                f"site id {site!r}: expected [a-z0-9][a-z0-9_-]{{0,62}} (it names a directory)"
            )

    # -- writing --------------------------------------------------------------
    def write_readings(self, readings: pd.DataFrame | pa.Table) -> int:
        """Write readings; return the rows accepted.

        The readings are checked against the contract (:func:`ems.readings.validate_readings`;
        :func:`ems.store.arrays.arrow_columns` for an Arrow table). One segment per
        site is published atomically and durably before this returns. Within the
        call, a repeated (site, meter, quantity, ts) keeps its last row; against
        earlier writes, this write wins.

        Parameters
        ----------
        readings : DataFrame or pyarrow.Table
            The contract's tidy frame (``ts`` index, ``site``, ``meter``, ``quantity``,
            ``value``), or the same as an Arrow table with a ``ts`` column (a fast path
            for producers that build Arrow, such as ``ems run``: no pandas frame).

        Returns
        -------
        int
            Number of rows accepted (before removing repeats within the call).
        """
        self._writable("write_readings")
        if isinstance(readings, pa.Table):
            cols = arrow_columns(readings, where="write_readings")
        else:
            cols = frame_columns(readings, where="write_readings")
        ts_ns, (site_codes, site_cats), (m_codes, m_cats), (q_codes, q_cats), values = cols
        n = len(values)
        if n == 0:
            return 0
        for s in site_cats:
            self._check_site(s)
        parts = site_parts(site_codes, site_cats)

        def prepare(part: tuple[str, np.ndarray | None]) -> tuple[str, pa.Table, int, int]:
            site, take = part
            t, m, q, v = (
                (ts_ns, m_codes, q_codes, values)
                if take is None
                else (ts_ns[take], m_codes[take], q_codes[take], values[take])
            )
            return (site, *segment_table(t // 1000, m, q, v, m_cats, q_cats))

        with ThreadPoolExecutor(min(self.threads, len(parts))) as ex:
            tables = list(ex.map(prepare, parts))
            with self._write_lock.hold():
                seq0 = self._next_seq(len(tables))

                def put(i: int) -> Path:
                    site, table, tmin, tmax = tables[i]
                    return publish(
                        self.root / "readings" / f"site={site}",
                        segment_name(seq0 + i, 0, tmin, tmax),
                        lambda f: write_table(table, f, self.compression),
                    )

                paths = list(ex.map(put, range(len(tables))))
        log.debug("wrote %d readings in %d segments to %s", n, len(paths), self.root)
        self._auto_compact([p.parent for p in paths])
        return n

    def write_events(self, events: pd.DataFrame) -> int:
        """Write an events frame (see :func:`ems.readings.events_frame`); return rows accepted.

        An event is identified by (site, kind, subject, ts); a repeat keeps the last write.
        """
        self._writable("write_events")
        if not isinstance(events.index, pd.DatetimeIndex) or events.index.tz is None:
            raise ReadingError(
                "write_events: expected a tz-aware DatetimeIndex named 'ts'; "
                f"found {type(events.index).__name__} (tz={getattr(events.index, 'tz', None)})"
            )
        missing = [c for c in EVENT_COLUMNS if c not in events.columns]
        if missing:
            raise ReadingError(
                f"write_events: expected columns {list(EVENT_COLUMNS)}, missing {missing}"
            )
        n = len(events)
        if n == 0:
            return 0
        keys = pd.DataFrame(
            {c: events[c].astype(str).to_numpy() for c in ("site", "kind", "subject")}
        ).assign(ts=events.index.asi8)
        events = events[~keys.duplicated(keep="last").to_numpy()]
        ts = events.index.tz_convert("UTC").as_unit("ns").asi8 // 1000
        for s in pd.unique(events["site"].astype(str)):
            self._check_site(str(s))
        cols: dict[str, Any] = {"ts": pa.array(ts, TS)}
        for c in EVENT_COLUMNS:
            if c == "value":
                cols[c] = pa.array(events[c].to_numpy(dtype=np.float64))
            else:
                cols[c] = pa.array(events[c].astype(str).tolist(), pa.string())
        table = pa.table(cols, schema=EVENTS_SCHEMA)
        with self._write_lock.hold():
            seq = self._next_seq(1)
            publish(
                self.root / "events",
                segment_name(seq, 0, int(ts.min()), int(ts.max())),
                lambda f: write_table(table, f, self.compression),
            )
        self._auto_compact([self.root / "events"])
        return n

    # -- reading --------------------------------------------------------------
    def _arrow(self, sql: str, params: dict[str, Any]) -> pa.Table:
        """Run a query on the store's DuckDB connection; return its result as Arrow."""
        rel = self.con.sql(sql, params=params)
        if rel is None:
            raise StoreError(f"DuckDB returned no result for {sql[:60]!r}...")
        t: pa.Table = rel.to_arrow_table()
        return t

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run a read, starting again if compaction removed a file under it."""
        for attempt in range(_RETRIES):
            try:
                return fn()
            except (FileNotFoundError, duckdb.IOException) as exc:
                log.debug("read raced with compaction (%s); retry %d", exc, attempt + 1)
                time.sleep(0.005 * (attempt + 1))
            except OSError as exc:
                if "No such file" not in str(exc) and "not found" not in str(exc).lower():
                    raise
                log.debug("read raced with compaction (%s); retry %d", exc, attempt + 1)
                time.sleep(0.005 * (attempt + 1))
        raise StoreError(f"{self.root}: files kept vanishing during {_RETRIES} read attempts")

    def site_ids(self) -> list[str]:
        """Return the sites that have readings segments."""
        try:
            names = [e.name for e in os.scandir(self.root / "readings") if e.is_dir()]
        except FileNotFoundError:
            return []
        return sorted(n[5:] for n in names if n.startswith("site="))

    def _site_groups(self, site: str, lo: int | None, hi: int | None) -> list[list[Segment]]:
        segs = [
            s
            for s in list_segments(self.root / "readings" / f"site={site}")
            if (lo is None or s.tmax >= lo) and (hi is None or s.tmin <= hi)
        ]
        return overlap_groups(segs)

    def _read_group(self, group: list[Segment], lo: int | None, hi: int | None) -> pa.Table:
        if len(group) == 1:
            s = group[0]
            filters: list[tuple[str, str, Any]] = []
            if lo is not None and s.tmin < lo:
                filters.append(("ts", ">=", pa.scalar(lo, TS)))
            if hi is not None and s.tmax > hi:
                filters.append(("ts", "<=", pa.scalar(hi, TS)))
            t = pq.read_table(
                s.path, read_dictionary=["meter", "quantity"], filters=filters or None
            )
            return t.select(READINGS_SCHEMA.names).cast(READINGS_SCHEMA)
        where = []
        if lo is not None:
            where.append(f"epoch_us(ts) >= {int(lo)}")
        if hi is not None:
            where.append(f"epoch_us(ts) <= {int(hi)}")
        sql = (
            "SELECT ts, meter, quantity, arg_max(value, filename) AS value "
            "FROM read_parquet($files, filename = true) "
            + ("WHERE " + " AND ".join(where) + " " if where else "")
            + "GROUP BY ts, meter, quantity ORDER BY ts, meter, quantity"
        )
        t = self._arrow(sql, {"files": [str(s.path) for s in group]})
        return pa.table(
            [
                t.column("ts").cast(TS),
                pc.dictionary_encode(t.column("meter")),
                pc.dictionary_encode(t.column("quantity")),
                t.column("value"),
            ],
            schema=READINGS_SCHEMA,
        )

    def _read_readings(self, sites: list[str], lo: int | None, hi: int | None) -> pd.DataFrame:
        jobs = [(site, g) for site in sites for g in self._site_groups(site, lo, hi)]
        if not jobs:
            return empty_readings()
        singles = [j for j in jobs if len(j[1]) == 1]
        tables: dict[int, pa.Table] = {}
        with ThreadPoolExecutor(self.threads) as ex:
            for i, t in zip(
                [k for k, j in enumerate(jobs) if len(j[1]) == 1],
                ex.map(lambda j: self._read_group(j[1], lo, hi), singles),
                strict=True,
            ):
                tables[i] = t
        for i, (_, g) in enumerate(jobs):
            if len(g) > 1:
                tables[i] = self._read_group(g, lo, hi)
        ordered = [tables[i] for i in range(len(jobs))]
        n = sum(t.num_rows for t in ordered)
        if n == 0:
            return empty_readings()
        # assemble the frame column by column into arrays allocated once (no
        # intermediate concatenations): this is most of read()'s time at ~10 M rows
        site_names = sorted({site for site, _ in jobs})
        site_pos = {s: k for k, s in enumerate(site_names)}
        site_codes = np.repeat(
            np.asarray(
                [site_pos.get(site, 0) for site, _ in jobs], dtype=_code_dtype(len(site_names))
            ),
            [t.num_rows for t in ordered],
        )
        ts_ns = np.empty(n, dtype=np.int64)
        values = np.empty(n, dtype=np.float64)
        pos = 0
        for t in ordered:
            for tc, vc in zip(
                t.column("ts").cast(TS).chunks, t.column("value").chunks, strict=True
            ):
                k = len(tc)
                np.multiply(tc.to_numpy().view(np.int64), 1000, out=ts_ns[pos : pos + k])
                values[pos : pos + k] = vc.to_numpy()
                pos += k
        idx = pd.DatetimeIndex(ts_ns.view("M8[ns]"), dtype="datetime64[ns, UTC]", name="ts")

        def cat(name: str) -> pd.Categorical:
            """Categorical of a dictionary column; categories in first-seen dictionary order."""
            chunks = [c for t in ordered for c in t.column(name).chunks]
            index: dict[str, int] = {}
            luts = [
                np.asarray([index.setdefault(s, len(index)) for s in c.dictionary.to_pylist()])
                for c in chunks
            ]
            dtype = _code_dtype(len(index))
            codes = np.empty(n, dtype=dtype)
            at = 0
            for c, lut in zip(chunks, luts, strict=True):
                k = len(c)
                if k:
                    codes[at : at + k] = lut.astype(dtype)[c.indices.to_numpy(zero_copy_only=False)]
                at += k
            return pd.Categorical.from_codes(codes, list(index), validate=False)

        return pd.DataFrame(
            {
                "site": pd.Categorical.from_codes(site_codes, site_names, validate=False),
                "meter": cat("meter"),
                "quantity": cat("quantity"),
                "value": values,
            },
            index=idx,
            copy=False,
        )

    def _read_events(self, sites: set[str] | None, lo: int | None, hi: int | None) -> pd.DataFrame:
        segs = [
            s
            for s in list_segments(self.root / "events")
            if (lo is None or s.tmax >= lo) and (hi is None or s.tmin <= hi)
        ]
        if not segs:
            return empty_events()
        frames = []
        for k, s in enumerate(segs):
            df = pq.read_table(s.path).to_pandas()
            df["_seq"] = k
            frames.append(df)
        ev = pd.concat(frames, ignore_index=True).sort_values("_seq", kind="stable")
        ev = ev.drop_duplicates(["site", "kind", "subject", "ts"], keep="last")
        mask = np.ones(len(ev), dtype=bool)
        t = pd.DatetimeIndex(ev["ts"]).tz_convert("UTC").as_unit("ns")
        if lo is not None:
            mask &= t.asi8 >= lo * 1000
        if hi is not None:
            mask &= t.asi8 <= hi * 1000
        if sites is not None:
            mask &= ev["site"].isin(list(sites)).to_numpy()
        ev = ev[mask]
        out = pd.DataFrame(
            {c: ev[c].to_numpy() for c in EVENT_COLUMNS},
            index=pd.DatetimeIndex(t[mask], name="ts"),
        )
        for c in EVENT_COLUMNS:
            if c != "value":
                out[c] = out[c].astype(object)
        out["value"] = out["value"].astype("float64")
        return out.sort_index(kind="stable")

    def read(
        self,
        *,
        sites: Iterable[str] | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
    ) -> ReadingSet:
        """Read readings in UTC ``[start, end]``, events and metadata as a ReadingSet.

        Parameters
        ----------
        sites : iterable of str, optional
            Sites to read; default all.
        start, end : datetime, optional
            Inclusive bounds, tz-aware.

        Returns
        -------
        ReadingSet
            Readings ordered by site, then ``ts``; ``site``, ``meter``,
            ``quantity`` are categoricals, ``ts`` a UTC index.
        """
        self.con  # noqa: B018 - raises when closed
        lo, hi = to_us(start, "start"), to_us(end, "end")
        wanted = None if sites is None else sorted(set(sites))
        site_list = self.site_ids() if wanted is None else [s for s in wanted if _SITE_RE.match(s)]
        readings = self._retry(lambda: self._read_readings(site_list, lo, hi))
        events = self._retry(
            lambda: self._read_events(None if wanted is None else set(wanted), lo, hi)
        )
        keep = None if wanted is None else set(wanted)
        return ReadingSet(
            readings=readings,
            events=events,
            meters=[m for m in self.meters() if keep is None or m.site in keep],
            sites=[s for s in self.sites() if keep is None or s.site in keep],
        )

    def count(self) -> int:
        """Number of distinct readings held (site, meter, quantity, ts)."""
        self.con  # noqa: B018

        def run() -> int:
            total = 0
            for site in self.site_ids():
                for g in self._site_groups(site, None, None):
                    if len(g) == 1:
                        total += pq.read_metadata(g[0].path).num_rows
                    else:
                        t = self._arrow(
                            "SELECT count(*) AS n FROM (SELECT DISTINCT ts, meter, quantity "
                            "FROM read_parquet($files))",
                            {"files": [str(s.path) for s in g]},
                        )
                        total += int(t.column("n")[0].as_py())
            return total

        return self._retry(run)

    def daily_registers(
        self,
        *,
        sites: Iterable[str] | None = None,
        tz: str | None = None,
    ) -> pd.DataFrame:
        """Per site, meter, register and local day: the last reading and its difference.

        The first aggregation stage pushed down to DuckDB: only one row per day and
        register leaves the engine (96 times fewer at 15 min). A reading at ``ts``
        closes the interval ``(ts - interval, ts]``, so a reading at local midnight
        belongs to the day before. Repeated readings are resolved in the same pass
        (the latest segment wins), so no separate de-duplication is needed.

        Parameters
        ----------
        sites : iterable of str, optional
            Sites to include; default all.
        tz : str, optional
            IANA zone of the local day; default each site's registered ``tz``
            (``UTC`` for an unregistered site).

        Returns
        -------
        DataFrame
            Columns ``site``, ``meter``, ``quantity``, ``day`` (local date),
            ``last`` and ``diff`` (NaN on a register's first day) [register units].
        """
        self.con  # noqa: B018
        regs = ", ".join(f"'{q.name}'" for q in QUANTITIES.values() if q.kind == "register")
        zones = {s.site: s.tz for s in self.sites()}
        wanted = self.site_ids() if sites is None else sorted(set(sites) & set(self.site_ids()))

        def run() -> pd.DataFrame:
            by_zone: dict[str, list[Segment]] = {}
            for site in wanted:
                segs = list_segments(self.root / "readings" / f"site={site}")
                by_zone.setdefault(tz or zones.get(site, "UTC"), []).extend(segs)
            frames = []
            for zone, segs in by_zone.items():
                if not segs:
                    continue
                local = local_us_sql(
                    "epoch_us(ts) - 1000000",
                    zone,
                    min(s.tmin for s in segs) - 1_000_000,
                    max(s.tmax for s in segs),
                )
                sql = (
                    "SELECT site, meter, quantity, day, last, last - lag(last) OVER "
                    "(PARTITION BY site, meter, quantity ORDER BY day) AS diff "
                    f"FROM (SELECT site, meter, quantity, ({local}) // 86400000000 AS day, "
                    "arg_max(value, struct_pack(t := ts, f := filename)) AS last "
                    "FROM read_parquet($files, filename = true, hive_partitioning = true) "
                    f"WHERE quantity IN ({regs}) GROUP BY ALL) "
                    "ORDER BY site, meter, quantity, day"
                )
                df = self._arrow(sql, {"files": [str(s.path) for s in segs]}).to_pandas()
                df["day"] = pd.to_datetime(df["day"].to_numpy() * 86400, unit="s").date
                frames.append(df)
            if not frames:
                return pd.DataFrame(columns=["site", "meter", "quantity", "day", "last", "diff"])
            out = pd.concat(frames, ignore_index=True)
            for c in ("site", "meter", "quantity"):
                out[c] = out[c].astype("category")
            return out

        return self._retry(run)

    def segments(self) -> int:
        """Number of readings segments on disk (what :meth:`compact` reduces)."""
        return sum(
            len(list_segments(self.root / "readings" / f"site={s}")) for s in self.site_ids()
        )

    def sql(self, query: str, **params: Any) -> pd.DataFrame:
        """Run SQL on views ``readings`` (de-duplicated, with ``site``) and ``events``.

        For dashboards and ad-hoc analysis; readings in the view are not ordered.
        """
        base = (self.root / "readings").as_posix()
        con = self.con
        if not self.site_ids():
            con.sql(
                "CREATE OR REPLACE TEMP VIEW readings AS SELECT NULL::TIMESTAMPTZ AS ts, "
                "NULL::VARCHAR AS site, NULL::VARCHAR AS meter, NULL::VARCHAR AS quantity, "
                "NULL::DOUBLE AS value WHERE false"
            )
        else:
            con.sql(
                "CREATE OR REPLACE TEMP VIEW readings AS "
                "SELECT ts, site, meter, quantity, arg_max(value, filename) AS value "
                f"FROM read_parquet('{base}/site=*/*.parquet', hive_partitioning = true, "
                "filename = true, union_by_name = true) GROUP BY ts, site, meter, quantity"
            )
        ev = (self.root / "events").as_posix()
        if list_segments(self.root / "events"):
            con.sql(
                "CREATE OR REPLACE TEMP VIEW events AS "
                "SELECT ts, site, kind, subject, arg_max(value, filename) AS value, "
                "arg_max(unit, filename) AS unit, arg_max(detail, filename) AS detail "
                f"FROM read_parquet('{ev}/*.parquet', filename = true) "
                "GROUP BY ts, site, kind, subject"
            )

        def run() -> pd.DataFrame:
            rel = con.sql(query, params=params or None)
            if rel is None:
                return pd.DataFrame()
            return rel.df()

        return self._retry(run)

    # -- maintenance ----------------------------------------------------------
    def compact(self) -> dict[str, int]:
        """Merge each site's segments into one, dropping superseded duplicates.

        Runs under the compaction lock; writers are held only while the list of
        segments is taken. The merged file is published before the old ones are
        deleted, so a reader sees old, both (and de-duplicates) or new.

        Returns
        -------
        dict
            ``{"before": segments, "after": segments}`` over all sites and events.
        """
        self._writable("compact")
        before = after = 0
        with self._compact_lock.hold():
            folders = [self.root / "readings" / f"site={s}" for s in self.site_ids()]
            folders.append(self.root / "events")
            for folder in folders:
                with self._write_lock.hold():
                    segs = list_segments(folder)
                before += len(segs)
                if len(segs) <= 1:
                    after += len(segs)
                    continue
                self._merge(folder, segs)
                after += 1
        log.info("compacted %s: %d segments -> %d", self.root, before, after)
        return {"before": before, "after": after}

    def _auto_compact(self, folders: list[Path]) -> None:
        """Tiered compaction: merge a generation of a folder once it has ``fanout`` segments.

        Every segment of a generation is newer than every segment of a higher one
        (a merge takes all segments of its generation and keeps their highest
        ``seq``), so merging one generation never reorders writes.
        """
        if self.fanout is None:
            return
        fanout = self.fanout
        with self._compact_lock.hold(blocking=False) as got:
            if not got:
                return
            for folder in folders:
                while True:
                    with self._write_lock.hold():
                        segs = list_segments(folder)
                    gens: dict[int, list[Segment]] = {}
                    for sg in segs:
                        gens.setdefault(sg.gen, []).append(sg)
                    full = [g for g, lst in gens.items() if len(lst) >= fanout]
                    if not full:
                        break
                    log.debug(
                        "merging %d segments of generation %d in %s",
                        len(gens[min(full)]),
                        min(full),
                        folder,
                    )
                    self._merge(folder, gens[min(full)])

    def _merge(self, folder: Path, segs: list[Segment]) -> None:
        name = segment_name(
            max(s.seq for s in segs),
            max(s.gen for s in segs) + 1,
            min(s.tmin for s in segs),
            max(s.tmax for s in segs),
        )
        if folder.name == "events":
            table = self._arrow(
                "SELECT ts, site, kind, subject, arg_max(value, filename) AS value, "
                "arg_max(unit, filename) AS unit, arg_max(detail, filename) AS detail "
                "FROM read_parquet($files, filename = true) "
                "GROUP BY ts, site, kind, subject ORDER BY ts, site, kind, subject",
                {"files": [str(s.path) for s in segs]},
            ).cast(EVENTS_SCHEMA)
        else:
            # time-ordered overlap groups: a lone segment is copied, overlapping ones
            # are de-duplicated by DuckDB (latest segment wins); the result stays
            # sorted by ts, so reads need no sort
            groups = overlap_groups(segs)
            singles = [g for g in groups if len(g) == 1]
            with ThreadPoolExecutor(self.threads) as ex:
                read = dict(
                    zip(
                        [id(g) for g in singles],
                        ex.map(lambda g: self._read_group(g, None, None), singles),
                        strict=True,
                    )
                )
            parts = [
                read[id(g)] if len(g) == 1 else self._read_group(g, None, None) for g in groups
            ]
            table = pa.concat_tables(parts).unify_dictionaries().combine_chunks()
        publish(folder, name, lambda f: write_table(table, f, self.compression))
        for s in segs:
            s.path.unlink()
        fsync_dir(folder)
