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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ems.model.site import Battery

__all__ = ["STRATEGIES", "BatteryLimits", "dispatch_block", "dispatch_step"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

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


def dispatch_step(
    soc_kwh: float,
    net_kw: float,
    period: int,
    import_limit_kw: float,
    dr_active: bool,
    lim: BatteryLimits,
    dt_h: float,
) -> tuple[float, float, float]:
    """One dispatch step.

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
    p = lim.power_kw
    room = max((lim.soc_max_kwh - soc_kwh) / (lim.eta_c * dt_h), 0.0)
    avail = max((soc_kwh - lim.soc_min_kwh) * lim.eta_d / dt_h, 0.0)
    c = 0.0
    d = 0.0
    s = lim.strategy
    if s == 0:
        if net_kw < 0.0:
            c = min(-net_kw, p, room)
        elif net_kw > 0.0:
            d = min(net_kw, p, avail)
    elif s == 1:
        if period == 1:
            c = min(p, room, max(import_limit_kw - net_kw, 0.0))
        elif period == 2 and net_kw > 0.0:
            d = min(net_kw, p, avail)
        elif net_kw < 0.0:
            c = min(-net_kw, p, room)
    else:
        target = min(lim.threshold_kw, import_limit_kw)
        if net_kw > target:
            d = min(net_kw - target, p, avail)
        else:
            c = min(p, room, target - net_kw)
    if dr_active:
        over = net_kw + c - d - import_limit_kw
        if over > 0.0:
            cut = min(c, over)
            c -= cut
            over -= cut
            if over > 0.0:
                d = min(d + over, p, avail, max(net_kw, 0.0))
    soc_kwh = soc_kwh + (c * lim.eta_c - d / lim.eta_d) * dt_h
    return c, d, soc_kwh


def dispatch_block(
    soc_kwh: float,
    net_kw: FloatArray,
    period: npt.NDArray[np.int8],
    import_limit_kw: FloatArray,
    dr_active: BoolArray,
    lim: BatteryLimits,
    dt_h: float,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Run :func:`dispatch_step` over a block of steps.

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
    nets = net_kw.tolist()
    pers = period.tolist()
    lims = import_limit_kw.tolist()
    drs = dr_active.tolist()
    # the step function inlined for speed (same arithmetic as dispatch_step)
    p = lim.power_kw
    smax = lim.soc_max_kwh
    smin = lim.soc_min_kwh
    ec = lim.eta_c
    ed = lim.eta_d
    s = lim.strategy
    thr = lim.threshold_kw
    for k in range(n):
        net = nets[k]
        il = lims[k]
        room = (smax - soc_kwh) / (ec * dt_h)
        if room < 0.0:
            room = 0.0
        avail = (soc_kwh - smin) * ed / dt_h
        if avail < 0.0:
            avail = 0.0
        c = 0.0
        d = 0.0
        if s == 0:
            if net < 0.0:
                c = min(-net, p, room)
            elif net > 0.0:
                d = min(net, p, avail)
        elif s == 1:
            per = pers[k]
            if per == 1:
                c = min(p, room, max(il - net, 0.0))
            elif per == 2 and net > 0.0:
                d = min(net, p, avail)
            elif net < 0.0:
                c = min(-net, p, room)
        else:
            target = thr if thr < il else il
            if net > target:
                d = min(net - target, p, avail)
            else:
                c = min(p, room, target - net)
        if drs[k]:
            over = net + c - d - il
            if over > 0.0:
                cut = c if c < over else over
                c -= cut
                over -= cut
                if over > 0.0:
                    d = min(d + over, p, avail, max(net, 0.0))
        soc_kwh = soc_kwh + (c * ec - d / ed) * dt_h
        ch[k] = c
        dis[k] = d
        soc[k] = soc_kwh
    return np.array(ch), np.array(dis), np.array(soc)
