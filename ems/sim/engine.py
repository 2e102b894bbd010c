"""Run a scenario: every site independently, readings built lazily.

:func:`simulate` returns a :class:`SimulationResult`, which **is** a
:class:`ems.readings.ReadingSet`: downstream code uses its ``readings``,
``events``, ``meters`` and ``sites`` like any other. The tidy ``readings`` frame
is built on first access (one row per meter, quantity and step adds up: ten sites
for a year at one minute would be ~150 M rows); :meth:`SimulationResult.iter_site_readings`
yields one site's :class:`ReadingSet` at a time for writing without holding all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ems.errors import SimulationError
from ems.model.scenario import ResolvedScenario
from ems.readings import MeterInfo, ReadingSet, SiteInfo, events_frame
from ems.sim.meters import meter_infos, site_info, tidy_frame, wide_frame
from ems.sim.pv import in_service
from ems.sim.site import SiteFlows, SiteSimulation

__all__ = ["SimulationResult", "estimate_rows", "iter_simulate", "simulate", "simulate_site"]


class SimulationResult(ReadingSet):
    """A :class:`ReadingSet` from the simulator, with the internal truth beside it.

    Attributes
    ----------
    flows : dict of str to SiteFlows
        Per-site internal flows (tests and the summary only; downstream code
        must use the readings).
    scenario : ResolvedScenario
    """

    def __init__(self, scenario: ResolvedScenario, flows: dict[str, SiteFlows]) -> None:
        self.scenario = scenario
        self.flows = flows
        self._readings: pd.DataFrame | None = None
        rows = [r for f in flows.values() for r in f.ledger]
        self.events = events_frame(rows)
        self.meters: list[MeterInfo] = [m for f in flows.values() for m in meter_infos(f)]
        self.sites: list[SiteInfo] = [site_info(f.site) for f in flows.values()]

    @property  # type: ignore[override]
    def readings(self) -> pd.DataFrame:
        """The tidy readings frame of all sites (built on first access)."""
        if self._readings is None:
            self._readings = tidy_frame(list(self.flows.values()))
        return self._readings

    @readings.setter
    def readings(self, value: pd.DataFrame) -> None:
        self._readings = value

    def __repr__(self) -> str:
        n = sum(f.grid.n for f in self.flows.values())
        return f"SimulationResult({self.scenario.name!r}, sites={list(self.flows)}, steps={n})"

    def wide(self, site: str) -> pd.DataFrame:
        """One site's readings, one column per ``meter.quantity`` (built from its arrays)."""
        if site not in self.flows:
            raise SimulationError(f"unknown site {site!r}; simulated: {list(self.flows)}")
        return wide_frame(self.flows[site])

    def site_reading_set(self, site: str) -> ReadingSet:
        """One site's readings, events and metadata as a plain :class:`ReadingSet`."""
        if site not in self.flows:
            raise SimulationError(f"unknown site {site!r}; simulated: {list(self.flows)}")
        f = self.flows[site]
        ev = self.events[self.events["site"] == site]
        return ReadingSet(
            readings=tidy_frame([f]),
            events=ev,
            meters=meter_infos(f),
            sites=[site_info(f.site)],
        )

    def iter_site_readings(self) -> Iterator[tuple[str, ReadingSet]]:
        """Yield ``(site id, ReadingSet)`` one site at a time."""
        for sid in self.flows:
            yield sid, self.site_reading_set(sid)

    def n_readings(self) -> int:
        """Number of readings (one meter's values at one timestamp, ``docs/glossary.md``)."""
        return sum(self.flows[m.site].grid.n for m in self.meters)

    def n_values(self) -> int:
        """Number of values: the rows the tidy frame has (or would have), one per quantity of a reading."""
        return sum(len(m.quantities) * self.flows[m.site].grid.n for m in self.meters)

    def to_parquet_per_site(self, folder: str | Path) -> list[Path]:
        """Write ``folder/<site>/`` with :meth:`ReadingSet.to_parquet` per site."""
        return [rs.to_parquet(Path(folder) / sid) for sid, rs in self.iter_site_readings()]

    def summary(self) -> pd.DataFrame:
        """Per-site totals over the period.

        Columns: ``load_kwh``, ``grid_import_kwh``, ``grid_export_kwh``, ``pv_kwh``,
        ``pv_curtailed_kwh``, ``pv_kwp`` (in service, averaged over the period),
        ``pv_specific_yield_kwh_per_kwp`` (AC, curtailed included),
        ``self_consumption`` [-], ``peak_import_kw``, ``battery_cycles`` (equivalent
        full cycles: discharge / nameplate energy), ``chp_kwh``, ``purchased_heat_gj``,
        ``boiler_heat_gj``, ``gas_m3``, ``diesel_kg``, ``gasoline_kg``, ``output_rmb``,
        ``shed_kwh``.
        """
        rows = []
        for sid, f in self.flows.items():
            a = f.arrays
            h = f.grid.dt_h
            s = f.site
            pv = sum((a[f"pv.{p.id}"].sum() for p in s.pv), 0.0) * h
            curt = sum((f.flow(f"pv_curtailed.{p.id}").sum() for p in s.pv), 0.0) * h
            local_days = f.grid.mid_local.tz_localize(None)
            # kWp in service, averaged over the period (arrays commissioned during it count pro rata)
            kwp = sum((p.kwp * float(in_service(p, local_days).mean()) for p in s.pv), 0.0)
            load = sum((a[k].sum() for k in a if k.startswith("load.")), 0.0) * h
            dis = sum((a[f"discharge.{b.id}"].sum() for b in s.batteries), 0.0) * h
            e_bat = sum((b.energy_kwh for b in s.batteries), 0.0)
            export = float(a["grid_export"].sum()) * h
            gj = h * 3.6 / 1000.0
            fuels = {"diesel": 0.0, "gasoline": 0.0}
            for fl in s.fleets:
                fuels[fl.fuel] += float(f.flow(f"fuel_kg.{fl.id}").sum())
            rows.append(
                {
                    "site": sid,
                    "load_kwh": load,
                    "grid_import_kwh": float(a["grid_import"].sum()) * h,
                    "grid_export_kwh": export,
                    "pv_kwh": pv,
                    "pv_curtailed_kwh": curt,
                    "pv_kwp": kwp,
                    "pv_specific_yield_kwh_per_kwp": (pv + curt) / kwp if kwp else np.nan,
                    "self_consumption": (pv - export) / pv if pv > 0 else np.nan,
                    "peak_import_kw": float(a["grid_import"].max()),
                    "battery_cycles": dis / e_bat if e_bat else np.nan,
                    "chp_kwh": float(f.flow("chp").sum()) * h,
                    "purchased_heat_gj": float(a.get("purchased_heat", np.zeros(1)).sum()) * gj,
                    "boiler_heat_gj": float(a.get("boiler_heat", np.zeros(1)).sum()) * gj,
                    "gas_m3": float(a.get("gas_m3h", np.zeros(1)).sum()) * h,
                    "diesel_kg": fuels["diesel"],
                    "gasoline_kg": fuels["gasoline"],
                    "output_rmb": float(a["output_rmb_h"].sum()) * h,
                    "shed_kwh": float(f.flow("shed").sum()) * h,
                }
            )
        return pd.DataFrame(rows).set_index("site")


