"""Hourly carbon KPIs of a set of sites: hourly energy, hourly factors, instruments, matching, rollups.

This module only orchestrates; the rules are pure functions elsewhere:

* hourly energy per site from the stage-1 hourly rows (register differences per local clock
  hour, :mod:`ems.accounting.energy`): :func:`site_hours`;
* the hourly grid intensity of each site (:func:`site_intensity`): a loaded series for the
  site's most local place (province, grid region, country), else ems's modelled mix of its grid
  region calibrated to the site's own annual factor, else the annual factor flat;
* instruments on hours (:func:`site_instruments`): contracts by delivery profile
  (:mod:`ems.accounting.profiles`), granular certificates on their generation hours, annual
  certificates (annual-matched figure only) and sold own-PV certificates;
* matching and Scope 2 (:mod:`ems.accounting.matching`), then sums per site, company, park or
  group and local day, month or year (:meth:`HourlyResult.rollup`).

Rules and sources: ``docs/hourly-matching.md``, ``docs/grid-intensity.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ems.accounting import matching
from ems.accounting.factors import FactorSet, load_factor_set
from ems.accounting.gridmix import mix_regions, regional_intensity
from ems.accounting.intensity import IntensitySeries, factors_at
from ems.accounting.profiles import profile_weights
from ems.errors import AccountingError

if TYPE_CHECKING:
    from ems.accounting.kpis import KpiResult
from ems.readings import MeterInfo, ReadingSet, SiteInfo

__all__ = [
    "BY", "SIDE_BY_SIDE", "HourlyResult", "annual_factors", "flow_series", "hourly_kpis", "hourly_of", "side_by_side",
    "site_hours",
    "site_instruments", "site_intensity",
]

BY = ("site", "company", "park", "group")

_FLOW_OF = {
    ("grid", "import_kwh"): "grid_import_kwh",
    ("grid", "export_kwh"): "grid_export_kwh",
    ("pv", "energy_kwh"): "pv_generated_kwh",
    ("_site", "pv_exported_kwh"): "pv_exported_kwh",
    ("chp", "energy_kwh"): "chp_generated_kwh",
    ("battery", "charge_kwh"): "battery_charge_kwh",
    ("battery", "discharge_kwh"): "battery_discharge_kwh",
}

AnnualFactors = Callable[[SiteInfo, int], Mapping[str, Any]]
"""``(site, year) -> {"average": kgCO2/kWh, "residual": kgCO2/kWh or None, "source": str}``."""


def annual_factors(fsets: Mapping[str, FactorSet]) -> AnnualFactors:
    """The annual factors of each site's factor set, chosen as the annual figures choose them.

    Most local place first (province, grid region, country), then the nearest year
    (:meth:`ems.accounting.factors.FactorSet.grid_factor`); no residual mix: the average.

    Raises
    ------
    AccountingError
        A site without a factor set or without any grid-average factor for its places.
    """
    cache: dict[tuple[str, int], dict[str, Any]] = {}

    def pick(si: SiteInfo, year: int) -> Mapping[str, Any]:
        key = (si.site, year)
        if key not in cache:
            fs = fsets.get(si.site)
            if fs is None:
                raise AccountingError(f"site {si.site}: no factor set; expected one of the sites {sorted(fsets)}")
            avg = fs.grid_factor("average", si.places(), year)
            if avg["value"] is None:
                raise AccountingError(f"site {si.site}: {avg['note']} in factor set {fs.name!r}")
            res = fs.grid_factor("residual", si.places(), year)
            cache[key] = {"average": float(avg["value"]), "residual": res["value"],
                          "source": f"{avg['level']} {avg['place']} {avg['year']}: {avg['source']}"}
        return cache[key]

    return pick


def site_hours(hourly: pd.DataFrame, meters: Sequence[MeterInfo]) -> dict[str, pd.DataFrame]:
    """Per site, the energy of each hour by flow (:data:`ems.accounting.matching.FLOW_INPUTS`).

    Parameters
    ----------
    hourly : DataFrame
        Stage-1 hourly rows: ``site``, ``meter``, ``quantity``, ``hour`` (UTC start of the local
        clock hour), ``value`` [kWh] (other columns ignored; tariff periods are summed).
    meters : sequence of MeterInfo
        The meters' kinds name the flows.

    Returns
    -------
    dict
        Site -> frame indexed by every hour from the site's first to its last (hours without
        rows are 0), columns the flows the site has.
    """
    kind = {(m.site, m.meter): m.kind for m in meters}
    h = hourly[hourly["quantity"].isin({q for _, q in _FLOW_OF}).to_numpy()]
    codes, names = zip(*(_codes(h[c]) for c in ("site", "meter", "quantity")), strict=True)
    n_m, n_q = len(names[1]), len(names[2])
    combo = (codes[0].astype(np.int64) * n_m + codes[1]) * n_q + codes[2]
    flows = sorted(set(_FLOW_OF.values()))
    table = np.full(max(len(names[0]) * n_m * n_q, 1), -1, dtype=np.int64)
    for c in np.flatnonzero(np.bincount(combo, minlength=len(table))).tolist():  # a few dozen series: name each once
        table[c] = _flow_index(str(names[0][c // (n_m * n_q)]), str(names[1][c // n_q % n_m]),
                               str(names[2][c % n_q]), kind, flows)
    flow = table[combo]
    keep = flow >= 0
    hour = pd.DatetimeIndex(h["hour"])
    hour = hour.tz_localize("UTC") if hour.tz is None else hour.tz_convert("UTC")
    out: dict[str, pd.DataFrame] = {}
    site_codes, t, v, f = codes[0][keep], hour.as_unit("ns").asi8[keep], h["value"].to_numpy(dtype=float)[keep], flow[keep]
    for i, site in enumerate(names[0]):
        m = site_codes == i
        if m.any():
            out[str(site)] = _wide(t[m], f[m], v[m], flows)
    return dict(sorted(out.items()))


def _codes(col: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and names of a column (a categorical's own codes, else factorized)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy().astype(np.int64), col.cat.categories
    codes, names = pd.factorize(col, sort=False)
    return codes.astype(np.int64), pd.Index(names)


def _flow_index(site: str, meter: str, quantity: str, kind: Mapping[tuple[str, str], str], flows: list[str]) -> int:
    """Index in ``flows`` of a series' flow, or -1 if it is none of them."""
    name = _FLOW_OF.get(("_site" if meter == "_site" else kind.get((site, meter), ""), quantity))
    return flows.index(name) if name is not None else -1


