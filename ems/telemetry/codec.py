"""Encode and decode telemetry payloads (contract v1, ``docs/telemetry.md``).

Pure functions: bytes in, checked values out, or a :class:`~ems.errors.PayloadError`
whose ``reason`` is a short code (``malformed_json``, ``unknown_meter``, ...). No
network, no clock: callers pass ``now_ns``.

Everything a message carries is bounded before it is used: the payload's size
(before it is parsed), nesting, counts, timestamps (from 1970-01-01 to the
ingestor's clock plus the tolerated skew), sequence numbers (64-bit), intervals
and values (finite, at most :data:`MAX_ABS_VALUE` in magnitude); a value out of
bounds is ``out_of_range``.

:func:`parse_data` checks a data payload on its own (the schema: what any reader
could check); :func:`check_data` checks it against the meter's metadata and its
previous reading (quantities, interval, registers); :func:`decode_data` does both.

A data payload carries one or more readings of one meter::

    {"v": 1, "site": "qingdao", "meter": "grid", "interval_s": 900,
     "readings": [{"seq": 17, "ts": "2024-07-01T00:15:00Z",
                   "values": {"power_kw": 812.5, "import_kwh": 1234567.25}}]}

``ts`` is the END of the interval, ISO 8601 with an offset (UTC ``Z`` when
sent); ``seq`` counts the meter's readings (non-negative integer).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from ems.errors import PayloadError
from ems.readings import QUANTITIES, SCHEMA_VERSION, Carrier, MeterInfo, MeterKind, SiteInfo

__all__ = [
    "DEADLETTER_KEEP_BYTES",
    "MAX_ABS_VALUE",
    "MAX_DEPTH",
    "MAX_DEPTH_META",
    "MAX_INTERVAL_S",
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS",
    "MAX_SEQ",
    "REGISTER_RATE_DEFAULTS",
    "DataMessage",
    "Reading",
    "check_data",
    "check_gas",
    "check_line_gases",
    "check_registers",
    "deadletter_record",
    "decode_data",
    "decode_events",
    "decode_meta",
    "decode_site",
    "encode_data",
    "encode_events",
    "encode_meta",
    "encode_rows",
    "encode_site",
    "format_ts",
    "load_object",
    "meter_from_fields",
    "meter_status",
    "parse_data",
    "parse_ts",
    "register_rates",
    "site_from_fields",
]

MAX_PAYLOAD_BYTES = 1 << 20
"""Largest payload accepted [bytes] (1 MiB)."""
MAX_DEPTH = 6
"""Deepest nesting of JSON objects and arrays accepted in data and events (data needs 3)."""
MAX_DEPTH_META = 16
"""Deepest nesting accepted in metadata and site registrations (``attrs`` hold tariffs)."""
MAX_READINGS = 10_000
"""Most readings accepted in one message (and events in one events message)."""
MAX_SEQ = 2**63 - 1
"""Largest sequence number accepted (a signed 64-bit integer)."""
MAX_ABS_VALUE = 1e15
"""Largest magnitude of a value accepted (1 PWh as kWh: beyond any meter's register)."""
MAX_INTERVAL_S = 31 * 86400
"""Longest reading interval accepted [s]."""
EARLIEST_TS_NS = 0
"""Earliest timestamp accepted [ns since the epoch]: 1970-01-01T00:00:00Z."""

REGISTER_RATE_DEFAULTS: dict[str, float] = {
    "kWh": 1e6,  # 1 GW: beyond any single site's electrical connection or plant
    "GJ": 3600.0,  # 1 GW of heat, as GJ per hour
    "m3": 1e5,  # ~1 GW of natural gas (36 MJ/m3), as m3 per hour
    "kg": 1e5,  # a fuel dispenser pumps ~6 t/h; a tanker unloads ~50 t/h
    "RMB": 1e9,  # output value per hour
}
"""Fastest a register of each unit may grow, per hour, when the meter's metadata names no rating.

A meter with a rating (``attrs``: ``rated_kw``; or ``contract_kw`` of a grid meter,
``inverter_kw``/``kwp`` of PV, ``power_kw`` of a battery, ``kw_e`` of a CHP) may grow
its kWh registers at most :data:`JUMP_FACTOR` times that rating per hour.
"""
JUMP_FACTOR = 3.0
"""Headroom over a meter's rating before a register rise counts as a jump."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
_REGISTERS = frozenset(q.name for q in QUANTITIES.values() if q.kind == "register")


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


# --------------------------------------------------------------------------- time


def format_ts(ts_ns: int) -> str:
    """Format ns since the epoch as ISO 8601 UTC with ``Z`` (fraction only if needed)."""
    sec, frac = divmod(int(ts_ns), 1_000_000_000)
    d = _EPOCH + dt.timedelta(seconds=sec)
    base = d.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        return f"{base}.{frac:09d}".rstrip("0") + "Z"
    return base + "Z"


_TS_CACHE: dict[str, int] = {}
_TS_CACHE_MAX = 200_000


def parse_ts_cached(value: object, where: str) -> int:
    """:func:`parse_ts` with a bounded cache (meters of a site share timestamps)."""
    if type(value) is str:
        ns = _TS_CACHE.get(value)
        if ns is not None:
            return ns
        ns = parse_ts(value, where)
        if len(_TS_CACHE) >= _TS_CACHE_MAX:
            _TS_CACHE.clear()
        _TS_CACHE[value] = ns
        return ns
    return parse_ts(value, where)


def parse_ts(value: object, where: str = "ts") -> int:
    """Parse an ISO 8601 timestamp with an offset into ns since the epoch (UTC).

    Raises
    ------
    PayloadError
        ``wrong_type`` (not a string), ``bad_timestamp`` (unparseable),
        ``naive_timestamp`` (no offset) or ``out_of_range`` (before 1970).
    """
    if not isinstance(value, str):
        raise PayloadError("wrong_type", f"{where}: expected an ISO 8601 string, found {value!r}")
    try:
        d = dt.datetime.fromisoformat(value)
    except ValueError:
        raise PayloadError(
            "bad_timestamp", f"{where}: expected ISO 8601 like 2024-07-01T00:15:00Z, found {value!r}"
        ) from None
    if d.tzinfo is None or d.utcoffset() is None:
        raise PayloadError(
            "naive_timestamp", f"{where}: expected a UTC offset (e.g. Z), found naive {value!r}"
        )
    delta = d - _EPOCH
    # integer arithmetic: exact to the microsecond, then finer digits from the string
    ns = (delta // _US) * 1000
    if ns < EARLIEST_TS_NS:
        raise PayloadError("out_of_range", f"{where}: expected a time from 1970-01-01T00:00:00Z on, found {value!r}")
    dot = value.find(".")
    if dot != -1:  # keep nanoseconds that datetime drops
        digits = ""
        for ch in value[dot + 1 :]:
            if not ch.isdigit():
                break
            digits += ch
        if len(digits) > 6:
            ns += int(digits[6:9].ljust(3, "0"))
    return ns


# --------------------------------------------------------------------------- JSON


def _depth_ok(obj: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return False
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values() if isinstance(v, dict | list))
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o if isinstance(v, dict | list))
    return True


def _no_constant(name: str) -> float:
    raise ValueError(name)


def load_object(
    payload: bytes,
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    check_depth: bool = True,
    max_depth: int = MAX_DEPTH,
) -> dict[str, Any]:
    """Parse a payload as one JSON object, with size, encoding and depth limits.

    With ``check_depth=False`` the caller checks the nesting of what it does not
    type-check itself (very deep documents still fail as ``too_deep``).

    Raises
    ------
    PayloadError
        ``oversized``, ``invalid_utf8``, ``malformed_json``, ``non_finite``
        (``NaN``/``Infinity`` literals), ``not_an_object`` or ``too_deep``.
    """
    if len(payload) > max_bytes:
        raise PayloadError("oversized", f"expected at most {max_bytes} bytes, found {len(payload)}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("invalid_utf8", f"expected UTF-8 text; {exc}") from None
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise PayloadError("too_deep", f"expected nesting of at most {max_depth} levels") from None
    except ValueError as exc:
        if str(exc) in ("NaN", "Infinity", "-Infinity"):
            raise PayloadError("non_finite", f"expected finite numbers, found {exc}") from None
        raise PayloadError("malformed_json", f"expected JSON; {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError("not_an_object", f"expected a JSON object, found {type(obj).__name__}")
    if check_depth and not _depth_ok(obj, max_depth):
        raise PayloadError("too_deep", f"expected nesting of at most {max_depth} levels")
    return obj


def _extras_shallow(obj: Mapping[str, Any], known: frozenset[str], depth: int, where: str) -> None:
    """Check the nesting of fields the decoder does not type-check (forward-compatible extras)."""
    for k, v in obj.items():
        if k not in known and isinstance(v, dict | list) and not _depth_ok(v, MAX_DEPTH - depth):
            raise PayloadError("too_deep", f"{where}.{k}: expected nesting of at most {MAX_DEPTH} levels")


def _dumps(obj: Any) -> bytes:
    # repr-exact floats; allow_nan=False so a non-finite value never leaves
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _field(obj: Mapping[str, Any], name: str, types: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise PayloadError("missing_field", f"{where}: expected field {name!r}; found {sorted(obj)}")
    v = obj[name]
    if not isinstance(v, types) or isinstance(v, bool):
        tn = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise PayloadError("wrong_type", f"{where}.{name}: expected {tn}, found {v!r}")
    return v


def _version(obj: Mapping[str, Any], where: str) -> None:
    if "v" not in obj:
        raise PayloadError("missing_field", f"{where}: expected field 'v' (contract version 1)")
    if obj["v"] != SCHEMA_VERSION or isinstance(obj["v"], bool):
        raise PayloadError("wrong_version", f"{where}.v: expected {SCHEMA_VERSION}, found {obj['v']!r}")


def _same(obj: Mapping[str, Any], name: str, expected: str, where: str) -> None:
    found = _field(obj, name, str, where)
    if found != expected:
        raise PayloadError(
            "bad_topic", f"{where}.{name}: the topic says {expected!r}, the payload {found!r}"
        )


# --------------------------------------------------------------------------- data


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
    return _dumps(
        {"v": SCHEMA_VERSION, "site": site, "meter": meter, "interval_s": int(interval_s), "readings": rows}
    )


def encode_rows(site: str, meter: str, interval_s: int, rows: list[dict[str, Any]]) -> bytes:
    """Encode ready rows ``{"seq", "ts" (ISO text), "values"}`` of one meter (no copying).

    Raises
    ------
    ValueError
        If a value is not finite.
    """
    return _dumps({"v": SCHEMA_VERSION, "site": site, "meter": meter, "interval_s": int(interval_s), "readings": rows})


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
    _extras_shallow(obj, _TOP_FIELDS, 1, where)
    _version(obj, where)
    _same(obj, "site", site, where)
    _same(obj, "meter", meter, where)
    interval_s = _field(obj, "interval_s", int, where)
    if not 0 < interval_s <= MAX_INTERVAL_S:
        raise PayloadError("out_of_range", f"{where}.interval_s: expected 1 to {MAX_INTERVAL_S} s, found {interval_s}")
    rows = _field(obj, "readings", list, where)
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
    cache = _TS_CACHE
    out: list[Reading] = []
    append = out.append
    for i, row in enumerate(rows):
        if type(row) is not dict:
            raise PayloadError("wrong_type", f"{where}.readings[{i}]: expected an object, found {_short(row)}")
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
    _extras_shallow(row, _READING_FIELDS, 3, w)


def _bad_seq(row: dict[str, Any], seq: object, w: str) -> NoReturn:
    if "seq" not in row:
        raise PayloadError("missing_field", f"{w}: expected field 'seq'")
    if type(seq) is int and seq > MAX_SEQ:
        raise PayloadError("out_of_range", f"{w}.seq: expected an integer up to 2**63-1, found {len(str(seq))} digits")
    raise PayloadError("seq_not_int", f"{w}.seq: expected an integer >= 0, found {_short(seq)}")


def _bad_values(row: dict[str, Any], values: object, w: str) -> NoReturn:
    if "values" not in row:
        raise PayloadError("missing_field", f"{w}: expected field 'values'")
    if isinstance(values, dict):
        raise PayloadError("missing_field", f"{w}.values: expected at least one quantity")
    raise PayloadError("wrong_type", f"{w}.values: expected an object, found {_short(values)}")


def _short(v: object, n: int = 80) -> str:
    """``repr`` of a value cut to ``n`` characters (a hostile value may be huge)."""
    text = repr(v) if not isinstance(v, int) or abs(v) < 10**20 else f"an integer of {len(str(abs(v)))} digits"
    return text if len(text) <= n else text[:n] + "..."


def check_data(
    msg: DataMessage,
    info: MeterInfo,
    previous: Reading | None = None,
) -> None:
    """Check a parsed data message against its meter: quantities, interval, registers.

    Parameters
    ----------
    msg : DataMessage
        From :func:`parse_data`.
    info : MeterInfo
        The meter's metadata.
    previous : Reading, optional
        The meter's latest reading already accepted: registers must not fall below
        it, nor rise faster than the meter's rating allows (:func:`register_rates`).

    Raises
    ------
    PayloadError
        ``interval_mismatch``, ``unknown_quantity``, ``out_of_range``, ``register_backwards`` or ``register_jump``.
    """
    where = f"ems/v1/{msg.site}/{msg.meter}"
    if msg.interval_s != info.interval_s:
        raise PayloadError(
            "interval_mismatch",
            f"{where}.interval_s: the meter's metadata says {info.interval_s}, found {msg.interval_s}",
        )
    allowed = frozenset(info.quantities)
    present: set[str] = set()
    for r in msg.readings:
        present.update(r.values)
    if not present <= allowed:
        i, q = next((i, q) for i, r in enumerate(msg.readings) for q in r.values if q not in allowed)
        raise PayloadError(
            "unknown_quantity",
            f"{where}.readings[{i}].values: unknown quantity {q!r}; meter {info.meter!r} reports {sorted(allowed)}",
        )
    if not msg.bounded:  # another encoding: the bounds JSON's parse_data checked
        for i, r in enumerate(msg.readings):
            for q, v in r.values.items():
                if not -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE:
                    raise PayloadError("out_of_range", f"{where}.readings[{i}].values.{q}: expected a magnitude of "
                                                       f"at most {MAX_ABS_VALUE:g}, found {v!r}")
    if previous is not None and msg.readings[0].ts_ns <= previous.ts_ns:
        previous = None  # late or repeated readings: compared among themselves only
    registers = [q for q in info.quantities if q in _REGISTERS]
    check_registers(msg.readings, where, previous, registers, register_rates(info), info.interval_s)


def decode_data(
    site: str,
    meter: str,
    payload: bytes,
    meters: Mapping[tuple[str, str], MeterInfo],
    *,
    now_ns: int,
    max_future_s: float = 300.0,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    known_sites: Iterable[str] = (),
    previous: Reading | None = None,
) -> DataMessage:
    """Decode and check a data payload received on ``ems/v1/{site}/{meter}``: :func:`parse_data` then :func:`check_data`.

    Parameters
    ----------
    site, meter : str
        From the topic.
    payload : bytes
        The message.
    meters : mapping of (site, meter) to MeterInfo
        Known meters (from their metadata messages).
    now_ns : int [ns since the epoch]
        Current time.
    max_future_s : float [s]
        Tolerated clock skew of the source.
    max_bytes : int [bytes]
        Payload size limit.
    known_sites : iterable of str
        Sites known from registrations (besides those of ``meters``).
    previous : Reading, optional
        The meter's latest reading already accepted.

    Raises
    ------
    PayloadError
        With the reason codes of ``docs/telemetry.md``.
    """
    msg = parse_data(site, meter, payload, now_ns=now_ns, max_future_s=max_future_s, max_bytes=max_bytes)
    info = meters.get((site, meter))
    if info is None:
        where = f"ems/v1/{site}/{meter}"
        if any(s == site for s, _ in meters) or site in set(known_sites):
            raise PayloadError("unknown_meter", f"{where}: no metadata for meter {meter!r} of site {site!r}")
        raise PayloadError("unknown_site", f"{where}: no metadata for any meter of site {site!r}")
    check_data(msg, info, previous)
    return msg


_TOP_FIELDS = frozenset(("v", "site", "meter", "interval_s", "readings"))
_READING_FIELDS = frozenset(("seq", "ts", "values"))


def _bad_value(q: str, v: object, w: str) -> NoReturn:
    if q not in QUANTITIES:
        raise PayloadError(
            "unknown_quantity",
            f"{w}: unknown quantity {_short(q)}; expected names with units from ems.readings.QUANTITIES, e.g. power_kw",
        )
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise PayloadError("wrong_type", f"{w}.{q}: expected a number, found {_short(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise PayloadError("non_finite", f"{w}.{q}: expected a finite number, found {v!r}")
    raise PayloadError("out_of_range", f"{w}.{q}: expected a magnitude of at most {MAX_ABS_VALUE:g}, found {_short(v)}")


_RATED_ATTRS = ("rated_kw", "contract_kw", "inverter_kw", "kwp", "power_kw", "kw_e")


def register_rates(info: MeterInfo) -> dict[str, float]:
    """Fastest each register of a meter may grow [its unit per hour].

    kWh registers follow the meter's rating (the largest of ``rated_kw``,
    ``contract_kw``, ``inverter_kw``, ``kwp``, ``power_kw``, ``kw_e`` in its
    ``attrs``) times :data:`JUMP_FACTOR`; other registers, and meters without a
    rating, :data:`REGISTER_RATE_DEFAULTS` of their unit.
    """
    rated = [float(v) for k in _RATED_ATTRS if isinstance(v := info.attrs.get(k), int | float)
             and not isinstance(v, bool) and math.isfinite(float(v)) and float(v) > 0]
    out: dict[str, float] = {}
    for q in info.quantities:
        spec = QUANTITIES.get(q)
        if spec is None or spec.kind != "register":
            continue
        default = REGISTER_RATE_DEFAULTS.get(spec.unit, math.inf)
        out[q] = JUMP_FACTOR * max(rated) if rated and spec.unit == "kWh" else default
    return out


def check_registers(
    readings: Sequence[Reading],
    where: str,
    previous: Reading | None = None,
    registers: Iterable[str] | None = None,
    rates: Mapping[str, float] | None = None,
    interval_s: int = 0,
) -> None:
    """Check that registers never decrease, nor jump, over ``readings`` (sorted by ts).

    Parameters
    ----------
    readings : sequence of Reading
        Sorted by ``ts_ns``.
    where : str
        Used in the message.
    previous : Reading, optional
        The latest reading before these, if known.
    registers : iterable of str, optional
        Register quantities to check (default: every register present).
    rates : mapping of str to float [unit per hour], optional
        Fastest each register may grow (:func:`register_rates`); default: no jump check.
    interval_s : int [s]
        The meter's interval: the least time a rise is spread over.

    Raises
    ------
    PayloadError
        ``register_backwards`` or ``register_jump``.
    """
    if registers is None:
        present: set[str] = set()
        for r in readings:
            present.update(r.values)
        registers = sorted(present & _REGISTERS)
    for q in registers:
        rate = (rates or {}).get(q, math.inf)
        last_v: float | None = None
        last_t = 0
        if previous is not None and q in previous.values:
            last_v, last_t = previous.values[q], previous.ts_ns
        for r in readings:
            v = r.values.get(q)
            if v is None:
                continue
            if last_v is not None and r.ts_ns > last_t:
                _check_step(q, last_v, last_t, v, r.ts_ns, rate, interval_s, where)
            last_v, last_t = v, r.ts_ns


def _check_step(q: str, a: float, ta: int, b: float, tb: int, rate: float, interval_s: int, where: str) -> None:
    if b < a:
        raise PayloadError(
            "register_backwards",
            f"{where}: register {q} went from {a!r} at {format_ts(ta)} "
            f"down to {b!r} at {format_ts(tb)}; registers only grow",
        )
    hours = max((tb - ta) / 3.6e12, interval_s / 3600.0)
    if b - a > rate * hours:
        raise PayloadError(
            "register_jump",
            f"{where}: register {q} rose from {a!r} at {format_ts(ta)} to {b!r} at {format_ts(tb)}; "
            f"expected at most {rate:g} per hour (the meter's rating) times {hours:g} h",
        )


# --------------------------------------------------------------------------- metadata


def encode_meta(info: MeterInfo) -> bytes:
    """Encode a meter's metadata: :meth:`MeterInfo.to_dict` plus ``v`` and ``units``."""
    d = info.to_dict()
    d["v"] = SCHEMA_VERSION
    d["units"] = {q: QUANTITIES[q].unit for q in info.quantities if q in QUANTITIES}
    return json.dumps(d, separators=(",", ":"), default=str).encode()


