"""What the dashboard shows, as pure functions over the readings contract.

Everything here works from a tidy readings frame and :class:`~ems.readings.MeterInfo`
(never from simulator state), so a real site looks the same as a simulated one.
Signs follow the contract: grid power > 0 imports, battery power > 0 discharges.
Times leave as milliseconds since the epoch (UTC); the browser shows them in the
site's zone (``SiteInfo.tz``). A point of a series is stamped with the END of its
bucket, as readings are stamped with the end of their interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ems.errors import EmsError
from ems.readings import MeterInfo

__all__ = [
    "ENERGY",
    "FLOWS",
    "RANGES",
    "bucket_seconds",
    "energy_series",
    "event_list",
    "jsonable",
    "latest_flows",
    "power_series",
]

FLOWS: dict[str, tuple[tuple[str, ...], str]] = {
    "pv": (("pv",), "power_kw"),
    "load": (("load",), "power_kw"),
    "grid": (("grid",), "power_kw"),
    "battery": (("battery",), "power_kw"),
    "chp": (("chp",), "power_kw"),
    "steam": (("steam",), "heat_kw"),
    "heat": (("boiler", "waste_heat"), "heat_kw"),
    "gas": (("gas",), "flow_m3h"),
}
"""Flow name -> (meter kinds summed, quantity): power [kW] (gas: [m3/h])."""

ENERGY: dict[str, tuple[str, tuple[str, ...], str, str]] = {
    "grid_import": ("electricity", ("grid",), "import_kwh", "kWh"),
    "grid_export": ("electricity", ("grid",), "export_kwh", "kWh"),
    "pv": ("electricity", ("pv",), "energy_kwh", "kWh"),
    "chp": ("electricity", ("chp",), "energy_kwh", "kWh"),
    "battery_discharge": ("electricity", ("battery",), "discharge_kwh", "kWh"),
    "battery_charge": ("electricity", ("battery",), "charge_kwh", "kWh"),
    "load": ("electricity", ("load",), "energy_kwh", "kWh"),
    "steam": ("heat", ("steam",), "heat_gj", "GJ"),
    "boiler": ("heat", ("boiler",), "heat_gj", "GJ"),
    "waste_heat": ("heat", ("waste_heat",), "heat_gj", "GJ"),
    "chp_heat": ("heat", ("chp",), "heat_gj", "GJ"),
    "natural_gas": ("natural_gas", ("gas",), "volume_m3", "m3"),
    "output": ("output", ("production",), "output_rmb", "RMB"),
}
"""Energy series name -> (carrier, meter kinds, register, unit)."""

RANGES: dict[str, int] = {
    "day": 86_400,
    "week": 7 * 86_400,
    "month": 30 * 86_400,
    "year": 365 * 86_400,
}
"""Time ranges of the site view [s], ending at the site's latest reading."""

_NS = 1_000_000_000


