"""One register series to energy parts (stage 1, steps 1-3) and the anomalies it shows.

Steps 1-3 of :mod:`ems.accounting.energy`: deltas between readings, resets and
rollovers (never negative energy), and gaps split pro rata over the intervals they
span; the resets, rollovers and gaps as rows of the anomalies table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ems.accounting.energy.layout import SeriesKey
from ems.errors import AccountingError
from ems.readings import MeterInfo

__all__ = [
    "ANOMALY_COLUMNS",
    "SeriesTable",
    "empty_anomalies",
    "gap_frame",
    "named_columns",
    "reset_frame",
    "series_parts",
    "series_table",
    "step_timing",
    "take_strings",
]

def _arrow_str() -> pd.StringDtype | None:
    """The dtype pandas infers for Python strings if it keeps them in Arrow (pandas 3), else None."""
    dtype = pd.Series(["x"]).dtype
    return dtype if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow" else None


_ARROW_STR = _arrow_str()

ANOMALY_COLUMNS = ("site", "meter", "quantity", "ts", "kind", "prev_value", "value", "energy", "detail")


@dataclass
class SeriesTable:
    """The register series, in canonical order (sorted by site, meter, quantity)."""

    site: list[str]
    meter: list[str]
    quantity: list[str]
    kind: list[str]
    iv_ns: np.ndarray
    roll: np.ndarray

    def __len__(self) -> int:
        return len(self.site)

    def names(self) -> tuple[list[str], list[str], list[str]]:
        return self.site, self.meter, self.quantity


def series_table(names: list[SeriesKey], infos: list[MeterInfo]) -> SeriesTable:
    meters = {(m.site, m.meter): m for m in infos}
    out = SeriesTable([], [], [], [], np.zeros(len(names), np.int64), np.full(len(names), np.nan))
    for i, (s, m, q) in enumerate(names):
        mi = meters.get((s, m))
        if mi is None:
            raise AccountingError(
                f"readings of meter {s}/{m} have no MeterInfo; expected one per meter in ReadingSet.meters"
            )
        out.site.append(s)
        out.meter.append(m)
        out.quantity.append(q)
        out.kind.append(mi.kind)
        out.iv_ns[i] = int(mi.interval_s) * 1_000_000_000
        out.roll[i] = float(mi.attrs.get("rollover_at", np.nan))
    return out


def step_timing(t: np.ndarray, iv: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Differences of ts [ns] spanning other than one interval, their interval counts, and the
    interval starts if none does (step 3)."""
    dt = np.diff(t)
    odd = np.flatnonzero(dt != iv)
    n = np.maximum(1, np.rint(dt[odd] / iv)).astype(np.int64) if len(odd) else odd
    return odd, n, t[1:] - iv


def series_parts(
    t: np.ndarray, x: np.ndarray, iv: int, roll: float, timing: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...] | None, tuple[np.ndarray, ...] | None]:
    """Steps 1-3 for one series in time order: interval starts [ns] and energy of its parts,
    and its resets (ts, prev, value, energy) and gaps (ts, prev, value, energy, n)."""
    d = np.diff(x)
    t_end = t[1:]
    resets = gaps = None
    neg = np.flatnonzero(d < 0)
    if len(neg):
        prev, cur = x[:-1][neg], x[1:][neg]
        d[neg] = d[neg] + roll if np.isfinite(roll) else cur
        resets = (t_end[neg], prev, cur, d[neg])
    odd, n, start = timing
    gap = odd[n > 1]
    if not len(gap):
        return start, d, resets, gaps
    ng = n[n > 1]
    gaps = (t_end[gap], x[:-1][gap], x[1:][gap], d[gap], ng)
    counts = np.ones(len(d), dtype=np.int64)
    counts[gap] = ng
    rep = np.repeat(np.arange(len(d)), counts)
    first = np.cumsum(counts) - counts
    k = np.arange(int(ng.sum())) - np.repeat(np.cumsum(ng) - ng, ng)  # part number within its gap
    at = np.repeat(first[gap], ng) + k
    back = np.ones(len(rep), dtype=np.int64)  # intervals from a part's start to the reading
    back[at] = np.repeat(ng, ng) - k
    val = d[rep]
    val[at] = np.repeat(d[gap] / ng, ng)
    return t_end[rep] - back * iv, val, resets, gaps