def decode_meta(site: str, meter: str, payload: bytes) -> MeterInfo:
    """Decode and check a metadata payload received on ``ems/v1/{site}/{meter}/meta``.

    Raises
    ------
    PayloadError
        ``unknown_quantity`` for a name not in QUANTITIES or a unit that differs
        from its table; ``wrong_type``, ``missing_field``, ``out_of_range`` etc. otherwise.
    """
    where = f"ems/v1/{site}/{meter}/meta"
    obj = load_object(payload, max_depth=MAX_DEPTH_META)
    _version(obj, where)
    _same(obj, "site", site, where)
    _same(obj, "meter", meter, where)
    return meter_from_fields(site, meter, obj, where)


def meter_from_fields(site: str, meter: str, obj: Mapping[str, Any], where: str) -> MeterInfo:
    """A meter's metadata from its fields, checked and bounded: the one check of every encoding's metadata.

    ``obj`` holds ``kind``, ``carrier``, ``quantities``, ``interval_s`` and optionally
    ``units`` (quantity to unit) and ``attrs`` (an object, nested at most
    :data:`MAX_DEPTH_META` levels). JSON metadata messages and Sparkplug DBIRTHs both
    come through here.

    Raises
    ------
    PayloadError
        ``missing_field``, ``wrong_type``, ``unknown_quantity``, ``oversized``,
        ``out_of_range`` (an interval beyond 1 s to 31 days), ``too_deep`` or ``unknown_gas``.
    """
    kind = _field(obj, "kind", str, where)
    if kind not in set(MeterKind):
        raise PayloadError("wrong_type", f"{where}.kind: expected one of {sorted(MeterKind)}, found {_short(kind)}")
    carrier = _field(obj, "carrier", str, where)
    if carrier not in set(Carrier):
        raise PayloadError(
            "wrong_type", f"{where}.carrier: expected one of {sorted(Carrier)}, found {_short(carrier)}"
        )
    qs = _quantities(obj, where)
    interval = _field(obj, "interval_s", int, where)
    if interval <= 0:
        raise PayloadError("wrong_type", f"{where}.interval_s: expected a positive integer, found {_short(interval)}")
    if interval > MAX_INTERVAL_S:
        raise PayloadError("out_of_range", f"{where}.interval_s: expected at most {MAX_INTERVAL_S} s, found {_short(interval)}")
    attrs = _attrs(obj, where)
    check_line_gases(kind, attrs, where)
    return MeterInfo(site, meter, kind, carrier, qs, interval, attrs)


