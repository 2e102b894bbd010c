"""Measures: scenario overlays that change sites. Physical ones are pure transforms of the model.

A measure is a mapping in a scenario file's ``measures:`` list::

    measures:
      - {measure: add_pv, site: qingdao, kwp: 20000}
      - {measure: add_storage, site: qingdao, energy_kwh: 10000, strategy: tou_arbitrage}
      - {measure: buy_certificates, site: [pingdu, huzhou], target_share: 0.3}

``site`` is one site id, a list, or absent for every site of the scenario. The catalogue is
:data:`MEASURES`; ``ems measures`` prints it and ``docs/studies.md`` explains each.

*Physical* measures (new PV, storage, electrified forklifts, recovered heat, efficiency)
change the site models: :func:`apply_physical` applies them, validates the changed sites
again (like an override) and records each :class:`Change` with its size. This is part of
loading a scenario and never simulates anything.

Measures *sized from KPIs* (``buy_certificates`` or ``green_power`` with a
``target_share``, ``zero_carbon``) need the KPIs of the scenario with its physical
measures: sizing them is a study step (:func:`ems.studies.measures.size_from_kpis`).
:func:`apply_physical` checks them and leaves them in ``scenario.extra["measures"]``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ems.datafiles import data_path
from ems.errors import ConfigError
from ems.model.scenario import ResolvedScenario
from ems.model.site import Battery, Dispatch, PvArray, Site
from ems.yamldoc import load_document

__all__ = [
    "COMMON_PARAMETERS",
    "MEASURES",
    "MEASURE_WORDS",
    "Change",
    "MeasureSpec",
    "apply_physical",
    "check_measures",
    "fail",
    "load_costs",
    "measure_table",
    "next_id",
    "number",
    "revalidate",
    "sites_of",
]


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
        True if it needs the KPIs of a run to size itself (a study step).
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
            "target_share": "or: enough to reach this green-power share [-]",
            "profile": "delivery profile for hourly matching: baseload (default), solar, as_consumed or "
                       "<grid region>:<technology> (e.g. CN-North:wind)"}, sized_from_kpis=True),
        MeasureSpec("electrify_forklifts", "replace diesel forklifts by electric ones", {
            "site": _SITE, "fleet": "diesel fleet id(s), default every diesel fleet",
            "share": "share of the fleet's diesel replaced [-], default 1"}),
        MeasureSpec("waste_heat_recovery", "recover compressor waste heat for steam", {
            "site": _SITE, "share": "new share of heat demand met by recovered heat [-] (required)"}),
        MeasureSpec("compressed_air_upgrade", "variable-speed compressors and leak repair", {
            "site": _SITE, "saving": "share of compressed-air electricity saved [-], default the cost data's "
                     "conversions.compressed_air_saving",
            "leakage_fraction": "new leakage share [-], optional"}),
        MeasureSpec("hvac_control", "smarter HVAC control (AI set points, scheduling)", {
            "site": _SITE, "saving": "share of HVAC electricity saved [-], default the cost data's "
                     "conversions.hvac_saving"}),
        MeasureSpec("zero_carbon", "zero-carbon factory: 100 % renewable electricity, offsets for the rest", {
            "site": _SITE}, sized_from_kpis=True),
    )
}
"""The measure catalogue by name."""

MEASURE_WORDS: dict[str, str] = {
    "solar": "add_pv", "pv": "add_pv", "photovoltaic": "add_pv", "battery": "add_storage",
    "bess": "add_storage", "storage": "add_storage", "certificate": "buy_certificates",
    "certificates": "buy_certificates", "gec": "buy_certificates", "rec": "buy_certificates",
    "ppa": "green_power", "forklift": "electrify_forklifts", "forklifts": "electrify_forklifts",
    "heat": "waste_heat_recovery", "compressor": "compressed_air_upgrade", "air": "compressed_air_upgrade",
    "hvac": "hvac_control", "neutral": "zero_carbon",
}
"""Words people use for a measure, for 'did you mean' hints (``add_solar`` -> ``add_pv``)."""

COMMON_PARAMETERS = frozenset(
    {"measure", "site", "capex_per_unit", "opex_share", "opex_per_unit", "lifetime_years", "discount_rate"}
)
"""Keys every measure accepts besides its own parameters (cost data may be overridden per measure)."""


@dataclass
class Change:
    """One physical measure applied at one site.

    Attributes
    ----------
    measure, site : str
    params : dict
        The parameters as given (plus resolved defaults).
    quantity : float [unit of the measure's cost data]
        Size: kWp, kWh, forklifts, GJ/yr, kW.
    note : str
    """

    measure: str
    site: str
    params: dict[str, Any]
    quantity: float
    note: str = ""
    index: int = field(default=0, repr=False)


def load_costs(path: str | Path | None = None) -> dict[str, Any]:
    """Load the measure data (default ``ems/data/measures/costs.yaml``): costs and conversions.

    Raises
    ------
    ConfigError
        A missing file or one without ``measures`` and ``conversions``.
    """
    p = Path(path) if path is not None else data_path("measures", "costs.yaml")
    if not p.is_file():
        raise ConfigError(f"cost data: expected a YAML file, found no file at {str(p)!r}")
    data = load_document(p).data  # size, depth and file-type limits, located errors
    if not isinstance(data, dict) or not isinstance(data.get("measures"), dict) or "conversions" not in data:
        raise ConfigError(f"{p}: expected a mapping with 'measures' and 'conversions' (see ems/data/measures/costs.yaml)")
    rate = data.get("discount_rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ConfigError(f"{p}: discount_rate: expected a real rate per year in [0, 1) (e.g. 0.06), found {rate!r}")
    return data


def measure_table() -> list[dict[str, str]]:
    """The catalogue as rows ``{measure, summary, parameter, description}``."""
    return [{"measure": m.name, "summary": m.summary, "parameter": k, "description": v}
            for m in MEASURES.values() for k, v in m.params.items()]


# --------------------------------------------------------------------------- helpers


def fail(i: int, text: str) -> ConfigError:
    return ConfigError(f"measures.{i}: {text}")


def number(i: int, m: Mapping[str, Any], key: str, default: float | None = None, *, lo: float = 0.0,
           hi: float = math.inf) -> float:
    """A numeric parameter, checked against ``[lo, hi]``."""
    v = m.get(key, default)
    if v is None:
        raise fail(i, f"{m['measure']}: expected parameter {key!r}, found it missing")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise fail(i, f"{m['measure']}.{key}: expected a number, found {v!r}") from None
    if not lo <= x <= hi:
        raise fail(i, f"{m['measure']}.{key}: expected a value in [{lo}, {hi}], found {x}")
    return x


def _default(conv: Mapping[str, Any], key: str) -> float | None:
    """A measure parameter's default from the cost data's ``conversions`` (``{value, unit, source}``);
    None if the data has none (then the measure must give the parameter)."""
    entry = conv.get(key)
    return float(entry["value"]) if isinstance(entry, Mapping) and "value" in entry else None


def sites_of(i: int, m: Mapping[str, Any], sites: Mapping[str, Site]) -> list[str]:
    """The site ids a measure applies to."""
    sel = m.get("site")
    if sel is None:
        return list(sites)
    ids = [sel] if isinstance(sel, str) else list(sel)
    unknown = [s for s in ids if s not in sites]
    if unknown:
        raise fail(i, f"{m['measure']}.site: expected ids of this scenario's sites ({', '.join(sites)}), found {unknown}")
    return [str(s) for s in ids]


def revalidate(site: Site, i: int, name: str) -> Site:
    """The changed site validated again, as an override would be."""
    try:
        return Site.model_validate(site.model_dump())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise fail(i, f"{name} at site {site.id}: the changed site is invalid: {loc}: {first['msg']}") from None


def next_id(prefix: str, used: Iterable[str]) -> str:
    taken = set(used)
    k = 1
    while f"{prefix}-{k}" in taken:
        k += 1
    return f"{prefix}-{k}"


def _asset_ids(s: Site) -> list[str]:
    return [*(p.id for p in s.pv), *(b.id for b in s.batteries), *(f.id for f in s.fleets)]


def _params(m: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    p = {k: v for k, v in m.items() if k not in ("measure", "site")}
    p.update(extra or {})
    return p


# --------------------------------------------------------------------------- physical measures


def _add_pv(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, conv: Mapping[str, Any]) -> Change:
    kwp = number(i, m, "kwp", lo=1e-9)
    comm = m.get("commissioned", sc.start)
    if isinstance(comm, str):
        comm = dt.date.fromisoformat(comm)
    s.pv.append(PvArray(id=next_id("pv-added", _asset_ids(s)), kwp=kwp,
                        tilt_deg=number(i, m, "tilt_deg", 20.0, hi=90.0),
                        azimuth_deg=number(i, m, "azimuth_deg", 180.0, hi=359.999), commissioned=comm))
    return Change("add_pv", s.id, _params(m), kwp)


def _add_storage(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, conv: Mapping[str, Any]) -> Change:
    e = number(i, m, "energy_kwh", lo=1e-9)
    p = number(i, m, "power_kw", e / 2.0, lo=1e-9)
    strategy = str(m.get("strategy", "self_consumption"))
    if strategy not in ("self_consumption", "tou_arbitrage", "peak_shaving"):
        raise fail(i, f"add_storage.strategy: expected self_consumption, tou_arbitrage or peak_shaving, found {strategy!r}")
    thr = m.get("threshold_kw")
    if strategy == "peak_shaving" and thr is None:
        raise fail(i, "add_storage: peak_shaving needs 'threshold_kw' (grid import to stay below) [kW]")
    disp = Dispatch(strategy=strategy, threshold_kw=None if thr is None else float(thr))  # type: ignore[arg-type]
    s.batteries.append(Battery(id=next_id("bess-added", _asset_ids(s)), energy_kwh=e, power_kw=p, dispatch=disp))
    return Change("add_storage", s.id, _params(m, {"power_kw": p, "strategy": strategy}), e)


def _electrify(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, conv: Mapping[str, Any]) -> Change:
    share = number(i, m, "share", 1.0, hi=1.0)
    want = m.get("fleet")
    ids = None if want is None else ({want} if isinstance(want, str) else set(want))
    if ids is not None and not ids <= {f.id for f in s.fleets if f.fuel == "diesel"}:
        raise fail(i, f"electrify_forklifts.fleet: expected diesel fleet ids of site {s.id}, found {sorted(ids)}")
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
    s.fleets = keep
    s.loads.electrified_fleet_kwh_per_year += kg * kwh_per_kg
    return Change("electrify_forklifts", s.id,
                  _params(m, {"diesel_kg_per_year": kg, "electric_kwh_per_year": kg * kwh_per_kg}),
                  kg / kg_per_forklift, note=f"{kg:,.0f} kg/yr diesel -> {kg * kwh_per_kg:,.0f} kWh/yr")


def _waste_heat(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, conv: Mapping[str, Any]) -> Change:
    if s.steam is None or s.steam.annual_gj is None:
        raise fail(i, f"waste_heat_recovery: site {s.id} needs a 'steam' section with 'annual_gj'")
    share = number(i, m, "share", hi=1.0)
    boiler = s.steam.boiler.share if s.steam.boiler else 0.0
    if share + boiler > 1.0 + 1e-9:
        raise fail(i, f"waste_heat_recovery.share: expected share + boiler share <= 1 at {s.id}, found {share} + {boiler}")
    added = max(share - s.steam.waste_heat_share, 0.0) * s.steam.annual_gj
    s.steam.waste_heat_share = share
    return Change("waste_heat_recovery", s.id, _params(m), added, note=f"{added:,.0f} GJ/yr more recovered heat")


def _air(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, conv: Mapping[str, Any]) -> Change:
    ca = s.loads.compressed_air
    if ca is None:
        raise fail(i, f"compressed_air_upgrade: site {s.id} has no loads.compressed_air")
    saving = number(i, m, "saving", _default(conv, "compressed_air_saving"), hi=1.0)
    rated = ca.kw
    ca.kw = ca.kw * (1.0 - saving)
    if ca.annual_kwh is not None:
        ca.annual_kwh = ca.annual_kwh * (1.0 - saving)
    if "leakage_fraction" in m:
        ca.leakage_fraction = number(i, m, "leakage_fraction", hi=1.0)
    return Change("compressed_air_upgrade", s.id, _params(m), rated)


def _hvac(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, conv: Mapping[str, Any]) -> Change:
    h = s.loads.hvac
    if h is None:
        raise fail(i, f"hvac_control: site {s.id} has no loads.hvac")
    saving = number(i, m, "saving", _default(conv, "hvac_saving"), hi=1.0)
    size = h.max_kw or 0.0
    h.cooling_kw_per_degc *= 1.0 - saving
    h.heating_kw_per_degc *= 1.0 - saving
    if h.max_kw is not None:
        h.max_kw *= 1.0 - saving
    if h.annual_kwh is not None:
        h.annual_kwh *= 1.0 - saving
    return Change("hvac_control", s.id, _params(m), size)


Transform = Callable[[int, Mapping[str, Any], Site, ResolvedScenario, Mapping[str, Any]], Change]
PHYSICAL: dict[str, Transform] = {
    "add_pv": _add_pv,
    "add_storage": _add_storage,
    "electrify_forklifts": _electrify,
    "waste_heat_recovery": _waste_heat,
    "compressed_air_upgrade": _air,
    "hvac_control": _hvac,
}


def check_measures(measures: Iterable[Any]) -> list[Mapping[str, Any]]:
    """Check every entry names a known measure with known parameters; return them as a list."""
    out = list(measures)
    for i, m in enumerate(out):
        if not isinstance(m, Mapping) or "measure" not in m:
            raise fail(i, f"expected a mapping with 'measure' (one of {', '.join(MEASURES)}), found {m!r}")
        spec = MEASURES.get(str(m["measure"]))
        if spec is None:
            raise fail(i, f"expected a measure in {', '.join(MEASURES)}, found {str(m['measure'])!r}")
        unknown = set(m) - set(spec.params) - COMMON_PARAMETERS
        if unknown:
            raise fail(i, f"{spec.name}: expected parameters {', '.join(spec.params)}, found unknown {sorted(unknown)}")
    return out


def apply_physical(
    scenario: ResolvedScenario,
    measures: Iterable[Mapping[str, Any]] | None = None,
    *,
    conversions: Mapping[str, Any] | None = None,
) -> tuple[ResolvedScenario, list[Change]]:
    """Apply the physical measures to a scenario's sites (a pure transform; nothing is simulated).

    Parameters
    ----------
    scenario : ResolvedScenario
        Left unchanged; a changed copy is returned.
    measures : list of dict, optional
        Default: the scenario file's own ``measures:`` (``scenario.extra['measures']``).
    conversions : dict, optional
        ``conversions`` of the measure cost data (forklift diesel, kWh per kg); default the
        built-in ``ems/data/measures/costs.yaml``.

    Returns
    -------
    (ResolvedScenario, list of Change)
        ``extra["measures"]`` of the result keeps the whole list (measures sized from KPIs
        are applied later by the studies) and ``extra["changes"]`` the changes, so applying
        again returns them instead of changing the sites twice.

    Raises
    ------
    ConfigError
        An unknown measure or parameter, a bad value, an unknown site, or a change that
        leaves a site invalid; the message names ``measures.<index>``.
    """
    if "changes" in scenario.extra:
        if measures is not None:
            raise ConfigError("measures: the scenario's physical measures are applied already; "
                              "pass explicit measures to a scenario loaded without them (ems.model.loader)")
        return scenario, list(scenario.extra["changes"])
    ms = check_measures(scenario.extra.get("measures") or [] if measures is None else measures)
    if conversions is None and any(not MEASURES[str(m["measure"])].sized_from_kpis for m in ms):
        conversions = load_costs()["conversions"]
    sites = {s.id: s.model_copy(deep=True) for s in scenario.sites}
    changes: list[Change] = []
    for i, m in enumerate(ms):
        name = str(m["measure"])
        if MEASURES[name].sized_from_kpis:
            continue
        for sid in sites_of(i, m, sites):
            change = PHYSICAL[name](i, m, sites[sid], scenario, conversions or {})
            change.index = i
            changes.append(change)
            sites[sid] = revalidate(sites[sid], i, name)
    out = replace(scenario, sites=list(sites.values()), extra={**scenario.extra, "measures": ms, "changes": changes})
    return out, changes
