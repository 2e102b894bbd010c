"""The JSON wire format's primitives: limits, timestamps, objects and typed fields.

What every payload of contract v1 (``docs/telemetry.md``) is read with before its own
schema is checked: the bounds on size, nesting, counts and values; ISO 8601 timestamps
to and from ns since the epoch; a payload to one JSON object; a field of an expected
type, the contract version, a field that must equal the topic's. Each failure is a
:class:`~ems.errors.PayloadError` whose ``reason`` is a short code and whose message
says where (topic and field path), what was expected and what was found.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from ems.errors import PayloadError
from ems.readings import SCHEMA_VERSION

__all__ = [
    "EARLIEST_TS_NS",
    "MAX_ABS_VALUE",
    "MAX_DEPTH",
    "MAX_DEPTH_META",
    "MAX_INTERVAL_S",
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS",
    "MAX_SEQ",
    "TS_CACHE",
    "check_extras_depth",
    "check_same",
    "check_version",
    "depth_ok",
    "dumps",
    "format_ts",
    "load_message",
    "load_object",
    "parse_ts",
    "parse_ts_cached",
    "short_repr",
    "typed_field",
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

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)

def format_ts(ts_ns: int) -> str:
    """Format ns since the epoch as ISO 8601 UTC with ``Z`` (fraction only if needed)."""
    sec, frac = divmod(int(ts_ns), 1_000_000_000)
    d = _EPOCH + dt.timedelta(seconds=sec)
    base = d.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        return f"{base}.{frac:09d}".rstrip("0") + "Z"
    return base + "Z"


TS_CACHE: dict[str, int] = {}
"""Timestamps already parsed (ISO text to ns), shared by :func:`parse_ts_cached` and the data parser's fast path."""
_TS_CACHE_MAX = 200_000


def parse_ts_cached(value: object, where: str) -> int:
    """:func:`parse_ts` with a bounded cache (meters of a site share timestamps)."""
    if type(value) is str:
        ns = TS_CACHE.get(value)
        if ns is not None:
            return ns
        ns = parse_ts(value, where)
        if len(TS_CACHE) >= _TS_CACHE_MAX:
            TS_CACHE.clear()
        TS_CACHE[value] = ns
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


def depth_ok(obj: Any, limit: int) -> bool:
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
    if check_depth and not depth_ok(obj, max_depth):
        raise PayloadError("too_deep", f"expected nesting of at most {max_depth} levels")
    return obj


def check_extras_depth(obj: Mapping[str, Any], known: frozenset[str], depth: int, where: str) -> None:
    """Check the nesting of fields the decoder does not type-check (forward-compatible extras)."""
    for k, v in obj.items():
        if k not in known and isinstance(v, dict | list) and not depth_ok(v, MAX_DEPTH - depth):
            raise PayloadError("too_deep", f"{where}.{k}: expected nesting of at most {MAX_DEPTH} levels")


def dumps(obj: Any) -> bytes:
    # repr-exact floats; allow_nan=False so a non-finite value never leaves
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def typed_field(obj: Mapping[str, Any], name: str, types: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise PayloadError("missing_field", f"{where}: expected field {name!r}; found {sorted(obj)}")
    v = obj[name]
    if not isinstance(v, types) or isinstance(v, bool):
        tn = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise PayloadError("wrong_type", f"{where}.{name}: expected {tn}, found {v!r}")
    return v


def load_message(payload: bytes, where: str, *, site: str | None = None, meter: str | None = None,
                 max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """A contract v1 message's JSON object: :func:`load_object`, then its version, then ``site`` and
    ``meter`` (where given) equal to the topic's.

    Raises
    ------
    PayloadError
        :func:`load_object`'s reasons, ``missing_field``, ``wrong_version``, ``wrong_type`` or ``bad_topic``.
    """
    obj = load_object(payload, max_depth=max_depth)
    check_version(obj, where)
    if site is not None:
        check_same(obj, "site", site, where)
    if meter is not None:
        check_same(obj, "meter", meter, where)
    return obj


def check_version(obj: Mapping[str, Any], where: str) -> None:
    """Refuse an object whose ``v`` is not the contract's version (``missing_field``, ``wrong_version``)."""
    if "v" not in obj:
        raise PayloadError("missing_field", f"{where}: expected field 'v' (contract version 1)")
    if obj["v"] != SCHEMA_VERSION or isinstance(obj["v"], bool):
        raise PayloadError("wrong_version", f"{where}.v: expected {SCHEMA_VERSION}, found {obj['v']!r}")


def check_same(obj: Mapping[str, Any], name: str, expected: str, where: str) -> None:
    found = typed_field(obj, name, str, where)
    if found != expected:
        raise PayloadError(
            "bad_topic", f"{where}.{name}: the topic says {expected!r}, the payload {found!r}"
        )



def short_repr(v: object, n: int = 80) -> str:
    """``repr`` of a value cut to ``n`` characters (a hostile value may be huge)."""
    text = repr(v) if not isinstance(v, int) or abs(v) < 10**20 else f"an integer of {len(str(abs(v)))} digits"
    return text if len(text) <= n else text[:n] + "..."
