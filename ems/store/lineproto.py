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

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from ems.errors import StoreError
from ems.readings import EVENT_COLUMNS, MeterInfo, SiteInfo

__all__ = [
    "CHUNK_ROWS",
    "EVENT_MEASUREMENT",
    "META_MEASUREMENT",
    "META_TS",
    "escape_key",
    "escape_measurement",
    "escape_string",
    "event_lines",
    "meta_lines",
    "reading_line_chunks",
    "reading_lines",
    "series_prefix",
]

EVENT_MEASUREMENT = "event"
META_MEASUREMENT = "meta"
META_TS = 946684800
"""Timestamp of metadata points [s since the epoch]: 2000-01-01T00:00:00Z."""
CHUNK_ROWS = 200_000
"""Reading rows per chunk of lines in :func:`reading_line_chunks` (bounds the strings held)."""

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

    Vectorised: the series prefix (:func:`series_prefix`) is built once per meter
    and each field key once per quantity; values are formatted by ``repr`` (the
    shortest string that reads back as the same float), and lines are assembled
    with NumPy string operations.

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
        Lines in (site, meter, ts) order (strings compared by code point), fields in
        quantity order; a (site, meter, quantity, ts) repeated in the frame keeps
        its last value.

    Raises
    ------
    StoreError
        A site or meter is not registered, or a timestamp has a fraction of a second.
    """
    return [line for chunk in reading_line_chunks(readings, meters, sites) for line in chunk]


def reading_line_chunks(
    readings: pd.DataFrame,
    meters: Mapping[tuple[str, str], MeterInfo],
    sites: Mapping[str, SiteInfo],
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[list[str]]:
    """The lines of :func:`reading_lines`, in lists of the lines of about ``chunk_rows`` rows.

    The frame is checked, de-duplicated and ordered at once (errors are raised by this
    call, not by the iteration); each list of strings is built when it is asked for, so
    a writer that sends each before asking for the next holds one chunk of strings.

    Parameters
    ----------
    readings, meters, sites
        As for :func:`reading_lines`.
    chunk_rows : int [rows]
        Reading rows per chunk; a chunk ends with a whole line (at least ``chunk_rows``
        rows, fewer in the last).

    Raises
    ------
    StoreError
        As :func:`reading_lines`.
    """
    if readings.empty:
        return iter(())
    assert isinstance(readings.index, pd.DatetimeIndex)
    sec = _seconds(readings.index, "write_readings")
    site, sites_sorted = _sorted_codes(readings["site"])
    meter, meters_sorted = _sorted_codes(readings["meter"])
    qty, qtys_sorted = _sorted_codes(readings["quantity"])
    series, pairs = _series_codes(site, meter, sites_sorted, meters_sorted)
    prefix = _series_prefixes(pairs, meters, sites)
    keep = _latest_order(series, sec, qty)
    values = readings["value"].to_numpy(dtype=np.float64)[keep]
    series, sec, qty = series[keep], sec[keep], qty[keep]
    cuts = _line_cuts(series, sec, chunk_rows)
    return (
        _assemble(prefix, series[a:b], sec[a:b], (qtys_sorted, qty[a:b]), values[a:b])
        for a, b in itertools.pairwise(cuts)
    )


def _line_cuts(series: np.ndarray, sec: np.ndarray, chunk_rows: int) -> list[int]:
    """Row positions that cut sorted rows into chunks of whole lines of at least ``chunk_rows`` rows."""
    n = len(sec)
    first = np.flatnonzero(np.r_[True, (sec[1:] != sec[:-1]) | (series[1:] != series[:-1])])
    want = np.arange(max(chunk_rows, 1), n, max(chunk_rows, 1))
    at = np.searchsorted(first, want)
    cuts = first[at[at < len(first)]]
    return sorted({0, n, *cuts.tolist()})


def _sorted_codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Codes of a string column whose order is the labels' (code point) order, and the labels."""
    codes, uniques = pd.factorize(col, use_na_sentinel=False)
    labels = [str(u) for u in uniques]
    order = np.argsort(np.array(labels, dtype=object), kind="stable")
    rank = np.empty(len(labels), dtype=np.int32)
    rank[order] = np.arange(len(labels), dtype=np.int32)
    return rank[codes], [labels[i] for i in order]