def _wide(t: np.ndarray, flow: np.ndarray, value: np.ndarray, flows: list[str]) -> pd.DataFrame:
    """Sum values per (hour, flow) into a frame over every hour from the first to the last."""
    h = (t - t.min()) // 3_600_000_000_000
    n = int(h.max()) + 1
    grid = np.bincount(h * len(flows) + flow, weights=value, minlength=n * len(flows)).reshape(n, len(flows))
    present = np.flatnonzero(np.bincount(flow, minlength=len(flows)))
    idx = pd.DatetimeIndex(t.min() + np.arange(n, dtype=np.int64) * 3_600_000_000_000, tz="UTC", name="hour")
    return pd.DataFrame(grid[:, present], index=idx, columns=[flows[i] for i in present])


@dataclass
class HourlyResult:
    """What :func:`hourly_kpis` returns.

    Attributes
    ----------
    hours : dict
        Site -> matched hours (:func:`ems.accounting.matching.match_hours` joined with Scope 2
        and ``annual_cert_kwh``), indexed by hour start (UTC).
    sites : dict
        Site -> SiteInfo.
    intensity : DataFrame
        Per site: the series used (``method``, ``place``, ``source`` in short, ``sources`` in full,
        ``hours_filled``).
    instruments : DataFrame
        Per instrument: how it was placed on hours (``placement``) and the kWh placed.
    notes : list of str
    """

    hours: dict[str, pd.DataFrame]
    sites: dict[str, SiteInfo]
    intensity: pd.DataFrame
    instruments: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def rollup(self, by: str = "site", period: str | tuple[Any, Any] = "year") -> pd.DataFrame:
        """KPIs per ``by`` (site, company, park, group) and local ``period`` (day, month, year, or
        an inclusive range of local dates).

        Each site's periods are computed on its own calendar (the annual-matched cap is per site
        and period, as in the annual rule); sums over sites keep every additive column and
        recompute the shares.
        """
        if by not in BY:
            raise AccountingError(f"by: expected one of {list(BY)}; found {by!r}")
        parts: dict[str, list[Any]] = {}
        for site, h in self.hours.items():
            si = self.sites[site]
            names, s = matching.period_sums(h, si.tz, period)
            for k, v in {"period": names, **s, "site": site, "company": si.company, "park": si.park,
                         "group": si.group}.items():
                parts.setdefault(k, []).append(v if isinstance(v, np.ndarray) else np.full(len(names), v, dtype=object))
        if not parts:
            return pd.DataFrame(columns=["by", "key", "period"])
        allp = pd.DataFrame({k: np.concatenate(v) for k, v in parts.items()})
        sums = [*matching.ADDITIVE, "annual_matched_kwh", "scope2_market_annual_kg"]
        g = allp.groupby([by, "period"], sort=True)
        out = g[sums].sum()
        if "scope2_marginal_kg" in out:  # unknown at one site: unknown for the sum
            unknown = allp["scope2_marginal_kg"].isna().groupby([allp[by], allp["period"]], sort=True).any()
            out.loc[unknown.to_numpy(), "scope2_marginal_kg"] = np.nan
        out = matching.ratios(out)
        out["sites"] = g["site"].nunique()
        out = out.reset_index().rename(columns={by: "key"})
        out.insert(0, "by", by)
        return out

    def month_hour(self, site: str, column: str = "matched_kwh") -> pd.DataFrame:
        """Month x local hour table of a site (see :func:`ems.accounting.matching.month_hour_table`)."""
        if site not in self.hours:
            raise AccountingError(f"month_hour: expected one of the sites {sorted(self.hours)}; found {site!r}")
        return matching.month_hour_table(self.hours[site], self.sites[site].tz, column)


