"""Register series of one site as arrays: what the register aggregates work on.

A *series* here is one meter's register quantity at one site, named ``"meter/quantity"``,
held as ``(ts, value)``: ts [ns since the epoch, UTC] and values in time order
(:data:`ems.accounting.energy.View`). The aggregates take them from the Arrow table a write
has in hand (:func:`table_series`: strided views, no copy but the µs-to-ns scaling of the
times) or from a readings frame read back (:func:`frame_series`), and keep per series a
few instants around their watermark. Pure functions; :mod:`ems.store.rollups` orchestrates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from ems.accounting.energy import View, register_series

__all__ = [
    "Series",
    "around",
    "bases",
    "covers",
    "firsts",
    "frame_series",
    "lasts",
    "safe_from",
    "table_series",
    "widen",
    "with_bases",
]

Series = dict[str, View]
"""``"meter/quantity"`` -> (ts [ns], value), in time order."""


def table_series(site: str, table: pa.Table) -> Series:
    """The register series of one site's readings table (columns ``ts`` as UTC timestamps,
    ``meter``, ``quantity`` as dictionaries, ``value``)."""
    if not table.num_rows:
        return {}
    col = table.column("ts").combine_chunks()
    scale = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}[col.type.unit]
    ts = col.to_numpy(zero_copy_only=False).view(np.int64)
    cols = []
    for name in ("meter", "quantity"):
        arr = table.column(name).combine_chunks()
        cols.append((arr.indices.to_numpy(zero_copy_only=False), [str(x) for x in arr.dictionary.to_pylist()]))
    value = table.column("value").combine_chunks().to_numpy(zero_copy_only=False)
    found = register_series(ts, (np.zeros(len(ts), np.int8), [site]), cols[0], cols[1], value)
    scaled: dict[int, np.ndarray] = {}  # series of one block share their ts: scaled once
    out: Series = {}
    for (_, m, q), (t, x) in found.items():
        if id(t) not in scaled:
            scaled[id(t)] = t * scale
        out[f"{m}/{q}"] = (scaled[id(t)], x)
    return out


def frame_series(df: pd.DataFrame) -> Series:
    """The register series of one site's readings frame (the contract's dtypes)."""
    if not len(df):
        return {}
    idx = pd.DatetimeIndex(df.index)
    ts = (idx if idx.unit == "ns" else idx.as_unit("ns")).asi8
    cols = []
    for name in ("site", "meter", "quantity"):
        cat = df[name].astype("category")
        cols.append((cat.cat.codes.to_numpy(), [str(x) for x in cat.cat.categories]))
    found = register_series(ts, cols[0], cols[1], cols[2], df["value"].to_numpy(np.float64))
    return {f"{m}/{q}": v for (_, m, q), v in found.items()}


def firsts(series: Series) -> dict[str, int]:
    """Each series' first reading [ns]."""
    return {k: int(t[0]) for k, (t, _) in series.items() if len(t)}


def lasts(series: Series) -> dict[str, int]:
    """Each series' newest reading [ns]."""
    return {k: int(t[-1]) for k, (t, _) in series.items() if len(t)}


def around(series: Series, t: int, old: Mapping[str, list[int | None]]) -> dict[str, list[int | None]]:
    """Each series' last reading before ``t`` and first at or after it [ns] (None: none).

    Series not in ``series`` keep their entry in ``old`` (they have no readings there, so
    nothing about them changed)."""
    out = {k: list(v) for k, v in old.items()}
    for k, (ts, _) in series.items():
        i = int(np.searchsorted(ts, t))
        out[k] = [int(ts[i - 1]) if i else None, int(ts[i]) if i < len(ts) else None]
    return dict(sorted(out.items()))


def bases(series: Series, t: int, old: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Each series' last reading at or before ``t``: [ts [ns], value]; others keep ``old``'s."""
    out = {k: list(v) for k, v in old.items()}
    for k, (ts, x) in series.items():
        i = int(np.searchsorted(ts, t, side="right"))
        if i:
            out[k] = [int(ts[i - 1]), float(x[i - 1])]
    return dict(sorted(out.items()))


def with_bases(series: Series, base: Mapping[str, list[float]]) -> Series:
    """``series`` with each one's base reading (:func:`bases`) before its first, where it has one."""
    out: Series = {}
    for k in sorted(set(series) | set(base)):
        t, x = series.get(k, (np.zeros(0, np.int64), np.zeros(0)))
        if k in base:
            b_t, b_x = base[k]
            t = np.concatenate([np.asarray([b_t], dtype=np.int64), t])
            x = np.concatenate([np.asarray([b_x], dtype=np.float64), x])
        out[k] = (t, x)
    return out


def covers(series: Series, lo: int | None, hi: int | None) -> bool:
    """True if every series has a reading at or before ``lo`` and at or after ``hi`` [ns]."""
    return all((lo is None or int(t[0]) <= lo) and (hi is None or int(t[-1]) >= hi)
               for t, _ in series.values() if len(t))


def widen(series: Series, lo: int) -> int:
    """The earliest, over series, of each one's last reading before ``lo`` [ns] (``lo`` if none)."""
    before = [int(t[i - 1]) for t, _ in series.values() if (i := int(np.searchsorted(t, lo)))]
    return min(before, default=lo)


def safe_from(watermark: int | None, series: Mapping[str, list[int | None]]) -> float:
    """The time [ns] from which a new reading of any series cannot change an interval that
    starts before ``watermark``: after every series' first reading at or after it (a series
    with readings before it and none after, silent, is changed by any: infinity)."""
    if watermark is None:
        return -math.inf
    top = float(watermark)
    for before, after in series.values():
        if before is not None:
            top = max(top, math.inf if after is None else after + 1)
    return top
