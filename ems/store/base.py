"""The store interface: what every time-series backend offers.

Backends: :mod:`ems.store.duckdb_store` (embedded default) and
:mod:`ems.store.influx` (InfluxDB 2 via influxdb-client). Open one by URL with
:func:`ems.store.open_store`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import pandas as pd

from ems.readings import MeterInfo, ReadingSet, SiteInfo

__all__ = ["Store"]


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
    ) -> ReadingSet:
        """Read readings (UTC ``[start, end]``), events and metadata back as a ReadingSet."""
        ...

    def count(self) -> int:
        """Number of readings held."""
        ...

    def close(self) -> None:
        """Flush and release the backend; after this the store is unusable."""
        ...
