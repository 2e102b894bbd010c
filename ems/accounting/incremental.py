"""An incremental daily frame: one site's per-day KPI rows kept up to date as readings arrive.

What a live dashboard needs: the KPIs of today and of the year, again after every new
batch of readings, without computing the year again. :class:`DailyFrame` keeps

* the *closed* days (before ``open_from``, a local midnight): their stage-1 rows (from a
  store's register aggregates, :meth:`ems.store.base.Store.stage1`, or computed once) and
  their daily rows (:func:`ems.accounting.kpis.daily_frame`), computed once;
* the *open* days (from ``open_from`` on, normally today): the register readings since the
  last one before ``open_from``; each :meth:`DailyFrame.add` computes stage 1 of the open
  days again from them (a window of whole days: the same numbers as stage 1 of all
  readings, see :mod:`ems.accounting.energy`) and their daily rows.

When a new local day starts, the finished open days become closed. Quantities that span
days in stage 2 (the demand charge of a month, instruments allocated over their period)
are computed per part, as the dashboard has always shown them; :meth:`DailyFrame.reset`
computes everything again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ems.accounting.energy import Stage1, stage1
from ems.accounting.factors import FactorSet
from ems.accounting.kpis import _factor_sets, _Used, daily_frame
from ems.errors import AccountingError
from ems.readings import QUANTITIES, MeterInfo, ReadingSet, SiteInfo, empty_events, empty_readings

__all__ = ["DailyFrame"]

log = logging.getLogger(__name__)

_NS_D = 86_400_000_000_000
_REGISTERS = {q.name for q in QUANTITIES.values() if q.kind == "register"}
_ACTIVE_NS = 2 * _NS_D


class DailyFrame:
    """One site's daily KPI rows, kept up to date (see module docs).

    Parameters
    ----------
    site : SiteInfo
    meters : list of MeterInfo
        The site's meters.
    events : DataFrame, optional
        The site's event ledger (certificates, refrigerant, ...).
    factors : FactorSet or dict, optional
        As for :func:`ems.accounting.kpis`.
    """

    def __init__(self, site: SiteInfo, meters: list[MeterInfo], events: pd.DataFrame | None = None,
                 factors: FactorSet | Mapping[str, Any] | None = None) -> None:
        self.site = site
        self.meters = [m for m in meters if m.site == site.site]
        self.events = events if events is not None else empty_events()
        self._meta = ReadingSet(empty_readings(), self.events, self.meters, [site])
        self._fsets = _factor_sets(self._meta, factors)
        self.open_from: int | None = None  # [ns] local midnight; days before it are closed
        self._closed_s1 = pd.DataFrame()
        self._closed = pd.DataFrame()
        self._open: pd.DataFrame | None = pd.DataFrame()
        self._open_s1 = pd.DataFrame()
        self._open_stage: Stage1 | None = None  # stage 1 of the open days, with their hours
        self._closed_hours: list[pd.DataFrame] = []  # stage-1 hourly rows of the closed days
        self.closed_version = 0  # changes whenever the closed days change
        self._buffer = empty_readings()

    # -- state ----------------------------------------------------------------
    @property
    def daily(self) -> pd.DataFrame:
        """Daily rows of every day (closed, then open), as :func:`ems.accounting.kpis.daily_frame`."""
        parts = [d for d in (self._closed, self.today) if len(d)]
        if not parts:
            return pd.DataFrame()
        return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)

    @property
    def closed_hourly(self) -> pd.DataFrame:
        """Stage-1 hourly rows of the closed days that were given (:meth:`reset`) or closed since."""
        if len(self._closed_hours) > 1:
            self._closed_hours = [pd.concat(self._closed_hours, ignore_index=True)]
        return self._closed_hours[0] if self._closed_hours else pd.DataFrame()

    @property
    def today_hourly(self) -> pd.DataFrame:
        """Stage-1 hourly rows of the open days (:data:`ems.accounting.energy.HOURLY_COLUMNS`), for
        hourly matching of today."""
        return self._open_stage.hourly if self._open_stage is not None else pd.DataFrame()

    @property
    def factor_sets(self) -> dict[str, FactorSet]:
        """The factor set of the site, by site (as :func:`ems.accounting.kpis.kpis` chooses it)."""
        return self._fsets

    @property
    def today(self) -> pd.DataFrame:
        """Daily rows of the open days (stage 2 computed here, once per change)."""
        if self._open is None:
            self._open = self._stage2(self._open_s1)
        return self._open

    def _day_start(self, t_ns: int) -> int:
        local = pd.Timestamp(t_ns, unit="ns", tz="UTC").tz_convert(self.site.tz)
        midnight = pd.Timestamp(local.date()).tz_localize(self.site.tz, nonexistent="shift_forward", ambiguous=True)
        return int(midnight.tz_convert("UTC").value)

    def _stage2(self, energy: pd.DataFrame) -> pd.DataFrame:
        if not len(energy):
            return pd.DataFrame()
        try:
            return daily_frame(energy, self._meta, self._fsets, _Used())[0]
        except AccountingError as exc:  # e.g. only non-register readings so far
            log.debug("site %s: no daily rows yet: %s", self.site.site, exc)
            return pd.DataFrame()

    # -- filling --------------------------------------------------------------
    def reset(self, closed_energy: pd.DataFrame, open_from: int, readings: pd.DataFrame,
              closed_hourly: pd.DataFrame | None = None) -> None:
        """Start from the stage-1 rows of the days before ``open_from`` [ns, a local midnight]
        (``closed_hourly``: their hourly rows, if hourly matching is wanted) and the readings from
        before it on (at least each series' last reading before it)."""
        self.open_from = open_from
        self._closed_hours = [closed_hourly] if closed_hourly is not None and len(closed_hourly) else []
        self.closed_version += 1
        day = np.datetime64(pd.Timestamp(open_from, unit="ns", tz="UTC").tz_convert(self.site.tz).date(), "ns")
        self._closed_s1 = closed_energy[closed_energy["date"] < day] if len(closed_energy) else closed_energy
        self._closed = self._stage2(self._closed_s1)
        self._buffer = _registers(readings)
        self._open_s1, self._open = self._open_energy(), None

    def add(self, readings: pd.DataFrame) -> bool:
        """Take new readings (repeats of readings held are fine); return True if a day changed."""
        new = _registers(readings)
        if not len(new):
            return False
        self._buffer = _dedupe(pd.concat([self._buffer, new]) if len(self._buffer) else new)
        if self.open_from is None:
            self.open_from = self._day_start(int(pd.DatetimeIndex(self._buffer.index).asi8.min()))
        self._roll_days()
        self._open_s1, self._open = self._open_energy(), None
        return True

    def _open_energy(self) -> pd.DataFrame:
        if not len(self._buffer):
            self._open_stage = None
            return pd.DataFrame()
        self._open_stage = stage1(ReadingSet(self._buffer, self.events, self.meters, [self.site]), start=self.open_from)
        return self._open_stage.energy

    def _roll_days(self) -> None:
        """Close the open days before the day every speaking series has reached."""
        assert self.open_from is not None
        code, t = _series_codes(self._buffer)
        last = pd.Series(t).groupby(code).max()
        cut = self._day_start(int(last[last >= last.max() - _ACTIVE_NS].min()))  # silent series do not hold it
        if cut <= self.open_from:
            return
        rs = ReadingSet(self._buffer, self.events, self.meters, [self.site])
        closing = stage1(rs, start=self.open_from, end=cut)
        done = closing.energy
        self._closed_hours.append(closing.hourly)
        self.closed_version += 1
        self._closed_s1 = pd.concat([self._closed_s1, done], ignore_index=True) if len(self._closed_s1) else done
        more = self._stage2(done)
        self._closed = pd.concat([self._closed, more], ignore_index=True) if len(self._closed) else more
        self.open_from = cut
        before = t < cut  # keep each series' last reading before the new cut, and what follows
        keep_from = int(pd.Series(t[before]).groupby(code[before]).max().min()) if before.any() else cut
        self._buffer = self._buffer[t >= keep_from]


def _series_codes(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Series code (meter x quantity) and ts [ns] of each row."""
    m, q = df["meter"].astype("category"), df["quantity"].astype("category")
    code = m.cat.codes.to_numpy().astype(np.int64) * max(len(q.cat.categories), 1) + q.cat.codes.to_numpy()
    return code, pd.DatetimeIndex(df.index).as_unit("ns").asi8


def _registers(df: pd.DataFrame) -> pd.DataFrame:
    if not len(df):
        return df
    return df[df["quantity"].astype(str).isin(_REGISTERS).to_numpy()]


def _dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (meter, quantity, ts), the last one; in time order."""
    for c in ("site", "meter", "quantity"):
        df[c] = df[c].astype("category")
    code, t = _series_codes(df)
    order = np.lexsort((np.arange(len(t)), code, t))  # by ts, series, then arrival
    tc, cc = t[order], code[order]
    last = np.r_[(tc[1:] != tc[:-1]) | (cc[1:] != cc[:-1]), True]
    return df.iloc[order[last]]
