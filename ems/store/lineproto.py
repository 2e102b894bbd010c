"""InfluxDB line protocol for readings, events and metadata: pure functions.

Design (``docs/store.md``, section InfluxDB):

* **readings**: measurement = the meter's kind (``grid``, ``pv``, ``battery``, ...);
  tags ``site``, ``meter``, ``group``, ``company``, ``park``, ``carrier`` (all
  bounded: one series per meter); fields = the quantities (``power_kw``,
  ``import_kwh``, ...), one line per meter and timestamp; timestamp = the
  reading's ``ts`` in whole seconds. The series key and the timestamp come from
  the source, so a re-sent reading overwrites the same point instead of adding one.
* **events**: measurement ``event``; tags ``site``, ``kind``, ``subject``; fields
  ``value`` (float, omitted when NaN), ``unit`` and ``detail`` (strings).
* **metadata**: measurement ``meta``; tags ``entity`` (``site`` or ``meter``),
  ``site``, ``meter``; field ``json`` (the registration as JSON); timestamp
  :data:`META_TS`, fixed, so re-registering overwrites (upsert).

References
----------
InfluxDB 2 line protocol: https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from ems.errors import StoreError
from ems.readings import EVENT_COLUMNS, MeterInfo, SiteInfo

__all__ = [
    "EVENT_MEASUREMENT",
    "META_MEASUREMENT",
    "META_TS",
    "escape_key",
    "escape_measurement",
    "escape_string",
    "event_lines",
    "meta_lines",
    "reading_lines",
    "series_prefix",
]

EVENT_MEASUREMENT = "event"
META_MEASUREMENT = "meta"
META_TS = 946684800
"""Timestamp of metadata points [s since the epoch]: 2000-01-01T00:00:00Z."""

_KEY = str.maketrans(
    {"\\": "\\\\", ",": r"\,", " ": r"\ ", "=": r"\=", "\n": r"\n", "\r": r"\r", "\t": r"\t"}
)
_MEAS = str.maketrans({"\\": "\\\\", ",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t"})
_STR = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def escape_key(s: str) -> str:
    """Escape a tag key, tag value or field key (commas, equals signs, spaces)."""
    return s.translate(_KEY)


def escape_measurement(s: str) -> str:
    """Escape a measurement name (commas and spaces)."""
    return s.translate(_MEAS)


def escape_string(s: str) -> str:
    """Return a string field value in double quotes, escaped."""
    return '"' + s.translate(_STR) + '"'


def _tags(tags: Iterable[tuple[str, str]]) -> str:
    # Influx rejects empty tag values; keys are sorted as the server stores them
    return "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in sorted(tags) if v)


def series_prefix(meter: MeterInfo, site: SiteInfo | None) -> str:
    """Measurement and tags of a meter's readings, e.g. ``grid,carrier=electricity,...``."""
    tags = [("site", meter.site), ("meter", meter.meter), ("carrier", meter.carrier)]
    if site is not None:
        tags += [("group", site.group), ("company", site.company), ("park", site.park)]
    return escape_measurement(meter.kind) + _tags(tags)


def _seconds(idx: pd.DatetimeIndex, where: str) -> np.ndarray:
    if idx.tz is None:
        raise StoreError(f"{where}: expected tz-aware UTC timestamps; found naive ones")
    ns = idx.tz_convert("UTC").as_unit("ns").asi8
    if len(ns) and (ns % 1_000_000_000).any():
        bad = idx[(ns % 1_000_000_000) != 0][0]
        raise StoreError(f"{where}: expected whole-second timestamps; found {bad}")
    out: np.ndarray = ns // 1_000_000_000
    return out


def _float(v: float) -> str:
    return repr(float(v))


def reading_lines(
    readings: pd.DataFrame,
    meters: Mapping[tuple[str, str], MeterInfo],
    sites: Mapping[str, SiteInfo],
) -> list[str]:
    """Turn a tidy readings frame into line protocol, one line per meter and ``ts``.

    Parameters
    ----------
    readings : DataFrame
        The contract's tidy frame (validated by the caller).
    meters : mapping
        Registered meters by (site, meter); every meter in ``readings`` must be here.
    sites : mapping
        Registered sites by id; every site in ``readings`` must be here (its
        hierarchy tags are part of the series key, so they must never be missing).

    Returns
    -------
    list of str
        Lines in (site, meter, ts) order; a (site, meter, quantity, ts) repeated
        in the frame keeps its last value.

    Raises
    ------
    StoreError
        A site or meter is not registered, or a timestamp has a fraction of a second.
    """
    if readings.empty:
        return []
    df = _latest_values(readings)
    prefix = _series_prefixes(df, meters, sites)
    return _assemble(df, prefix)


