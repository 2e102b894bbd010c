"""Events payloads: a site's event ledger entries on ``ems/v1/{site}/_events``."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ems.errors import PayloadError
from ems.readings import SCHEMA_VERSION
from ems.telemetry.codec.registration import check_gas
from ems.telemetry.codec.wire import (
    MAX_ABS_VALUE,
    MAX_READINGS,
    format_ts,
    load_message,
    parse_ts,
    short_repr,
    typed_field,
)

__all__ = ["decode_events", "encode_events"]


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
    obj = load_message(payload, where, site=site)
    rows = typed_field(obj, "events", list, where)
    if len(rows) > MAX_READINGS:
        raise PayloadError("oversized", f"{where}.events: expected at most {MAX_READINGS}, found {len(rows)}")
    limit = now_ns + int(max_future_s * 1e9)
    return [_event_row(site, e, f"{where}.events[{i}]", limit) for i, e in enumerate(rows)]


def _event_row(site: str, e: object, w: str, limit: int) -> dict[str, Any]:
    if not isinstance(e, dict):
        raise PayloadError("wrong_type", f"{w}: expected an object, found {short_repr(e)}")
    if "ts" not in e:
        raise PayloadError("missing_field", f"{w}: expected field 'ts'")
    ts = parse_ts(e["ts"], f"{w}.ts")
    if ts > limit:
        raise PayloadError("future_timestamp", f"{w}.ts: {e['ts']} is in the future")
    kind = typed_field(e, "kind", str, w)
    value = e.get("value")
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise PayloadError("wrong_type", f"{w}.value: expected a number or null, found {short_repr(value)}")
    if value is not None and not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
        if isinstance(value, float) and not math.isfinite(value):
            raise PayloadError("non_finite", f"{w}.value: expected a finite number or null, found {value!r}")
        raise PayloadError("out_of_range", f"{w}.value: expected a magnitude of at most {MAX_ABS_VALUE:g}, found {short_repr(value)}")
    detail = e.get("detail") or {}
    if not isinstance(detail, dict):
        raise PayloadError("wrong_type", f"{w}.detail: expected an object, found {short_repr(detail)}")
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
