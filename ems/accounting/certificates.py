"""Renewable electricity instruments: a registry of retirements and their eligibility.

Instruments come from the event ledger, as a real registry's statements would:

* ``certificate`` events: an unbundled certificate (GEC, I-REC, GO) retired (``action:
  retire``) for a consumption period, or sold (``action: sell``) from the site's own PV;
* ``contract_delivery`` events: electricity delivered under a PPA or green-power contract
  (instrument type ``PPA``) for its delivery period.

Each instrument carries a serial range (a contract's key is its id and the days it
covers), technology, plant, commissioning date, generation period (vintage) and market
boundary. :func:`instrument_table` checks, in order: double retirement (a serial retired
twice is refused, naming both retirements), own generation (the site's own PV, already
counted as PV consumed), and the eligibility rules of the reporting framework
(``ems/data/frameworks.yaml``: instrument type per market, market boundary, vintage window,
maximum vintage, plant age). Counted instruments are then spread over the site's local days
pro rata to grid import (:func:`allocate`) and capped day by day at grid import
(:func:`cover`): certificates and contracts cover grid electricity only, identically in the
green share and in market-based Scope 2, and every additive figure of the days sums to
the months and the year.

References
----------
GHG Protocol Scope 2 Guidance (2015), chapters 6 and 7 (Scope 2 Quality Criteria);
RE100 Technical Criteria v4.1 (2022); NDRC/MOF/NEA Fa Gai Neng Yuan [2023] No. 1044;
NEA GEC rules, Guo Neng Fa Xin Neng Gui [2024] No. 67.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ems.datafiles import data_path
from ems.errors import ConfigError
from ems.readings import SiteInfo, event_detail
from ems.yamldoc import load_document

__all__ = ["INSTRUMENT_COLUMNS", "allocate", "cover", "instrument_table", "load_framework"]

INSTRUMENT_COLUMNS = (
    "ts", "site", "instrument", "action", "id", "mwh", "serial_prefix", "serial_first", "serial_last",
    "technology", "plant", "commissioned", "vintage_start", "vintage_end", "market_boundary",
    "period_start", "period_end", "retired_on", "status", "reason",
    "generation_start", "generation_end", "profile",
)
"""Columns of the instrument table; ``status`` is counted, refused, own_generation or sold.

``generation_start``/``generation_end`` (UTC, NaT if not given) are the generation hours of a
granular certificate; ``profile`` is a contract's delivery profile ("" if not given); both are
read only by hourly matching (``docs/hourly-matching.md``)."""


def load_framework(name: str | None = None, path: str | None = None) -> dict[str, Any]:
    """Load a reporting framework's eligibility rules.

    Parameters
    ----------
    name : str, optional
        ``RE100``, ``GHG-Scope2`` or ``CN-GEC``; default the file's ``default``.
    path : str, optional
        A frameworks YAML file; default ``ems/data/frameworks.yaml``.

    Returns
    -------
    dict
        The framework's rules plus ``name`` and ``markets`` (country -> market).
    """
    p = Path(path) if path else data_path("frameworks.yaml")
    data = _frameworks_file(str(p), p.stat().st_mtime_ns)
    fws = data.get("frameworks") or {}
    key = name or str(data.get("default", ""))
    if key not in fws:
        raise ConfigError(f"framework: expected one of {sorted(fws)}; found {key!r}")
    markets = {c: str(m.get("market", c)) for c, m in (data.get("markets") or {}).items()}
    return {**copy.deepcopy(fws[key]), "name": key, "markets": markets, "version": str(data.get("version", ""))}


@functools.lru_cache(maxsize=4)
def _frameworks_file(path: str, mtime_ns: int) -> dict[str, Any]:
    data = load_document(path).data
    if "frameworks" not in data:
        raise ConfigError(f"{path}: expected a mapping with 'frameworks' and 'markets'")
    return data


def _date(x: Any) -> dt.date | None:
    if x is None or x == "":
        return None
    try:
        out: dt.date = pd.Timestamp(x).date()
        return out
    except (TypeError, ValueError):
        return None


def _period(d: Mapping[str, Any], start: str, end: str, year_key: str, fallback: dt.date) -> tuple[dt.date, dt.date]:
    s, e = _date(d.get(start)), _date(d.get(end))
    if s is not None and e is not None:
        return s, e
    y = d.get(year_key)
    y = int(y) if y is not None else (s or fallback).year
    return s or dt.date(y, 1, 1), e or dt.date(y, 12, 31)


def _serials(d: Mapping[str, Any], kind: str, ident: str, ps: dt.date, pe: dt.date) -> tuple[str, int, int] | None:
    if kind == "PPA":  # a delivery: the contract's days are its serials
        return f"PPA:{ident}", ps.toordinal(), pe.toordinal()
    s = d.get("serials")
    if isinstance(s, dict) and {"prefix", "first", "last"} <= set(s):
        return str(s["prefix"]), int(s["first"]), int(s["last"])
    return None


def _generation(d: Mapping[str, Any]) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Generation hours of a granular certificate (UTC), NaT when the detail gives none or no offset."""
    try:
        a, b = pd.Timestamp(d.get("generation_start")), pd.Timestamp(d.get("generation_end"))
    except (TypeError, ValueError):
        return pd.NaT, pd.NaT
    if pd.isna(a) or pd.isna(b) or a.tzinfo is None or b.tzinfo is None:
        return pd.NaT, pd.NaT
    return a.tz_convert("UTC"), b.tz_convert("UTC")