def _years(hours: pd.DatetimeIndex, tz: str) -> np.ndarray:
    out: np.ndarray = hours.tz_convert(tz).year.to_numpy()
    return out


def site_intensity(
    si: SiteInfo,
    hours: pd.DatetimeIndex,
    annual: AnnualFactors,
    series: Sequence[IntensitySeries] = (),
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The hourly factors of a site and where they come from.

    Choice, first that applies: a loaded series that has the site's province, grid region or
    country (most local first); ems's modelled mix of the site's grid region (or country),
    calibrated per local year to the site's own annual average factor; the annual factor itself,
    flat. Hours a loaded series lacks take the annual factor (counted in ``hours_filled``).

    Returns
    -------
    factors : DataFrame
        Indexed by ``hours``: ``average_kg_per_kwh``, ``marginal_kg_per_kwh``,
        ``residual_kg_per_kwh``, ``annual_average``, ``annual_residual`` [kgCO2/kWh].
    provenance : dict
        ``site``, ``method``, ``place``, ``source`` (short), ``sources`` (every input), ``hours_filled``.
    """
    years = _years(hours, si.tz)
    uniq, at = np.unique(years, return_inverse=True)
    ann = {int(y): annual(si, int(y)) for y in uniq}
    avg = np.array([float(ann[int(y)]["average"]) for y in uniq])[at]
    res = np.array([float(ann[int(y)]["residual"] if ann[int(y)].get("residual") is not None else ann[int(y)]["average"])
                    for y in uniq])[at]
    places = [p for _, p in si.places() if p]
    loaded = next(((s, p) for p in places for s in series if p in s.regions), None)
    model = next((p for p in (si.grid_region, si.country) if p in mix_regions()), None)
    if loaded is not None:
        f, prov = _loaded(*loaded, hours, avg)
    elif model is not None:
        f, prov = _modelled(model, hours, years, ann)
    else:
        f = pd.DataFrame({"average_kg_per_kwh": avg, "marginal_kg_per_kwh": np.nan, "residual_kg_per_kwh": np.nan},
                         index=hours.tz_convert("UTC"))
        prov = {"method": "annual", "place": si.grid_region, "hours_filled": len(hours),
                "source": f"no hourly series or mix model for {', '.join(places)}: the annual factor in every hour",
                "sources": f"no hourly series or mix model for {', '.join(places)}: the annual factor in every hour"}
    f = f.assign(annual_average=avg, annual_residual=res)
    return f, {"site": si.site, **prov}


def _loaded(s: IntensitySeries, place: str, hours: pd.DatetimeIndex, avg: np.ndarray) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A loaded series; hours it lacks take the annual average."""
    f = factors_at(s, place, hours, fallback={"average_kg_per_kwh": np.nan})
    holes = f["average_kg_per_kwh"].isna().to_numpy()
    f.loc[holes, "average_kg_per_kwh"] = avg[holes]
    return f, {"method": s.method, "place": place, "source": f"{s.source} ({s.data_source})" if s.data_source else s.source,
               "sources": s.describe(), "hours_filled": int(holes.sum())}


def _modelled(model: str, hours: pd.DatetimeIndex, years: np.ndarray,
              ann: Mapping[int, Mapping[str, Any]]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """ems's mix model of the region, calibrated per local year to the site's annual average."""
    parts = [regional_intensity(model, int(y), float(ann[int(y)]["average"]), str(ann[int(y)].get("source", "")))
             for y in np.unique(years)]
    values = parts[0].region(model) if len(parts) == 1 else pd.concat([p.region(model) for p in parts])
    f = values.reindex(hours.tz_convert("UTC").floor("h"))
    f.index = hours.tz_convert("UTC")
    to = "; ".join(f"{float(ann[int(y)]['average']):g} kgCO2/kWh in {int(y)} ({str(ann[int(y)].get('source', '')).split(':')[0]})"
                   for y in np.unique(years))
    return f, {"method": "modelled", "place": model, "source": f"{parts[0].source}, calibrated to {to}",
               "sources": "; ".join(p.describe() for p in parts), "hours_filled": 0}


def _local_span(start: Any, end: Any, tz: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``[start, end]`` local dates, inclusive, as UTC instants ``[first midnight, day after end)``."""
    try:
        return _local_span_cached(start, end, tz)
    except TypeError:  # unhashable
        return _local_span_of(start, end, tz)


@lru_cache(maxsize=4096)
def _local_span_cached(start: Any, end: Any, tz: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    return _local_span_of(start, end, tz)


def _local_span_of(start: Any, end: Any, tz: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    a = pd.Timestamp(start).tz_localize(tz) if pd.Timestamp(start).tzinfo is None else pd.Timestamp(start)
    b = pd.Timestamp(end)
    b = (b + pd.Timedelta(days=1)).tz_localize(tz) if b.tzinfo is None else b
    return a.tz_convert("UTC"), b.tz_convert("UTC")


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts, column by column (far cheaper than ``itertuples``/``to_dict`` on string columns)."""
    cols = [df[c].tolist() for c in df.columns]
    return [dict(zip(df.columns, row, strict=True)) for row in zip(*cols, strict=True)]


def site_instruments(
    si: SiteInfo,
    flows: pd.DataFrame,
    instruments: pd.DataFrame | Sequence[Mapping[str, Any]],
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Place a site's instruments on its hours.

    Parameters
    ----------
    si : SiteInfo
    flows : DataFrame
        The site's :func:`ems.accounting.matching.site_flows` (its index: the hours).
    instruments : DataFrame or sequence of dict
        The site's rows of the instrument table (:func:`ems.accounting.certificates.instrument_table`):
        ``instrument`` (PPA or a certificate scheme), ``status`` (``counted`` and ``sold`` are
        placed), ``mwh``, ``id``, ``period_start``/``period_end`` and ``vintage_start``/``vintage_end``
        (local dates), ``generation_start``/``generation_end`` (UTC; a granular certificate's hours)
        and ``profile`` (a contract's delivery profile).

    Returns
    -------
    arrays : dict
        ``contract_kwh``, ``granular_kwh``, ``pv_sold_kwh`` per hour, and ``annual`` (a list of
        (kWh, start, end) of annual certificates, spread later by grid-origin use).
    placements : list of dict
        One per instrument: ``site``, ``id``, ``instrument``, ``kwh``, ``placement``.
    """
    hours = flows.index
    n = len(hours)
    out: dict[str, Any] = {"contract_kwh": np.zeros(n), "granular_kwh": np.zeros(n), "pv_sold_kwh": np.zeros(n), "annual": []}
    placed = []
    ctx = _Hours(si, hours, (flows["pv_to_load_kwh"] + flows["pv_to_battery_kwh"]).to_numpy())
    for rec in instruments if not isinstance(instruments, pd.DataFrame) else _records(instruments):
        r = SimpleNamespace(**rec)
        kwh = float(r.mwh) * 1000.0
        how = _place(ctx, r, kwh, out)
        placed.append({"site": si.site, "id": r.id, "instrument": r.instrument, "kwh": kwh, "placement": how})
    return out, placed


@dataclass
class _Hours:
    """A site's hours, as instruments are placed on them (profiles kept per name)."""

    si: SiteInfo
    hours: pd.DatetimeIndex
    pv: np.ndarray
    profiles: dict[str, np.ndarray] = field(default_factory=dict)

    def spread(self, kwh: float, weights: np.ndarray, a: pd.Timestamp, b: pd.Timestamp) -> np.ndarray:
        """``kwh`` over the hours of ``[a, b)`` pro rata to ``weights`` (:func:`matching.spread_over`)."""
        return matching.spread_over(kwh, weights, self.hours.as_unit("ns").asi8, a, b)

    def profile(self, name: str) -> np.ndarray:
        if name not in self.profiles:
            self.profiles[name] = profile_weights(name, self.hours, lat=self.si.lat, lon=self.si.lon).to_numpy(dtype=float)
        return self.profiles[name]


def _place(ctx: _Hours, r: Any, kwh: float, out: dict[str, Any]) -> str:
    """Add one instrument to ``out``; return how it was placed."""
    tz = ctx.si.tz
    if r.status == "sold":  # own PV whose certificates were sold: not green, over its generation period
        a, b = _local_span(r.vintage_start, r.vintage_end, tz)
        out["pv_sold_kwh"] += ctx.spread(kwh, ctx.pv, a, b)
        return f"own PV sold: pro rata to PV consumed {a:%Y-%m-%d}..{b:%Y-%m-%d}"
    gs, ge = getattr(r, "generation_start", pd.NaT), getattr(r, "generation_end", pd.NaT)
    if r.instrument != "PPA" and not (pd.isna(gs) or pd.isna(ge)):
        a, b = pd.Timestamp(gs), pd.Timestamp(ge)
        out["granular_kwh"] += ctx.spread(kwh, np.ones(len(ctx.hours)), a, b)
        return f"granular: generated {a:%Y-%m-%d %H:%M}..{b:%H:%M} UTC"
    a, b = _local_span(r.period_start, r.period_end, tz)
    if r.instrument == "PPA":
        given = getattr(r, "profile", "")
        given = given if isinstance(given, str) else ""  # missing (NaN) in a hand-made table: none given
        profile = given or "baseload"
        out["contract_kwh"] += ctx.spread(kwh, ctx.profile(profile), a, b)
        return f"contract, profile {profile}" + ("" if given else " (none given: baseload)")
    out["annual"].append((kwh, a, b))
    return "annual certificate: annual-matched figure only, pro rata to grid-origin use"


def _rte(site: str, meters: Sequence[MeterInfo], flows: pd.DataFrame) -> float:
    """Round-trip efficiency: the battery meters' announced ``eta_charge x eta_discharge``, else the totals'."""
    eta = [float(m.attrs["eta_charge"]) * float(m.attrs["eta_discharge"]) for m in meters
           if m.site == site and m.kind == "battery" and "eta_charge" in m.attrs and "eta_discharge" in m.attrs]
    if eta:
        return float(np.mean(eta))
    ch = float(flows["pv_to_battery_kwh"].sum() + flows["grid_to_battery_kwh"].sum() + flows["other_to_battery_kwh"].sum())
    return matching.round_trip_efficiency(ch, float(flows["battery_discharge_kwh"].sum()))


def _match_site(si: SiteInfo, h: pd.DataFrame, meters: Sequence[MeterInfo], inst: Sequence[Mapping[str, Any]],
                annual: AnnualFactors, series: Sequence[IntensitySeries]) -> tuple[pd.DataFrame, dict[str, Any], list[dict[str, Any]]]:
    f = matching.site_flows(h)
    arrays, placed = site_instruments(si, f, inst)
    pv = (f["pv_to_load_kwh"] + f["pv_to_battery_kwh"]).to_numpy()
    sold = np.divide(np.minimum(arrays["pv_sold_kwh"], pv), pv, out=np.zeros(len(f)), where=pv > 0)
    battery, initial = None, 0.0
    if f["battery_discharge_kwh"].any() or f["pv_to_battery_kwh"].any() or f["grid_to_battery_kwh"].any():
        green_in, other_in = matching.battery_inputs(f, sold)
        out, rte = f["battery_discharge_kwh"].to_numpy(), _rte(si.site, meters, f)
        initial = matching.initial_content(green_in + other_in, out, rte)
        battery = matching.track_battery(green_in, other_in, out, rte, initial)
    m = matching.match_hours(f, battery, arrays["contract_kwh"], arrays["granular_kwh"], sold, initial)
    annual_cert = np.zeros(len(m))
    if arrays["annual"]:
        use, ns = m["grid_origin_use_kwh"].to_numpy(dtype=float), m.index.as_unit("ns").asi8
        for kwh, a, b in arrays["annual"]:
            annual_cert += matching.spread_over(kwh, use, ns, a, b)
    m["annual_cert_kwh"] = annual_cert
    fac, prov = site_intensity(si, m.index, annual, series)
    s2 = matching.scope2_hourly(m, fac, fac["annual_average"].to_numpy(), fac["annual_residual"].to_numpy())
    m = m.join(s2)
    m["average_kg_per_kwh"] = fac["average_kg_per_kwh"].to_numpy()
    return m, prov, placed


def hourly_kpis(
    hourly: pd.DataFrame,
    meters: Sequence[MeterInfo],
    sites: Sequence[SiteInfo],
    annual: AnnualFactors,
    instruments: pd.DataFrame | None = None,
    series: Sequence[IntensitySeries] = (),
) -> HourlyResult:
    """Hourly matching and hourly Scope 2 of every site.

    Parameters
    ----------
    hourly : DataFrame
        Stage-1 hourly rows (:func:`site_hours`).
    meters, sites : sequence
        The readings' metadata.
    annual : callable
        ``(site, year) -> {"average", "residual", "source"}``: the annual factors the annual
        figures use (the factor set's choice for the site's place).
    instruments : DataFrame, optional
        The instrument table (see :func:`site_instruments`); rows of other status are ignored.
    series : sequence of IntensitySeries
        Loaded hourly intensity, used for sites whose place it covers.

    Returns
    -------
    HourlyResult
    """
    by_site = {s.site: s for s in sites}
    inst = instruments if instruments is not None else pd.DataFrame(columns=["site", "status"])
    inst = inst[inst["status"].isin(["counted", "sold"])]
    per_site: dict[str, list[dict[str, Any]]] = {}
    for rec in _records(inst):
        per_site.setdefault(str(rec["site"]), []).append(rec)
    hours: dict[str, pd.DataFrame] = {}
    prov: list[dict[str, Any]] = []
    placed: list[dict[str, Any]] = []
    for site, h in site_hours(hourly, meters).items():
        if site not in by_site:
            raise AccountingError(f"hourly energy of site {site!r} but no SiteInfo for it; known {sorted(by_site)}")
        m, p, pl = _match_site(by_site[site], h, meters, per_site.get(site, []), annual, series)
        hours[site], prov, placed = m, [*prov, p], [*placed, *pl]
    notes = [
        "hourly matching: PV and green battery output first, then contracts by delivery profile and granular "
        "certificates, each against the grid's direct supply of the hour (docs/hourly-matching.md)",
        "annual certificates count in the annual-matched figure only, spread pro rata to grid-origin use",
    ]
    return HourlyResult(hours=hours, sites={s: by_site[s] for s in hours}, intensity=pd.DataFrame(prov),
                        instruments=pd.DataFrame(placed, columns=["site", "id", "instrument", "kwh", "placement"]),
                        notes=notes)


def flow_series(meters: Sequence[MeterInfo]) -> list[tuple[str, str]]:
    """The (meter, quantity) series hourly matching reads (meter ``"*"``: any meter)."""
    anyq = sorted({q for (k, q) in _FLOW_OF if k != "pv" and k != "chp"})
    own = sorted({(m.meter, q) for m in meters for (k, q) in _FLOW_OF if m.kind in ("pv", "chp") and k == m.kind})
    return [("*", q) for q in anyq] + own


def hourly_of(res: KpiResult, rs: ReadingSet, series: Sequence[IntensitySeries] = ()) -> HourlyResult:
    """Hourly matching of the readings a KPI result was computed from, with the same factors and
    instruments. The hours come from the store's register aggregates (only the series matching
    reads) when ``rs`` is a store's readings, else from the stage-1 result of ``res``."""
    from ems.accounting.energy import stage1
    from ems.store.base import StoredReadings

    if isinstance(rs, StoredReadings):
        rows = rs.hourly(flow_series(rs.meters))
    else:
        rows = (res.energy if res.energy is not None else stage1(rs)).hourly
    fsets = res.factor_sets or {s.site: load_factor_set(s.factor_set or "cn-2023") for s in rs.sites}
    return hourly_kpis(rows, rs.meters, rs.sites, annual_factors(fsets), res.instruments, series)


SIDE_BY_SIDE = (
    "key", "period", "green_share", "cfe", "scope2_electricity_location_t", "scope2_location_hourly_t",
    "scope2_location_diff_t", "scope2_electricity_market_t", "scope2_market_hourly_t", "scope2_market_diff_t",
)
"""Columns of :func:`side_by_side`."""


def side_by_side(annual: pd.DataFrame, hourly: pd.DataFrame) -> pd.DataFrame:
    """The annual figures (``ems.accounting.kpis``) beside the hourly ones, per key and period.

    Parameters
    ----------
    annual : DataFrame
        A KPI table (``key``, ``period``, ``green_share``, ``scope2_electricity_location_kg``,
        ``scope2_electricity_market_kg``).
    hourly : DataFrame
        :meth:`HourlyResult.rollup` for the same grouping and period.

    Returns
    -------
    DataFrame
        :data:`SIDE_BY_SIDE` plus ``annual_matched_share`` (the annual rule on the same hours, a
        check) and ``use_kwh``: green share annual and hourly (CFE); Scope 2 of electricity
        location- and market-based, annual and hourly [tCO2], and hourly - annual.
    """
    a = annual[["key", "period", "green_share", "scope2_electricity_location_kg", "scope2_electricity_market_kg"]]
    h = hourly[["key", "period", "cfe", "annual_matched_share", "use_kwh", "scope2_location_hourly_kg",
                "scope2_market_hourly_kg"]]
    m = a.merge(h, on=["key", "period"], how="inner")
    out = pd.DataFrame({"key": m["key"], "period": m["period"], "green_share": m["green_share"], "cfe": m["cfe"]})
    for kind in ("location", "market"):
        out[f"scope2_electricity_{kind}_t"] = m[f"scope2_electricity_{kind}_kg"] / 1000.0
        out[f"scope2_{kind}_hourly_t"] = m[f"scope2_{kind}_hourly_kg"] / 1000.0
        out[f"scope2_{kind}_diff_t"] = out[f"scope2_{kind}_hourly_t"] - out[f"scope2_electricity_{kind}_t"]
    out["annual_matched_share"] = m["annual_matched_share"]
    out["use_kwh"] = m["use_kwh"]
    return out
