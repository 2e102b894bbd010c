"""Data payloads: one meter's readings, encoded, and parsed against the schema and its bounds.

A data payload carries one or more readings of one meter::

    {"v": 1, "site": "qingdao", "meter": "grid", "interval_s": 900,
     "readings": [{"seq": 17, "ts": "2024-07-01T00:15:00Z",
                   "values": {"power_kw": 812.5, "import_kwh": 1234567.25}}]}

``ts`` is the END of the interval, ISO 8601 with an offset (UTC ``Z`` when
sent); ``seq`` counts the meter's readings (non-negative integer).
:func:`parse_data` checks what needs no knowledge of the meter;
:mod:`ems.telemetry.codec.checks` checks the rest against the meter's metadata.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from ems.errors import PayloadError
from ems.readings import QUANTITIES, SCHEMA_VERSION
from ems.telemetry.codec.wire import (
    MAX_ABS_VALUE,
    MAX_INTERVAL_S,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    MAX_SEQ,
    TS_CACHE,
    check_extras_depth,
    check_same,
    check_version,
    dumps,
    format_ts,
    load_object,
    parse_ts_cached,
    short_repr,
    typed_field,
)

__all__ = ["DataMessage", "Reading", "encode_data", "encode_rows", "parse_data"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One meter's values at one timestamp.

    Attributes
    ----------
    seq : int
        The meter's sequence number.
    ts_ns : int [ns since the Unix epoch, UTC]
        End of the interval.
    values : dict of str to float
        Quantity name (with its unit) to value.
    """

    seq: int
    ts_ns: int
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class DataMessage:
    """A decoded, checked data payload (``bounded``: its values were checked against :data:`MAX_ABS_VALUE`)."""

    site: str
    meter: str
    interval_s: int
    readings: list[Reading]
    bounded: bool = False


def encode_data(
    site: str,
    meter: str,
    interval_s: int,
    readings: Iterable[tuple[int, int, Mapping[str, float]]],
) -> bytes:
    """Encode readings ``(seq, ts_ns, values)`` of one meter as a data payload.

    Raises
    ------
    ValueError
        If a value is not finite.
    """
    rows = [
        {"seq": int(seq), "ts": format_ts(ts), "values": {k: float(v) for k, v in values.items()}}
        for seq, ts, values in readings
    ]
    return dumps(
        {"v": SCHEMA_VERSION, "site": site, "meter": meter, "interval_s": int(interval_s), "readings": rows}
    )


def encode_rows(site: str, meter: str, interval_s: int, rows: list[dict[str, Any]]) -> bytes:
    """Encode ready rows ``{"seq", "ts" (ISO text), "values"}`` of one meter (no copying).

    Raises
    ------
    ValueError
        If a value is not finite.
    """
    return dumps({"v": SCHEMA_VERSION, "site": site, "meter": meter, "interval_s": int(interval_s), "readings": rows})