def _vintage_of_generation(d: dict[str, Any], gs: pd.Timestamp, ge: pd.Timestamp) -> dict[str, Any]:
    """A granular certificate without a vintage: its generation days are its vintage."""
    if pd.isna(gs) or d.get("vintage_start") or d.get("vintage"):
        return d
    return {**d, "vintage_start": str(gs.date()), "vintage_end": str((ge - pd.Timedelta(seconds=1)).date())}


def _row(ts: Any, site: str, kind: str, e: Any, local: dt.date) -> dict[str, Any]:
    d = event_detail(e.detail)
    ppa = kind == "PPA"
    ps, pe = _period(d, "period_start", "period_end", "period_year", local if ppa else dt.date(local.year, 1, 1))
    if ppa and not (d.get("period_start") or d.get("period_year")):
        ps = pe = local
    gs, ge = _generation(d)
    d = d if ppa else _vintage_of_generation(d, gs, ge)
    vs, ve = (ps, pe) if ppa else _period(d, "vintage_start", "vintage_end", "vintage", ps)
    ident = str(d.get("id") or "")
    ser = _serials(d, kind, ident, ps, pe)
    return {
        "ts": ts, "site": site, "instrument": kind, "action": str(d.get("action", "retire")), "id": ident,
        "mwh": float(e.value), "serial_prefix": ser[0] if ser else "", "serial_first": ser[1] if ser else -1,
        "serial_last": ser[2] if ser else -1, "technology": str(d.get("technology") or (e.subject if ppa else "")),
        "plant": str(d.get("plant") or ""), "commissioned": _date(d.get("plant_commissioned")),
        "vintage_start": vs, "vintage_end": ve, "market_boundary": str(d.get("market_boundary") or ""),
        "period_start": ps, "period_end": pe, "retired_on": local, "status": "counted", "reason": "",
        "generation_start": gs, "generation_end": ge, "profile": str(d.get("profile") or "") if ppa else "",
    }


def _parse(events: pd.DataFrame, sites: Mapping[str, SiteInfo]) -> pd.DataFrame:
    ev = events[events["kind"].isin(["certificate", "contract_delivery"])]
    local = np.empty(len(ev), dtype=object)
    for s, idx in ev.groupby("site", sort=False).indices.items():
        tz = sites[s].tz if s in sites else "UTC"
        local[idx] = list(pd.DatetimeIndex(ev.index[idx]).tz_convert(tz).date)
    rows = []
    for ts, e, day in zip(ev.index, ev.itertuples(index=False), local, strict=True):
        kind = "PPA" if e.kind == "contract_delivery" else str(e.subject)
        row = _row(ts, str(e.site), kind, e, day)
        row["contract"] = str(e.subject) if kind == "PPA" else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=[*INSTRUMENT_COLUMNS, "contract"])


def _describe(r: Any) -> str:
    where = f"site {r.site}, {pd.Timestamp(r.ts).date()}"
    return f"{r.id or r.instrument} ({where}, for {r.period_start}..{r.period_end})"