def simulate(
    scenario: ResolvedScenario,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    base_dir: str | None = None,
) -> SimulationResult:
    """Simulate every site of ``scenario``.

    Parameters
    ----------
    scenario : ResolvedScenario
    progress : callable, optional
        ``progress(site_id, steps_done, steps_total)``, called as dispatch advances.
    base_dir : str, optional
        Folder for relative weather-file paths (default: the scenario file's folder).

    Returns
    -------
    SimulationResult

    Raises
    ------
    SimulationError
        If the scenario has no sites, duplicate site ids or an empty period.
    """
    base_dir = _check(scenario, base_dir)
    flows: dict[str, SiteFlows] = {}
    for site in scenario.sites:
        flows[site.id] = SiteSimulation(site, scenario, progress=progress, base_dir=base_dir).run()
    return SimulationResult(scenario, flows)


def iter_simulate(
    scenario: ResolvedScenario,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    base_dir: str | None = None,
) -> Iterator[SimulationResult]:
    """Simulate site by site, yielding a one-site :class:`SimulationResult` each.

    Sites are independent (each has its own random stream), so the results equal
    those of :func:`simulate`; holding one site at a time bounds memory for long
    runs at fine resolution (``ems run`` writes each site as it comes).
    """
    base_dir = _check(scenario, base_dir)
    for i in range(len(scenario.sites)):
        yield simulate_site(scenario, i, progress=progress, base_dir=base_dir)


def simulate_site(
    scenario: ResolvedScenario,
    index: int,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    base_dir: str | None = None,
) -> SimulationResult:
    """Simulate site number ``index`` of ``scenario`` alone (a one-site :class:`SimulationResult`).

    Its readings equal that site's in :func:`simulate` of the whole scenario (each
    site has its own random streams). ``base_dir`` as in :func:`simulate`.
    """
    base_dir = _check(scenario, base_dir)
    site = scenario.sites[index]
    flows = SiteSimulation(site, scenario, progress=progress, base_dir=base_dir).run()
    return SimulationResult(scenario, {site.id: flows})


def _check(scenario: ResolvedScenario, base_dir: str | None) -> str | None:
    if not scenario.sites:
        raise SimulationError(f"scenario {scenario.name!r}: expected at least one site, found none")
    ids = [s.id for s in scenario.sites]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SimulationError(
            f"scenario {scenario.name!r}: site ids must be unique; repeated: {dup}"
        )
    if base_dir is None and scenario.source:
        base_dir = str(Path(scenario.source).parent)
    return base_dir


def estimate_rows(scenario: ResolvedScenario) -> int:
    """Rough number of tidy reading rows a scenario makes (about 40 series per site)."""
    days = (scenario.end - scenario.start).days
    return int(days * 86400 / scenario.resolution_s * 40 * len(scenario.sites))
