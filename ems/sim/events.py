"""Discrete events as SimPy processes.

Each process only decides *when* something happens and asks the site to change
state (through :class:`EventSink`) or writes a ledger entry; physics stays in the
pure modules. Time in the SimPy environment counts simulation steps (integers),
so every event falls on a step boundary; ledger timestamps are those boundaries
in UTC.

Processes
---------
* :func:`failures`: an asset fails after an exponential time with mean
  ``mtbf_h`` and is repaired after an exponential time with mean ``mttr_h``
  (at least one step each), repeatedly.
* :func:`maintenance`: planned outages from the site file's local windows.
* :func:`demand_response`: events arrive as a Poisson process with
  ``events_per_year``; each starts at a drawn local hour on a day in the allowed
  months and caps grid import at ``cap_fraction * contract_kw`` for ``duration_h``.
* :func:`shutdowns`: ledger entries for holidays and shutdowns.
* :func:`fleet_fuel`: a fleet burns ``annual_kg`` evenly over its days; when the
  tank falls below a fifth of a fill, ``fill_kg`` is delivered (the dispenser
  register jumps).
* :func:`refrigerant_service`: ``services_per_year`` visits, each topping up
  ``charge_kg * annual_leak_rate / services_per_year`` x lognormal(0, 0.3).
* :func:`certificates`, :func:`contract_settlements`, :func:`process_emissions`:
  scheduled ledger entries (purchase dates, month ends).
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Callable, Generator
from typing import Any, Protocol

import numpy as np
import pandas as pd
import simpy

from ems.model.site import (
    CertificatePurchase,
    CertificateSale,
    Contract,
    DemandResponse,
    Fleet,
    Maintenance,
    ProcessEmission,
    Refrigerant,
    Reliability,
    Shutdown,
)
from ems.readings import EventKind
from ems.sim.clock import TimeGrid

__all__ = [
    "EventSink",
    "certificate_sales",
    "certificates",
    "contract_settlements",
    "demand_response",
    "failures",
    "fleet_fuel",
    "maintenance",
    "month_spans",
    "process_emissions",
    "refrigerant_service",
    "shutdowns",
]

Proc = Generator[simpy.Event, Any, None]


class EventSink(Protocol):
    """What event processes may do to a site."""

    grid: TimeGrid

    def log(
        self, k: int, kind: str, subject: str, value: float, unit: str, detail: Any = None
    ) -> None:
        """Write a ledger entry at step boundary ``k``."""

    def request(self, change: Callable[[int], None]) -> None:
        """Apply ``change(k)`` once dispatch has caught up with the current time."""


def _hours_to_steps(hours: float, grid: TimeGrid) -> int:
    return max(int(np.ceil(hours * 3600.0 / grid.resolution_s)), 1)


def _local_time(when: dt.datetime, tz: str) -> pd.Timestamp:
    """A site-file time: naive means site-local; aware is converted."""
    t = pd.Timestamp(when)
    if t.tzinfo is not None:
        return t.tz_convert(tz)
    return t.tz_localize(tz, nonexistent="shift_forward", ambiguous=False)


def _local_step(grid: TimeGrid, day: dt.date, hour: float) -> int:
    t = pd.Timestamp(day).tz_localize(grid.tz, nonexistent="shift_forward", ambiguous=False)
    return grid.step_of(t + pd.Timedelta(hours=hour))


def failures(
    env: simpy.Environment,
    sink: EventSink,
    rng: np.random.Generator,
    asset: str,
    rel: Reliability,
    set_down: Callable[[bool], None],
) -> Proc:
    """Random outages of ``asset`` (exponential MTBF / MTTR)."""
    if rel.mtbf_h is None:
        return
    n = sink.grid.n
    while True:
        up = _hours_to_steps(float(rng.exponential(rel.mtbf_h)), sink.grid)
        down = _hours_to_steps(float(rng.exponential(rel.mttr_h)), sink.grid)
        if env.now + up >= n:
            return
        yield env.timeout(up)

        def start(k: int) -> None:
            set_down(True)
            sink.log(k, EventKind.OUTAGE_START, asset, float("nan"), "", {"cause": "failure"})

        sink.request(start)
        yield env.timeout(min(down, n - int(env.now)))

        def end(k: int) -> None:
            set_down(False)
            sink.log(k, EventKind.OUTAGE_END, asset, float("nan"), "", {"cause": "failure"})

        sink.request(end)
        if env.now >= n:
            return


def maintenance(
    env: simpy.Environment,
    sink: EventSink,
    asset: str,
    windows: list[Maintenance],
    set_down: Callable[[bool], None],
) -> Proc:
    """Planned outages of ``asset`` in local windows."""
    g = sink.grid
    spans = []
    for w in windows:
        a = g.step_of(_local_time(w.start, g.tz))
        b = g.step_of(_local_time(w.end, g.tz))
        if b > a and a < g.n:
            spans.append((a, min(b, g.n)))
    for a, b in sorted(spans):
        if a < env.now:
            continue
        yield env.timeout(a - int(env.now))
        sink.request(_toggle(sink, asset, set_down, True, EventKind.MAINTENANCE_START))
        yield env.timeout(b - int(env.now))
        sink.request(_toggle(sink, asset, set_down, False, EventKind.MAINTENANCE_END))


def _toggle(
    sink: EventSink, asset: str, set_down: Callable[[bool], None], down: bool, kind: str
) -> Callable[[int], None]:
    def change(k: int) -> None:
        set_down(down)
        sink.log(k, kind, asset, float("nan"), "")

    return change


def demand_response(
    env: simpy.Environment,
    sink: EventSink,
    rng: np.random.Generator,
    dr: DemandResponse,
    contract_kw: float,
    set_cap: Callable[[float | None, int], None],
) -> Proc:
    """Demand-response events capping grid import (Poisson arrivals)."""
    if dr.events_per_year <= 0:
        return
    g = sink.grid
    mean_h = 8760.0 / dr.events_per_year
    cap = dr.cap_fraction * contract_kw
    t_h = 0.0
    while True:
        t_h += float(rng.exponential(mean_h))
        hour = int(rng.choice(dr.start_hours)) if dr.start_hours else 14
        day = (g.t0.tz_convert(g.tz) + pd.Timedelta(hours=t_h)).date()
        for _ in range(366):  # move to the next day in an allowed month
            if day.month in dr.months:
                break
            day += dt.timedelta(days=1)
        a = _local_step(g, day, hour)
        b = min(a + _hours_to_steps(dr.duration_h, g), g.n)
        if a >= g.n:
            return
        t_h = max(t_h, (b - 0) * g.dt_h)  # no overlapping events
        if a < env.now:
            continue
        yield env.timeout(a - int(env.now))
        sink.request(lambda k: set_cap(cap, k))
        yield env.timeout(b - int(env.now))
        sink.request(lambda k: set_cap(None, k))


def shutdowns(
    env: simpy.Environment, sink: EventSink, holidays: list[dt.date], spans: list[Shutdown]
) -> Proc:
    """Ledger entries for holiday and planned production shutdowns."""
    g = sink.grid
    items = [(h, h, "holiday") for h in holidays] + [(s.start, s.end, s.reason) for s in spans]
    rows = []
    for a_day, b_day, reason in items:
        a = _local_step(g, a_day, 0.0)
        b = _local_step(g, b_day + dt.timedelta(days=1), 0.0)
        if b <= 0 or a >= g.n:
            continue
        rows.append((a, 0, reason))
        rows.append((b, 1, reason))
    for k, end, reason in sorted(rows):
        yield from _emit_at(env, k)
        kind = EventKind.SHUTDOWN_END if end else EventKind.SHUTDOWN_START
        sink.log(min(k, g.n), kind, "site", float("nan"), "", {"reason": reason})


def fleet_fuel(
    env: simpy.Environment,
    sink: EventSink,
    rng: np.random.Generator,
    fleet: Fleet,
    consumption_days: list[dt.date],
    days_per_year: float,
    deliver: Callable[[int, float], None],
) -> Proc:
    """Fuel use of a fleet and its deliveries (register jumps of ``fill_kg``)."""
    g = sink.grid
    per_day = fleet.annual_kg / max(days_per_year, 1.0)
    level = float(rng.uniform(0.25, 1.0)) * fleet.fill_kg
    for day in consumption_days:
        level -= per_day * float(rng.uniform(0.8, 1.2))
        if level < 0.2 * fleet.fill_kg:
            k = _local_step(g, day, 9.0)
            if k >= g.n:
                return
            yield from _emit_at(env, k)
            level += fleet.fill_kg
            deliver(k, fleet.fill_kg)
            sink.log(
                k, EventKind.FUEL_DELIVERY, fleet.id, fleet.fill_kg, "kg", {"fuel": fleet.fuel}
            )


def refrigerant_service(
    env: simpy.Environment, sink: EventSink, rng: np.random.Generator, ref: Refrigerant
) -> Proc:
    """Service visits topping up leaked refrigerant."""
    g = sink.grid
    every_h = 8760.0 / ref.services_per_year
    mean_kg = ref.charge_kg * ref.annual_leak_rate / ref.services_per_year
    t_h = float(rng.uniform(0.0, every_h))
    while True:
        day = (g.t0.tz_convert(g.tz) + pd.Timedelta(hours=t_h)).date()
        k = _local_step(g, day, 10.0)
        if k >= g.n:
            return
        yield from _emit_at(env, k)
        kg = mean_kg * float(rng.lognormal(-0.045, 0.3))
        sink.log(
            k,
            EventKind.REFRIGERANT_TOPUP,
            ref.gas,
            round(kg, 3),
            "kg",
            {"charge_kg": ref.charge_kg},
        )
        t_h += every_h * float(rng.uniform(0.85, 1.15))


def month_spans(start: dt.date, end: dt.date) -> list[tuple[dt.date, dt.date]]:
    """Calendar months overlapping local ``[start, end)``, as inclusive ``(first, last)`` dates."""
    out = []
    y, m = start.year, start.month
    while dt.date(y, m, 1) < end:
        first = max(dt.date(y, m, 1), start)
        last = min(dt.date(y, m, calendar.monthrange(y, m)[1]), end - dt.timedelta(days=1))
        out.append((first, last))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _emit_at(env: simpy.Environment, k: int) -> Generator[simpy.Event, Any, int]:
    """Wait until step ``k`` (at once if it is now or past); give back ``k``."""
    if k > env.now:
        yield env.timeout(k - int(env.now))
    return k


def _days(g: TimeGrid, schedule: str, once: dt.date | None) -> list[dt.date]:
    if schedule == "once":
        return [once or (g.end - dt.timedelta(days=1))]
    return [
        last
        for first, last in month_spans(g.start, g.end)
        if schedule == "monthly" or last.month in (3, 6, 9, 12)
        if last == dt.date(last.year, last.month, calendar.monthrange(last.year, last.month)[1])
    ]


def certificates(env: simpy.Environment, sink: EventSink, purchase: CertificatePurchase, site_id: str = "") -> Proc:
    """Certificate retirements on the purchase's schedule; each retires the next serials (1 MWh each)."""
    g = sink.grid
    prefix = purchase.serial_prefix or f"{purchase.scheme}-{purchase.vintage}-{site_id}-{purchase.id}"
    first = purchase.serial_first
    n = max(round(purchase.mwh), 1)
    for day in sorted(_days(g, purchase.schedule, purchase.date)):
        if not g.start <= day < g.end:
            continue
        k = yield from _emit_at(env, _local_step(g, day, 12.0))
        detail = {
            "id": purchase.id,
            "scheme": purchase.scheme,
            "vintage": purchase.vintage,
            "technology": purchase.technology,
            "period_year": purchase.period_year or day.year,
            "action": "retire",
            "serials": {"prefix": prefix, "first": first, "last": first + n - 1},
            "plant": purchase.plant,
            "plant_commissioned": purchase.plant_commissioned.isoformat() if purchase.plant_commissioned else None,
            "market_boundary": purchase.market_boundary,
        }
        first += n
        sink.log(k, EventKind.CERTIFICATE, purchase.scheme, purchase.mwh, "MWh", detail)


