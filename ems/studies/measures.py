"""Measures in studies: their costs, and the measures sized from KPIs.

The catalogue and the physical measures live in :mod:`ems.model.measures`: loading a
scenario applies them as pure changes of the site models. Here they get their costs
(:class:`AppliedMeasure`: size, capital and operating cost), and the measures that size
themselves from the site's figures (``target_share`` of certificates or green power,
``zero_carbon``) are sized: :func:`size_from_kpis` needs the KPIs of the scenario with the
physical measures applied, so it simulates it once. That is a study step, never part of
loading (``ems run`` and ``ems.open_readings`` call :func:`size_measures` explicitly).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ems.model.measures import (
    COMMON_PARAMETERS,
    MEASURE_WORDS,
    MEASURES,
    Change,
    MeasureSpec,
    apply_physical,
    fail,
    load_costs,
    measure_table,
    next_id,
    number,
    revalidate,
    sites_of,
)
from ems.model.scenario import ResolvedScenario
from ems.model.site import DELIVERY_PROFILE, Site
from ems.studies.economics import annualised_cost

__all__ = [
    "COMMON_PARAMETERS",
    "MEASURES",
    "MEASURE_WORDS",
    "AppliedMeasure",
    "MeasureSpec",
    "apply_measures",
    "load_costs",
    "measure_table",
    "size_from_kpis",
    "size_measures",
]

log = logging.getLogger(__name__)

SiteTotals = Callable[[ResolvedScenario], dict[str, dict[str, float]]]
"""``scenario -> {site id: {electricity_consumed_kwh, green_kwh, ...}}`` over its period."""


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


def _priced(i: int, m: Mapping[str, Any], costs: Mapping[str, Any], change: Change, key: str | None = None,
            offsets: bool = False) -> AppliedMeasure:
    """A change with its costs from the cost data (``measures.<key>``) and the measure's overrides."""
    key = key or change.measure
    c = dict(costs["measures"].get(key) or {})
    if not c:
        raise fail(i, f"{key}: no cost data in the cost file (expected measures.{key})")
    capex = change.quantity * float(m.get("capex_per_unit", c.get("capex_per_unit", 0.0)))
    opex = (capex * float(m.get("opex_share", c.get("opex_share", 0.0)))
            + change.quantity * float(m.get("opex_per_unit", c.get("opex_per_unit", 0.0))))
    return AppliedMeasure(
        change.measure, change.site, change.params, change.quantity, str(c.get("unit", "")), capex, opex,
        float(m.get("lifetime_years", c.get("lifetime_years", 1.0))),
        float(m.get("discount_rate", costs["discount_rate"])), offsets=offsets, note=change.note,
    )


# --------------------------------------------------------------------------- procurement sized from KPIs


def _buy(s: Site, sc: ResolvedScenario, kind: str, mwh: float, tag: str, profile: str | None = None) -> str:
    """Add a certificate purchase (CN) or a green-power contract for ``mwh`` over the period
    (delivered by ``profile`` for hourly matching)."""
    from ems.model.site import CertificatePurchase, Contract

    used = [c.id for c in s.procurement.certificates] + [c.id for c in s.procurement.contracts]
    if kind == "certificates" and s.location.country == "CN":
        s.procurement.certificates.append(CertificatePurchase(
            id=next_id(f"{tag}-gec", used), scheme="GEC", mwh=mwh, vintage=sc.start.year, schedule="once",
            date=sc.end - dt.timedelta(days=1), period_year=sc.start.year,
            plant="new renewable plant (bought by the measure)", plant_commissioned=dt.date(sc.start.year - 1, 1, 1)))
        return "certificates"
    s.procurement.contracts.append(Contract(
        id=next_id(f"{tag}-green", used), kind="green_power",
        annual_mwh=mwh * 365.0 / max((sc.end - sc.start).days, 1), start=sc.start, end=sc.end - dt.timedelta(days=1),
        profile=profile))
    return "green_power"


_PROFILE = re.compile(DELIVERY_PROFILE)


def _profile(i: int, m: Mapping[str, Any]) -> str | None:
    """The delivery profile a green-power measure names, checked (None: baseload)."""
    p = m.get("profile")
    if p is None:
        return None
    if not isinstance(p, str) or not _PROFILE.match(p):
        raise fail(i, f"profile: expected baseload, solar, as_consumed or <grid region>:<technology> "
                      f"(e.g. CN-North:wind); found {p!r}")
    return p


