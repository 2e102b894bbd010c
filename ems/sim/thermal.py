"""Heat: steam demand, how it is supplied, and the gas it burns.

Units: heat and fuel power in kW, gas flow in standard m3/h, the lower heating
value ``lhv`` of natural gas in MJ/m3 (site field ``gas_lhv_mj_per_m3``, default
38.931 MJ/m3 as in GB/T 2589-2020 Annex A). ``1 kW = 3.6 MJ/h``.

Demand [kW thermal]
    ``process_kw * (idle + (1 - idle) * running)`` plus, in heating months,
    ``heating_kw_per_degc * max(heating_base_c - T, 0)``; scaled to ``annual_gj``
    over a reference year when given.
Supply, in merit order
    1. waste heat recovered from compressors: ``waste_heat_share * demand``;
    2. CHP heat (up to what is left);
    3. the gas boiler: ``boiler.share * demand`` (up to what is left);
    4. purchased steam: the remainder.
Gas
    boiler: ``heat / efficiency * 3.6 / lhv``; CHP: ``P_e / eta_e * 3.6 / lhv``
    with ``heat = P_e / eta_e * eta_th``; other gas use flat over the year.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ems.model.site import Chp, Steam

__all__ = [
    "MJ_PER_KWH",
    "chp_output",
    "gas_m3h",
    "heat_supply",
    "steam_demand_kw",
]

FloatArray = npt.NDArray[np.float64]

MJ_PER_KWH = 3.6
"""Energy unit conversion (exact by definition of the kWh) [MJ/kWh]."""


def steam_demand_kw(
    running: FloatArray, temp_air: FloatArray, month: npt.NDArray[np.int_], steam: Steam
) -> FloatArray:
    """Heat demand [kW thermal] (before ``annual_gj`` scaling).

    Parameters
    ----------
    running : ndarray [-]
        1 while production runs.
    temp_air : ndarray [degC]
    month : ndarray of int
        Local month per step.
    steam : Steam
    """
    proc = steam.process_kw * (
        steam.process_idle_fraction + (1 - steam.process_idle_fraction) * running
    )
    heat = steam.heating_kw_per_degc * np.clip(steam.heating_base_c - temp_air, 0.0, None)
    heat = heat * np.isin(month, steam.heating_months)
    out: FloatArray = np.asarray(proc + heat, dtype=float)
    return out


def gas_m3h(fuel_kw: FloatArray | float, lhv_mj_per_m3: float) -> FloatArray:
    """Gas flow [m3/h] burning ``fuel_kw`` [kW, LHV basis] at ``lhv_mj_per_m3`` [MJ/m3]."""
    out: FloatArray = np.asarray(fuel_kw, dtype=float) * MJ_PER_KWH / lhv_mj_per_m3
    return out


def chp_output(
    running: FloatArray, load_kw: FloatArray, chp: Chp
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Electric-led CHP: output follows the site load up to the rating.

    Parameters
    ----------
    running : ndarray [-]
        1 where the unit may run (its ``run`` rule and availability).
    load_kw : ndarray [kW]
        Site electrical load.
    chp : Chp

    Returns
    -------
    p_e : ndarray [kW]
        Electrical output.
    heat : ndarray [kW]
        Heat output ``p_e / eta_e * eta_th``.
    fuel : ndarray [kW]
        Fuel input, LHV ``p_e / eta_e``.
    """
    p_e = np.minimum(chp.kw_e, load_kw) * running
    fuel = p_e / chp.eta_e
    return p_e, fuel * chp.eta_th, fuel


def heat_supply(
    demand_kw: FloatArray, chp_heat_kw: FloatArray, steam: Steam
) -> dict[str, FloatArray]:
    """Split heat demand over its sources [kW thermal] in merit order.

    Returns
    -------
    dict
        ``waste_heat``, ``chp`` (heat used), ``boiler``, ``purchased``; they sum
        to ``demand_kw``.
    """
    waste = steam.waste_heat_share * demand_kw
    left = demand_kw - waste
    chp_used = np.minimum(chp_heat_kw, left)
    left = left - chp_used
    boiler = np.zeros_like(demand_kw)
    if steam.boiler is not None:
        boiler = np.minimum(steam.boiler.share * demand_kw, left)
        left = left - boiler
    return {
        "waste_heat": waste,
        "chp": chp_used,
        "boiler": boiler,
        "purchased": np.clip(left, 0.0, None),
    }
