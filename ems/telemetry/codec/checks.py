"""Checks of a parsed data message against its meter: quantities, interval, registers.

:func:`check_data` takes a :class:`~ems.telemetry.codec.data.DataMessage` of any
encoding (JSON, Sparkplug) with the meter's metadata and its latest accepted reading:
the quantities must be the meter's, the interval its interval, and registers may
neither fall nor rise faster than the meter's rating allows (:func:`register_rates`).
:func:`decode_data` is :func:`~ems.telemetry.codec.data.parse_data` then
:func:`check_data`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from ems.errors import PayloadError
from ems.readings import QUANTITIES, MeterInfo
from ems.telemetry.codec.data import DataMessage, Reading, parse_data
from ems.telemetry.codec.wire import MAX_ABS_VALUE, MAX_PAYLOAD_BYTES, format_ts

__all__ = [
    "JUMP_FACTOR",
    "REGISTER_RATE_DEFAULTS",
    "check_data",
    "check_registers",
    "decode_data",
    "register_rates",
]


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


_REGISTERS = frozenset(q.name for q in QUANTITIES.values() if q.kind == "register")

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