def _volume(i: int, m: Mapping[str, Any], totals: Mapping[str, float] | None) -> tuple[float, str]:
    """Volume [MWh] of a procurement measure: fixed, or enough for its target share."""
    name = str(m["measure"])
    if name != "zero_carbon" and "mwh" in m:
        return number(i, m, "mwh", lo=0.0), ""
    if name != "zero_carbon" and "target_share" not in m:
        raise fail(i, f"{name}: expected 'mwh' or 'target_share', found neither")
    share = 1.0 if name == "zero_carbon" else number(i, m, "target_share", hi=1.0)
    assert totals is not None
    need = share * totals["electricity_consumed_kwh"] - totals["green_kwh"]
    mwh = max(need, 0.0) / 1000.0
    return mwh, f"sized to {share:.0%} green share: {mwh:,.1f} MWh"


def _sized(i: int, m: Mapping[str, Any], s: Site, sc: ResolvedScenario, costs: Mapping[str, Any],
           totals: Mapping[str, float] | None) -> AppliedMeasure:
    name = str(m["measure"])
    mwh, note = _volume(i, m, totals)
    kind = "green_power" if name == "green_power" else "certificates"
    got = _buy(s, sc, kind, mwh, "m" + str(i), _profile(i, m)) if mwh > 0 else kind
    if got != kind:
        note = (note + "; " if note else "") + f"no GEC for country {s.location.country}: bought as green power"
    params = {k: v for k, v in m.items() if k not in ("measure", "site")}
    key = "green_power" if got == "green_power" else "buy_certificates"
    a = _priced(i, m, costs, Change(name, s.id, params, mwh, note), key=key, offsets=name == "zero_carbon")
    a.unit = "MWh"
    return a


def size_from_kpis(
    scenario: ResolvedScenario,
    *,
    costs: Mapping[str, Any] | None = None,
    site_totals: SiteTotals | None = None,
) -> tuple[ResolvedScenario, list[AppliedMeasure]]:
    """Size the measures of ``scenario.extra["measures"]`` that need KPIs, and apply them.

    ``scenario`` has its physical measures applied (:func:`ems.model.measures.apply_physical`).
    Procurement with a fixed ``mwh`` needs no KPIs; a ``target_share`` or ``zero_carbon``
    takes the site totals of one simulation of ``scenario`` (``site_totals``, default
    :func:`ems.studies.run.site_totals`: simulate and account).
    """
    costs = costs if costs is not None else load_costs()
    ms = list(scenario.extra.get("measures") or [])
    later = [(i, m) for i, m in enumerate(ms) if MEASURES[str(m["measure"])].sized_from_kpis]
    if not later:
        return scenario, []
    totals: dict[str, dict[str, float]] = {}
    if any("mwh" not in m or m["measure"] == "zero_carbon" for _, m in later):
        if site_totals is None:
            from ems.studies.run import site_totals as default_totals

            site_totals = default_totals
        totals = site_totals(scenario)
    sites = {s.id: s.model_copy(deep=True) for s in scenario.sites}
    applied: list[AppliedMeasure] = []
    for i, m in later:
        for sid in sites_of(i, m, sites):
            applied.append(_sized(i, m, sites[sid], scenario, costs, totals.get(sid)))
            sites[sid] = revalidate(sites[sid], i, str(m["measure"]))
            if sid in totals and applied[-1].quantity > 0:  # later measures see earlier purchases
                totals[sid]["green_kwh"] = totals[sid]["green_kwh"] + applied[-1].quantity * 1000.0
    return replace(scenario, sites=list(sites.values())), applied


def apply_measures(
    scenario: ResolvedScenario,
    measures: Iterable[Mapping[str, Any]] | None = None,
    *,
    costs: Mapping[str, Any] | None = None,
    site_totals: SiteTotals | None = None,
) -> tuple[ResolvedScenario, list[AppliedMeasure]]:
    """Apply measures to a scenario and price them: the physical ones, then those sized from KPIs.

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
        measures sized from KPIs. Default :func:`ems.studies.run.site_totals`.

    Returns
    -------
    (ResolvedScenario, list of AppliedMeasure)

    Raises
    ------
    ConfigError
        An unknown measure, a missing or bad parameter, an unknown site, or a change that
        leaves a site invalid; the message names ``measures.<index>``.
    """
    costs = costs if costs is not None else load_costs()
    physical, changes = apply_physical(scenario, measures, conversions=costs["conversions"])
    ms = list(physical.extra.get("measures") or [])
    priced = [_priced(c.index, ms[c.index], costs, c) for c in changes]
    out, sized = size_from_kpis(physical, costs=costs, site_totals=site_totals)
    return out, priced + sized


def size_measures(scenario: ResolvedScenario) -> ResolvedScenario:
    """The scenario with its measures sized from KPIs applied (simulates once if it has any)."""
    if not any(MEASURES[str(m["measure"])].sized_from_kpis for m in scenario.extra.get("measures") or []):
        return scenario
    log.info("sizing the measures of %s from its KPIs (one simulation)", scenario.name)
    return size_from_kpis(scenario)[0]