def _latest_values(readings: pd.DataFrame) -> pd.DataFrame:
    """The readings as plain columns ``site``, ``meter``, ``quantity``, ``sec`` [s since the epoch], ``value``,
    with one row per (site, meter, quantity, sec): the last one given.

    Raises
    ------
    StoreError
        Naive timestamps, or a timestamp with a fraction of a second.
    """
    assert isinstance(readings.index, pd.DatetimeIndex)
    sec = _seconds(readings.index, "write_readings")
    df = pd.DataFrame(
        {
            "site": readings["site"].astype(str).to_numpy(),
            "meter": readings["meter"].astype(str).to_numpy(),
            "quantity": readings["quantity"].astype(str).to_numpy(),
            "sec": sec,
            "value": readings["value"].to_numpy(dtype=np.float64),
        }
    )
    return df.drop_duplicates(["site", "meter", "quantity", "sec"], keep="last")


def _series_prefixes(
    df: pd.DataFrame, meters: Mapping[tuple[str, str], MeterInfo], sites: Mapping[str, SiteInfo]
) -> dict[tuple[str, str], str]:
    """The series prefix (:func:`series_prefix`) of each (site, meter) in ``df``.

    Raises
    ------
    StoreError
        Naming (the first five of) the sites and meters that are not registered.
    """
    prefix: dict[tuple[str, str], str] = {}
    missing = []
    for s, m in df[["site", "meter"]].drop_duplicates().itertuples(index=False):
        info = meters.get((s, m))
        if info is None:
            missing.append(f"meter {s}/{m}")
        if s not in sites:
            missing.append(f"site {s}")
        if info is not None and s in sites:
            prefix[(s, m)] = series_prefix(info, sites[s])
    if missing:
        missing = sorted(set(missing))
        raise StoreError(
            "write_readings: the InfluxDB series key is made from the meter's kind and the "
            "site's hierarchy, so sites and meters must be registered first (register_sites, "
            f"register_meters); not registered: {missing[:5]}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    return prefix


def _assemble(df: pd.DataFrame, prefix: Mapping[tuple[str, str], str]) -> list[str]:
    """One line per (site, meter, sec) of ``df``, in that order, its fields in quantity order."""
    df = df.sort_values(["site", "meter", "sec", "quantity"], kind="stable")
    field = [
        f"{escape_key(q)}={_float(v)}"
        for q, v in zip(df["quantity"].tolist(), df["value"].tolist(), strict=True)
    ]
    df["field"] = field
    out = []
    for (s, m, t), grp in df.groupby(["site", "meter", "sec"], sort=False)["field"]:
        out.append(f"{prefix[(s, m)]} {','.join(grp)} {int(t)}")
    return out


def event_lines(events: pd.DataFrame) -> list[str]:
    """Turn an events frame into line protocol (measurement ``event``)."""
    if events.empty:
        return []
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise StoreError(f"write_events: expected columns {list(EVENT_COLUMNS)}, missing {missing}")
    assert isinstance(events.index, pd.DatetimeIndex)
    sec = _seconds(events.index, "write_events")
    out = []
    for t, row in zip(sec.tolist(), events.itertuples(index=False), strict=True):
        r = row._asdict()
        tags = _tags(
            [("site", str(r["site"])), ("kind", str(r["kind"])), ("subject", str(r["subject"]))]
        )
        fields = []
        value = float(r["value"])
        if not math.isnan(value):
            fields.append(f"value={_float(value)}")
        fields.append(f"unit={escape_string(str(r['unit']))}")
        fields.append(f"detail={escape_string(str(r['detail']))}")
        out.append(f"{EVENT_MEASUREMENT}{tags} {','.join(fields)} {t}")
    return out


def meta_lines(sites: Iterable[SiteInfo] = (), meters: Iterable[MeterInfo] = ()) -> list[str]:
    """Turn registrations into line protocol (measurement ``meta``, fixed timestamp)."""
    out = []
    for s in sites:
        doc = json.dumps(s.to_dict(), sort_keys=True, default=str)
        out.append(
            f"{META_MEASUREMENT}{_tags([('entity', 'site'), ('site', s.site)])} "
            f"json={escape_string(doc)} {META_TS}"
        )
    for m in meters:
        doc = json.dumps(m.to_dict(), sort_keys=True, default=str)
        out.append(
            f"{META_MEASUREMENT}{_tags([('entity', 'meter'), ('site', m.site), ('meter', m.meter)])} "
            f"json={escape_string(doc)} {META_TS}"
        )
    return out
