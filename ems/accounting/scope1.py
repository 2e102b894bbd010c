"""Scope 1 by gas: fugitive and process emissions in kg of a named gas, from readings only.

Three sources, all in the readings contract:

* production lines (``line`` meters, register ``output_units``): units made each local day
  x the per-unit rates in the meter's metadata (``attrs["emissions"]``: gas, kg_per_unit,
  kind ``fugitive`` or ``process``, activity, e.g. refrigerant charging losses, foam
  blowing agent);
* ``refrigerant_topup`` events: kg of the named gas topped up after leaks (fugitive);
* ``process_emission`` events: kg of a named gas (``unit: kg``, gas in ``detail.gas`` or the
  subject), or, for older ledgers, an amount already in kgCO2e (``unit: kgCO2e``).

CO2e = kg x GWP100 of the factor set's IPCC edition (:mod:`ems.gases`). Only Kyoto-basket
gases enter Scope 1; HCFCs and CFCs (Montreal Protocol) and gases without a Kyoto listing
are memo items, reported in kg (and CO2e where IPCC gives a GWP) but never added to Scope 1.
A gas missing from the table is reported as unknown and counted nowhere, so one bad record
never stops a report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ems.gases import GasTable
from ems.readings import ReadingSet, event_detail

__all__ = ["GAS_COLUMNS", "SUM_COLUMNS", "gas_daily", "gas_sums"]

GAS_COLUMNS = ("site", "date", "gas", "basket", "in_scope1", "kind", "activity", "source", "kg", "gwp", "kgco2e", "note")
"""Columns of the per-gas daily frame; ``kg`` of gas, ``kgco2e`` [kgCO2e]."""


_RAW = ["site", "date", "gas", "kind", "activity", "source", "kg", "co2e_given"]
Raw = dict[str, np.ndarray]


def _line_rows(s1: pd.DataFrame, rs: ReadingSet) -> Raw | None:
    """Units made per (line meter, day) x each per-unit rate of the meter's metadata [kg of gas]."""
    lines = {(m.site, m.meter): m for m in rs.meters if m.kind == "line" and m.attrs.get("emissions")}
    if not lines:
        return None
    u = s1[(s1["quantity"] == "output_units").to_numpy() & s1["meter"].isin({k[1] for k in lines}).to_numpy()]
    cs, us = pd.factorize(u["site"])
    cm, um = pd.factorize(u["meter"])
    day = (u["date"].to_numpy("datetime64[ns]") - np.datetime64(0, "ns")) // np.timedelta64(1, "D")
    key, inv = np.unique((cs.astype(np.int64) * len(um) + cm) * 1_000_000 + day, return_inverse=True)
    units = np.bincount(inv, u["value"].to_numpy(float), minlength=len(key))  # summed over tariff periods
    block = key // 1_000_000
    dates = ((key % 1_000_000) * np.timedelta64(1, "D") + np.datetime64(0, "D")).astype("datetime64[ns]")
    cols: dict[str, list[Any]] = {c: [] for c in _RAW}
    for b in np.unique(block):
        site, meter = str(us[b // len(um)]), str(um[b % len(um)])
        m = lines.get((site, meter))
        if m is None:
            continue
        sel = block == b
        for rate in m.attrs.get("emissions") or []:
            n = int(sel.sum())
            for c, v in (("site", site), ("gas", str(rate["gas"])), ("kind", str(rate.get("kind", "fugitive"))),
                         ("activity", str(rate.get("activity", ""))), ("source", f"{meter} ({m.attrs.get('product', '')})")):
                cols[c].append(np.full(n, v, dtype=object))
            cols["date"].append(dates[sel])
            cols["kg"].append(units[sel] * float(rate["kg_per_unit"]))
            cols["co2e_given"].append(np.full(n, np.nan))
    return {c: np.concatenate(v) for c, v in cols.items()} if cols["kg"] else None


def _event_rows(ev: pd.DataFrame, days: np.ndarray) -> list[tuple[Any, ...]]:
    rows = []
    for (e, day) in zip(ev.itertuples(index=False), days, strict=True):
        if e.kind == "refrigerant_topup":
            rows.append((e.site, day, e.subject, "fugitive", "refrigerant top-up", "events", float(e.value), np.nan))
        elif e.kind == "process_emission":
            d = event_detail(e.detail)
            if str(e.unit).lower() in ("kgco2e", ""):
                rows.append((e.site, day, "CO2e", "process", str(e.subject), "events", np.nan, float(e.value)))
            else:
                rows.append((e.site, day, str(d.get("gas") or e.subject), str(d.get("kind", "process")),
                             str(d.get("activity") or e.subject), "events", float(e.value), np.nan))
    return rows


def _event_groups(ev: pd.DataFrame, days: np.ndarray) -> Raw | None:
    """Event rows summed per (site, date, gas, kind, activity, source), in the order of those keys;
    a sum is NaN where every value is (a CO2e-only or kg-only record)."""
    sums: dict[tuple[Any, ...], list[_Kahan]] = {}
    for r in _event_rows(ev, np.asarray(days, dtype="datetime64[ns]")):
        acc = sums.setdefault(r[:6], [_Kahan(), _Kahan()])
        acc[0].add(r[6])
        acc[1].add(r[7])
    if not sums:
        return None
    keys = sorted(sums)
    out = {c: np.asarray([k[i] for k in keys], dtype=object) for i, c in enumerate(_RAW[:6])}
    out["date"] = np.asarray([k[1] for k in keys], dtype="datetime64[ns]")
    out["kg"] = np.asarray([sums[k][0].total() for k in keys], dtype=float)
    out["co2e_given"] = np.asarray([sums[k][1].total() for k in keys], dtype=float)
    return out


class _Kahan:
    """A compensated sum skipping NaN, NaN when nothing was added (as pandas' grouped ``sum(min_count=1)``)."""

    def __init__(self) -> None:
        self.sum, self.comp, self.count = 0.0, 0.0, 0

    def add(self, x: float) -> None:
        if x != x:  # NaN
            return
        self.count += 1
        y = x - self.comp
        t = self.sum + y
        self.comp = t - self.sum - y
        self.sum = t

    def total(self) -> float:
        return self.sum if self.count else float("nan")


def gas_daily(
    s1: pd.DataFrame, rs: ReadingSet, event_days: np.ndarray, editions: Mapping[str, str], gases: GasTable
) -> pd.DataFrame:
    """Per (site, local day, gas, activity) kg and CO2e of fugitive and process gases.

    Parameters
    ----------
    s1 : DataFrame
        Stage-1 sums (``site, meter, quantity, date, value``).
    rs : ReadingSet
        For the line meters' metadata and the event ledger.
    event_days : ndarray
        Local day of each event of ``rs.events`` (datetime64, naive midnight).
    editions : mapping
        Site -> IPCC GWP edition of its factor set.
    gases : GasTable

    Returns
    -------
    DataFrame
        :data:`GAS_COLUMNS`, one row per (site, date, gas, kind, activity, source), sorted by site,
        date, gas, kind and activity.
    """
    ev = rs.events
    mask = ev["kind"].isin(["refrigerant_topup", "process_emission"]).to_numpy()
    parts = [p for p in (_line_rows(s1, rs), _event_groups(ev[mask], event_days[mask])) if p is not None]
    if not parts:  # line rows are unique per key already
        return pd.DataFrame(columns=list(GAS_COLUMNS)).astype({"date": "datetime64[ns]"})
    raw = {c: np.concatenate([p[c] for p in parts]) for c in _RAW}
    given = raw["co2e_given"]
    # gas properties once per distinct (gas, site edition, CO2e given?)
    cg, ug = pd.factorize(raw["gas"])
    cs, us = pd.factorize(raw["site"])
    combo = (cg.astype(np.int64) * len(us) + cs) * 2 + np.isnan(given)
    uniq, code = np.unique(combo, return_inverse=True)
    props = [_props(str(ug[c // 2 // len(us)]), editions.get(str(us[c // 2 % len(us)]), gases.default_edition),
                    bool(c % 2), gases) for c in uniq.tolist()]
    raw["gas"] = np.asarray([p[0] for p in props], dtype=object)[code]
    raw["basket"] = np.asarray([p[1] for p in props], dtype=object)[code]
    gwp = np.asarray([p[2] for p in props], dtype=float)[code]
    raw["note"] = np.asarray([p[3] for p in props], dtype=object)[code]
    raw["gwp"] = np.where(np.isnan(given), gwp, np.nan)
    raw["kgco2e"] = np.where(np.isnan(given), raw["kg"] * np.nan_to_num(gwp), given)
    raw["in_scope1"] = (raw["basket"] == "kyoto") | ~np.isnan(given)
    raw["kg"] = np.where(np.isnan(raw["kg"]), 0.0, raw["kg"])
    keys = [raw[c] if c == "date" else np.unique(raw[c].astype(str), return_inverse=True)[1]
            for c in ("activity", "kind", "gas", "date", "site")]
    order = np.lexsort(keys)  # stable: ties keep line rows before event rows
    return pd.DataFrame({c: raw[c][order] for c in GAS_COLUMNS})


def _props(name: str, edition: str, kg_given: bool, gases: GasTable) -> tuple[str, str, float, str]:
    """Canonical name, basket, GWP and note of a gas (CO2e rows: given by the source)."""
    gas, basket = _gas_info(name, gases)
    gwp = _gwp(gas, edition, gases)
    return gas, basket, gwp, _note(basket, gwp, np.nan if kg_given else 0.0)


def _gas_info(name: str, gases: GasTable) -> tuple[str, str]:
    if name == "CO2e":
        return "CO2e", "kyoto"
    key = gases.canonical(name)
    return (key, gases.gases[key].basket) if key else (name, "unknown")


def _gwp(name: str, edition: str, gases: GasTable) -> float:
    if name == "CO2e" or gases.canonical(name) is None:
        return np.nan
    v = gases.gwp(name, edition)
    return np.nan if v is None else float(v)


def _note(basket: str, gwp: float, given: float) -> str:
    if not np.isnan(given):
        return "reported in kgCO2e by the source"
    if basket == "unknown":
        return "unknown gas: not in the GWP table (ems/data/gases.yaml); not counted"
    if basket == "montreal":
        return "Montreal Protocol substance: memo item, outside Scope 1"
    if basket == "none":
        return "not a Kyoto gas: memo item, outside Scope 1" + ("" if not np.isnan(gwp) else "; no IPCC GWP, kg only")
    return ""


SUM_COLUMNS = ("scope1_refrigerant_kg", "scope1_fugitive_kg", "scope1_process_kg", "memo_non_kyoto_kgco2e",
               "memo_non_kyoto_gas_kg", "refrigerant_kg", "unknown_gas_kg")
"""Additive daily columns from :func:`gas_sums` [kgCO2e; memo_non_kyoto_gas_kg, refrigerant_kg, unknown_gas_kg in kg]."""


def gas_sums(g: pd.DataFrame) -> pd.DataFrame:
    """Each row's contribution to the additive daily columns :data:`SUM_COLUMNS` [kgCO2e, kg].

    Rows keep ``site`` and ``date``; several rows may fall on one (site, day): add them up.
    """
    cols = list(SUM_COLUMNS)
    if g.empty:
        return pd.DataFrame(columns=["site", "date", *cols])
    top = (g["activity"] == "refrigerant top-up").to_numpy()
    s1 = g["in_scope1"].to_numpy(dtype=bool)
    known = (g["basket"] != "unknown").to_numpy()
    fugitive = (g["kind"] == "fugitive").to_numpy()
    co2e, kg = g["kgco2e"].to_numpy(dtype=float), g["kg"].to_numpy(dtype=float)
    parts = {
        "scope1_refrigerant_kg": np.where(s1 & top, co2e, 0.0),
        "scope1_fugitive_kg": np.where(s1 & ~top & fugitive, co2e, 0.0),
        "scope1_process_kg": np.where(s1 & ~top & ~fugitive, co2e, 0.0),
        "memo_non_kyoto_kgco2e": np.where(~s1 & known, co2e, 0.0),
        "memo_non_kyoto_gas_kg": np.where(~s1 & known, kg, 0.0),
        "refrigerant_kg": np.where(top, kg, 0.0),
        "unknown_gas_kg": np.where(~known, kg, 0.0),
    }
    return pd.DataFrame({"site": g["site"], "date": g["date"], **parts})
