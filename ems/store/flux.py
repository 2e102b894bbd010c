"""Flux queries of the InfluxDB store, built by pure functions.

Every value that comes from outside (bucket, site ids, time zone, field names)
goes through :func:`flux_string` or is checked against a pattern, so a site
called ``a" or true or "`` cannot change a query's meaning. The measurement and
tag design is in :mod:`ems.store.lineproto`.

References
----------
Flux language: https://docs.influxdata.com/flux/v0/
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

import pandas as pd

from ems.errors import StoreError
from ems.readings import QUANTITIES
from ems.store.lineproto import EVENT_MEASUREMENT, META_MEASUREMENT

__all__ = [
    "REGISTERS",
    "count_query",
    "events_query",
    "flux_duration",
    "flux_string",
    "flux_time",
    "meta_query",
    "readings_query",
    "window_query",
]

REGISTERS = tuple(q.name for q in QUANTITIES.values() if q.kind == "register")
"""Cumulative register fields (energy in an interval is their difference)."""

EPOCH = "1970-01-01T00:00:00Z"
FAR_FUTURE = "2200-01-01T00:00:00Z"
_DURATION = re.compile(r"^(\d+(ns|us|µs|ms|s|m|h|d|w|mo|y))+$")
_AGG = {"mean", "last", "first", "max", "min", "sum", "count", "median", "spread"}
_NOT_READINGS = (
    f'r._measurement != "{EVENT_MEASUREMENT}" and r._measurement != "{META_MEASUREMENT}"'
)


def flux_string(s: str) -> str:
    """Return ``s`` as a Flux string literal: quoted, with ``\\``, ``"`` and ``${`` escaped."""
    out = (
        s.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("${", "\\${")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{out}"'


def flux_time(t: dt.datetime | pd.Timestamp | str | None, default: str = EPOCH) -> str:
    """Return a tz-aware time as a Flux RFC 3339 time literal in UTC (whole seconds).

    Raises
    ------
    StoreError
        If ``t`` is naive.
    """
    if t is None:
        return default
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        raise StoreError(f"Flux time: expected a tz-aware time (UTC inside); found naive {ts}")
    ts = ts.tz_convert("UTC")
    frac = ts.value % 1_000_000_000
    if frac:
        ts = ts - pd.Timedelta(frac, "ns")
    return str(ts.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _stop(end: dt.datetime | pd.Timestamp | str | None) -> str:
    """Flux ``range`` stop is exclusive; the store's ``end`` is inclusive (whole seconds)."""
    if end is None:
        return FAR_FUTURE
    ts = pd.Timestamp(flux_time(end)) + pd.Timedelta(seconds=1)
    return str(ts.strftime("%Y-%m-%dT%H:%M:%SZ"))


def flux_duration(d: str) -> str:
    """Check a Flux duration literal such as ``15m``, ``1h`` or ``1d``."""
    if not _DURATION.match(d):
        raise StoreError(f"Flux duration: expected e.g. 15m, 1h, 1d; found {d!r}")
    return d


def _any_of(column: str, values: Iterable[str] | None) -> str:
    """A filter line keeping rows whose ``column`` is one of ``values`` (or '' for all)."""
    if values is None:
        return ""
    vals = list(values)
    if not vals:
        return "\n  |> filter(fn: (r) => false)"
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", column):
        raise StoreError(f"Flux column: expected an identifier; found {column!r}")
    cond = " or ".join(f"r.{column} == {flux_string(v)}" for v in vals)
    return f"\n  |> filter(fn: (r) => {cond})"


def _head(bucket: str, start: dt.datetime | None, end: dt.datetime | None) -> str:
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: {flux_time(start)}, stop: {_stop(end)})"
    )


def readings_query(
    bucket: str,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    sites: Iterable[str] | None = None,
    fields: Iterable[str] | None = None,
    wide: bool = False,
) -> str:
    """Readings in UTC ``[start, end]`` as tidy rows (``_time, site, meter, _field, _value``).

    With ``wide=True`` the fields are pivoted to columns, one row per meter and time.
    """
    q = (
        _head(bucket, start, end)
        + f"\n  |> filter(fn: (r) => {_NOT_READINGS})"
        + _any_of("site", sites)
        + _any_of("_field", fields)
    )
    if wide:
        return q + (
            '\n  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
            '\n  |> group(columns: ["site", "meter"])'
        )
    return q + '\n  |> keep(columns: ["_time", "_value", "_field", "site", "meter"])'


def window_query(
    bucket: str,
    *,
    every: str,
    fn: str = "mean",
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    sites: Iterable[str] | None = None,
    fields: Iterable[str] | None = None,
    tz: str | None = None,
) -> str:
    """Aggregate readings server-side with ``aggregateWindow`` (e.g. hourly mean power).

    Windows are labelled by their end (``timeSrc: "_stop"``), as interval meters
    stamp their readings; with ``tz``, calendar windows follow that zone.
    """
    if fn not in _AGG:
        raise StoreError(f"Flux aggregate: expected one of {sorted(_AGG)}; found {fn!r}")
    pre = ""
    if tz is not None:
        pre = f'import "timezone"\noption location = timezone.location(name: {flux_string(tz)})\n\n'
    return (
        pre
        + _head(bucket, start, end)
        + f"\n  |> filter(fn: (r) => {_NOT_READINGS})"
        + _any_of("site", sites)
        + _any_of("_field", fields)
        + f"\n  |> aggregateWindow(every: {flux_duration(every)}, fn: {fn}, createEmpty: false)"
        + '\n  |> keep(columns: ["_time", "_value", "_field", "site", "meter"])'
    )


def count_query(bucket: str) -> str:
    """Number of stored readings (field values), over all time."""
    return (
        _head(bucket, None, None)
        + f"\n  |> filter(fn: (r) => {_NOT_READINGS})"
        + "\n  |> group()\n  |> count()"
    )


def events_query(
    bucket: str,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    sites: Iterable[str] | None = None,
) -> str:
    """Events in UTC ``[start, end]``, one row each (fields pivoted)."""
    return (
        _head(bucket, start, end)
        + f'\n  |> filter(fn: (r) => r._measurement == "{EVENT_MEASUREMENT}")'
        + _any_of("site", sites)
        + '\n  |> pivot(rowKey: ["_time", "site", "kind", "subject"], columnKey: ["_field"], '
        'valueColumn: "_value")' + "\n  |> group()"
    )


def meta_query(bucket: str) -> str:
    """Every registration (site and meter ``json`` documents)."""
    return (
        _head(bucket, None, None)
        + f'\n  |> filter(fn: (r) => r._measurement == "{META_MEASUREMENT}" and r._field == "json")'
        + '\n  |> keep(columns: ["entity", "site", "meter", "_value"])'
        + "\n  |> group()"
    )
