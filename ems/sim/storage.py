"""Battery dispatch: a pure step function and the block recursion over arrays.

Conventions (kW, kWh, AC side): ``net = load - pv`` is the site's residual demand
before the battery; the battery charges ``c >= 0`` and discharges ``d >= 0``,
never both in one step, and never discharges more than ``max(net, 0)`` (it does
not export). Its state of charge moves by

    soc[k+1] = soc[k] + (c * eta_c - d / eta_d) * dt        [kWh]

and stays within ``[soc_min, soc_max] * energy_kwh``.

Strategies
----------
``self_consumption``
    Charge from PV surplus (``net < 0``), discharge to cover the deficit.
``tou_arbitrage``
    In charge periods charge at full power from PV and grid (grid import capped
    by ``import_limit``); in discharge periods discharge to cover the deficit;
    otherwise charge from PV surplus only.
``peak_shaving``
    Discharge to hold grid import at ``threshold_kw``; recharge (PV first, then
    grid) while import stays below ``min(threshold_kw, import_limit)``.

In every strategy a demand-response cap comes first: while ``dr_active``, grid
charging is cut and the battery discharges so that import stays at or below
``import_limit`` where its power and energy allow.

Each rule is written once, as a small pure function of plain floats
(:func:`self_consumption`, :func:`tou_arbitrage`, :func:`peak_shaving`,
:func:`demand_response_cap`); :func:`dispatch_step` and the recursion of
:func:`dispatch_block` both call them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ems.model.site import Battery

__all__ = [
    "STRATEGIES",
    "BatteryLimits",
    "demand_response_cap",
    "dispatch_block",
    "dispatch_step",
    "peak_shaving",
    "self_consumption",
    "tou_arbitrage",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Rule = Callable[[float, int, float, float, float, float, float], tuple[float, float]]
"""``rule(net_kw, period, import_limit_kw, threshold_kw, power_kw, room_kw, avail_kw)``
-> ``(charge_kw, discharge_kw)``: what a strategy asks for in one step."""

STRATEGIES: dict[str, int] = {"self_consumption": 0, "tou_arbitrage": 1, "peak_shaving": 2}
"""Strategy names and their codes in the recursion."""


@dataclass(frozen=True)
class BatteryLimits:
    """What dispatch needs to know of a battery.

    Attributes
    ----------
    power_kw : float [kW]
    soc_min_kwh, soc_max_kwh : float [kWh]
    eta_c, eta_d : float [-]
    strategy : int
        Code from :data:`STRATEGIES`.
    threshold_kw : float [kW]
        Peak-shaving import target (``inf`` otherwise).
    """

    power_kw: float
    soc_min_kwh: float
    soc_max_kwh: float
    eta_c: float
    eta_d: float
    strategy: int
    threshold_kw: float

    @classmethod
    def of(cls, b: Battery) -> BatteryLimits:
        """Limits of a site file's battery."""
        return cls(
            power_kw=b.power_kw,
            soc_min_kwh=b.soc_min * b.energy_kwh,
            soc_max_kwh=b.soc_max * b.energy_kwh,
            eta_c=b.eta_charge,
            eta_d=b.eta_discharge,
            strategy=STRATEGIES[b.dispatch.strategy],
            threshold_kw=float(b.dispatch.threshold_kw)
            if b.dispatch.threshold_kw
            else float("inf"),
        )


def self_consumption(
    net_kw: float,
    period: int,
    import_limit_kw: float,
    threshold_kw: float,
    power_kw: float,
    room_kw: float,
    avail_kw: float,
) -> tuple[float, float]:
    """Charge from PV surplus, discharge to cover the deficit.

    Parameters
    ----------
    net_kw : float [kW]
        Load minus available PV (and CHP), before the battery.
    period : int
        Tariff period code (unused here; see :func:`tou_arbitrage`).
    import_limit_kw, threshold_kw : float [kW]
        Unused here (see :func:`tou_arbitrage`, :func:`peak_shaving`).
    power_kw : float [kW]
        Rated power.
    room_kw, avail_kw : float [kW]
        Charge and discharge power that would fill or empty the battery within the
        step (see :func:`dispatch_step`).

    Returns
    -------
    charge_kw, discharge_kw : float [kW]
    """
    if net_kw < 0.0:
        return min(-net_kw, power_kw, room_kw), 0.0
    if net_kw > 0.0:
        return 0.0, min(net_kw, power_kw, avail_kw)
    return 0.0, 0.0


def tou_arbitrage(
    net_kw: float,
    period: int,
    import_limit_kw: float,
    threshold_kw: float,
    power_kw: float,
    room_kw: float,
    avail_kw: float,
) -> tuple[float, float]:
    """Charge at full power in charge periods (1), cover the deficit in discharge periods (2).

    In charge periods grid import stays within ``import_limit_kw`` [kW]; in other periods
    the battery charges from PV surplus only. Parameters as in :func:`self_consumption`.
    """
    if period == 1:
        return min(power_kw, room_kw, max(import_limit_kw - net_kw, 0.0)), 0.0
    if period == 2 and net_kw > 0.0:
        return 0.0, min(net_kw, power_kw, avail_kw)
    if net_kw < 0.0:
        return min(-net_kw, power_kw, room_kw), 0.0
    return 0.0, 0.0


