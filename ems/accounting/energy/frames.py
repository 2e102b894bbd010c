"""Hourly rows to daily rows (stage 1, step 7) and the frames stage 1 returns."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ems.accounting.energy.attribution import NS_D, Rows
from ems.accounting.energy.series import SeriesTable, named_columns, take_strings

__all__ = ["HOURLY_COLUMNS", "STAGE1_COLUMNS", "daily_from_hourly", "daily_rows", "energy_frame", "hourly_frame"]

STAGE1_COLUMNS = ("site", "meter", "quantity", "date", "period", "value", "max_rate", "n")
HOURLY_COLUMNS = ("site", "meter", "quantity", "hour", "date", "period", "value", "max_rate", "n")


def daily_rows(h: Rows) -> Rows:
    """Daily rows from hourly rows (step 7): sums in hour order."""
    if not len(h.sid):
        return h
    d0 = int(h.day.min())
    nd = int(h.day.max()) - d0 + 1
    npd = len(h.periods)
    key = (h.sid * nd + (h.day - d0)) * npd + h.period
    size = (int(h.sid.max()) + 1) * nd * npd
    if size > 50_000_000:
        keys, inv = np.unique(key, return_inverse=True)
        key, size = inv, len(keys)
    else:
        keys = None
    cnt = np.bincount(key, weights=h.n, minlength=size)
    sums = np.bincount(key, weights=h.value, minlength=size)
    top = np.full(size, -np.inf)
    rated = np.flatnonzero(~np.isnan(h.max_rate))  # rates of import and export only: the rest stay NaN
    np.maximum.at(top, key[rated], h.max_rate[rated])
    present = np.flatnonzero(np.bincount(key, minlength=size))
    k = present if keys is None else keys[present]
    return Rows(
        k // (nd * npd), np.zeros(len(k), np.int64), (k // npd) % nd + d0, k % npd,
        sums[present], np.where(top[present] == -np.inf, np.nan, top[present]),
        cnt[present].astype(np.int64), h.periods,
    )


def energy_frame(d: Rows, series: SeriesTable) -> pd.DataFrame:
    return pd.DataFrame({
        **named_columns(d.sid, series),
        "date": (d.day * NS_D).view("M8[ns]"),
        "period": take_strings(d.periods, d.period) if len(d.sid) else np.zeros(0, object),
        "value": d.value.astype(np.float64),
        "max_rate": d.max_rate.astype(np.float64),
        "n": d.n.astype(np.int64),
    })


def hourly_frame(h: Rows, series: SeriesTable) -> pd.DataFrame:
    def cat(codes: np.ndarray, names: list[str]) -> pd.Categorical:
        uniq = sorted(set(names))
        pos = {x: i for i, x in enumerate(uniq)}
        lut = np.asarray([pos[x] for x in names], dtype=np.int32)
        return pd.Categorical.from_codes(lut[codes] if len(codes) else codes.astype(np.int32), uniq)

    return pd.DataFrame({
        "site": cat(h.sid, series.site),
        "meter": cat(h.sid, series.meter),
        "quantity": cat(h.sid, series.quantity),
        "hour": pd.DatetimeIndex(h.hour.view("M8[ns]"), tz="UTC"),
        "date": (h.day * NS_D).view("M8[ns]"),
        "period": pd.Categorical.from_codes(h.period.astype(np.int32), h.periods),
        "value": h.value,
        "max_rate": h.max_rate,
        "n": h.n.astype(np.int64),
    })


def daily_from_hourly(hourly: pd.DataFrame) -> pd.DataFrame:
    """Daily stage-1 rows (:data:`STAGE1_COLUMNS`) from hourly rows (:data:`HOURLY_COLUMNS`).

    The hourly rows must hold whole local days and come in hour order per series (as
    :func:`stage1` and the stores give them); the result equals :func:`stage1`'s
    ``energy`` for those days, bit for bit.
    """
    if not len(hourly):
        z = np.zeros(0, np.int64)
        return energy_frame(Rows(z, z, z, z, z, z, z, [""]), SeriesTable([], [], [], [], z, z))
    names = pd.MultiIndex.from_arrays([hourly[c].astype(str) for c in ("site", "meter", "quantity")])
    codes, uniq = pd.factorize(names, sort=True)
    site_, meter_, quantity_ = (list(map(str, uniq.get_level_values(i))) for i in range(3))
    series = SeriesTable(site_, meter_, quantity_, [], np.zeros(0), np.zeros(0))
    pcodes, periods = pd.factorize(hourly["period"].astype(str), sort=True)
    if "" not in periods:
        periods = pd.Index(["", *periods])
        pcodes = pcodes + 1
    hour = pd.DatetimeIndex(hourly["hour"]).as_unit("ns").asi8
    order = np.lexsort((hour, codes))
    d = daily_rows(Rows(
        codes[order].astype(np.int64), np.zeros(len(order), np.int64),
        (pd.DatetimeIndex(hourly["date"]).as_unit("ns").asi8 // NS_D)[order], pcodes[order].astype(np.int64),
        hourly["value"].to_numpy(np.float64)[order], hourly["max_rate"].to_numpy(np.float64)[order],
        hourly["n"].to_numpy(np.int64)[order], [str(p) for p in periods],
    ))
    return energy_frame(d, series)
