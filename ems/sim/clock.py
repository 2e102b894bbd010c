"""The simulation clock: the UTC grid of interval ends, local calendars, seeds."""

from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import numpy.typing as npt
import pandas as pd

from ems.errors import SimulationError

__all__ = [
    "TimeGrid",
    "calendar_fields",
    "local_day_hour",
    "site_seed_sequence",
    "stable_hash",
    "time_grid",
]


_NS_PER_DAY = 86_400 * 10**9


def calendar_fields(ns: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[np.float64]]:
    """Calendar fields of wall-clock times, as pandas' ``DatetimeIndex`` gives them.

    Integer arithmetic on the day count, several times faster than the pandas
    accessors of a zone-aware index (which convert to local time on every access).

    Parameters
    ----------
    ns : ndarray of int64 [ns]
        Wall-clock times (UTC, or local time without its zone) since 1970-01-01.

    Returns
    -------
    dict of ndarray [-]
        ``year``, ``month`` (1-12), ``day`` (1-31), ``doy`` (day of year, 1-366),
        ``weekday`` (Monday 0), ``hour`` (0-23), ``minute`` (0-59), as floats.
    """
    days = np.floor_divide(ns, _NS_PER_DAY)
    d = days.astype("datetime64[D]")
    y = d.astype("datetime64[Y]")
    m = d.astype("datetime64[M]")
    sec_of_day = (ns - days * _NS_PER_DAY) // 10**9
    f = np.float64
    return {
        "year": (y.astype(np.int64) + 1970).astype(f),
        "month": (m.astype(np.int64) - y.astype("datetime64[M]").astype(np.int64) + 1).astype(f),
        "day": (days - m.astype("datetime64[D]").astype(np.int64) + 1).astype(f),
        "doy": (days - y.astype("datetime64[D]").astype(np.int64) + 1).astype(f),
        "weekday": ((days + 3) % 7).astype(f),
        "hour": (sec_of_day // 3600).astype(f),
        "minute": (sec_of_day % 3600 // 60).astype(f),
    }


def local_day_hour(
    index: pd.DatetimeIndex,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Local calendar day and hour of day of each timestamp.

    Parameters
    ----------
    index : DatetimeIndex
        Zone-aware (read in its zone) or naive (wall-clock) timestamps.

    Returns
    -------
    day : ndarray of int64 [d]
        Local date as days since 1970-01-01 (``datetime64[D]`` as integers).
    hour : ndarray [h]
        ``hour + minute / 60`` of the local time (seconds dropped), as pandas'
        ``index.hour + index.minute / 60``.
    """
    wall = index.tz_localize(None) if index.tz is not None else index
    ns = wall.as_unit("ns").asi8
    day = np.floor_divide(ns, _NS_PER_DAY)
    sec = (ns - day * _NS_PER_DAY) // 10**9
    hour = (sec // 3600).astype(np.float64) + (sec % 3600 // 60).astype(np.float64) / 60.0
    return day, hour


def stable_hash(text: str) -> int:
    """Return a hash of ``text`` that is the same in every process and Python version.

    Python's ``hash`` of a string changes per process; seeds must not.
    """
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def site_seed_sequence(seed: int, site_id: str) -> np.random.SeedSequence:
    """Seed sequence of one site: ``SeedSequence([seed, stable_hash(site_id)])``.

    Adding a site to a scenario does not change the others' random draws.
    """
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, stable_hash(site_id)])


class TimeGrid:
    """The steps of one site's simulation.

    Parameters
    ----------
    start, end : date
        Local calendar dates ``[start, end)`` in ``tz``.
    tz : str
        IANA zone.
    resolution_s : int [s]
        Step length; divides an hour.

    Attributes
    ----------
    ts : DatetimeIndex
        Interval ends, UTC (the readings' ``ts``).
    mid_local : DatetimeIndex
        Interval midpoints in the site's zone (for calendars and the sun).
    dt_h : float [h]
        Step length in hours.
    """

    def __init__(self, start: dt.date, end: dt.date, tz: str, resolution_s: int) -> None:
        if end <= start:
            raise SimulationError(f"period end must be after start; found start={start}, end={end}")
        if resolution_s <= 0 or 3600 % resolution_s:
            raise SimulationError(
                f"expected a resolution that divides an hour, found {resolution_s} s"
            )
        t0 = pd.Timestamp(start).tz_localize(tz).tz_convert("UTC")
        t1 = pd.Timestamp(end).tz_localize(tz).tz_convert("UTC")
        step = pd.Timedelta(seconds=resolution_s)
        n = int((t1 - t0) / step)
        self.tz = tz
        self.start = start
        self.end = end
        self.resolution_s = int(resolution_s)
        self.dt_h = resolution_s / 3600.0
        self.t0 = t0
        self.n = n
        self.ts = pd.date_range(t0 + step, periods=n, freq=step, name="ts").as_unit("ns")
        self.mid_utc = self.ts - step / 2
        self.mid_local = self.mid_utc.tz_convert(tz)

    def step_of(self, when: pd.Timestamp) -> int:
        """Index of the first step boundary at or after ``when`` (0..n), as a step count from t0."""
        k = int(
            np.ceil((when.tz_convert("UTC") - self.t0) / pd.Timedelta(seconds=self.resolution_s))
        )
        return min(max(k, 0), self.n)

    def boundary(self, k: int) -> pd.Timestamp:
        """UTC time of step boundary ``k`` (0 = period start)."""
        return self.t0 + pd.Timedelta(seconds=self.resolution_s * k)


def time_grid(start: dt.date, end: dt.date, tz: str, resolution_s: int) -> TimeGrid:
    """Build the :class:`TimeGrid` of local ``[start, end)`` at ``resolution_s``."""
    return TimeGrid(start, end, tz, resolution_s)
