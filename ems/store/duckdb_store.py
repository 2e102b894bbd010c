"""The embedded store: immutable Parquet segments in a directory, DuckDB as query engine.

Layout of a store directory (``docs/store.md`` explains the design)::

    ems-data/
      ems-store.json                   format marker and version
      readings/site=<site>/<segment>   readings segments, one site per directory
      events/<segment>                 event ledger segments
      rollups/site=<site>/...          register aggregates: stage 1 of the finished days
      sites.json, meters.json          registrations (upserted, replaced atomically)
      seq                              last write sequence number
      .write.lock, .compact.lock       advisory locks of writers and of compaction

:class:`DuckDBStore` is a thin facade over four parts with one job each:
:class:`~ems.store.registry.Registry` (registrations), :class:`~ems.store.writer.SegmentWriter`
(publishes and compacts segments), :class:`~ems.store.reader.SegmentReader` (reads them back)
and :class:`~ems.store.rollups.RegisterAggregates` (stage 1 pushed down, kept up to date as
segments are written). Readers take no lock, so a report in another process can read while
an ingest process writes; a file that vanishes under a reader (compaction) makes the read
start again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from ems.accounting.energy import Stage1
from ems.errors import StoreError
from ems.readings import MeterInfo, ReadingSet, SiteInfo
from ems.store.arrays import READINGS_SCHEMA
from ems.store.context import StoreContext, default_threads
from ems.store.reader import SegmentReader
from ems.store.registry import Registry, open_root
from ems.store.rollups import RegisterAggregates
from ems.store.writer import SegmentWriter

if TYPE_CHECKING:
    import duckdb

__all__ = ["DEFAULT_PATH", "READINGS_SCHEMA", "DuckDBStore"]

DEFAULT_PATH = "ems-data"
"""Default store directory, relative to the working directory."""


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
    aggregates : bool
        Keep the register aggregates up to date as readings are written (default). Without
        them :meth:`stage1` computes everything from the raw readings.
    silent_after_s : float [s]
        The aggregates do not wait for a meter series whose newest reading is this much
        older than its site's newest (a meter out of service); when it reports again, the
        intervals it changes are computed again.
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
        aggregates: bool = True,
        silent_after_s: float = 2 * 86400.0,
    ) -> None:
        if fanout is not None and fanout < 2:
            raise StoreError(f"fanout: expected an integer >= 2 or None; found {fanout!r}")
        root = Path(path)
        open_root(root, read_only)
        self.ctx = StoreContext(root, read_only, compression, default_threads(threads), lock_timeout_s)
        self.registry = Registry(self.ctx)
        self.reader = SegmentReader(self.ctx)
        self.writer = SegmentWriter(self.ctx, self.reader, fanout)
        self.aggregates = RegisterAggregates(self.ctx, self.reader, self.registry, silent_after_s)
        self._keep_aggregates = aggregates

    # -- lifecycle ------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.ctx.root

    @property
    def read_only(self) -> bool:
        return self.ctx.read_only

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The store's in-memory DuckDB connection (the query engine)."""
        return self.ctx.con

    def __repr__(self) -> str:
        return f"DuckDBStore({str(self.root)!r}, read_only={self.read_only})"

    def __enter__(self) -> DuckDBStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release the DuckDB connection; every write is already durable."""
        self.ctx.close()

    # -- registrations ----------------------------------------------------------
    def register_sites(self, sites: Iterable[SiteInfo]) -> None:
        """Insert or update site registrations (keyed by site)."""
        self.registry.register_sites(sites)

    def register_meters(self, meters: Iterable[MeterInfo]) -> None:
        """Insert or update meter metadata (keyed by site and meter)."""
        self.registry.register_meters(meters)

    def sites(self) -> list[SiteInfo]:
        """Every registered site."""
        return self.registry.sites()

    def meters(self) -> list[MeterInfo]:
        """Every registered meter."""
        return self.registry.meters()

    # -- writing --------------------------------------------------------------
    def write_readings(self, readings: pd.DataFrame | pa.Table) -> int:
        """Write a readings frame, or the same as an Arrow table; return the rows accepted.

        The frame is checked against the contract (:func:`ems.readings.validate_readings`;
        an Arrow table, with ``ts`` as a column, by :func:`ems.store.arrays.arrow_columns`:
        the fast path of producers that build Arrow, such as ``ems run``). One segment per
        site is published atomically and durably before this returns, and the register
        aggregates of the written sites are brought up to date. Within the frame, a
        repeated (site, meter, quantity, ts) keeps its last row; against earlier writes,
        this write wins.

        Returns
        -------
        int
            Number of rows accepted (before removing repeats within the frame).
        """
        after = self.aggregates.after_write if self._keep_aggregates else None
        return self.writer.write_readings(readings, after)

    def write_events(self, events: pd.DataFrame) -> int:
        """Write an events frame (see :func:`ems.readings.events_frame`); return rows accepted."""
        return self.writer.write_events(events)

    def compact(self) -> dict[str, int]:
        """Merge each site's segments into one; ``{"before": n, "after": n}`` segments."""
        return self.writer.compact()

    # -- reading --------------------------------------------------------------
    def read(self, *, sites: Iterable[str] | None = None, start: dt.datetime | None = None,
             end: dt.datetime | None = None, readings: bool = True) -> ReadingSet:
        """Read readings in UTC ``[start, end]``, events and metadata as a ReadingSet.

        Readings come ordered by site, then ``ts``; ``site``, ``meter``, ``quantity`` are
        categoricals, ``ts`` a UTC index. With ``readings=False`` the readings frame is
        empty (events and metadata only).
        """
        frame, events = self.reader.read(sites, start, end, readings=readings)
        keep = None if sites is None else set(sites)
        return ReadingSet(
            readings=frame,
            events=events,
            meters=[m for m in self.meters() if keep is None or m.site in keep],
            sites=[s for s in self.sites() if keep is None or s.site in keep],
        )

    def stage1(self, *, sites: Iterable[str] | None = None) -> Stage1:
        """Stage 1 of the rollup for ``sites`` (default all), pushed down to the store.

        The register aggregates give the finished days; the days after them are computed
        from the raw readings. Equal to :func:`ems.accounting.energy.stage1` of
        :meth:`read`, bit for bit.
        """
        return self.aggregates.stage1(sites)

    def hourly(self, *, sites: Iterable[str] | None = None,
               series: Iterable[tuple[str, str]] | None = None) -> pd.DataFrame:
        """Stage-1 hourly energy of some (meter, quantity) series (rows per tariff period), pushed
        down to the register aggregates (:meth:`ems.store.rollups.RegisterAggregates.hourly`): what
        hourly matching reads."""
        return self.aggregates.hourly(sites, series)

    def bulk_load(self) -> contextlib.AbstractContextManager[None]:
        """A bulk load: inside the ``with`` block the register aggregates of each write are
        computed in memory (from the rows in hand when it appends) and each site's are
        published once, at its end (``ems run`` writes a site's year in slices); readers stay
        exact meanwhile (:mod:`ems.store.rollups`, the visibility rule)."""
        return self.aggregates.deferred()

    def rebuild_aggregates(self, sites: Iterable[str] | None = None) -> None:
        """Drop the register aggregates and materialize them again from the raw readings."""
        self.aggregates.rebuild(sites)

    def count(self) -> int:
        """Number of distinct readings held (site, meter, quantity, ts)."""
        return self.reader.count()

    def site_ids(self) -> list[str]:
        """The sites that have readings segments."""
        return self.reader.site_ids()

    def segments(self) -> int:
        """Number of readings segments on disk (what :meth:`compact` reduces)."""
        return self.reader.segments()

    def sql(self, query: str, **params: Any) -> pd.DataFrame:
        """Run SQL on views ``readings`` (de-duplicated, with ``site``) and ``events``.

        For dashboards and ad-hoc analysis; readings in the view are not ordered.
        """
        return self.reader.sql(query, **params)