def _attrs(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The ``attrs`` of a registration: an object nested at most :data:`MAX_DEPTH_META` levels ({} if absent)."""
    attrs = obj.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise PayloadError("wrong_type", f"{where}.attrs: expected an object, found {_short(attrs)}")
    if not _depth_ok(attrs, MAX_DEPTH_META - 1):
        raise PayloadError("too_deep", f"{where}.attrs: expected nesting of at most {MAX_DEPTH_META} levels")
    return attrs


def _quantities(obj: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The ``quantities`` of metadata, each a contract quantity whose ``units`` entry (if any) is its unit."""
    qs = _field(obj, "quantities", list, where)
    if not qs:
        raise PayloadError("missing_field", f"{where}.quantities: expected at least one")
    if len(qs) > len(QUANTITIES):
        raise PayloadError("oversized", f"{where}.quantities: expected at most {len(QUANTITIES)}, found {len(qs)}")
    units = obj.get("units") or {}
    if not isinstance(units, dict):
        raise PayloadError("wrong_type", f"{where}.units: expected an object, found {_short(units)}")
    for q in qs:
        if not isinstance(q, str) or q not in QUANTITIES:
            raise PayloadError(
                "unknown_quantity",
                f"{where}.quantities: {_short(q)} is not in ems.readings.QUANTITIES (names carry units, e.g. power_kw)",
            )
        if q in units and units[q] != QUANTITIES[q].unit:
            raise PayloadError(
                "unknown_quantity",
                f"{where}.units.{q}: expected {QUANTITIES[q].unit!r}, found {_short(units[q])}",
            )
    return tuple(qs)


def check_line_gases(kind: str, attrs: Mapping[str, Any], where: str) -> None:
    """Refuse a production line's metadata that names a gas missing from the GWP table (``unknown_gas``)."""
    if kind != MeterKind.LINE:
        return
    rates = attrs.get("emissions") or []
    for i, rate in enumerate(rates if isinstance(rates, list) else [rates]):
        check_gas(rate.get("gas") if isinstance(rate, dict) else rate, f"{where}.attrs.emissions[{i}].gas")


def check_gas(name: object, where: str) -> None:
    """Refuse a gas missing from the GWP table (``ems/data/gases.yaml``): the message is dead-lettered.

    Raises
    ------
    PayloadError
        ``unknown_gas``, naming the field and the gas.
    """
    from ems.gases import load_gases, unknown_gas_message

    if not isinstance(name, str) or load_gases().canonical(name) is None:
        raise PayloadError("unknown_gas", f"{where}: {unknown_gas_message(name)}")


def encode_site(info: SiteInfo) -> bytes:
    """Encode a site registration: :meth:`SiteInfo.to_dict` plus ``v``."""
    d = info.to_dict()
    d["v"] = SCHEMA_VERSION
    return json.dumps(d, separators=(",", ":"), default=str).encode()


def decode_site(site: str, payload: bytes) -> SiteInfo:
    """Decode and check a site registration received on ``ems/v1/{site}/_site``."""
    where = f"ems/v1/{site}/_site"
    obj = load_object(payload, max_depth=MAX_DEPTH_META)
    _version(obj, where)
    return site_from_fields(site, obj, where)


def site_from_fields(site: str, obj: Mapping[str, Any], where: str) -> SiteInfo:
    """A site registration from its fields, checked and bounded: the one check of every encoding's registrations.

    ``site`` must equal the topic's; names are strings, latitude and longitude within
    ±90°/±180°, ``tz`` a known IANA zone, ``attrs`` an object nested at most
    :data:`MAX_DEPTH_META` levels. JSON registrations and Sparkplug NBIRTHs
    (``Properties/site``) both come through here.

    Raises
    ------
    PayloadError
        ``bad_topic``, ``missing_field``, ``wrong_type``, ``out_of_range`` or ``too_deep``.
    """
    _same(obj, "site", site, where)
    for name in ("name", "group", "company", "park", "tz", "country", "grid_region", "factor_set"):
        _field(obj, name, str, where)
    for name, bound in (("lat", 90.0), ("lon", 180.0)):
        v = _field(obj, name, (int, float), where)
        if not -bound <= v <= bound:
            raise PayloadError("out_of_range", f"{where}.{name}: expected -{bound:g} to {bound:g} degrees, found {_short(v)}")
    try:
        zoneinfo.ZoneInfo(obj["tz"])
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise PayloadError("wrong_type", f"{where}.tz: expected an IANA time zone like Asia/Shanghai, "
                                         f"found {_short(obj['tz'])}") from None
    if not isinstance(obj.get("province") or "", str):
        raise PayloadError("wrong_type", f"{where}.province: expected a string, found {_short(obj['province'])}")
    try:
        return SiteInfo.from_dict({**obj, "attrs": _attrs(obj, where)})
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError("wrong_type", f"{where}: {exc}") from None


# --------------------------------------------------------------------------- events


def encode_events(site: str, rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Encode event rows (``ts`` ns or text, ``kind``, ``subject``, ``value``, ``unit``, ``detail``)."""
    out = []
    for r in rows:
        ts = r["ts"]
        value = r.get("value")
        fv = float(value) if value is not None else None
        detail = r.get("detail") or {}
        if isinstance(detail, str):
            detail = json.loads(detail) if detail else {}
        out.append(
            {
                "ts": ts if isinstance(ts, str) else format_ts(int(ts)),
                "kind": str(r["kind"]),
                "subject": str(r.get("subject", "")),
                "value": fv if fv is not None and math.isfinite(fv) else None,
                "unit": str(r.get("unit", "")),
                "detail": detail,
            }
        )
    return json.dumps(
        {"v": SCHEMA_VERSION, "site": site, "events": out}, separators=(",", ":"), default=str
    ).encode()


def decode_events(site: str, payload: bytes, *, now_ns: int, max_future_s: float = 300.0) -> list[dict[str, Any]]:
    """Decode events received on ``ems/v1/{site}/_events`` into rows for :func:`ems.readings.events_frame`."""
    where = f"ems/v1/{site}/_events"
    obj = load_object(payload)
    _version(obj, where)
    _same(obj, "site", site, where)
    rows = _field(obj, "events", list, where)
    if len(rows) > MAX_READINGS:
        raise PayloadError("oversized", f"{where}.events: expected at most {MAX_READINGS}, found {len(rows)}")
    limit = now_ns + int(max_future_s * 1e9)
    return [_event_row(site, e, f"{where}.events[{i}]", limit) for i, e in enumerate(rows)]


def _event_row(site: str, e: object, w: str, limit: int) -> dict[str, Any]:
    if not isinstance(e, dict):
        raise PayloadError("wrong_type", f"{w}: expected an object, found {_short(e)}")
    if "ts" not in e:
        raise PayloadError("missing_field", f"{w}: expected field 'ts'")
    ts = parse_ts(e["ts"], f"{w}.ts")
    if ts > limit:
        raise PayloadError("future_timestamp", f"{w}.ts: {e['ts']} is in the future")
    kind = _field(e, "kind", str, w)
    value = e.get("value")
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise PayloadError("wrong_type", f"{w}.value: expected a number or null, found {_short(value)}")
    if value is not None and not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
        if isinstance(value, float) and not math.isfinite(value):
            raise PayloadError("non_finite", f"{w}.value: expected a finite number or null, found {value!r}")
        raise PayloadError("out_of_range", f"{w}.value: expected a magnitude of at most {MAX_ABS_VALUE:g}, found {_short(value)}")
    detail = e.get("detail") or {}
    if not isinstance(detail, dict):
        raise PayloadError("wrong_type", f"{w}.detail: expected an object, found {_short(detail)}")
    if kind == "refrigerant_topup":
        check_gas(e.get("subject"), f"{w}.subject")
    elif kind == "process_emission" and str(e.get("unit", "")).lower() == "kg":
        check_gas(detail.get("gas", e.get("subject")), f"{w}.detail.gas")
    return {
        "ts": format_ts(ts),
        "site": site,
        "kind": kind,
        "subject": str(e.get("subject", "")),
        "value": math.nan if value is None else float(value),
        "unit": str(e.get("unit", "")),
        "detail": detail,
    }


# --------------------------------------------------------------------------- dead letters, meter status


DEADLETTER_KEEP_BYTES = 16 * 1024
"""Payload bytes a dead letter keeps [B]; beyond that only the prefix, the size and the SHA-256."""
_DEADLETTER_TEXT = 2000


def deadletter_record(
    reason: str,
    message: str,
    topic: str,
    payload: bytes,
    received_s: float,
    *,
    size: int | None = None,
    sha256: str = "",
    keep_bytes: int = DEADLETTER_KEEP_BYTES,
) -> dict[str, Any]:
    """The record of a rejected message (JSONL file and ``ems/v1/_deadletter/{reason}``), bounded in size.

    Parameters
    ----------
    reason, message : str
        The short code and the full explanation (cut at 2,000 characters).
    topic : str
        Where the message was (or would have been) published.
    payload : bytes
        The message, or the prefix of it that was held (then give ``size`` and ``sha256``).
    received_s : float [s since the epoch]
        When it was received (or read, for a gateway).
    size : int [B], optional
        The whole payload's size (default ``len(payload)``).
    sha256 : str, optional
        Hex SHA-256 of the whole payload (default: of ``payload``).
    keep_bytes : int [B]
        Payload bytes kept (base64); beyond, the record says ``payload_truncated``.
    """
    import base64
    import hashlib

    kept = payload[:keep_bytes]
    total = len(payload) if size is None else size
    return {
        "received": dt.datetime.fromtimestamp(received_s, dt.UTC).isoformat().replace("+00:00", "Z"),
        "reason": reason,
        "message": message if len(message) <= _DEADLETTER_TEXT else message[:_DEADLETTER_TEXT] + "...",
        "topic": topic,
        "payload_bytes": total,
        "payload_sha256": sha256 or hashlib.sha256(payload).hexdigest(),
        "payload_b64": base64.b64encode(kept).decode("ascii"),
        "payload_truncated": total > len(kept),
    }


def meter_status(site: str, meter: str, status: str, reason: str = "", since_ns: int | None = None) -> bytes:
    """Encode a meter's status (``online``/``offline``) for ``ems/v1/{site}/{meter}/_status``."""
    d: dict[str, Any] = {"v": SCHEMA_VERSION, "site": site, "meter": meter, "status": status}
    if reason:
        d["reason"] = reason
    if since_ns is not None:
        d["since"] = format_ts(since_ns)
    return _dumps(d)
