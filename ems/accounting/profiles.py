"""Delivery profiles: how a contract's energy falls on the hours of its period.

A power purchase agreement or a green-power trade delivers energy over a period (a month,
a year); for hourly matching that energy must be placed on hours. The profile is part of
the contract (``detail.profile`` of a ``contract_delivery`` event):

``baseload``
    the same energy every hour (a flat block).
``solar``
    the sun's path at the plant (or the site): the hour's mean ``cos(zenith)``, 0 at night
    (pvlib's solar position).
``<region>:<technology>``
    the hourly output of that technology in ems's modelled mix of the region
    (:mod:`ems.accounting.gridmix`), e.g. ``CN-South:hydro`` for a hydro contract (wet-season
    heavy) or ``CN-North:wind``.
``as_consumed``
    in proportion to a weight the caller gives (the site's own use: a "pay-as-consumed" PPA,
    or what a settlement statement lists).

An explicit hourly schedule (a Series of kWh by hour) is used as it is.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from ems.accounting.gridmix import load_mix, model_mix
from ems.accounting.matching import spread_by_weight
from ems.errors import AccountingError
from ems.sun import sun_shape

__all__ = ["PROFILES", "delivery_kwh", "profile_weights"]

PROFILES = ("baseload", "solar", "as_consumed", "<region>:<technology>")
"""Profile names a contract may give."""


@functools.cache
def _region_profile(region: str, tech: str, year: int) -> pd.Series:
    r = model_mix(load_mix(region), year)
    if tech not in r.generation:
        raise AccountingError(
            f"profile {region}:{tech}: the {region} mix has no {tech!r}; expected one of {sorted(r.generation.columns)}"
        )
    out: pd.Series = r.generation[tech]
    return out


def profile_weights(
    profile: str,
    hours: pd.DatetimeIndex,
    *,
    lat: float | None = None,
    lon: float | None = None,
    weights: pd.Series | None = None,
) -> pd.Series:
    """Relative delivery of each hour under a named profile.

    Parameters
    ----------
    profile : str
        One of :data:`PROFILES`.
    hours : DatetimeIndex
        Hour starts (tz-aware).
    lat, lon : float [deg], optional
        Where the sun is read for ``solar``.
    weights : Series, optional
        For ``as_consumed``: the weight of each hour (e.g. the site's use [kWh]).

    Returns
    -------
    Series [-]
        Indexed by ``hours``; not normalised.

    Raises
    ------
    AccountingError
        Unknown profile or a missing argument, with what was expected.
    """
    if profile == "baseload":
        return pd.Series(1.0, index=hours)
    if profile == "solar":
        if lat is None or lon is None:
            raise AccountingError("profile 'solar': expected lat and lon of the plant or site; found none")
        return pd.Series(sun_shape(hours, lat, lon), index=hours)
    if profile == "as_consumed":
        if weights is None:
            raise AccountingError("profile 'as_consumed': expected the weights of the hours (the site's use); found none")
        return weights.reindex(hours).fillna(0.0).clip(lower=0.0)
    if ":" in profile:
        region, tech = profile.split(":", 1)
        utc = hours.tz_convert("UTC")
        tz = load_mix(region).tz
        years = sorted(set(utc.tz_convert(tz).year.tolist()))
        series = pd.concat([_region_profile(region, tech, y) for y in years])
        return pd.Series(series.reindex(utc).fillna(0.0).to_numpy(), index=hours)
    raise AccountingError(f"delivery profile {profile!r}: expected one of {list(PROFILES)}")


def delivery_kwh(
    kwh: float,
    profile: str | pd.Series,
    hours: pd.DatetimeIndex,
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    lat: float | None = None,
    lon: float | None = None,
    weights: pd.Series | None = None,
) -> pd.Series:
    """A contract's energy on the hours of its period ``[start, end)``.

    Parameters
    ----------
    kwh : float [kWh]
        Energy delivered over the period.
    profile : str or Series
        A profile name (:func:`profile_weights`) or an explicit schedule [kWh] by hour.
    hours : DatetimeIndex
        The hours to return (the site's hours).
    start, end : Timestamp
        The contract's delivery period (tz-aware), end excluded.
    lat, lon, weights
        As for :func:`profile_weights`.

    Returns
    -------
    Series [kWh]
        Indexed by ``hours``; sums to ``kwh`` when the period lies within them. With an
        explicit schedule, the schedule's values in the period (``kwh`` is not used).
    """
    if isinstance(profile, pd.Series):
        inside = (hours >= start) & (hours < end)
        return pd.Series(np.where(inside, profile.reindex(hours).fillna(0.0).to_numpy(), 0.0), index=hours)
    w = profile_weights(profile, hours, lat=lat, lon=lon, weights=weights)
    return spread_by_weight(kwh, w, start, end)
