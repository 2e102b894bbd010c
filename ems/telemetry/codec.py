"""Encode and decode telemetry payloads (contract v1, ``docs/telemetry.md``).

Pure functions: bytes in, checked values out, or a :class:`~ems.errors.PayloadError`
whose ``reason`` is a short code (``malformed_json``, ``unknown_meter``, ...). No
network, no clock: callers pass ``now_ns``.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ems.errors import PayloadError
from ems.readings import QUANTITIES, SCHEMA_VERSION, Carrier, MeterInfo, MeterKind, SiteInfo

__all__ = [
    "MAX_DEPTH",
    "MAX_DEPTH_META",
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS",
    "DataMessage",
    "Reading",
    "check_gas",
    "check_line_gases",
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
    "meter_status",
    "parse_ts",
]

MAX_PAYLOAD_BYTES = 1 << 20
"""Largest payload accepted [bytes] (1 MiB)."""
MAX_DEPTH = 6
"""Deepest nesting of JSON objects and arrays accepted in data and events (data needs 3)."""
MAX_DEPTH_META = 16
"""Deepest nesting accepted in metadata and site registrations (``attrs`` hold tariffs)."""
MAX_READINGS = 10_000
"""Most readings accepted in one message."""

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
    """A decoded, checked data payload."""

    site: str
    meter: str
    interval_s: int
    readings: list[Reading]


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
        ``wrong_type`` (not a string), ``bad_timestamp`` (unparseable) or
        ``naive_timestamp`` (no offset).
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
    """Decode and check a data payload received on ``ems/v1/{site}/{meter}``.

    Parameters
    ----------
    site, meter : str
        From the topic.
    payload : bytes
        The message.
    meters : mapping of (site, meter) to MeterInfo
        Known meters (from their metadata messages).
    now_ns : int [ns since the epoch]
        Current time; readings later than ``now_ns + max_future_s`` are rejected.
    max_future_s : float [s]
        Tolerated clock skew of the source.
    max_bytes : int [bytes]
        Payload size limit.
    known_sites : iterable of str
        Sites known from registrations (besides those of ``meters``).
    previous : Reading, optional
        The meter's latest reading already accepted: registers must not fall below it.

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
    info = meters.get((site, meter))
    if info is None:
        if any(s == site for s, _ in meters) or site in set(known_sites):
            raise PayloadError(
                "unknown_meter", f"{where}: no metadata for meter {meter!r} of site {site!r}"
            )
        raise PayloadError("unknown_site", f"{where}: no metadata for any meter of site {site!r}")
    interval_s = _field(obj, "interval_s", int, where)
    if interval_s != info.interval_s:
        raise PayloadError(
            "interval_mismatch",
            f"{where}.interval_s: the meter's metadata says {info.interval_s}, found {interval_s}",
        )
    rows = _field(obj, "readings", list, where)
    if not rows:
        raise PayloadError("missing_field", f"{where}.readings: expected at least one reading")
    if len(rows) > MAX_READINGS:
        raise PayloadError("oversized", f"{where}.readings: expected at most {MAX_READINGS}, found {len(rows)}")
    allowed = frozenset(info.quantities)
    limit = now_ns + int(max_future_s * 1e9)
    out: list[Reading] = []
    append = out.append
    for i, row in enumerate(rows):
        # the fast path checks types; messages are built only on errors
        if type(row) is not dict:
            raise PayloadError("wrong_type", f"{where}.readings[{i}]: expected an object, found {row!r}")
        seq = row.get("seq")
        if type(seq) is not int or seq < 0:
            if "seq" not in row:
                raise PayloadError("missing_field", f"{where}.readings[{i}]: expected field 'seq'")
            raise PayloadError("seq_not_int", f"{where}.readings[{i}].seq: expected an integer >= 0, found {seq!r}")
        if "ts" not in row:
            raise PayloadError("missing_field", f"{where}.readings[{i}]: expected field 'ts'")
        ts = parse_ts_cached(row["ts"], f"{where}.readings[{i}].ts")
        if ts > limit:
            raise PayloadError(
                "future_timestamp",
                f"{where}.readings[{i}].ts: {row['ts']} is more than {max_future_s:g} s after now ({format_ts(now_ns)})",
            )
        values = row.get("values")
        if type(values) is not dict or not values:
            if "values" not in row:
                raise PayloadError("missing_field", f"{where}.readings[{i}]: expected field 'values'")
            if isinstance(values, dict):
                raise PayloadError("missing_field", f"{where}.readings[{i}].values: expected at least one quantity")
            raise PayloadError("wrong_type", f"{where}.readings[{i}].values: expected an object, found {values!r}")
        if len(row) > 3:
            _extras_shallow(row, _READING_FIELDS, 3, f"{where}.readings[{i}]")
        for q, v in values.items():
            tv = type(v)
            if q not in allowed or (tv is not float and tv is not int) or not math.isfinite(v):
                _bad_value(q, v, allowed, meter, f"{where}.readings[{i}].values")
        append(Reading(seq, ts, {q: float(v) for q, v in values.items()}))
    out.sort(key=lambda r: r.ts_ns)
    if previous is not None and out[0].ts_ns <= previous.ts_ns:
        previous = None  # late or repeated readings: compared among themselves only
    check_registers(out, where, previous, [q for q in info.quantities if q in _REGISTERS])
    return DataMessage(site, meter, interval_s, out)


