"""The store interface: what every time-series backend offers, and a store's readings as a set.

Backends: :mod:`ems.store.duckdb_store` (embedded default) and :mod:`ems.store.influx`
(InfluxDB 2 via influxdb-client). Open one by URL with :func:`ems.store.open_store`, or get
its readings with :func:`ems.open_readings`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ems.readings import MeterInfo, ReadingSet, SiteInfo

if TYPE_CHECKING:
    from ems.accounting.energy import Stage1

__all__ = ["Store", "StoredReadings"]


@runtime_checkable
class Store(Protocol):
    """A time-series store of readings, events and their metadata.

    Writes are idempotent: a reading is identified by (site, meter, quantity,
    ts); writing it again stores it once (the last value wins), so at-least-once
    delivery upstream never double-counts. Events are identified by (site, kind,
    subject, ts).
    """

    def register_sites(self, sites: Iterable[SiteInfo]) -> None:
        """Insert or update site registrations."""
        ...

    def register_meters(self, meters: Iterable[MeterInfo]) -> None:
        """Insert or update meter metadata."""
        ...

    def write_readings(self, readings: pd.DataFrame) -> int:
        """Write a readings frame (the contract's tidy form); return rows accepted."""
        ...

    def write_events(self, events: pd.DataFrame) -> int:
        """Write an events frame; return rows accepted."""
        ...

    def read(
        self,
        *,
        sites: Iterable[str] | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        readings: bool = True,
    ) -> ReadingSet:
        """Read readings (UTC ``[start, end]``), events and metadata back as a ReadingSet
        (with ``readings=False`` an empty readings frame: events and metadata only)."""
        ...

    def bulk_load(self) -> AbstractContextManager[None]:
        """Writes inside the ``with`` block are one bulk load (the store may defer its upkeep to its end)."""
        ...

    def stage1(self, *, sites: Iterable[str] | None = None) -> Stage1:
        """Stage 1 of the rollup (:mod:`ems.accounting.energy`) of every reading of ``sites``,
        pushed down to the store: equal to stage 1 of :meth:`read`."""
        ...

    def count(self) -> int:
        """Number of readings held."""
        ...

    def close(self) -> None:
        """Flush and release the backend; after this the store is unusable."""
        ...


class StoredReadings(ReadingSet):
    """A store's readings as a ReadingSet: events and metadata read at once, the readings
    frame on first use, and stage 1 pushed down to the store (:meth:`Store.stage1`), so
    ``ems.kpis`` of a whole store never reads every reading.

    Parameters
    ----------
    store : Store
        An open store; closed by :meth:`close` if ``owned``.
    sites : iterable of str, optional
        Sites to include; default all.
    owned : bool
        Close the store with this set.
    """

    def __init__(self, store: Store, *, sites: Iterable[str] | None = None, owned: bool = False) -> None:
        self.store = store
        self.site_ids = None if sites is None else sorted(set(sites))
        self._owned = owned
        self._readings: pd.DataFrame | None = None
        head = store.read(sites=self.site_ids, readings=False)
        self.events = head.events
        self.meters = head.meters
        self.sites = head.sites

    @property  # type: ignore[override]
    def readings(self) -> pd.DataFrame:
        """The readings frame, read on first use."""
        if self._readings is None:
            self._readings = self.store.read(sites=self.site_ids).readings
        return self._readings

    @readings.setter
    def readings(self, value: pd.DataFrame) -> None:
        self._readings = value

    def stage1(self) -> Stage1:
        """Stage 1 of the set, from the store's register aggregates."""
        if self._readings is not None:  # changed or already read: compute from the frame
            from ems.accounting.energy import stage1

            return stage1(ReadingSet(self._readings, self.events, self.meters, self.sites))
        return self.store.stage1(sites=self.site_ids)

    def hourly(self, series: Iterable[tuple[str, str]] | None = None) -> pd.DataFrame:
        """Stage-1 hourly rows of some (meter, quantity) series (meter ``"*"``: any), with their
        tariff periods as separate rows: from the store's aggregates when the store pushes them
        down and the set was not changed, else from :meth:`stage1`."""
        push = getattr(self.store, "hourly", None)
        if self._readings is None and push is not None:
            out: pd.DataFrame = push(sites=self.site_ids, series=series)
            return out
        h = self.stage1().hourly
        if series is None:
            return h
        pairs = set(series)
        anyq = {q for m, q in pairs if m == "*"}
        keep = [q in anyq or (m, q) in pairs for m, q in zip(h["meter"].astype(str), h["quantity"].astype(str), strict=True)]
        return h[np.asarray(keep, dtype=bool)]

    def close(self) -> None:
        """Close the store if this set opened it."""
        if self._owned:
            self.store.close()

