"""Stage 1 itself: readings, or register series as arrays, to its daily and hourly rows and anomalies.

The definition is :mod:`ems.accounting.energy`'s; this module runs its steps
(:mod:`~ems.accounting.energy.layout`, :mod:`~ems.accounting.energy.series`,
:mod:`~ems.accounting.energy.attribution`, :mod:`~ems.accounting.energy.frames`) or asks
readings that give their own stage 1 (:class:`Stage1Source`, a store's push-down).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ems.accounting.energy.attribution import Accumulator
from ems.accounting.energy.frames import daily_rows, energy_frame, hourly_frame
from ems.accounting.energy.layout import SeriesKey, View, column_codes, register_series
from ems.accounting.energy.series import series_table
from ems.errors import AccountingError
from ems.readings import MeterInfo, ReadingSet, SiteInfo

__all__ = ["Stage1", "Stage1Source", "stage1", "stage1_series"]

log = logging.getLogger(__name__)


class Stage1:
    """Result of stage 1.

    Attributes
    ----------
    energy : DataFrame
        Daily rows, columns :data:`STAGE1_COLUMNS`; ``date`` is the local calendar day
        (naive ``datetime64[ns]`` at midnight). Ordered by site, meter, quantity, date, period.
    anomalies : DataFrame
        Resets, rollovers and gaps: columns :data:`ANOMALY_COLUMNS`.
    hourly : DataFrame
        Hourly rows, columns :data:`HOURLY_COLUMNS` (``site``, ``meter``, ``quantity``,
        ``period`` categorical; ``hour`` the UTC start of the local clock hour), built
        on first access.
    """

    def __init__(self, energy: pd.DataFrame, anomalies: pd.DataFrame,
                 hourly: pd.DataFrame | Callable[[], pd.DataFrame]) -> None:
        self.energy = energy
        self.anomalies = anomalies
        self._hourly = hourly

    @property
    def hourly(self) -> pd.DataFrame:
        if callable(self._hourly):
            self._hourly = self._hourly()
        return self._hourly


@runtime_checkable
class Stage1Source(Protocol):
    """Readings that give their own stage 1: a store pushes it down to its register aggregates
    (:class:`ems.store.base.StoredReadings`); :func:`stage1` then asks them instead of
    computing it from the readings frame."""

    def stage1(self) -> Stage1:
        """Stage 1 of every reading of the set, equal to computing it from them."""
        ...


def stage1(
    rs: ReadingSet,
    *,
    start: pd.Timestamp | int | None = None,
    end: pd.Timestamp | int | None = None,
) -> Stage1:
    """Turn readings into energy per hour, local day and tariff period (see the module docs).

    Parameters
    ----------
    rs : ReadingSet
        Readings with their meters and sites, in any row order.
    start, end : Timestamp or int [ns since the epoch, UTC], optional
        Keep only the parts whose interval starts in ``[start, end)``; readings
        outside serve as baselines (the first reading of a window's interval, the
        reading that closes a gap). Anomalies are kept when the interval ending at
        their reading starts in the window. Give local midnights to get whole days.

    Returns
    -------
    Stage1
        Daily and hourly energy rows and the anomalies.

    Raises
    ------
    AccountingError
        Readings without a DatetimeIndex, a meter without MeterInfo or a site without
        SiteInfo, or a tariff that is not a valid description.

    Notes
    -----
    A set that gives its own stage 1 (:class:`Stage1Source`, e.g. the readings of a
    store) is asked for it when no window is given.
    """
    if start is None and end is None and isinstance(rs, Stage1Source):
        return rs.stage1()
    r = rs.readings
    if not isinstance(r.index, pd.DatetimeIndex):
        raise AccountingError(f"readings: expected a DatetimeIndex named 'ts'; found {type(r.index).__name__}")
    ts = (r.index if r.index.unit == "ns" else r.index.as_unit("ns")).asi8
    series = register_series(ts, column_codes(r["site"]), column_codes(r["meter"]), column_codes(r["quantity"]),
                             r["value"].to_numpy(dtype=np.float64))
    return stage1_series(series, rs.meters, rs.sites, start=start, end=end)


def stage1_series(
    series: Mapping[SeriesKey, View],
    meters: Iterable[MeterInfo],
    sites: Iterable[SiteInfo],
    *,
    start: pd.Timestamp | int | None = None,
    end: pd.Timestamp | int | None = None,
) -> Stage1:
    """:func:`stage1` of register series given as arrays (what a store has in hand as it writes).

    Parameters
    ----------
    series : mapping of (site, meter, quantity) to (ts, value)
        Each register series' readings in time order: ts [ns since the epoch, UTC] and
        value [register unit] (as :func:`register_series` gives them).
    meters, sites : MeterInfo, SiteInfo
        The metadata of the series' meters and sites.
    start, end : Timestamp or int [ns], optional
        As in :func:`stage1`.

    Returns
    -------
    Stage1
        Equal, bit for bit, to :func:`stage1` of the same readings as a frame.
    """
    keys = sorted(series)
    table = series_table(keys, list(meters))
    acc = Accumulator(table, {s.site: s for s in sites}, _ns(start), _ns(end))
    for j, key in enumerate(keys):
        acc.add(j, *series[key])
    hourly, table = acc.finish()
    energy = daily_rows(hourly)
    anomalies = acc.anomalies()
    if len(anomalies):
        log.info("stage 1: %d anomalies (resets, rollovers, gaps)", len(anomalies))
    return Stage1(
        energy=energy_frame(energy, table),
        anomalies=anomalies,
        hourly=lambda: hourly_frame(hourly, table),
    )


def _ns(t: pd.Timestamp | int | None) -> int | None:
    if t is None or isinstance(t, int | np.integer):
        return None if t is None else int(t)
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        raise AccountingError(f"stage 1 window: expected a tz-aware time; found naive {ts}")
    return int(ts.tz_convert("UTC").as_unit("ns").value)