def certificate_sales(env: simpy.Environment, sink: EventSink, sale: CertificateSale, site_id: str) -> Proc:
    """A sale of certificates registered for the site's own PV (the plant is ``<site>/<pv id>``)."""
    g = sink.grid
    day = sale.date or (g.end - dt.timedelta(days=1))
    if not g.start <= day < g.end:
        return
    k = yield from _emit_at(env, _local_step(g, day, 12.0))
    n = max(round(sale.mwh), 1)
    detail = {
        "id": sale.id, "action": "sell", "vintage": sale.vintage, "technology": "solar",
        "plant": f"{site_id}/{sale.pv}",
        "serials": {"prefix": sale.serial_prefix or f"{sale.scheme}-{sale.vintage}-{site_id}-{sale.id}",
                    "first": sale.serial_first, "last": sale.serial_first + n - 1},
    }
    sink.log(k, EventKind.CERTIFICATE, sale.scheme, sale.mwh, "MWh", detail)


def contract_settlements(env: simpy.Environment, sink: EventSink, contract: Contract) -> Proc:
    """Monthly settlement of a hydro or green-power contract (energy pro rata of days)."""
    g = sink.grid
    for first, last in month_spans(g.start, g.end):
        a = max(first, contract.start or first)
        b = min(last, contract.end or last)
        if b < a:
            continue
        ndays = (b - a).days + 1
        year_days = 366 if calendar.isleap(a.year) else 365
        mwh = contract.annual_mwh * ndays / year_days
        k = yield from _emit_at(env, _local_step(g, b, 23.0))
        detail = {"id": contract.id, "period_start": a.isoformat(), "period_end": b.isoformat(),
                  "plant": contract.plant, "market_boundary": contract.market_boundary,
                  "plant_commissioned": contract.plant_commissioned.isoformat() if contract.plant_commissioned else None,
                  **({"profile": contract.profile} if contract.profile else {})}
        sink.log(min(k, g.n), EventKind.CONTRACT_DELIVERY, contract.kind, mwh, "MWh", detail)


def process_emissions(
    env: simpy.Environment,
    sink: EventSink,
    emission: ProcessEmission,
    running_h_by_month: dict[tuple[int, int], float],
    running_h_per_year: float,
) -> Proc:
    """Monthly process emissions, in proportion to production hours."""
    g = sink.grid
    for first, last in month_spans(g.start, g.end):
        h = running_h_by_month.get((first.year, first.month), 0.0)
        if h <= 0 or running_h_per_year <= 0:
            continue
        k = yield from _emit_at(env, _local_step(g, last, 23.0))
        detail: dict[str, Any] = {"period_start": first.isoformat(), "period_end": last.isoformat()}
        if emission.gas is not None and emission.annual_kg is not None:
            detail |= {"gas": emission.gas, "kind": "process", "activity": emission.source}
            value, unit = emission.annual_kg * h / running_h_per_year, "kg"
        else:
            value, unit = float(emission.annual_kgco2e or 0.0) * h / running_h_per_year, "kgCO2e"
        sink.log(min(k, g.n), EventKind.PROCESS_EMISSION, emission.source, value, unit, detail)