def jsonable(obj: Any) -> Any:
    """Return ``obj`` with NaN and infinities as None and numpy scalars as Python ones."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _kinds(meters: Iterable[MeterInfo]) -> dict[str, str]:
    return {m.meter: m.kind for m in meters}


def latest_flows(readings: pd.DataFrame, meters: Iterable[MeterInfo]) -> dict[str, Any]:
    """Latest power flows of one site from its recent readings.

    Parameters
    ----------
    readings : DataFrame
        Tidy readings of ONE site (any window that holds each meter's latest reading).
    meters : iterable of MeterInfo
        The site's meters (their kind says which flow a meter belongs to).

    Returns
    -------
    dict
        ``{flow: kW}`` for each flow of :data:`FLOWS` the site has (``gas`` in
        [m3/h]); ``soc_pct`` [%] (mean over batteries, or None); ``last_ts_ms``
        [ms since the epoch] of the newest reading (or None).
    """
    out: dict[str, Any] = {"soc_pct": None, "last_ts_ms": None}
    if readings.empty:
        return out
    kinds = _kinds(meters)
    t = pd.DatetimeIndex(readings.index).as_unit("ns").asi8
    mc, mu = pd.factorize(readings["meter"].astype(str).to_numpy(dtype=object))
    qc, qu = pd.factorize(readings["quantity"].astype(str).to_numpy(dtype=object))
    key = mc.astype(np.int64) * len(qu) + qc
    order = np.lexsort((t, key))  # by series, then time (stable): each series' newest row last
    ends = order[np.r_[key[order][1:] != key[order][:-1], True]]
    value = readings["value"].to_numpy(dtype="float64")
    last = [(kinds.get(str(mu[mc[i]])), str(qu[qc[i]]), float(value[i])) for i in ends[np.argsort(t[ends], kind="stable")].tolist()]
    for name, (mkinds, qty) in FLOWS.items():
        vals = [v for k, q, v in last if k in mkinds and q == qty]
        if vals:
            out[name] = float(np.sum(vals))
    soc = [v for k, q, v in last if k == "battery" and q == "soc_pct"]
    if soc:
        out["soc_pct"] = float(np.mean(soc))
    out["last_ts_ms"] = int(t.max() // 1_000_000)
    return out


def bucket_seconds(range_s: int, interval_s: int, points: int = 300) -> int:
    """Bucket width [s]: a whole number of intervals giving at most about ``points`` buckets."""
    if interval_s <= 0 or range_s <= 0 or points <= 0:
        raise EmsError(
            f"bucket_seconds: expected positive range, interval and points; found "
            f"{range_s}, {interval_s}, {points}"
        )
    n = max(1, math.ceil(range_s / points / interval_s))
    return n * interval_s


def _buckets(t_ns: np.ndarray, start_ns: int, bucket_s: int) -> np.ndarray:
    """Index of the bucket ``(start + (k-1) b, start + k b]`` holding each time (end-stamped)."""
    b = bucket_s * _NS
    out: np.ndarray = -((start_ns - t_ns) // b)  # ceil((t - start) / b)
    return out


def _frame(
    readings: pd.DataFrame, meters: Iterable[MeterInfo], quantities: set[str]
) -> pd.DataFrame:
    kinds = _kinds(meters)
    q = readings["quantity"].astype(str).to_numpy()
    keep = np.isin(q, list(quantities))
    sub = readings[keep]
    df = pd.DataFrame(
        {
            "t": pd.DatetimeIndex(sub.index).as_unit("ns").asi8,
            "meter": sub["meter"].astype(str).to_numpy(),
            "quantity": q[keep],
            "value": sub["value"].to_numpy(dtype="float64"),
        }
    )
    df["kind"] = df["meter"].map(kinds).fillna("")
    return df


def power_series(
    readings: pd.DataFrame,
    meters: Iterable[MeterInfo],
    start: pd.Timestamp,
    end: pd.Timestamp,
    bucket_s: int,
) -> dict[str, Any]:
    """Power by flow, averaged into buckets (server-side downsampling).

    Parameters
    ----------
    readings : DataFrame
        Tidy readings of ONE site.
    meters : iterable of MeterInfo
        The site's meters.
    start, end : Timestamp
        UTC bounds; buckets are ``(start + (k-1) b, start + k b]``.
    bucket_s : int [s]
        Bucket width (:func:`bucket_seconds`).

    Returns
    -------
    dict
        ``t``: bucket ends [ms since the epoch]; ``series``: ``{flow: [kW or None]}``
        (the mean of each meter over the bucket, summed over the flow's meters;
        ``gas`` in [m3/h]); ``soc_pct``: [% or None].
    """
    meters = list(meters)
    s_ns, e_ns = int(start.value), int(end.value)
    nb = max(1, int(_buckets(np.array([e_ns]), s_ns, bucket_s)[0]))
    t_ms = [(s_ns + k * bucket_s * _NS) // 1_000_000 for k in range(1, nb + 1)]
    qtys = {q for _, q in FLOWS.values()} | {"soc_pct"}
    df = _frame(readings, meters, qtys)
    df = df[(df["t"] > s_ns) & (df["t"] <= e_ns)]
    series: dict[str, list[float | None]] = {}
    soc: list[float | None] = []
    if len(df):
        df = df.assign(b=_buckets(df["t"].to_numpy(), s_ns, bucket_s) - 1)
        per_meter = df.groupby(["kind", "quantity", "meter", "b"], sort=False)["value"].mean()
        per_meter = per_meter.reset_index()
        for name, (mkinds, qty) in FLOWS.items():
            sel = per_meter[per_meter["kind"].isin(mkinds) & (per_meter["quantity"] == qty)]
            if sel.empty:
                continue
            s = sel.groupby("b")["value"].sum().reindex(range(nb))
            series[name] = [None if np.isnan(v) else float(v) for v in s.to_numpy()]
        sel = per_meter[(per_meter["kind"] == "battery") & (per_meter["quantity"] == "soc_pct")]
        if len(sel):
            s = sel.groupby("b")["value"].mean().reindex(range(nb))
            soc = [None if np.isnan(v) else float(v) for v in s.to_numpy()]
    return {"t": t_ms, "series": series, "soc_pct": soc}


def energy_series(
    readings: pd.DataFrame,
    meters: Iterable[MeterInfo],
    start: pd.Timestamp,
    end: pd.Timestamp,
    bucket_s: int,
) -> dict[str, Any]:
    """Energy by carrier per bucket, from differences of the cumulative registers.

    A register's increase between two readings is counted in the bucket of the later
    reading; a decrease (a meter reset) counts as nothing here (the accounting lists
    it as an anomaly). The reading just before ``start`` should be in ``readings``
    as the baseline, or the first interval is not counted.

    Returns
    -------
    dict
        ``t``: bucket ends [ms]; ``series``: ``{name: {"carrier", "unit", "values"}}``
        for each name of :data:`ENERGY` the site meters.
    """
    meters = list(meters)
    s_ns, e_ns = int(start.value), int(end.value)
    nb = max(1, int(_buckets(np.array([e_ns]), s_ns, bucket_s)[0]))
    t_ms = [(s_ns + k * bucket_s * _NS) // 1_000_000 for k in range(1, nb + 1)]
    df = _frame(readings, meters, {q for _, _, q, _ in ENERGY.values()})
    df = df[df["t"] <= e_ns].sort_values(["meter", "quantity", "t"], kind="stable")
    out: dict[str, Any] = {}
    if len(df):
        prev = df.groupby(["meter", "quantity"], sort=False)["value"].shift(1)
        df = df.assign(d=(df["value"] - prev).clip(lower=0.0))
        df = df[(df["t"] > s_ns) & df["d"].notna()]
        df = df.assign(b=_buckets(df["t"].to_numpy(), s_ns, bucket_s) - 1)
        for name, (carrier, mkinds, qty, unit) in ENERGY.items():
            sel = df[df["kind"].isin(mkinds) & (df["quantity"] == qty)]
            if sel.empty:
                continue
            s = sel.groupby("b")["d"].sum().reindex(range(nb), fill_value=0.0)
            out[name] = {
                "carrier": carrier,
                "unit": unit,
                "values": [float(v) for v in s.to_numpy()],
            }
    return {"t": t_ms, "series": out}


def event_list(events: pd.DataFrame, limit: int = 500) -> list[dict[str, Any]]:
    """Events as JSON-ready dicts (newest last), at most ``limit`` of the newest."""
    if events is None or events.empty:
        return []
    ev = events.sort_index(kind="stable").tail(limit)
    t = pd.DatetimeIndex(ev.index).as_unit("ns").asi8 // 1_000_000
    rows = []
    for ms, r in zip(t.tolist(), ev.itertuples(index=False), strict=True):
        d: Mapping[str, Any] = r._asdict()
        value = float(d.get("value", math.nan))
        rows.append(
            {
                "ts_ms": int(ms),
                "kind": str(d.get("kind", "")),
                "subject": str(d.get("subject", "")),
                "value": value if math.isfinite(value) else None,
                "unit": str(d.get("unit", "")),
            }
        )
    return rows