def take_strings(names: Sequence[str], codes: np.ndarray) -> Any:
    """``names[codes]`` as the string column pandas would make of it, without a Python object per row.

    Where pandas stores strings in Arrow (pandas 3's default ``str``), the column is taken in Arrow
    from the few distinct names; otherwise it is an object array, as pandas 2 infers it.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if _ARROW_STR is None:
        return np.asarray(list(names), dtype=object)[codes]
    return pd.array(pa.array(list(names), type=pa.large_string()).take(codes), dtype=_ARROW_STR)


def named_columns(sid: np.ndarray | list[int], series: SeriesTable) -> dict[str, Any]:
    return {f: take_strings([*getattr(series, f), ""], np.asarray(sid, dtype=np.int64))
            for f in ("site", "meter", "quantity")}


def _one_per_row(parts: list[tuple[int, tuple[np.ndarray, ...]]], values: Callable[[int], object]) -> np.ndarray:
    """A value of each part's series, repeated for each of its rows."""
    return np.repeat(np.asarray([values(j) for j, _ in parts], dtype=object), [len(p[0]) for _, p in parts])


def _anomaly_frame(parts: list[tuple[int, tuple[np.ndarray, ...]]], series: SeriesTable, kind: np.ndarray,
                   detail: np.ndarray | list[str]) -> pd.DataFrame:
    """Anomaly rows of several series at once (``parts``: series and its ts, prev, value, energy, ...)."""
    col = [np.concatenate([p[k] for _, p in parts]) if parts else np.zeros(0) for k in range(4)]
    sid = np.repeat(np.asarray([j for j, _ in parts], dtype=np.int64), [len(p[0]) for _, p in parts])
    return pd.DataFrame({
        **named_columns(sid, series),
        "ts": pd.DatetimeIndex(col[0].astype(np.int64).view("M8[ns]"), tz="UTC"),
        "kind": kind,
        "prev_value": col[1],
        "value": col[2],
        "energy": col[3],
        "detail": detail,
        "_iv": series.iv_ns[sid].astype(np.int64),
    })


def reset_frame(resets: list[tuple[int, tuple[np.ndarray, ...]]], series: SeriesTable) -> pd.DataFrame:
    """Anomaly rows of the series' resets and rollovers (step 2)."""
    rolled = _one_per_row(resets, lambda j: bool(np.isfinite(series.roll[j])))
    kind = np.where(rolled.astype(bool), "rollover", "reset").astype(object)
    detail = np.where(rolled.astype(bool), "register passed rollover_at; energy = value + rollover_at - prev_value",
                      "register went down (meter reset or replacement); post-reset value counted as energy since reset")
    return _anomaly_frame(resets, series, kind, detail.astype(object))


def gap_frame(gaps: list[tuple[int, tuple[np.ndarray, ...]]], series: SeriesTable) -> pd.DataFrame:
    """Anomaly rows of the series' differences spanning ``n > 1`` intervals (lost messages)."""
    n = np.concatenate([g[4] for _, g in gaps]).tolist() if gaps else []
    detail = [f"{k - 1} interval(s) missing; delta split pro rata over {k} intervals" for k in n]
    return _anomaly_frame(gaps, series, np.full(len(n), "gap", dtype=object), detail)


def empty_anomalies() -> pd.DataFrame:
    """An anomalies frame without rows."""
    return pd.DataFrame({c: np.zeros(0, dtype=object) for c in ANOMALY_COLUMNS})
