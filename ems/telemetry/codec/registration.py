"""Registrations: a meter's metadata and status, a site's registration, checked and bounded.

:func:`meter_from_fields` and :func:`site_from_fields` are the one check of every
encoding's registrations: JSON metadata and site messages come through
:func:`decode_meta` and :func:`decode_site`, Sparkplug DBIRTHs and NBIRTHs through
:mod:`ems.telemetry.sparkplug`. A production line's metadata may name only gases of
the GWP table (:func:`check_gas`).
"""

from __future__ import annotations

import json
import zoneinfo
from collections.abc import Mapping
from typing import Any

from ems.errors import PayloadError
from ems.readings import QUANTITIES, SCHEMA_VERSION, Carrier, MeterInfo, MeterKind, SiteInfo
from ems.telemetry.codec.wire import (
    MAX_DEPTH_META,
    MAX_INTERVAL_S,
    check_same,
    depth_ok,
    dumps,
    format_ts,
    load_message,
    short_repr,
    typed_field,
)

__all__ = [
    "check_gas",
    "check_line_gases",
    "decode_meta",
    "decode_site",
    "encode_meta",
    "encode_site",
    "meter_from_fields",
    "meter_status",
    "site_from_fields",
]


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
    obj = load_message(payload, where, site=site, meter=meter, max_depth=MAX_DEPTH_META)
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
    kind = typed_field(obj, "kind", str, where)
    if kind not in set(MeterKind):
        raise PayloadError("wrong_type", f"{where}.kind: expected one of {sorted(MeterKind)}, found {short_repr(kind)}")
    carrier = typed_field(obj, "carrier", str, where)
    if carrier not in set(Carrier):
        raise PayloadError(
            "wrong_type", f"{where}.carrier: expected one of {sorted(Carrier)}, found {short_repr(carrier)}"
        )
    qs = _quantities(obj, where)
    interval = typed_field(obj, "interval_s", int, where)
    if interval <= 0:
        raise PayloadError("wrong_type", f"{where}.interval_s: expected a positive integer, found {short_repr(interval)}")
    if interval > MAX_INTERVAL_S:
        raise PayloadError("out_of_range", f"{where}.interval_s: expected at most {MAX_INTERVAL_S} s, found {short_repr(interval)}")
    attrs = _attrs(obj, where)
    check_line_gases(kind, attrs, where)
    return MeterInfo(site, meter, kind, carrier, qs, interval, attrs)


def _attrs(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The ``attrs`` of a registration: an object nested at most :data:`MAX_DEPTH_META` levels ({} if absent)."""
    attrs = obj.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise PayloadError("wrong_type", f"{where}.attrs: expected an object, found {short_repr(attrs)}")
    if not depth_ok(attrs, MAX_DEPTH_META - 1):
        raise PayloadError("too_deep", f"{where}.attrs: expected nesting of at most {MAX_DEPTH_META} levels")
    return attrs


def _quantities(obj: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The ``quantities`` of metadata, each a contract quantity whose ``units`` entry (if any) is its unit."""
    qs = typed_field(obj, "quantities", list, where)
    if not qs:
        raise PayloadError("missing_field", f"{where}.quantities: expected at least one")
    if len(qs) > len(QUANTITIES):
        raise PayloadError("oversized", f"{where}.quantities: expected at most {len(QUANTITIES)}, found {len(qs)}")
    units = obj.get("units") or {}
    if not isinstance(units, dict):
        raise PayloadError("wrong_type", f"{where}.units: expected an object, found {short_repr(units)}")
    for q in qs:
        if not isinstance(q, str) or q not in QUANTITIES:
            raise PayloadError(
                "unknown_quantity",
                f"{where}.quantities: {short_repr(q)} is not in ems.readings.QUANTITIES (names carry units, e.g. power_kw)",
            )
        if q in units and units[q] != QUANTITIES[q].unit:
            raise PayloadError(
                "unknown_quantity",
                f"{where}.units.{q}: expected {QUANTITIES[q].unit!r}, found {short_repr(units[q])}",
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
    return site_from_fields(site, load_message(payload, where, max_depth=MAX_DEPTH_META), where)


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
    check_same(obj, "site", site, where)
    for name in ("name", "group", "company", "park", "tz", "country", "grid_region", "factor_set"):
        typed_field(obj, name, str, where)
    for name, bound in (("lat", 90.0), ("lon", 180.0)):
        v = typed_field(obj, name, (int, float), where)
        if not -bound <= v <= bound:
            raise PayloadError("out_of_range", f"{where}.{name}: expected -{bound:g} to {bound:g} degrees, found {short_repr(v)}")
    try:
        zoneinfo.ZoneInfo(obj["tz"])
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise PayloadError("wrong_type", f"{where}.tz: expected an IANA time zone like Asia/Shanghai, "
                                         f"found {short_repr(obj['tz'])}") from None
    if not isinstance(obj.get("province") or "", str):
        raise PayloadError("wrong_type", f"{where}.province: expected a string, found {short_repr(obj['province'])}")
    try:
        return SiteInfo.from_dict({**obj, "attrs": _attrs(obj, where)})
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError("wrong_type", f"{where}: {exc}") from None



def meter_status(site: str, meter: str, status: str, reason: str = "", since_ns: int | None = None) -> bytes:
    """Encode a meter's status (``online``/``offline``) for ``ems/v1/{site}/{meter}/_status``."""
    d: dict[str, Any] = {"v": SCHEMA_VERSION, "site": site, "meter": meter, "status": status}
    if reason:
        d["reason"] = reason
    if since_ns is not None:
        d["since"] = format_ts(since_ns)
    return dumps(d)