def parse_data(
    site: str,
    meter: str,
    payload: bytes,
    *,
    now_ns: int,
    max_future_s: float = 300.0,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> DataMessage:
    """Parse a data payload received on ``ems/v1/{site}/{meter}`` and check its schema and bounds.

    What needs no knowledge of the meter: JSON, fields and their types, ``site``
    and ``meter`` equal to the topic's, timestamps, sequence numbers and values
    within their bounds. :func:`check_data` checks the rest against the meter.

    Parameters
    ----------
    site, meter : str
        From the topic.
    payload : bytes
        The message.
    now_ns : int [ns since the epoch]
        Current time; readings later than ``now_ns + max_future_s`` are rejected.
    max_future_s : float [s]
        Tolerated clock skew of the source.
    max_bytes : int [bytes]
        Payload size limit.

    Returns
    -------
    DataMessage
        With readings sorted by ``ts``.

    Raises
    ------
    PayloadError
        With the reason codes of ``docs/telemetry.md``.
    """
    where = f"ems/v1/{site}/{meter}"
    obj = load_object(payload, max_bytes=max_bytes, check_depth=False)
    check_extras_depth(obj, _TOP_FIELDS, 1, where)
    check_version(obj, where)
    check_same(obj, "site", site, where)
    check_same(obj, "meter", meter, where)
    interval_s = typed_field(obj, "interval_s", int, where)
    if not 0 < interval_s <= MAX_INTERVAL_S:
        raise PayloadError("out_of_range", f"{where}.interval_s: expected 1 to {MAX_INTERVAL_S} s, found {interval_s}")
    rows = typed_field(obj, "readings", list, where)
    if not rows:
        raise PayloadError("missing_field", f"{where}.readings: expected at least one reading")
    if len(rows) > MAX_READINGS:
        raise PayloadError("oversized", f"{where}.readings: expected at most {MAX_READINGS}, found {len(rows)}")
    out = _parse_rows(rows, where, now_ns, max_future_s)
    out.sort(key=lambda r: r.ts_ns)
    return DataMessage(site, meter, interval_s, out, bounded=True)


def _parse_rows(rows: list[Any], where: str, now_ns: int, max_future_s: float) -> list[Reading]:
    """The readings of a data payload: the fast path checks types and bounds; messages are built only on errors."""
    limit = now_ns + int(max_future_s * 1e9)
    cache = TS_CACHE
    out: list[Reading] = []
    append = out.append
    for i, row in enumerate(rows):
        if type(row) is not dict:
            raise PayloadError("wrong_type", f"{where}.readings[{i}]: expected an object, found {short_repr(row)}")
        seq: Any = row.get("seq")
        text: Any = row.get("ts")
        values: Any = row.get("values")
        if (type(seq) is not int or not 0 <= seq <= MAX_SEQ or text is None or type(values) is not dict
                or not values or len(row) > 3):
            _row_problem(row, f"{where}.readings[{i}]")  # raises, unless only extra fields need their depth checked
        ts = cache.get(text) if type(text) is str else None
        if ts is None:
            ts = parse_ts_cached(text, f"{where}.readings[{i}].ts")
        if ts > limit:
            raise PayloadError("future_timestamp", f"{where}.readings[{i}].ts: {text} is more than {max_future_s:g} s "
                                                   f"after now ({format_ts(now_ns)})")
        for q, v in values.items():
            tv = type(v)
            if (tv is not float and tv is not int) or not -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE or q not in QUANTITIES:
                _bad_value(q, v, f"{where}.readings[{i}].values")
        append(Reading(seq, ts, {q: float(v) for q, v in values.items()}))
    return out


def _row_problem(row: dict[str, Any], w: str) -> None:
    """Raise the precise error of a reading that failed the fast checks (or check its extra fields' depth)."""
    seq = row.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        _bad_seq(row, seq, w)
    if "ts" not in row:
        raise PayloadError("missing_field", f"{w}: expected field 'ts'")
    values = row.get("values")
    if type(values) is not dict or not values:
        _bad_values(row, values, w)
    check_extras_depth(row, _READING_FIELDS, 3, w)


def _bad_seq(row: dict[str, Any], seq: object, w: str) -> NoReturn:
    if "seq" not in row:
        raise PayloadError("missing_field", f"{w}: expected field 'seq'")
    if type(seq) is int and seq > MAX_SEQ:
        raise PayloadError("out_of_range", f"{w}.seq: expected an integer up to 2**63-1, found {len(str(seq))} digits")
    raise PayloadError("seq_not_int", f"{w}.seq: expected an integer >= 0, found {short_repr(seq)}")


def _bad_values(row: dict[str, Any], values: object, w: str) -> NoReturn:
    if "values" not in row:
        raise PayloadError("missing_field", f"{w}: expected field 'values'")
    if isinstance(values, dict):
        raise PayloadError("missing_field", f"{w}.values: expected at least one quantity")
    raise PayloadError("wrong_type", f"{w}.values: expected an object, found {short_repr(values)}")



_TOP_FIELDS = frozenset(("v", "site", "meter", "interval_s", "readings"))
_READING_FIELDS = frozenset(("seq", "ts", "values"))


def _bad_value(q: str, v: object, w: str) -> NoReturn:
    if q not in QUANTITIES:
        raise PayloadError(
            "unknown_quantity",
            f"{w}: unknown quantity {short_repr(q)}; expected names with units from ems.readings.QUANTITIES, e.g. power_kw",
        )
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise PayloadError("wrong_type", f"{w}.{q}: expected a number, found {short_repr(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise PayloadError("non_finite", f"{w}.{q}: expected a finite number, found {v!r}")
    raise PayloadError("out_of_range", f"{w}.{q}: expected a magnitude of at most {MAX_ABS_VALUE:g}, found {short_repr(v)}")
