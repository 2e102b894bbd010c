"""Measures: scenario overlays that change sites, each with its costs.

A measure is a mapping in a scenario file's ``measures:`` list::

    measures:
      - {measure: add_pv, site: qingdao, kwp: 20000}
      - {measure: add_storage, site: qingdao, energy_kwh: 10000, strategy: tou_arbitrage}
      - {measure: buy_certificates, site: [pingdu, huzhou], target_share: 0.3}

``site`` is one site id, a list, or absent for every site of the scenario.
:func:`apply_measures` turns the list into changed :class:`~ems.model.site.Site`
objects (validated again, like an override) plus one :class:`AppliedMeasure` per
measure and site with its size, capital and operating cost. The catalogue is
:data:`MEASURES`; ``ems measures`` prints it and ``docs/studies.md`` explains each.

Measures that size themselves from the site's figures (``target_share`` of
certificates or green power, ``zero_carbon``) need the KPIs of the scenario with the
physical measures applied: :func:`apply_measures` simulates it once (through the
``site_totals`` callable) and sizes them from those readings' KPIs.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ems.errors import ConfigError
from ems.model.loader import load_document
from ems.model.scenario import ResolvedScenario
from ems.model.site import Site
from ems.studies.economics import annualised_cost

__all__ = [
    "MEASURES",
    "AppliedMeasure",
    "MeasureSpec",
    "apply_measures",
    "load_costs",
    "measure_table",
]

log = logging.getLogger(__name__)

SiteTotals = Callable[[ResolvedScenario], dict[str, dict[str, float]]]
"""``scenario -> {site id: {electricity_consumed_kwh, green_kwh, ...}}`` over its period."""


@dataclass(frozen=True)
class MeasureSpec:
    """A measure of the catalogue.

    Attributes
    ----------
    name : str
    summary : str
    params : dict of str to str
        Parameter -> description with unit and default.
    sized_from_kpis : bool
        True if it needs the KPIs of a run to size itself.
    """

    name: str
    summary: str
    params: dict[str, str]
    sized_from_kpis: bool = False


_SITE = "site id, list of ids, or absent for all sites"
MEASURES: dict[str, MeasureSpec] = {
    m.name: m
    for m in (
        MeasureSpec("add_pv", "add a rooftop PV array", {
            "site": _SITE, "kwp": "DC size [kWp] (required)", "tilt_deg": "tilt [deg], default 20",
            "azimuth_deg": "azimuth [deg], default 180 (south)",
            "commissioned": "date, default the scenario's start"}),
        MeasureSpec("add_storage", "add a battery with a dispatch strategy", {
            "site": _SITE, "energy_kwh": "usable energy [kWh] (required)",
            "power_kw": "charge/discharge power [kW], default energy_kwh / 2",
            "strategy": "self_consumption (default), tou_arbitrage or peak_shaving",
            "threshold_kw": "peak_shaving: grid import to stay below [kW]"}),
        MeasureSpec("buy_certificates", "buy and retire unbundled green certificates (GEC)", {
            "site": _SITE, "mwh": "fixed volume over the period, per site [MWh]",
            "target_share": "or: enough to reach this green-power share [-]"}, sized_from_kpis=True),
        MeasureSpec("green_power", "buy green power through a contract (green power trading)", {
            "site": _SITE, "mwh": "fixed volume over the period, per site [MWh]",
            "target_share": "or: enough to reach this green-power share [-]"}, sized_from_kpis=True),
        MeasureSpec("electrify_forklifts", "replace diesel forklifts by electric ones", {
            "site": _SITE, "fleet": "diesel fleet id(s), default every diesel fleet",
            "share": "share of the fleet's diesel replaced [-], default 1"}),
        MeasureSpec("waste_heat_recovery", "recover compressor waste heat for steam", {
            "site": _SITE, "share": "new share of heat demand met by recovered heat [-] (required)"}),
        MeasureSpec("compressed_air_upgrade", "variable-speed compressors and leak repair", {
            "site": _SITE, "saving": "share of compressed-air electricity saved [-], default 0.35",
            "leakage_fraction": "new leakage share [-], optional"}),
        MeasureSpec("hvac_control", "smarter HVAC control (AI set points, scheduling)", {
            "site": _SITE, "saving": "share of HVAC electricity saved [-], default 0.20"}),
        MeasureSpec("zero_carbon", "zero-carbon factory: 100 % renewable electricity, offsets for the rest", {
            "site": _SITE}, sized_from_kpis=True),
    )
}
"""The measure catalogue by name."""

_COMMON = {"measure", "site", "capex_per_unit", "opex_share", "opex_per_unit", "lifetime_years", "discount_rate"}


@dataclass
class AppliedMeasure:
    """One measure applied at one site, with its size and costs.

    Attributes
    ----------
    measure, site : str
    params : dict
        The parameters as given (plus resolved defaults).
    quantity : float [unit]
        Size in the cost unit (kWp, kWh, MWh, forklifts, GJ/yr, kW, tCO2e).
    unit : str
    capex : float [currency]
    opex_per_year : float [currency/yr]
    lifetime_years : float [yr]
    discount_rate : float [-]
    offsets : bool
        True for ``zero_carbon``: the remaining Scope 1+2 is offset at evaluation.
    note : str
    """

    measure: str
    site: str
    params: dict[str, Any]
    quantity: float
    unit: str
    capex: float
    opex_per_year: float
    lifetime_years: float
    discount_rate: float
    offsets: bool = False
    note: str = ""

    @property
    def annual_cost(self) -> float:
        """Capex x CRF + opex [currency/yr]."""
        return annualised_cost(self.capex, self.opex_per_year, self.discount_rate, self.lifetime_years)

    def to_dict(self) -> dict[str, Any]:
        """Flat dict for tables."""
        return {
            "measure": self.measure, "site": self.site, "quantity": self.quantity, "unit": self.unit,
            "capex": self.capex, "opex_per_year": self.opex_per_year, "lifetime_years": self.lifetime_years,
            "discount_rate": self.discount_rate, "annual_cost": self.annual_cost, "note": self.note,
        }


def load_costs(path: str | Path | None = None) -> dict[str, Any]:
    """Load the measure cost data (default ``ems/data/measures/costs.yaml``).

    Raises
    ------
    ConfigError
        A missing file or one without ``measures`` and ``conversions``.
    """
    p = Path(path) if path is not None else Path(str(resources.files("ems").joinpath("data", "measures", "costs.yaml")))
    if not p.is_file():
        raise ConfigError(f"cost data: expected a YAML file, found no file at {str(p)!r}")
    data = load_document(p).data  # size, depth and file-type limits, located errors
    if not isinstance(data, dict) or not isinstance(data.get("measures"), dict) or "conversions" not in data:
        raise ConfigError(f"{p}: expected a mapping with 'measures' and 'conversions' (see ems/data/measures/costs.yaml)")
    return data


def measure_table() -> list[dict[str, str]]:
    """The catalogue as rows ``{measure, summary, parameter, description}``."""
    return [
        {"measure": m.name, "summary": m.summary, "parameter": k, "description": v}
        for m in MEASURES.values()
        for k, v in m.params.items()
    ]


# --------------------------------------------------------------------------- helpers


def _fail(i: int, text: str) -> ConfigError:
    return ConfigError(f"measures.{i}: {text}")


def _num(i: int, m: Mapping[str, Any], key: str, default: float | None = None, *, lo: float = 0.0,
         hi: float = math.inf) -> float:
    v = m.get(key, default)
    if v is None:
        raise _fail(i, f"{m['measure']}: expected parameter {key!r}, found it missing")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise _fail(i, f"{m['measure']}.{key}: expected a number, found {v!r}") from None
    if not lo <= x <= hi:
        raise _fail(i, f"{m['measure']}.{key}: expected a value in [{lo}, {hi}], found {x}")
    return x


def _costs(i: int, m: Mapping[str, Any], costs: Mapping[str, Any], key: str) -> dict[str, float]:
    c = dict(costs["measures"].get(key) or {})
    if not c:
        raise _fail(i, f"{key}: no cost data in the cost file (expected measures.{key})")
    return {
        "capex_per_unit": float(m.get("capex_per_unit", c.get("capex_per_unit", 0.0))),
        "opex_share": float(m.get("opex_share", c.get("opex_share", 0.0))),
        "opex_per_unit": float(m.get("opex_per_unit", c.get("opex_per_unit", 0.0))),
        "lifetime_years": float(m.get("lifetime_years", c.get("lifetime_years", 1.0))),
        "discount_rate": float(m.get("discount_rate", costs.get("discount_rate", 0.06))),
    }


def _applied(i: int, m: Mapping[str, Any], costs: Mapping[str, Any], site: str, qty: float, key: str | None = None,
             note: str = "", params: Mapping[str, Any] | None = None, offsets: bool = False) -> AppliedMeasure:
    name = str(m["measure"])
    c = _costs(i, m, costs, key or name)
    capex = qty * c["capex_per_unit"]
    opex = capex * c["opex_share"] + qty * c["opex_per_unit"]
    unit = str((costs["measures"].get(key or name) or {}).get("unit", ""))
    p = {k: v for k, v in m.items() if k not in ("measure", "site")}
    p.update(params or {})
    return AppliedMeasure(name, site, p, qty, unit, capex, opex, c["lifetime_years"], c["discount_rate"],
                          offsets=offsets, note=note)


def _sites_of(i: int, m: Mapping[str, Any], sites: Mapping[str, Site]) -> list[str]:
    sel = m.get("site")
    if sel is None:
        return list(sites)
    ids = [sel] if isinstance(sel, str) else list(sel)
    unknown = [s for s in ids if s not in sites]
    if unknown:
        raise _fail(i, f"{m['measure']}.site: expected ids of this scenario's sites ({', '.join(sites)}), found {unknown}")
    return [str(s) for s in ids]


def _revalidate(site: Site, i: int, name: str) -> Site:
    try:
        return Site.model_validate(site.model_dump())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise _fail(i, f"{name} at site {site.id}: the changed site is invalid: {loc}: {first['msg']}") from None


def _next_id(prefix: str, used: Iterable[str]) -> str:
    taken = set(used)
    k = 1
    while f"{prefix}-{k}" in taken:
        k += 1
    return f"{prefix}-{k}"


def _asset_ids(s: Site) -> list[str]:
    return [*(p.id for p in s.pv), *(b.id for b in s.batteries), *(f.id for f in s.fleets)]


# --------------------------------------------------------------------------- physical measures


def _add_pv(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, costs: Mapping[str, Any]) -> AppliedMeasure:
    from ems.model.site import PvArray

    kwp = _num(i, m, "kwp", lo=1e-9)
    comm = m.get("commissioned", sc.start)
    if isinstance(comm, str):
        comm = dt.date.fromisoformat(comm)
    s.pv.append(PvArray(id=_next_id("pv-added", _asset_ids(s)), kwp=kwp,
                        tilt_deg=_num(i, m, "tilt_deg", 20.0, hi=90.0),
                        azimuth_deg=_num(i, m, "azimuth_deg", 180.0, hi=359.999), commissioned=comm))
    return _applied(i, m, costs, s.id, kwp)


def _add_storage(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, costs: Mapping[str, Any]) -> AppliedMeasure:
    from ems.model.site import Battery, Dispatch

    e = _num(i, m, "energy_kwh", lo=1e-9)
    p = _num(i, m, "power_kw", e / 2.0, lo=1e-9)
    strategy = str(m.get("strategy", "self_consumption"))
    if strategy not in ("self_consumption", "tou_arbitrage", "peak_shaving"):
        raise _fail(i, f"add_storage.strategy: expected self_consumption, tou_arbitrage or peak_shaving, found {strategy!r}")
    thr = m.get("threshold_kw")
    if strategy == "peak_shaving" and thr is None:
        raise _fail(i, "add_storage: peak_shaving needs 'threshold_kw' (grid import to stay below) [kW]")
    disp = Dispatch(strategy=strategy, threshold_kw=None if thr is None else float(thr))  # type: ignore[arg-type]
    s.batteries.append(Battery(id=_next_id("bess-added", _asset_ids(s)), energy_kwh=e, power_kw=p, dispatch=disp))
    return _applied(i, m, costs, s.id, e, params={"power_kw": p, "strategy": strategy})


def _electrify(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, costs: Mapping[str, Any]) -> AppliedMeasure:
    share = _num(i, m, "share", 1.0, hi=1.0)
    want = m.get("fleet")
    ids = None if want is None else ({want} if isinstance(want, str) else set(want))
    conv = costs["conversions"]
    kwh_per_kg = float(conv["electric_kwh_per_kg_diesel"]["value"])
    kg_per_forklift = float(conv["diesel_kg_per_forklift_year"]["value"])
    kg = 0.0
    keep = []
    for f in s.fleets:
        if f.fuel == "diesel" and (ids is None or f.id in ids):
            moved = f.annual_kg * share
            kg += moved
            if f.annual_kg - moved > 1e-9:
                keep.append(f.model_copy(update={"annual_kg": f.annual_kg - moved}))
        else:
            keep.append(f)
    if ids is not None and not ids <= {f.id for f in s.fleets if f.fuel == "diesel"}:
        raise _fail(i, f"electrify_forklifts.fleet: expected diesel fleet ids of site {s.id}, found {sorted(ids)}")
    s.fleets = keep
    s.loads.electrified_fleet_kwh_per_year += kg * kwh_per_kg
    n = kg / kg_per_forklift
    return _applied(i, m, costs, s.id, n, note=f"{kg:,.0f} kg/yr diesel -> {kg * kwh_per_kg:,.0f} kWh/yr",
                    params={"diesel_kg_per_year": kg, "electric_kwh_per_year": kg * kwh_per_kg})


def _waste_heat(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, costs: Mapping[str, Any]) -> AppliedMeasure:
    if s.steam is None or s.steam.annual_gj is None:
        raise _fail(i, f"waste_heat_recovery: site {s.id} needs a 'steam' section with 'annual_gj'")
    share = _num(i, m, "share", hi=1.0)
    boiler = s.steam.boiler.share if s.steam.boiler else 0.0
    if share + boiler > 1.0 + 1e-9:
        raise _fail(i, f"waste_heat_recovery.share: expected share + boiler share <= 1 at {s.id}, found {share} + {boiler}")
    added = max(share - s.steam.waste_heat_share, 0.0) * s.steam.annual_gj
    s.steam.waste_heat_share = share
    return _applied(i, m, costs, s.id, added, note=f"{added:,.0f} GJ/yr more recovered heat")


def _air(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, costs: Mapping[str, Any]) -> AppliedMeasure:
    ca = s.loads.compressed_air
    if ca is None:
        raise _fail(i, f"compressed_air_upgrade: site {s.id} has no loads.compressed_air")
    saving = _num(i, m, "saving", 0.35, hi=1.0)
    rated = ca.kw
    ca.kw = ca.kw * (1.0 - saving)
    if ca.annual_kwh is not None:
        ca.annual_kwh = ca.annual_kwh * (1.0 - saving)
    if "leakage_fraction" in m:
        ca.leakage_fraction = _num(i, m, "leakage_fraction", hi=1.0)
    return _applied(i, m, costs, s.id, rated)


def _hvac(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, costs: Mapping[str, Any]) -> AppliedMeasure:
    h = s.loads.hvac
    if h is None:
        raise _fail(i, f"hvac_control: site {s.id} has no loads.hvac")
    saving = _num(i, m, "saving", 0.20, hi=1.0)
    size = h.max_kw or 0.0
    h.cooling_kw_per_degc *= 1.0 - saving
    h.heating_kw_per_degc *= 1.0 - saving
    if h.max_kw is not None:
        h.max_kw *= 1.0 - saving
    if h.annual_kwh is not None:
        h.annual_kwh *= 1.0 - saving
    return _applied(i, m, costs, s.id, size)


_PHYSICAL: dict[str, Callable[[int, Mapping[str, Any], Site, ResolvedScenario, Mapping[str, Any]], AppliedMeasure]] = {
    "add_pv": _add_pv,
    "add_storage": _add_storage,
    "electrify_forklifts": _electrify,
    "waste_heat_recovery": _waste_heat,
    "compressed_air_upgrade": _air,
    "hvac_control": _hvac,
}


# --------------------------------------------------------------------------- procurement


def _period_days(sc: ResolvedScenario) -> int:
    return (sc.end - sc.start).days


def _buy(s: Site, sc: ResolvedScenario, kind: str, mwh: float, tag: str) -> str:
    """Add a certificate purchase (CN) or a green-power contract for ``mwh`` over the period."""
    from ems.model.site import CertificatePurchase, Contract

    used = [c.id for c in s.procurement.certificates] + [c.id for c in s.procurement.contracts]
    if kind == "certificates" and s.location.country == "CN":
        cid = _next_id(f"{tag}-gec", used)
        s.procurement.certificates.append(CertificatePurchase(
            id=cid, scheme="GEC", mwh=mwh, vintage=sc.start.year, schedule="once",
            date=sc.end - dt.timedelta(days=1), period_year=sc.start.year,
            plant="new renewable plant (bought by the measure)", plant_commissioned=dt.date(sc.start.year - 1, 1, 1)))
        return "certificates"
    cid = _next_id(f"{tag}-green", used)
    s.procurement.contracts.append(Contract(
        id=cid, kind="green_power", annual_mwh=mwh * 365.0 / max(_period_days(sc), 1), start=sc.start,
        end=sc.end - dt.timedelta(days=1)))
    return "green_power"


def _sized(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, costs: Mapping[str, Any],
           totals: Mapping[str, float] | None) -> AppliedMeasure:
    name = str(m["measure"])
    if name == "zero_carbon":
        share, fixed = 1.0, None
    elif "mwh" in m:
        fixed = _num(i, m, "mwh", lo=0.0)
        share = None
    elif "target_share" in m:
        share, fixed = _num(i, m, "target_share", hi=1.0), None
    else:
        raise _fail(i, f"{name}: expected 'mwh' or 'target_share', found neither")
    if fixed is not None:
        mwh = fixed
        note = ""
    else:
        assert totals is not None and share is not None
        need = share * totals["electricity_consumed_kwh"] - totals["green_kwh"]
        mwh = max(need, 0.0) / 1000.0
        note = f"sized to {share:.0%} green share: {mwh:,.1f} MWh"
    kind = "green_power" if name == "green_power" else "certificates"
    if mwh <= 0:
        got = kind
    else:
        got = _buy(s, sc, kind, mwh, "m" + str(i))
    if got != kind:
        note = (note + "; " if note else "") + f"no GEC for country {s.location.country}: bought as green power"
    key = "green_power" if got == "green_power" else "buy_certificates"
    a = _applied(i, m, costs, s.id, mwh, key=key, note=note, offsets=name == "zero_carbon")
    a.unit = "MWh"
    return a


def apply_measures(
    scenario: ResolvedScenario,
    measures: Iterable[Mapping[str, Any]] | None = None,
    *,
    costs: Mapping[str, Any] | None = None,
    site_totals: SiteTotals | None = None,
) -> tuple[ResolvedScenario, list[AppliedMeasure]]:
    """Apply measures to a resolved scenario.

    Parameters
    ----------
    scenario : ResolvedScenario
        Left unchanged; a changed copy is returned.
    measures : list of dict, optional
        Default: the scenario file's own ``measures:`` (``scenario.extra['measures']``).
    costs : dict, optional
        From :func:`load_costs`; default the built-in cost data.
    site_totals : callable, optional
        ``scenario -> {site: {electricity_consumed_kwh, green_kwh}}``; needed only for
        measures sized from KPIs. Default :func:`ems.studies.run.site_totals`
        (simulate + KPIs).

    Returns
    -------
    (ResolvedScenario, list of AppliedMeasure)

    Raises
    ------
    ConfigError
        An unknown measure, a missing or bad parameter, an unknown site, or a
        change that leaves a site invalid; the message names ``measures.<index>``.
    """
    ms = list(scenario.extra.get("measures") or [] if measures is None else measures)
    costs = costs if costs is not None else load_costs()
    sites = {s.id: s.model_copy(deep=True) for s in scenario.sites}
    applied: list[AppliedMeasure] = []
    later: list[tuple[int, Mapping[str, Any]]] = []
    for i, m in enumerate(ms):
        if not isinstance(m, Mapping) or "measure" not in m:
            raise _fail(i, f"expected a mapping with 'measure' (one of {', '.join(MEASURES)}), found {m!r}")
        name = str(m["measure"])
        spec = MEASURES.get(name)
        if spec is None:
            raise _fail(i, f"expected a measure in {', '.join(MEASURES)}, found {name!r}")
        unknown = set(m) - set(spec.params) - _COMMON
        if unknown:
            raise _fail(i, f"{name}: expected parameters {', '.join(spec.params)}, found unknown {sorted(unknown)}")
        if spec.sized_from_kpis:
            later.append((i, m))
            continue
        for sid in _sites_of(i, m, sites):
            applied.append(_PHYSICAL[name](i, m, sites[sid], scenario, costs))
            sites[sid] = _revalidate(sites[sid], i, name)
    out = replace(scenario, sites=list(sites.values()), extra={**scenario.extra, "measures": ms})
    if later:
        need = any("mwh" not in m or m["measure"] == "zero_carbon" for _, m in later)
        totals: dict[str, dict[str, float]] = {}
        if need:
            if site_totals is None:
                from ems.studies.run import site_totals as default_totals

                site_totals = default_totals
            totals = site_totals(out)
        for i, m in later:
            for sid in _sites_of(i, m, sites):
                applied.append(_sized(i, m, sites[sid], scenario, costs, totals.get(sid)))
                sites[sid] = _revalidate(sites[sid], i, str(m["measure"]))
                # later measures see earlier purchases
                if sid in totals and applied[-1].quantity > 0:
                    totals[sid]["green_kwh"] = totals[sid]["green_kwh"] + applied[-1].quantity * 1000.0
        out = replace(out, sites=list(sites.values()))
    return out, applied