def _double_retirements(df: pd.DataFrame) -> None:
    """Refuse every retirement that reuses a serial already retired (in ledger order), naming both."""
    seen: dict[str, list[tuple[int, int, int]]] = {}
    rows = list(df.itertuples(index=False))
    status, reason = df["status"].to_list(), df["reason"].to_list()
    for i, r in enumerate(rows):
        if not r.serial_prefix:
            continue
        held = seen.setdefault(r.serial_prefix, [])
        clash = next((h for h in held if not (r.serial_last < h[0] or r.serial_first > h[1])), None)
        if clash is not None:
            lo, hi = max(r.serial_first, clash[0]), min(r.serial_last, clash[1])
            span = f"{lo}" if lo == hi else f"{lo}-{hi}"
            status[i] = "refused"
            reason[i] = (f"double retirement: serials {r.serial_prefix} {span} were already retired by "
                         f"{_describe(rows[clash[2]])}; this retirement {_describe(r)} is refused")
            continue
        held.append((r.serial_first, r.serial_last, i))
    df["status"], df["reason"] = status, reason


def _months(d: dt.date, n: int) -> dt.date:
    m = d.month - 1 + n
    y, m = d.year + m // 12, m % 12 + 1
    last = [31, 29 if y % 4 == 0 and (y % 100 or y % 400 == 0) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m - 1]
    return dt.date(y, m, min(d.day, last))


def _eligible(r: Any, fw: Mapping[str, Any], market: str) -> str:
    """Return '' if the framework accepts the retirement, else the reason it is refused."""
    rules = (fw.get("instruments") or {}).get(r.instrument)
    name = fw["name"]
    if rules is None:
        return f"{r.instrument} is not an instrument {name} accepts (accepted: {sorted(fw.get('instruments') or {})})"
    boundary = r.market_boundary or market
    if boundary != market or market not in (rules.get("markets") or []):
        return (f"market boundary: instrument from {boundary}, consumption in {market}; {name} accepts "
                f"{r.instrument} only within one market ({', '.join(rules.get('markets') or [])})")
    cap = (rules.get("max_vintage_year") or {}).get(market)
    if cap is not None and r.vintage_end.year > int(cap):
        return f"{r.instrument} vintage {r.vintage_end.year} > {cap}: not accepted for {market} under {name}"
    win = fw.get("vintage_window_months") or {}
    lo, hi = _months(r.period_start, -int(win.get("before", 0))), _months(r.period_end, int(win.get("after", 0)))
    if r.vintage_start < lo or r.vintage_end > hi:
        return (f"vintage {r.vintage_start}..{r.vintage_end} outside the {name} window {lo}..{hi} "
                f"for consumption {r.period_start}..{r.period_end}")
    limit = fw.get("plant_age_max_years")
    if limit is not None and r.instrument not in (fw.get("plant_age_exempt") or []):
        if r.commissioned is None:
            return f"plant commissioning date missing: the {name} {limit}-year plant-age limit cannot be checked"
        oldest = dt.date(r.period_start.year - int(limit), r.period_start.month, min(r.period_start.day, 28))
        if r.commissioned < oldest:
            return f"plant {r.plant or '?'} commissioned {r.commissioned}, more than {limit} years before {r.period_start} ({name})"
    return ""


def _status(df: pd.DataFrame, fw: Mapping[str, Any], sites: Mapping[str, SiteInfo], own_pv: set[str]) -> None:
    status, reason = df["status"].to_list(), df["reason"].to_list()
    for i, r in enumerate(df.itertuples(index=False)):
        if status[i] != "counted":
            continue
        own = r.plant in own_pv and r.plant.split("/", 1)[0] == r.site
        si = sites.get(r.site)
        market = fw["markets"].get(si.country if si else "", si.country if si else "?")
        if r.action == "sell":
            status[i], reason[i] = ("sold", "certificates of the site's own PV sold: that PV is not green") if own \
                else ("refused", "sale of certificates that are not from the site's own generation: nothing to account")
        elif r.action != "retire":
            status[i], reason[i] = "refused", f"action {r.action!r}: only retirements (cancellations) count"
        elif own:
            status[i], reason[i] = "own_generation", "own PV certificate retired: already counted as PV consumed"
        elif why := _eligible(r, fw, market):
            status[i], reason[i] = "refused", why
        else:
            reason[i] = f"counted under {fw['name']}" + ("" if r.serial_prefix else "; no serial range: double retirement not checked")
        if r.serial_prefix and r.instrument != "PPA" and r.serial_last - r.serial_first + 1 != round(r.mwh) and status[i] == "counted":
            status[i], reason[i] = "refused", (f"serial range {r.serial_first}-{r.serial_last} holds "
                                               f"{r.serial_last - r.serial_first + 1} certificates of 1 MWh, not {r.mwh:g} MWh")
    df["status"], df["reason"] = status, reason