def _series_codes(
    site: np.ndarray, meter: np.ndarray, sites_sorted: list[str], meters_sorted: list[str]
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """A code per (site, meter) in (site, meter) order, and the (site, meter) of each code."""
    nm = len(meters_sorted)
    pair = site.astype(np.int64) * nm + meter
    if len(sites_sorted) * nm <= 4 * len(pair) + 1024:  # a table of every combination is small
        uniq = np.flatnonzero(np.bincount(pair, minlength=len(sites_sorted) * nm))
    else:
        uniq = np.unique(pair)
    codes = np.searchsorted(uniq, pair).astype(np.int32)
    return codes, [(sites_sorted[p // nm], meters_sorted[p % nm]) for p in uniq.tolist()]


def _latest_order(series: np.ndarray, sec: np.ndarray, qty: np.ndarray) -> np.ndarray:
    """Positions of the rows to write, in (series, sec, quantity) order: of rows with the same
    (series, sec, quantity), the last one given."""
    order = np.lexsort((qty, sec, series))  # stable: equal keys keep the frame's order
    s, t, q = series[order], sec[order], qty[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (s[1:] != s[:-1]) | (t[1:] != t[:-1]) | (q[1:] != q[:-1])
    out: np.ndarray = order[last]
    return out


def _series_prefixes(
    pairs: list[tuple[str, str]], meters: Mapping[tuple[str, str], MeterInfo], sites: Mapping[str, SiteInfo]
) -> list[str]:
    """The series prefix (:func:`series_prefix`) of each (site, meter) of ``pairs``, as strings.

    Raises
    ------
    StoreError
        Naming (the first five of) the sites and meters that are not registered.
    """
    prefix: list[str] = []
    missing = []
    for s, m in pairs:
        info = meters.get((s, m))
        if info is None:
            missing.append(f"meter {s}/{m}")
        if s not in sites:
            missing.append(f"site {s}")
        if info is not None and s in sites:
            prefix.append(series_prefix(info, sites[s]))
    if missing:
        missing = sorted(set(missing))
        raise StoreError(
            "write_readings: the InfluxDB series key is made from the meter's kind and the "
            "site's hierarchy, so sites and meters must be registered first (register_sites, "
            f"register_meters); not registered: {missing[:5]}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    return prefix


def _assemble(
    prefix: list[str],
    series: np.ndarray,
    sec: np.ndarray,
    quantity: tuple[list[str], np.ndarray],
    values: np.ndarray,
) -> list[str]:
    """One line per run of equal (series, sec) in the rows given (sorted), fields in row order.

    ``prefix`` holds each series' prefix, ``quantity`` the quantities and each row's
    index into them. Each row becomes four pieces: ``prefix + " "`` where a line
    starts, else ``","``; ``key=``; the value; ``" " + sec`` and a newline where the
    line ends, else nothing. The pieces are joined and split at the newlines (the
    only unescaped ones).
    """
    n = len(sec)
    start = np.ones(n, dtype=bool)
    start[1:] = (sec[1:] != sec[:-1]) | (series[1:] != series[:-1])
    end = np.ones(n, dtype=bool)
    end[:-1] = start[1:]
    parts = np.full((n, 4), "", dtype=object)
    parts[:, 0] = ","
    parts[start, 0] = np.array([p + " " for p in prefix], dtype=object)[series[start]]
    parts[:, 1] = np.array([escape_key(q) + "=" for q in quantity[0]], dtype=object)[quantity[1]]
    parts[:, 2] = list(map(repr, values.tolist()))
    stamps, which = np.unique(sec[end], return_inverse=True)
    parts[end, 3] = np.array([f" {t}\n" for t in stamps.tolist()], dtype=object)[which]
    return "".join(parts.ravel().tolist()).split("\n")[:-1]


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
