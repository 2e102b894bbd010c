"""Time-of-use tariff periods."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from ems.errors import ConfigError
from ems.model.site import Tariff

__all__ = ["tou_periods"]


def tou_periods(index_local: pd.DatetimeIndex, tariff: Tariff) -> npt.NDArray[np.object_]:
    """Map local timestamps to the tariff's period names.

    Parameters
    ----------
    index_local : DatetimeIndex
        Timestamps in the site's zone (tz-aware). Pass the **start** (or midpoint)
        of each interval: an interval belongs to the period in force when it
        starts. Readings carry interval *ends*; use ``ts - interval`` for them.
    tariff : Tariff
        The site's tariff; a season applies in its months, its windows are local
        ``[start_h, end_h)`` (wrapping midnight when ``end_h < start_h``), and
        hours outside every window take the season's ``default``.

    Returns
    -------
    ndarray of str (object)
        Period name per timestamp, e.g. ``"peak"``, ``"valley"``.

    Raises
    ------
    ConfigError
        If the index is naive or a month is covered by no season.
    """
    if index_local.tz is None:
        raise ConfigError("tou_periods: expected tz-aware local timestamps, found naive ones")
    month = np.asarray(index_local.month)
    hour = np.asarray(index_local.hour) + np.asarray(index_local.minute) / 60.0
    hour = hour + np.asarray(index_local.second) / 3600.0
    out = np.full(len(index_local), None, dtype=object)
    covered = np.zeros(len(index_local), dtype=bool)
    for season in tariff.seasons:
        in_season = np.isin(month, season.months) & ~covered
        if not in_season.any():
            continue
        names = np.full(len(index_local), season.default, dtype=object)
        for w in season.windows:
            if w.start_h <= w.end_h:
                hit = (hour >= w.start_h) & (hour < w.end_h)
            else:
                hit = (hour >= w.start_h) | (hour < w.end_h)
            names[hit] = w.period
        out[in_season] = names[in_season]
        covered |= in_season
    if not covered.all():
        missing = sorted(set(month[~covered].tolist()))
        raise ConfigError(
            f"tariff: expected seasons covering every month; months {missing} are in no season"
        )
    return out