def instrument_table(
    events: pd.DataFrame, sites: Mapping[str, SiteInfo], framework: Mapping[str, Any], own_pv: set[str] | None = None
) -> pd.DataFrame:
    """Every certificate and contract delivery with its registry and eligibility outcome.

    Parameters
    ----------
    events : DataFrame
        The event ledger.
    sites : mapping
        SiteInfo by site.
    framework : mapping
        From :func:`load_framework`.
    own_pv : set of str, optional
        ``"<site>/<pv meter>"`` of every PV array in the readings (a certificate whose
        ``plant`` is one of them is the site's own generation).

    Returns
    -------
    DataFrame
        :data:`INSTRUMENT_COLUMNS` plus ``contract`` (the contract kind of a PPA), in ledger order.
    """
    df = _parse(events, sites)
    if df.empty:
        return df
    _double_retirements(df)
    _status(df, framework, sites, own_pv or set())
    return df


class _Days:
    """Row positions in ``caps`` and their local dates, per site; the rows of a site's days in
    ``[start, end]`` (a slice where the site's days are in order, as a daily frame has them)."""

    def __init__(self, caps: pd.DataFrame) -> None:
        dates = caps["date"].to_numpy("datetime64[ns]")
        self.by_site = {str(s): (idx, dates[idx]) for s, idx in caps.groupby("site", sort=False).indices.items()}
        self.ordered = {s: bool((d[1:] >= d[:-1]).all()) for s, (_, d) in self.by_site.items()}

    def rows(self, site: str, start: np.datetime64, end: np.datetime64) -> tuple[np.ndarray, bool]:
        """Row positions of the site's days in ``[start, end]``, and whether the site has any day."""
        pos, dates = self.by_site.get(site, (np.zeros(0, np.int64), np.zeros(0, "datetime64[ns]")))
        if self.ordered.get(site, False):
            a, b = np.searchsorted(dates, start, side="left"), np.searchsorted(dates, end, side="right")
            return pos[a:b], len(dates) > 0
        return pos[(dates >= start) & (dates <= end)], len(dates) > 0