def peak_shaving(
    net_kw: float,
    period: int,
    import_limit_kw: float,
    threshold_kw: float,
    power_kw: float,
    room_kw: float,
    avail_kw: float,
) -> tuple[float, float]:
    """Hold import at ``min(threshold_kw, import_limit_kw)`` [kW]; recharge below it.

    Parameters as in :func:`self_consumption`.
    """
    target = threshold_kw if threshold_kw < import_limit_kw else import_limit_kw
    if net_kw > target:
        return 0.0, min(net_kw - target, power_kw, avail_kw)
    return min(power_kw, room_kw, target - net_kw), 0.0


RULES: tuple[Rule, ...] = (self_consumption, tou_arbitrage, peak_shaving)
"""The strategy rules, indexed by their codes in :data:`STRATEGIES`."""


def demand_response_cap(
    charge_kw: float,
    discharge_kw: float,
    net_kw: float,
    import_limit_kw: float,
    power_kw: float,
    avail_kw: float,
) -> tuple[float, float]:
    """Hold grid import at or below a demand-response cap: cut grid charging, then discharge.

    Parameters
    ----------
    charge_kw, discharge_kw : float [kW]
        What the strategy asked for.
    net_kw : float [kW]
        Load minus available PV (and CHP), before the battery.
    import_limit_kw : float [kW]
        The cap.
    power_kw, avail_kw : float [kW]
        Rated power; discharge power that would empty the battery within the step.

    Returns
    -------
    charge_kw, discharge_kw : float [kW]
        Never a discharge above ``max(net_kw, 0)`` (no export).
    """
    over = net_kw + charge_kw - discharge_kw - import_limit_kw
    if over > 0.0:
        cut = charge_kw if charge_kw < over else over
        charge_kw -= cut
        over -= cut
        if over > 0.0:
            discharge_kw = min(discharge_kw + over, power_kw, avail_kw, max(net_kw, 0.0))
    return charge_kw, discharge_kw


def dispatch_step(
    soc_kwh: float,
    net_kw: float,
    period: int,
    import_limit_kw: float,
    dr_active: bool,
    lim: BatteryLimits,
    dt_h: float,
) -> tuple[float, float, float]:
    """One dispatch step: the strategy's rule, the DR cap over it, the new state of charge.

    Parameters
    ----------
    soc_kwh : float [kWh]
        Stored energy at the start of the step.
    net_kw : float [kW]
        Load minus available PV (and CHP), before the battery.
    period : int
        1 in a tariff charge period, 2 in a discharge period, else 0.
    import_limit_kw : float [kW]
        Largest grid import allowed (contract capacity or a DR cap).
    dr_active : bool
        A demand-response cap is in force.
    lim : BatteryLimits
    dt_h : float [h]

    Returns
    -------
    charge_kw, discharge_kw : float [kW]
    soc_kwh : float [kWh]
        Stored energy at the end of the step.
    """
    room = max((lim.soc_max_kwh - soc_kwh) / (lim.eta_c * dt_h), 0.0)  # fills it in the step
    avail = max((soc_kwh - lim.soc_min_kwh) * lim.eta_d / dt_h, 0.0)  # empties it in the step
    rule = RULES[lim.strategy]
    c, d = rule(net_kw, period, import_limit_kw, lim.threshold_kw, lim.power_kw, room, avail)
    if dr_active:
        c, d = demand_response_cap(c, d, net_kw, import_limit_kw, lim.power_kw, avail)
    return c, d, soc_kwh + (c * lim.eta_c - d / lim.eta_d) * dt_h


def dispatch_block(
    soc_kwh: float,
    net_kw: FloatArray,
    period: npt.NDArray[np.int8],
    import_limit_kw: FloatArray,
    dr_active: BoolArray,
    lim: BatteryLimits,
    dt_h: float,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Run :func:`dispatch_step` over a block of steps (its arithmetic, in one loop).

    Parameters
    ----------
    soc_kwh : float [kWh]
        Stored energy at the start of the block.
    net_kw, period, import_limit_kw, dr_active : ndarray
        Per-step inputs as in :func:`dispatch_step`.
    lim : BatteryLimits
    dt_h : float [h]

    Returns
    -------
    charge_kw, discharge_kw : ndarray [kW]
    soc_kwh : ndarray [kWh]
        Stored energy at the end of each step.
    """
    n = len(net_kw)
    ch = [0.0] * n
    dis = [0.0] * n
    soc = [0.0] * n
    rule = RULES[lim.strategy]
    p, thr = lim.power_kw, lim.threshold_kw
    smax, smin, ec, ed = lim.soc_max_kwh, lim.soc_min_kwh, lim.eta_c, lim.eta_d
    steps = zip(
        net_kw.tolist(), period.tolist(), import_limit_kw.tolist(), dr_active.tolist(), strict=True
    )
    for k, (net, per, il, dr) in enumerate(steps):
        room = (smax - soc_kwh) / (ec * dt_h)  # charge power that fills it within the step
        if room < 0.0:
            room = 0.0
        avail = (soc_kwh - smin) * ed / dt_h  # discharge power that empties it
        if avail < 0.0:
            avail = 0.0
        c, d = rule(net, per, il, thr, p, room, avail)
        if dr:
            c, d = demand_response_cap(c, d, net, il, p, avail)
        soc_kwh = soc_kwh + (c * ec - d / ed) * dt_h
        ch[k] = c
        dis[k] = d
        soc[k] = soc_kwh
    return np.array(ch), np.array(dis), np.array(soc)
