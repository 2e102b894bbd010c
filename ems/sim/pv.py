"""PV arrays: plane-of-array irradiance, cell temperature, DC and AC power.

Chain per array (all pvlib):

1. Plane-of-array irradiance ``poa_global`` [W/m2]:
   :func:`pvlib.irradiance.get_total_irradiance` with the Hay-Davies sky
   diffuse model (needs ``dni_extra``), ground albedo 0.2.
2. Cell temperature [degC]: :func:`pvlib.temperature.faiman` with its default
   coefficients (u0 = 25 W/m2K, u1 = 6.84 W/m2K/(m/s)) and 1 m/s wind.
3. DC power [kW]: :func:`pvlib.pvsystem.pvwatts_dc`
   ``P = kWp * poa/1000 * (1 + gamma_pdc * (T_cell - 25))``, times
   ``(1 - losses_pct/100)`` and the degradation factor
   ``(1 - degradation_pct_per_year/100) ** years`` since commissioning.
4. AC power [kW]: :func:`pvlib.inverter.pvwatts` with ``pdc0 = inverter_kw /
   inverter_efficiency``: part-load efficiency curve and clipping at
   ``inverter_kw``.

References
----------
Dobos, A. P. (2014). PVWatts Version 5 Manual. NREL/TP-6A20-62641.
Faiman, D. (2008). Assessing the outdoor operating temperature of photovoltaic
modules. Progress in Photovoltaics 16(4).
Hay, J. E., Davies, J. A. (1980). Calculations of the solar radiation incident on
an inclined surface.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import numpy.typing as npt
import pvlib

from ems.model.site import PvArray

__all__ = ["ac_power", "degradation_factor", "in_service", "inverter_kw", "poa_global"]

FloatArray = npt.NDArray[np.float64]

ALBEDO = 0.2
"""Ground reflectance used for the reflected POA component [-]."""


def inverter_kw(array: PvArray) -> float:
    """AC rating of the array's inverters [kW]; ``kwp / 1.1`` when not given."""
    return float(array.inverter_kw if array.inverter_kw is not None else array.kwp / 1.1)


def poa_global(
    tilt_deg: float,
    azimuth_deg: float,
    zenith: FloatArray,
    azimuth: FloatArray,
    dni: FloatArray,
    ghi: FloatArray,
    dhi: FloatArray,
    dni_extra: FloatArray,
) -> FloatArray:
    """Plane-of-array global irradiance [W/m2] (Hay-Davies transposition).

    Parameters
    ----------
    tilt_deg, azimuth_deg : float [deg]
        Surface tilt from horizontal and azimuth east of north.
    zenith, azimuth : ndarray [deg]
        Solar apparent zenith and azimuth.
    dni, ghi, dhi, dni_extra : ndarray [W/m2]
    """
    irr = pvlib.irradiance.get_total_irradiance(
        tilt_deg,
        azimuth_deg,
        zenith,
        azimuth,
        dni,
        ghi,
        dhi,
        dni_extra=dni_extra,
        albedo=ALBEDO,
        model="haydavies",
    )
    poa = np.nan_to_num(np.asarray(irr["poa_global"], dtype=float))
    out: FloatArray = np.clip(poa, 0.0, None)
    return out


def degradation_factor(array: PvArray, on: dt.date) -> float:
    """Remaining power fraction [-] on date ``on``: ``(1 - d/100) ** years`` since commissioning."""
    if array.commissioned is None:
        return 1.0
    years = max((on - array.commissioned).days / 365.25, 0.0)
    return float((1.0 - array.degradation_pct_per_year / 100.0) ** years)


def in_service(array: PvArray, local_dates: npt.ArrayLike) -> FloatArray:
    """1 on and after the array's commissioning date, 0 before it [-].

    Parameters
    ----------
    array : PvArray
    local_dates : array-like of datetime64
        Site-local (naive) date or time of each step; compared by calendar date.

    Returns
    -------
    ndarray [-]
        Ones where the array exists; all ones when ``commissioned`` is not set.
    """
    d = np.asarray(local_dates, dtype="datetime64[D]")
    if array.commissioned is None:
        return np.ones(d.shape, dtype=np.float64)
    out: FloatArray = (d >= np.datetime64(array.commissioned, "D")).astype(np.float64)
    return out


def ac_power(
    array: PvArray,
    poa: FloatArray,
    temp_air: FloatArray,
    degradation: float | FloatArray = 1.0,
) -> FloatArray:
    """AC power available from the array [kW] (before outages and curtailment).

    Parameters
    ----------
    array : PvArray
    poa : ndarray [W/m2]
        Plane-of-array global irradiance.
    temp_air : ndarray [degC]
    degradation : float or ndarray [-]
        Remaining power fraction.

    Returns
    -------
    ndarray [kW]
        Inverter AC output, clipped at the inverter rating.
    """
    t_cell = np.asarray(pvlib.temperature.faiman(poa, temp_air), dtype=float)
    pdc = np.asarray(
        pvlib.pvsystem.pvwatts_dc(poa, t_cell, array.kwp, array.gamma_pdc), dtype=float
    )
    pdc = np.clip(pdc, 0.0, None) * (1.0 - array.losses_pct / 100.0) * degradation
    pac0 = inverter_kw(array)
    pac = np.asarray(
        pvlib.inverter.pvwatts(pdc, pac0 / array.inverter_efficiency, array.inverter_efficiency),
        dtype=float,
    )
    out: FloatArray = np.clip(np.nan_to_num(pac), 0.0, pac0)
    return out
