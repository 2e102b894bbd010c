"""One site's simulation: vectorised physics ahead, SimPy for what is sequential.

:class:`SiteSimulation` computes everything that does not depend on dispatch
(sun, weather, PV available power, loads, tariff periods) as arrays first. A
SimPy environment then runs the discrete-event processes of :mod:`ems.sim.events`
(outages, maintenance, demand response, deliveries, ...) beside one dispatch
process. The dispatch process advances in **blocks**: it sleeps until the next
state change (or the end), then runs the battery recursion
(:func:`ems.sim.storage.dispatch_block`) over the steps since its last wake with
the state that held during them, and only then applies the change. Finally
:func:`split_flows` closes the energy balance of every step, vectorised.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import simpy

from ems.errors import SimulationError
from ems.model.scenario import ResolvedScenario
from ems.model.site import PvArray, Site, Steam
from ems.readings import tou_periods
from ems.sim import events as ev
from ems.sim import loads as ld
from ems.sim import pv as pvm
from ems.sim import thermal as th
from ems.sim import weather as wx
from ems.sim.clock import TimeGrid, site_seed_sequence
from ems.sim.stochastic import ar1
from ems.sim.storage import BatteryLimits, dispatch_block

__all__ = ["SiteFlows", "SiteSimulation", "split_flows"]

FloatArray = npt.NDArray[np.float64]

_SHED_ORDER = ("production", "hvac", "compressed_air", "electrified", "base")
"""Flexible loads shed under a demand-response cap, first to last."""


def split_flows(
    pv_kw: FloatArray,
    load_kw: FloatArray,
    chp_kw: FloatArray,
    charge_kw: FloatArray,
    discharge_kw: FloatArray,
    export_limit_kw: float,
) -> dict[str, FloatArray]:
    """Close the energy balance of every step.

    Parameters
    ----------
    pv_kw : ndarray [kW]
        PV AC power available (after outages, before curtailment).
    load_kw : ndarray [kW]
        Load served (after any shedding).
    chp_kw : ndarray [kW]
        CHP electrical output (never above the load).
    charge_kw, discharge_kw : ndarray [kW]
        Total battery charge and discharge (AC).
    export_limit_kw : float [kW]

    Returns
    -------
    dict of ndarray [kW]
        ``pv_to_load``, ``pv_to_battery``, ``pv_to_grid``, ``pv_curtailed``,
        ``battery_to_load``, ``battery_to_battery``, ``grid_to_load``,
        ``grid_to_battery``, ``grid_import``, ``grid_export``; with
        ``load = pv_to_load + battery_to_load + grid_to_load + chp``,
        ``pv = pv_to_load + pv_to_battery + pv_to_grid + pv_curtailed`` and
        ``grid_import = grid_to_load + grid_to_battery``.
    """
    r = np.clip(load_kw - chp_kw, 0.0, None)
    pv_to_load = np.minimum(pv_kw, r)
    surplus = pv_kw - pv_to_load
    bat_to_load = np.minimum(discharge_kw, r - pv_to_load)
    bat_to_bat = discharge_kw - bat_to_load
    pv_to_bat = np.minimum(charge_kw - bat_to_bat, surplus).clip(0.0, None)
    grid_to_bat = np.clip(charge_kw - pv_to_bat - bat_to_bat, 0.0, None)
    grid_to_load = r - pv_to_load - bat_to_load
    left = surplus - pv_to_bat
    pv_to_grid = np.minimum(left, export_limit_kw)
    return {
        "pv_to_load": pv_to_load,
        "pv_to_battery": pv_to_bat,
        "pv_to_grid": pv_to_grid,
        "pv_curtailed": left - pv_to_grid,
        "battery_to_load": bat_to_load,
        "battery_to_battery": bat_to_bat,
        "grid_to_load": grid_to_load,
        "grid_to_battery": grid_to_bat,
        "grid_import": grid_to_load + grid_to_bat,
        "grid_export": pv_to_grid,
    }


@dataclass
class SiteFlows:
    """The internal truth of one simulated site: per-step arrays and the ledger.

    Attributes
    ----------
    site : Site
    grid : TimeGrid
    arrays : dict of ndarray
        Per-step values; powers in kW, heat in kW thermal, gas in m3/h,
        ``soc.<id>`` in kWh at the step's end, ``output_rmb_h`` in RMB/h,
        ``fuel_kg.<id>`` in kg delivered at the step's end.
    ledger : list of dict
        Event rows for :func:`ems.readings.events_frame`.
    register_start : dict
        Starting value of every cumulative register, by ``(meter, quantity)``.
    """

    site: Site
    grid: TimeGrid
    arrays: dict[str, FloatArray]
    ledger: list[dict[str, Any]]
    register_start: dict[tuple[str, str], float] = field(default_factory=dict)
    optional: set[str] = field(default_factory=set)

    def flow(self, key: str) -> FloatArray:
        """Array ``key``; arrays that are zero throughout are not stored and come back as zeros."""
        got = self.arrays.get(key)
        if got is None:
            if key not in self.optional:
                raise KeyError(key)
            return np.zeros(self.grid.n)
        return got

    def frame(self) -> pd.DataFrame:
        """All arrays plus the balance split as a frame indexed by ``ts`` (for tests)."""
        a = self.arrays
        pv_ids = [p.id for p in self.site.pv]
        bat_ids = [b.id for b in self.site.batteries]
        n = self.grid.n
        zero = np.zeros(n)
        pv_av = sum((a[f"pv.{i}"] + self.flow(f"pv_curtailed.{i}") for i in pv_ids), zero.copy())
        ch = sum((a[f"charge.{i}"] for i in bat_ids), zero.copy())
        dis = sum((a[f"discharge.{i}"] for i in bat_ids), zero.copy())
        load = sum((a[f"load.{u}"] for u in ld.END_USES if f"load.{u}" in a), zero.copy())
        split = split_flows(pv_av, load, self.flow("chp"), ch, dis, export_limit(self.site))
        cols: dict[str, FloatArray] = {
            "load": load,
            "pv": pv_av,
            "chp": self.flow("chp"),
            "charge": ch,
            "discharge": dis,
            **split,
        }
        cols.update(a)
        for key in sorted(self.optional - set(a)):
            cols[key] = np.zeros(n)
        return pd.DataFrame(cols, index=self.grid.ts)


def export_limit(site: Site) -> float:
    """Largest export [kW]: ``export_limit_kw``, else the contract capacity."""
    g = site.grid
    return float(g.export_limit_kw if g.export_limit_kw is not None else g.contract_kw)


def _poa(arr: PvArray, w: dict[str, FloatArray]) -> FloatArray:
    """Irradiance on the plane of ``arr`` [W/m2] from the weather arrays ``w`` (sun and irradiance)."""
    return pvm.poa_global(
        arr.tilt_deg,
        arr.azimuth_deg,
        w["zenith"],
        w["azimuth"],
        w["dni"],
        w["ghi"],
        w["dhi"],
        w["dni_extra"],
    )


class SiteSimulation:
    """Simulate one site over a scenario's period.

    Parameters
    ----------
    site : Site
    scenario : ResolvedScenario
        Period, resolution and seed.
    progress : callable, optional
        ``progress(site_id, steps_done, steps_total)``.
    base_dir : str, optional
        Folder that relative weather file paths are resolved against.
    """

    def __init__(
        self,
        site: Site,
        scenario: ResolvedScenario,
        progress: Callable[[str, int, int], None] | None = None,
        base_dir: str | None = None,
    ) -> None:
        self.site = site
        self.grid = TimeGrid(scenario.start, scenario.end, site.location.tz, scenario.resolution_s)
        if self.grid.n == 0:
            raise SimulationError(f"site {site.id}: the period has no steps")
        self.progress = progress
        self.base_dir = base_dir
        ss = site_seed_sequence(scenario.seed, site.id)
        (
            self.rng_weather,
            self.rng_loads,
            self.rng_events,
            self.rng_meters,
        ) = (np.random.default_rng(s) for s in ss.spawn(4))
        self.ledger: list[dict[str, Any]] = []
        self._pending: list[Callable[[int], None]] = []
        self._wake: simpy.Event | None = None
        self._pos = 0

    # ------------------------------------------------------------------ physics
    def _weather_path(self, path: str | None) -> str:
        """A weather file's path, relative ones resolved against ``base_dir``."""
        path = path or ""
        if self.base_dir and not path.startswith("/"):
            path = f"{self.base_dir}/{path}"
        return path

    def _weather(self) -> dict[str, FloatArray]:
        """Sun, irradiance [W/m2] and air temperature [degC] of every step (synthetic or a file)."""
        g, s = self.grid, self.site
        zen, azi, dni_extra, g0h = wx.solar_geometry(g.mid_utc, s.location)
        if s.weather.source == "synthetic":
            w = wx.synthetic_weather(
                self.rng_weather, g.mid_local, g.dt_h, s.location, s.weather, zen, dni_extra, g0h
            )
        else:
            w = wx.read_weather_file(
                self._weather_path(s.weather.path), s.weather.source, g.mid_local
            )
            w["dni_extra"] = dni_extra
            w["g0h"] = g0h
            # no sun, no light: keep the file's irradiance consistent with our sun
            night = g0h <= 0
            for c in ("ghi", "dni", "dhi"):
                w[c] = np.where(night, 0.0, w[c])
        w["zenith"] = zen
        w["azimuth"] = azi
        return w

    def _ref_temperature(self, ref_local: pd.DatetimeIndex) -> FloatArray:
        """Noise-free air temperature [degC] of the hourly reference year (``annual_*`` scaling)."""
        wcfg = self.site.weather
        if wcfg.temp_air_c is not None:
            return wx.reference_temperature(wcfg, ref_local)
        path = self._weather_path(wcfg.path)
        return wx.read_weather_file(path, wcfg.source, ref_local)["temp_air"]

    def prepare(self) -> None:
        """Compute everything that does not depend on dispatch."""
        self.w = self._weather()
        self.pv_ac = self._pv_available(self.w)
        for key in ("zenith", "azimuth", "dni", "dhi", "dni_extra", "g0h", "kt_day"):
            self.w.pop(key, None)  # used by the PV only: memory back for the rest of the run
        self._electrical_loads(self.w["temp_air"])
        self.chp_kw = self._chp_potential()
        self._tou_names = self._arbitrage_periods()
        self._reset_dispatch_state()

    def _pv_available(self, w: dict[str, FloatArray]) -> dict[str, FloatArray]:
        """PV AC power available of every array [kW]; sets ``w["poa"]`` [W/m2].

        ``poa`` is the irradiance on the first array's plane, or on the reference plane
        of :class:`~ems.model.site.PvArray` when the site has no PV.
        """
        g = self.grid
        pv_ac: dict[str, FloatArray] = {}
        mid_day = g.start + (g.end - g.start) / 2
        for arr in self.site.pv:
            poa = _poa(arr, w)
            pv_ac[arr.id] = pvm.ac_power(
                arr, poa, w["temp_air"], pvm.degradation_factor(arr, mid_day)
            )
            if arr.commissioned is not None:  # nothing before commissioning
                pv_ac[arr.id] *= pvm.in_service(arr, g.mid_local.tz_localize(None))
            if "poa" not in w:
                w["poa"] = poa
        if "poa" not in w:
            w["poa"] = _poa(PvArray(id="ref", kwp=1.0), w)
        return pv_ac

    def _electrical_loads(self, temp_air: FloatArray) -> None:
        """Loads by end use [kW] with their noise, their total, and the running fractions [-]."""
        g, s = self.grid, self.site
        # the hourly reference year of the annual_* scaling (loads here, heat in _steam_demand)
        self.ref_local = ref_local = ld.reference_year(g.start.year, s.location.tz)
        self.ref_temp = self._ref_temperature(ref_local)
        rho = float(np.exp(-g.dt_h / 0.5))

        def noise(use: str) -> FloatArray:
            sd = 0.03
            if use == "production" and s.loads.production is not None:
                sd = s.loads.production.noise
            out: FloatArray = np.clip(1.0 + sd * ar1(self.rng_loads, g.n, rho), 0.0, None)
            return out

        self.loads = ld.electrical_loads(
            g.mid_local, temp_air, s.loads, noise, ref_local, self.ref_temp
        )
        self.load_total = sum(self.loads.values(), np.zeros(g.n))
        self.running = ld.running_fraction(g.mid_local, s.loads.calendar)
        self.ref_running = ld.running_fraction(ref_local, s.loads.calendar)

    def _chp_potential(self) -> FloatArray:
        """Electric-led CHP output [kW] the loads would take while it may run."""
        chp = self.site.chp
        if chp is None:
            return np.zeros(self.grid.n)
        may_run = self.running if chp.run == "production" else np.ones(self.grid.n)
        kw, _, _ = th.chp_output(may_run, self.load_total, chp)
        return kw

    def _arbitrage_periods(self) -> npt.NDArray[np.object_] | None:
        """Tariff period name of every step, if a battery does ``tou_arbitrage`` (else None).

        Raises
        ------
        SimulationError
            Such a battery without a tariff, or with periods the tariff does not name.
        """
        s = self.site
        tariff = s.grid.tariff
        arbitrage = [b for b in s.batteries if b.dispatch.strategy == "tou_arbitrage"]
        for b in arbitrage:
            if tariff is None:
                raise SimulationError(
                    f"site {s.id}: battery {b.id!r} uses tou_arbitrage, which needs grid.tariff; "
                    "found no tariff"
                )
            unknown = set(b.dispatch.charge_periods + b.dispatch.discharge_periods) - set(
                tariff.prices
            )
            if unknown:
                raise SimulationError(
                    f"site {s.id}: battery {b.id!r} dispatch periods {sorted(unknown)} are not "
                    f"tariff periods; expected some of {sorted(tariff.prices)}"
                )
        if not arbitrage or tariff is None:
            return None
        return tou_periods(self.grid.mid_local, tariff.model_dump(mode="json"))

    def _reset_dispatch_state(self) -> None:
        """Outage counters, the DR cap, states of charge and the per-step dispatch arrays."""
        s, n = self.site, self.grid.n
        self.pv_down = {a.id: 0 for a in s.pv}
        self.bat_down = {b.id: 0 for b in s.batteries}
        self.chp_down = 0
        self.cap: float | None = None
        self.soc = {b.id: b.soc_initial * b.energy_kwh for b in s.batteries}
        self.limits = {b.id: BatteryLimits.of(b) for b in s.batteries}
        self.charge = {b.id: np.zeros(n) for b in s.batteries}
        self.discharge = {b.id: np.zeros(n) for b in s.batteries}
        self.soc_arr = {b.id: np.zeros(n) for b in s.batteries}
        self.cap_arr = np.full(n, np.inf)
        self.fuel = {f.id: np.zeros(n) for f in s.fleets}

    # ------------------------------------------------------------------ state changes
    def log(
        self, k: int, kind: str, subject: str, value: float, unit: str, detail: Any = None
    ) -> None:
        """Write a ledger entry at step boundary ``k``."""
        self.ledger.append(
            {
                "ts": self.grid.boundary(k),
                "site": self.site.id,
                "kind": str(kind),
                "subject": subject,
                "value": value,
                "unit": unit,
                "detail": detail,
            }
        )

    def request(self, change: Callable[[int], None]) -> None:
        """Queue a state change; dispatch catches up to now first, then applies it."""
        self._pending.append(change)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _set_pv(self, aid: str) -> Callable[[bool], None]:
        def f(down: bool) -> None:
            self.pv_down[aid] += 1 if down else -1

        return f

    def _set_bat(self, bid: str) -> Callable[[bool], None]:
        def f(down: bool) -> None:
            self.bat_down[bid] += 1 if down else -1

        return f

    def _set_chp(self, down: bool) -> None:
        self.chp_down += 1 if down else -1

    def _set_cap(self, cap: float | None, k: int) -> None:
        if cap is not None:
            self.cap = cap
            self._dr_start = k
            self.log(k, "dr_start", "grid", cap, "kW")
        else:
            a = getattr(self, "_dr_start", k)
            shed = float(np.sum(self._shed_block(a, k))) * self.grid.dt_h
            self.log(
                k, "dr_end", "grid", float(self.cap or 0.0), "kW", {"shed_kwh": round(shed, 3)}
            )
            self.cap = None

    # ------------------------------------------------------------------ dispatch
    def _shed_block(self, a: int, b: int) -> FloatArray:
        """Load that the DR cap forces off in steps ``[a, b)`` [kW]."""
        net = self.load_total[a:b] - self.chp_kw[a:b] - self._pv_avail(a, b)
        for bid in self.limits:
            net = net + self.charge[bid][a:b] - self.discharge[bid][a:b]
        out: FloatArray = np.clip(net - self.cap_arr[a:b], 0.0, None)
        return out

    def _pv_avail(self, a: int, b: int) -> FloatArray:
        tot = np.zeros(b - a)
        for p in self.pv_ac.values():
            tot += p[a:b]
        return tot

    def _run_block(self, a: int, b: int) -> None:
        """Dispatch steps ``[a, b)`` with the current state."""
        if b <= a:
            return
        for aid, down in self.pv_down.items():
            if down:
                self.pv_ac[aid][a:b] = 0.0
        if self.chp_down:
            self.chp_kw[a:b] = 0.0
        contract = self.site.grid.contract_kw
        if self.cap is not None:
            self.cap_arr[a:b] = self.cap
        if not self.limits:
            return
        net = self.load_total[a:b] - self.chp_kw[a:b] - self._pv_avail(a, b)
        il = np.full(b - a, min(contract, self.cap) if self.cap is not None else contract)
        dr = np.full(b - a, self.cap is not None)
        period = self._periods(a, b)
        for bid, lim in self.limits.items():
            if self.bat_down[bid]:
                self.soc_arr[bid][a:b] = self.soc[bid]
                continue
            c, d, soc = dispatch_block(self.soc[bid], net, period[bid], il, dr, lim, self.grid.dt_h)
            self.charge[bid][a:b] = c
            self.discharge[bid][a:b] = d
            self.soc_arr[bid][a:b] = soc
            self.soc[bid] = float(soc[-1])
            net = net + c - d

    def _periods(self, a: int, b: int) -> dict[str, npt.NDArray[np.int8]]:
        out = {}
        for bat in self.site.batteries:
            p = np.zeros(b - a, dtype=np.int8)
            if self._tou_names is not None and bat.dispatch.strategy == "tou_arbitrage":
                names = self._tou_names[a:b]
                p[np.isin(names, bat.dispatch.charge_periods)] = 1
                p[np.isin(names, bat.dispatch.discharge_periods)] = 2
            out[bat.id] = p
        return out

    def _dispatch(self, env: simpy.Environment) -> ev.Proc:
        n = self.grid.n
        chunk = max(n // 50, 1)  # wake up now and then to report progress
        while self._pos < n:
            self._wake = env.event()
            yield self._wake | env.timeout(min(chunk, n - int(env.now)))
            now = int(env.now)
            self._run_block(self._pos, now)
            self._pos = now
            pending, self._pending = self._pending, []
            for change in pending:
                change(now)
            if self.progress is not None:
                self.progress(self.site.id, now, n)

    # ------------------------------------------------------------------ run
    def run(self) -> SiteFlows:
        """Run the site and return its flows."""
        self.prepare()
        n = self.grid.n
        env = simpy.Environment()
        env.process(self._dispatch(env))
        self._start_outages(env)
        self._start_calendar_events(env)
        self._start_ledger_events(env)
        env.run(until=n + 1)
        if self._pos < n:  # pragma: no cover - the dispatch process runs to n
            self._run_block(self._pos, n)
        for change in self._pending:  # changes requested at the very end (k = n)
            change(n)
        self._pending = []
        flows = self._finish()
        self._release()
        return flows

    def _start_outages(self, env: simpy.Environment) -> None:
        """Failures and maintenance of PV, batteries and CHP, and demand-response caps."""
        s, rng = self.site, self.rng_events
        for arr in s.pv:
            env.process(ev.failures(env, self, rng, arr.id, arr.reliability, self._set_pv(arr.id)))
            env.process(ev.maintenance(env, self, arr.id, arr.maintenance, self._set_pv(arr.id)))
        for bat in s.batteries:
            env.process(ev.failures(env, self, rng, bat.id, bat.reliability, self._set_bat(bat.id)))
            env.process(ev.maintenance(env, self, bat.id, bat.maintenance, self._set_bat(bat.id)))
        if s.chp is not None:
            env.process(ev.failures(env, self, rng, "chp", s.chp.reliability, self._set_chp))
        if s.grid.demand_response is not None:
            env.process(
                ev.demand_response(
                    env, self, rng, s.grid.demand_response, s.grid.contract_kw, self._set_cap
                )
            )

    def _start_calendar_events(self, env: simpy.Environment) -> None:
        """Holidays and shutdowns, and fuel deliveries to the fleets by their use days."""
        g, s = self.grid, self.site
        cal = s.loads.calendar
        env.process(ev.shutdowns(env, self, cal.holidays, cal.shutdowns))
        days = pd.date_range(g.start, g.end - dt.timedelta(days=1), freq="D")
        ref_days = pd.date_range(
            dt.date(g.start.year, 1, 1), dt.date(g.start.year, 12, 31), freq="D"
        )
        for fl in s.fleets:
            if fl.workdays_only:
                use = days[ld.workdays(days, cal)]
                per_year = float(ld.workdays(ref_days, cal).sum())
            else:
                use, per_year = days, float(len(ref_days))
            fuel = self.fuel[fl.id]

            def deliver(k: int, kg: float, fuel: FloatArray = fuel) -> None:
                if k > 0:
                    fuel[k - 1] += kg

            env.process(
                ev.fleet_fuel(
                    env, self, self.rng_events, fl, [d.date() for d in use], per_year, deliver
                )
            )

    def _start_ledger_events(self, env: simpy.Environment) -> None:
        """Events that only write the ledger: refrigerant, certificates, contracts, process emissions."""
        g, s, rng = self.grid, self.site, self.rng_events
        for ref in s.refrigerants:
            env.process(ev.refrigerant_service(env, self, rng, ref))
        for cp in s.procurement.certificates:
            env.process(ev.certificates(env, self, cp, s.id))
        for sale in s.procurement.certificates_sold:
            env.process(ev.certificate_sales(env, self, sale, s.id))
        for ct in s.procurement.contracts:
            env.process(ev.contract_settlements(env, self, ct))
        if s.process_emissions:
            loc = g.mid_local
            key = pd.MultiIndex.from_arrays([loc.year, loc.month])
            by_month = pd.Series(self.running * g.dt_h, index=key).groupby(level=[0, 1]).sum()
            rh = {(int(y), int(m)): float(v) for (y, m), v in by_month.items()}
            per_year = float(self.ref_running.sum())
            for pe in s.process_emissions:
                env.process(ev.process_emissions(env, self, pe, rh, per_year))

    def _release(self) -> None:
        """Drop the working arrays and the SimPy references (no cycles keep them alive)."""
        self._wake = None
        self._pending = []
        for attr in (
            "w",
            "pv_ac",
            "loads",
            "load_total",
            "running",
            "ref_local",
            "ref_temp",
            "ref_running",
            "chp_kw",
            "charge",
            "discharge",
            "soc_arr",
            "cap_arr",
            "fuel",
            "_tou_names",
            "period",
        ):
            self.__dict__.pop(attr, None)

    def _finish(self) -> SiteFlows:
        """The site's flows: electricity balance, heat and gas, output, weather; start registers."""
        s = self.site
        a: dict[str, FloatArray] = {}
        chp = self._electricity(a)
        self._heat_and_gas(a, chp)
        self._output(a)
        for fid, f in self.fuel.items():
            a[f"fuel_kg.{fid}"] = f
        a["ghi"] = self.w["ghi"]
        a["poa"] = self.w["poa"]
        a["temp_air"] = self.w["temp_air"]
        optional = {"shed", "chp", "chp_heat"}
        optional |= {f"pv_curtailed.{p.id}" for p in s.pv} | {f"fuel_kg.{f.id}" for f in s.fleets}
        for key in optional & set(a):
            if not a[key].any():
                del a[key]  # zero throughout: SiteFlows.flow gives zeros
        flows = SiteFlows(site=s, grid=self.grid, arrays=a, ledger=self.ledger, optional=optional)
        from ems.sim.meters import start_registers

        flows.register_start = start_registers(flows, self.rng_meters)
        return flows

    def _served_loads(self, shed: FloatArray) -> dict[str, FloatArray]:
        """Loads by end use [kW] after shedding ``shed`` [kW] in :data:`_SHED_ORDER`."""
        loads = dict(self.loads)
        left = shed.copy()
        for use in _SHED_ORDER:
            if use in loads and left.any():
                cut = np.minimum(loads[use], left)
                loads[use] = loads[use] - cut
                left = left - cut
        return loads

    def _electricity(self, a: dict[str, FloatArray]) -> FloatArray:
        """Put loads, shedding, PV, batteries, grid and CHP [kW] into ``a``; return the CHP [kW].

        PV curtailed (export limit) is taken from every array in proportion to its power.
        """
        n = self.grid.n
        shed = self._shed_block(0, n)
        loads = self._served_loads(shed)
        for use in ld.END_USES:
            if use in loads:
                a[f"load.{use}"] = loads[use]
        a["shed"] = shed
        load = sum(loads.values(), np.zeros(n))
        chp = np.minimum(self.chp_kw, load)
        pv_av = self._pv_avail(0, n)
        ch = sum(self.charge.values(), np.zeros(n))
        dis = sum(self.discharge.values(), np.zeros(n))
        split = split_flows(pv_av, load, chp, ch, dis, export_limit(self.site))
        frac = np.divide(split["pv_curtailed"], pv_av, out=np.zeros(n), where=pv_av > 0)
        for arr in self.site.pv:
            p = self.pv_ac[arr.id]
            a[f"pv_curtailed.{arr.id}"] = p * frac
            a[f"pv.{arr.id}"] = p - p * frac
        for bid in self.limits:
            a[f"charge.{bid}"] = self.charge[bid]
            a[f"discharge.{bid}"] = self.discharge[bid]
            a[f"soc.{bid}"] = self.soc_arr[bid]
        a["grid_import"] = split["grid_import"]
        a["grid_export"] = split["grid_export"]
        a["chp"] = chp
        return chp

    def _heat_and_gas(self, a: dict[str, FloatArray], chp: FloatArray) -> None:
        """Put heat supply [kW thermal] and gas [m3/h] into ``a``, from the CHP output ``chp`` [kW]."""
        s, n = self.site, self.grid.n
        chp_heat = chp / s.chp.eta_e * s.chp.eta_th if s.chp is not None else np.zeros(n)
        gas_fuel = chp / s.chp.eta_e if s.chp is not None else np.zeros(n)  # [kW]
        if s.steam is not None:
            sup = th.heat_supply(self._steam_demand(s.steam), chp_heat, s.steam)
            a["purchased_heat"] = sup["purchased"]
            if s.steam.boiler is not None:
                a["boiler_heat"] = sup["boiler"]
                gas_fuel = gas_fuel + sup["boiler"] / s.steam.boiler.efficiency
            if s.steam.waste_heat_share > 0:
                a["waste_heat"] = sup["waste_heat"]
            a["chp_heat"] = sup["chp"]
        burns_gas = s.chp is not None or (s.steam is not None and s.steam.boiler is not None)
        if burns_gas or s.other_gas_m3_per_year > 0:
            a["gas_m3h"] = (
                th.gas_m3h(gas_fuel, s.gas_lhv_mj_per_m3) + s.other_gas_m3_per_year / 8760.0
            )

    def _steam_demand(self, steam: Steam) -> FloatArray:
        """Steam demand of every step [kW thermal], scaled to ``annual_gj`` over the reference year."""
        g = self.grid
        demand = th.steam_demand_kw(
            self.running, self.w["temp_air"], np.asarray(g.mid_local.month), steam
        )
        if steam.annual_gj is None:
            return demand
        ref = th.steam_demand_kw(
            self.ref_running, self.ref_temp, np.asarray(self.ref_local.month), steam
        )
        e_gj = float(ref.sum()) * th.MJ_PER_KWH / 1000.0
        return demand * (steam.annual_gj / e_gj) if e_gj > 0 else demand

    def _output(self, a: dict[str, FloatArray]) -> None:
        """Put the production output value [RMB/h] and units made [units/h] into ``a``.

        Both follow the shift calendar; the annual figures are spread over the running hours of
        the reference year, the value grown by ``growth_pct_per_year`` for each later year.
        """
        g, s = self.grid, self.site
        run_h = float(self.ref_running.sum())
        if run_h <= 0:
            run_h = float(self.running.sum() * g.dt_h) or 1.0
        years = np.asarray(g.mid_local.year) - g.start.year
        a["output_rmb_h"] = (
            self.running
            * s.output.annual_rmb
            / run_h
            * (1 + s.output.growth_pct_per_year / 100.0) ** years
        )
        for line in s.products:
            a[f"units_h.{line.id}"] = self.running * line.annual_units / run_h