_TOP_FIELDS = frozenset(("v", "site", "meter", "interval_s", "readings"))
_READING_FIELDS = frozenset(("seq", "ts", "values"))


def _bad_value(q: str, v: object, allowed: frozenset[str], meter: str, w: str) -> None:
    if q not in allowed:
        hint = (
            f"meter {meter!r} reports {sorted(allowed)}"
            if q in QUANTITIES
            else "expected names with units from ems.readings.QUANTITIES, e.g. power_kw"
        )
        raise PayloadError("unknown_quantity", f"{w}: unknown quantity {q!r}; {hint}")
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise PayloadError("wrong_type", f"{w}.{q}: expected a number, found {v!r}")
    raise PayloadError("non_finite", f"{w}.{q}: expected a finite number, found {v!r}")


def check_registers(
    readings: Sequence[Reading],
    where: str,
    previous: Reading | None = None,
    registers: Iterable[str] | None = None,
) -> None:
    """Check that registers never decrease over ``readings`` (sorted by ts).

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

    Raises
    ------
    PayloadError
        ``register_backwards``.
    """
    if registers is None:
        present: set[str] = set()
        for r in readings:
            present.update(r.values)
        registers = sorted(present & _REGISTERS)
    for q in registers:
        last_v: float | None = None
        last_t = 0
        if previous is not None and q in previous.values:
            last_v, last_t = previous.values[q], previous.ts_ns
        for r in readings:
            v = r.values.get(q)
            if v is None:
                continue
            if last_v is not None and v < last_v and r.ts_ns > last_t:
                raise PayloadError(
                    "register_backwards",
                    f"{where}: register {q} went from {last_v!r} at {format_ts(last_t)} "
                    f"down to {v!r} at {format_ts(r.ts_ns)}; registers only grow",
                )
            last_v, last_t = v, r.ts_ns


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
        from its table; ``wrong_type``, ``missing_field`` etc. otherwise.
    """
    where = f"ems/v1/{site}/{meter}/meta"
    obj = load_object(payload, max_depth=MAX_DEPTH_META)
    _version(obj, where)
    _same(obj, "site", site, where)
    _same(obj, "meter", meter, where)
    kind = _field(obj, "kind", str, where)
    if kind not in set(MeterKind):
        raise PayloadError("wrong_type", f"{where}.kind: expected one of {sorted(MeterKind)}, found {kind!r}")
    carrier = _field(obj, "carrier", str, where)
    if carrier not in set(Carrier):
        raise PayloadError(
            "wrong_type", f"{where}.carrier: expected one of {sorted(Carrier)}, found {carrier!r}"
        )
    qs = _field(obj, "quantities", list, where)
    if not qs:
        raise PayloadError("missing_field", f"{where}.quantities: expected at least one")
    units = obj.get("units") or {}
    if not isinstance(units, dict):
        raise PayloadError("wrong_type", f"{where}.units: expected an object, found {units!r}")
    for q in qs:
        if not isinstance(q, str) or q not in QUANTITIES:
            raise PayloadError(
                "unknown_quantity",
                f"{where}.quantities: {q!r} is not in ems.readings.QUANTITIES (names carry units, e.g. power_kw)",
            )
        if q in units and units[q] != QUANTITIES[q].unit:
            raise PayloadError(
                "unknown_quantity",
                f"{where}.units.{q}: expected {QUANTITIES[q].unit!r}, found {units[q]!r}",
            )
    interval = _field(obj, "interval_s", int, where)
    if interval <= 0:
        raise PayloadError("wrong_type", f"{where}.interval_s: expected a positive integer, found {interval}")
    attrs = obj.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise PayloadError("wrong_type", f"{where}.attrs: expected an object, found {attrs!r}")
    check_line_gases(kind, attrs, where)
    return MeterInfo(site, meter, kind, carrier, tuple(qs), interval, attrs)


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
    _same(obj, "site", site, where)
    for name in ("name", "group", "company", "park", "tz", "country", "grid_region", "factor_set"):
        _field(obj, name, str, where)
    for name in ("lat", "lon"):
        _field(obj, name, (int, float), where)
    try:
        return SiteInfo.from_dict(obj)
    except (KeyError, TypeError) as exc:  # pragma: no cover - fields checked above
        raise PayloadError("missing_field", f"{where}: {exc}") from None


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
    out = []
    for i, e in enumerate(rows):
        w = f"{where}.events[{i}]"
        if not isinstance(e, dict):
            raise PayloadError("wrong_type", f"{w}: expected an object, found {e!r}")
        ts = parse_ts(e.get("ts"), f"{w}.ts") if "ts" in e else None
        if ts is None:
            raise PayloadError("missing_field", f"{w}: expected field 'ts'")
        if ts > now_ns + int(max_future_s * 1e9):
            raise PayloadError("future_timestamp", f"{w}.ts: {e['ts']} is in the future")
        kind = _field(e, "kind", str, w)
        value = e.get("value")
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise PayloadError("wrong_type", f"{w}.value: expected a number or null, found {value!r}")
        detail = e.get("detail") or {}
        if not isinstance(detail, dict):
            raise PayloadError("wrong_type", f"{w}.detail: expected an object, found {detail!r}")
        if kind == "refrigerant_topup":
            check_gas(e.get("subject"), f"{w}.subject")
        elif kind == "process_emission" and str(e.get("unit", "")).lower() == "kg":
            check_gas(detail.get("gas", e.get("subject")), f"{w}.detail.gas")
        out.append(
            {
                "ts": format_ts(ts),
                "site": site,
                "kind": kind,
                "subject": str(e.get("subject", "")),
                "value": math.nan if value is None else float(value),
                "unit": str(e.get("unit", "")),
                "detail": detail,
            }
        )
    return out



# --------------------------------------------------------------------------- dead letters, meter status


def deadletter_record(reason: str, message: str, topic: str, payload: bytes, received_s: float) -> dict[str, Any]:
    """The record of a rejected message (JSONL file and ``ems/v1/_deadletter/{reason}``).

    Parameters
    ----------
    reason, message : str
        The short code and the full explanation.
    topic : str
        Where the message was (or would have been) published.
    payload : bytes
        The message itself (kept as base64).
    received_s : float [s since the epoch]
        When it was received (or read, for a gateway).
    """
    import base64

    return {
        "received": dt.datetime.fromtimestamp(received_s, dt.UTC).isoformat().replace("+00:00", "Z"),
        "reason": reason,
        "message": message,
        "topic": topic,
        "payload_b64": base64.b64encode(payload).decode("ascii"),
    }


def meter_status(site: str, meter: str, status: str, reason: str = "", since_ns: int | None = None) -> bytes:
    """Encode a meter's status (``online``/``offline``) for ``ems/v1/{site}/{meter}/_status``."""
    d: dict[str, Any] = {"v": SCHEMA_VERSION, "site": site, "meter": meter, "status": status}
    if reason:
        d["reason"] = reason
    if since_ns is not None:
        d["since"] = format_ts(since_ns)
    return _dumps(d)