def _bounds(items: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Sites and the first and last local days of items (datetime64[ns])."""
    def days(col: str) -> np.ndarray:
        return np.asarray([np.datetime64(x, "ns") for x in items[col].tolist()], dtype="datetime64[ns]")

    return [str(x) for x in items["site"].tolist()], days("start"), days("end")


def allocate(items: pd.DataFrame, caps: pd.DataFrame, weight: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spread instruments over a site's local days within their period, pro rata to ``weight``.

    Parameters
    ----------
    items : DataFrame
        Columns ``item, site, mwh, start, end`` (local dates, inclusive).
    caps : DataFrame
        Columns ``site, date`` (naive midnight) and ``weight`` [kWh], one row per (site, day).
    weight : str
        Column of ``caps`` to weigh by (grid import for certificates and contracts, PV consumed
        for sold PV certificates).

    Returns
    -------
    allocated : DataFrame
        ``row`` (position in ``caps``), ``item``, ``kwh`` [kWh].
    unallocated : DataFrame
        ``item, site, kwh, reason``: items whose period has no day, or no weight, in the readings.
    """
    days = _Days(caps)
    w_all = caps[weight].to_numpy(dtype=float)
    rows, kwhs, ids, lost = [], [], [], []
    sites, starts, ends = _bounds(items)
    for k, it in enumerate(items[["item", "site", "mwh", "start", "end"]].itertuples(index=False)):
        kwh = float(it.mwh) * 1000.0
        p, any_day = days.rows(sites[k], starts[k], ends[k])
        wm = np.clip(w_all[p], 0.0, None)
        if not len(p) or wm.sum() <= 0:
            why = "no readings for the site" if not any_day else (
                f"period {it.start}..{it.end} outside the readings" if not len(p) else f"no {weight} in {it.start}..{it.end}")
            lost.append({"item": it.item, "site": it.site, "kwh": kwh, "reason": why})
            continue
        rows.append(p)
        kwhs.append(kwh * wm / wm.sum())
        ids.append(np.full(len(p), it.item, dtype=np.int64))
    alloc = pd.DataFrame({"row": np.concatenate(rows) if rows else np.zeros(0, np.int64),
                          "item": np.concatenate(ids) if ids else np.zeros(0, np.int64),
                          "kwh": np.concatenate(kwhs) if kwhs else np.zeros(0)})
    return alloc, pd.DataFrame(lost, columns=["item", "site", "kwh", "reason"])


_CLASSES = {"contract": "contracts", "certificate": "certificates", "pv_sold": "pv_sold"}
_CAP = {"contract": "grid_import_kwh", "certificate": "grid_import_kwh", "pv_sold": "pv_consumed_kwh"}


def _fill(items: pd.DataFrame, caps: pd.DataFrame) -> pd.DataFrame:
    """Count items in order, each up to what is left of its cap over its own period, spread pro rata to what is left."""
    days = _Days(caps)
    left = {c: caps[c].to_numpy(dtype=float).copy() for c in set(_CAP.values())}
    rows, kwhs, ids = [], [], []
    sites, starts, ends = _bounds(items)
    for k, (item, cls, mwh) in enumerate(zip(items["item"].tolist(), items["cls"].tolist(), items["mwh"].tolist(),
                                             strict=True)):
        p = days.rows(sites[k], starts[k], ends[k])[0]
        rest = left[_CAP[cls]]
        avail = rest[p]
        total = float(avail.sum())
        got = min(float(mwh) * 1000.0, total)
        if got <= 0:
            continue
        share = avail * (got / total)
        rest[p] = np.maximum(avail - share, 0.0)
        rows.append(p)
        kwhs.append(share)
        ids.append(np.full(len(p), item, dtype=np.int64))
    return pd.DataFrame({"row": np.concatenate(rows) if rows else np.zeros(0, np.int64),
                         "item": np.concatenate(ids) if ids else np.zeros(0, np.int64),
                         "counted_kwh": np.concatenate(kwhs) if kwhs else np.zeros(0)})


def cover(items: pd.DataFrame, caps: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Offered and counted kWh of every instrument on every local day.

    Each instrument counts up to the grid import (PV consumed, for sold own-PV certificates)
    left over its own consumption period: contracts first, then certificates, each in ledger
    order; what it counts is spread over the period's days pro rata to what is left, so no
    day counts more than its grid import and every figure is a sum of days. What an
    instrument offers beyond that is reported as beyond consumption.

    Parameters
    ----------
    items : DataFrame
        ``item, site, cls`` (``contract``, ``certificate``, ``pv_sold``), ``mwh``, ``start``, ``end``
        (local dates, inclusive), in ledger order.
    caps : DataFrame
        ``site, date, grid_import_kwh, pv_consumed_kwh`` [kWh], one row per (site, day).

    Returns
    -------
    days : DataFrame
        Row for row with ``caps``: ``contracts_kwh, certificates_kwh, pv_sold_kwh`` offered (pro
        rata to the cap) and ``contracts_counted_kwh, certificates_counted_kwh, pv_sold_counted_kwh`` [kWh].
    offered, counted : DataFrame
        ``row, item, cls, kwh`` and ``row, item, cls, counted_kwh``: per item and day.
    unallocated : DataFrame
        ``item, site, kwh, reason``: items with no day (or no cap) in their period.
    """
    order = items.assign(rank=items["cls"].map({"contract": 0, "certificate": 1, "pv_sold": 2})).sort_values(["rank", "item"], kind="stable")
    cls = dict(zip(items["item"], items["cls"], strict=True))
    parts, lost = [], []
    for c, g in order.groupby("cls", sort=False):
        a, u = allocate(g, caps, _CAP[str(c)])
        parts.append(a)
        lost.append(u)
    offered = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"row": [], "item": [], "kwh": []})
    offered["cls"] = offered["item"].map(cls)
    counted = _fill(order, caps)
    counted["cls"] = counted["item"].map(cls)
    n = len(caps)
    out = {}
    for c, name in _CLASSES.items():
        o, k = offered[offered["cls"] == c], counted[counted["cls"] == c]
        out[f"{name}_kwh"] = np.bincount(o["row"].to_numpy(np.int64), o["kwh"].to_numpy(float), minlength=n)
        out[f"{name}_counted_kwh"] = np.bincount(k["row"].to_numpy(np.int64), k["counted_kwh"].to_numpy(float), minlength=n)
    unalloc = pd.concat(lost, ignore_index=True) if lost else pd.DataFrame(columns=["item", "site", "kwh", "reason"])
    return pd.DataFrame(out, index=caps.index), offered, counted, unalloc
