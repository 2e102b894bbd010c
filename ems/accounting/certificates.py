"""Renewable electricity instruments: certificates and contracts from the event ledger.

Certificates (``certificate`` events) are checked against the market rules of
the site's factor set (scheme accepted in the site's country, vintage within
validity for the year claimed, maximum vintage), and then, like contract
deliveries (``contract_delivery`` events), allocated to the site's local days
within their period pro rata to the electricity consumed on each day. The cap
"claims never exceed consumption" is applied per site and reporting period in
:mod:`ems.accounting.kpis`.

References
----------
GHG Protocol Scope 2 Guidance (2015), chapter 7 (Scope 2 Quality Criteria);
RE100 technical criteria (2024); NDRC/MOF/NEA Fa Gai Neng Yuan [2023] No. 1044;
NEA GEC issuance and trading rules, Guo Neng Fa Xin Neng Gui [2024] No. 67.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ems.accounting.factors import FactorSet
from ems.readings import SiteInfo

__all__ = ["allocate", "certificate_table", "contract_table"]

CERT_COLUMNS = (
    "ts", "site", "scheme", "mwh", "vintage", "period_year", "period_start", "period_end",
    "technology", "id", "valid", "reason",
)


def _detail(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        d = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _local_dates(events: pd.DataFrame, sites: Mapping[str, SiteInfo]) -> list[dt.date]:
    out = []
    for ts, site in zip(events.index, events["site"], strict=True):
        tz = sites[site].tz if site in sites else "UTC"
        out.append(pd.Timestamp(ts).tz_convert(tz).date())
    return out


def certificate_table(
    events: pd.DataFrame, sites: Mapping[str, SiteInfo], factor_sets: Mapping[str, FactorSet]
) -> pd.DataFrame:
    """Return every certificate event with its validity and the reason.

    Parameters
    ----------
    events : DataFrame
        The event ledger.
    sites : mapping
        SiteInfo by site.
    factor_sets : mapping
        FactorSet by site.

    Returns
    -------
    DataFrame
        Columns ``ts, site, scheme, mwh [MWh], vintage, period_year, period_start,
        period_end, technology, id, valid, reason``. The period defaults to the local
        calendar year ``period_year`` (detail), else the year of the event.
    """
    ev = events[events["kind"] == "certificate"]
    rows = []
    for (ts, e), local in zip(ev.iterrows(), _local_dates(ev, sites), strict=True):
        d = _detail(e["detail"])
        site = str(e["site"])
        scheme = str(e["subject"])
        vintage = d.get("vintage")
        py = d.get("period_year")
        ps = d.get("period_start")
        pe = d.get("period_end")
        if py is None:
            py = pd.Timestamp(ps).year if ps else local.year
        py = int(py)
        start = pd.Timestamp(ps).date() if ps else dt.date(py, 1, 1)
        end = pd.Timestamp(pe).date() if pe else dt.date(py, 12, 31)
        valid, reason = True, "counts"
        fs = factor_sets.get(site)
        rule = fs.certificate_rule(scheme) if fs is not None else None
        country = sites[site].country if site in sites else "?"
        if rule is None:
            valid, reason = False, f"scheme {scheme} has no market rule in the factor set; not accepted"
        elif country not in (rule.get("countries") or []):
            valid, reason = False, f"scheme {scheme} not accepted for sites in {country} (accepted: {rule.get('countries')})"
        elif str(d.get("action", "retire")) != "retire":
            valid, reason = False, f"action {d.get('action')!r}: only certificates retired (cancelled) for the period count"
        elif vintage is None:
            valid, reason = False, "no vintage in the certificate detail"
        else:
            vintage = int(vintage)
            mx = rule.get("max_vintage")
            after = int(rule.get("valid_years_after_vintage", 0))
            if mx is not None and vintage > int(mx):
                valid, reason = False, f"{scheme} vintage {vintage} > {mx}: not accepted in {country}"
            elif not vintage <= py <= vintage + after:
                valid, reason = False, (
                    f"outside validity: vintage {vintage} may be claimed for {vintage}-{vintage + after}, "
                    f"claimed for {py}"
                )
        rows.append({
            "ts": ts, "site": site, "scheme": scheme, "mwh": float(e["value"]),
            "vintage": vintage, "period_year": py, "period_start": start, "period_end": end,
            "technology": d.get("technology"), "id": d.get("id"), "valid": valid, "reason": reason,
        })
    return pd.DataFrame(rows, columns=list(CERT_COLUMNS))


def contract_table(events: pd.DataFrame, sites: Mapping[str, SiteInfo]) -> pd.DataFrame:
    """Return contract deliveries (hydro, green power) with their local period.

    Returns
    -------
    DataFrame
        Columns ``ts, site, kind, mwh [MWh], period_start, period_end, id``; a delivery
        without a period covers the local day of the event.
    """
    ev = events[events["kind"] == "contract_delivery"]
    rows = []
    for (ts, e), local in zip(ev.iterrows(), _local_dates(ev, sites), strict=True):
        d = _detail(e["detail"])
        ps, pe = d.get("period_start"), d.get("period_end")
        rows.append({
            "ts": ts, "site": str(e["site"]), "kind": str(e["subject"]), "mwh": float(e["value"]),
            "period_start": pd.Timestamp(ps).date() if ps else local,
            "period_end": pd.Timestamp(pe).date() if pe else local,
            "id": d.get("id"),
        })
    return pd.DataFrame(rows, columns=["ts", "site", "kind", "mwh", "period_start", "period_end", "id"])


def allocate(items: pd.DataFrame, daily: pd.DataFrame, source_col: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spread MWh over a site's local days pro rata to consumption.

    Parameters
    ----------
    items : DataFrame
        Columns ``site, mwh, period_start, period_end`` and ``source_col``.
    daily : DataFrame
        Columns ``site, date`` (naive midnight) and ``electricity_consumed_kwh`` [kWh].
    source_col : str
        Column naming the instrument (scheme or contract kind).

    Returns
    -------
    allocated : DataFrame
        ``site, date, kwh`` [kWh] and the items' other columns. Days without consumption get an equal share
        only if the whole period has none.
    unallocated : DataFrame
        Items whose period has no day in the data: ``site, source, kwh, reason``.
    """
    parts: list[tuple[Any, np.ndarray, np.ndarray, int]] = []
    lost = []
    by_site = {s: (g["date"].to_numpy(), g["electricity_consumed_kwh"].to_numpy()) for s, g in daily.groupby("site", sort=False)}
    for i, it in enumerate(items.itertuples(index=False)):
        g = by_site.get(it.site)
        kwh = float(it.mwh) * 1000.0
        if g is None:
            lost.append({"site": it.site, "source": getattr(it, source_col), "kwh": kwh, "reason": "no readings for the site"})
            continue
        dates, cons = g
        m = (dates >= np.datetime64(it.period_start, "ns")) & (dates <= np.datetime64(it.period_end, "ns"))
        if not m.any():
            lost.append({"site": it.site, "source": getattr(it, source_col), "kwh": kwh,
                         "reason": f"period {it.period_start}..{it.period_end} outside the readings"})
            continue
        w = np.clip(cons[m], 0, None)
        w = w / w.sum() if w.sum() > 0 else np.full(int(m.sum()), 1.0 / m.sum())
        parts.append((it.site, dates[m], kwh * w, i))
    cols = ["site", "date", "kwh", *[c for c in items.columns if c not in ("site", "mwh", "period_start", "period_end")]]
    if parts:
        rep = np.concatenate([np.full(len(p[1]), p[3]) for p in parts])
        alloc = pd.DataFrame({
            "site": np.concatenate([np.full(len(p[1]), p[0], dtype=object) for p in parts]),
            "date": np.concatenate([p[1] for p in parts]),
            "kwh": np.concatenate([p[2] for p in parts]),
        })
        extra = items.drop(columns=["site", "mwh", "period_start", "period_end"]).iloc[rep].reset_index(drop=True)
        alloc = pd.concat([alloc, extra], axis=1)
    else:
        alloc = pd.DataFrame(columns=cols)
    return alloc, pd.DataFrame(lost, columns=["site", "source", "kwh", "reason"])
