"""Modbus register maps: value <-> 16-bit words, units, and read planning (pure functions).

A register holds one value of a meter as 1, 2 or 4 consecutive 16-bit words. Inside a
word the bytes are big-endian (the Modbus application protocol, section 4.2); the order
of the words of a multi-word value differs between vendors: ``big`` (high word first,
e.g. Eastron SDM630) or ``little`` (low word first). A value is ``raw * scale`` in the
register's ``unit``, which :data:`UNITS` converts to the unit of the readings contract
(``W`` -> ``kW``, ``Wh`` -> ``kWh``, ``MJ`` -> ``GJ``, ...).

Unimplemented values read as the SunSpec "not implemented" sentinels: NaN for float32,
the most negative number for signed and all ones for unsigned integers; :func:`decode`
returns None for them, so a gateway leaves the quantity out instead of inventing a value.

References
----------
Modbus Organization, "MODBUS Application Protocol Specification V1.1b3", 2012: data
encoding (4.2), read holding/input registers (6.3, 6.4: at most 125 registers a request),
exception codes (7).
SunSpec Alliance, "SunSpec Information Model Specification" v1.0: unimplemented values.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "CLOCK",
    "MAX_READ",
    "TYPES",
    "UNITS",
    "Model",
    "Register",
    "Span",
    "decode",
    "decode_span",
    "encode",
    "plan_reads",
    "unit_factor",
]

MAX_READ = 125
"""Most registers one read request may ask for (Modbus application protocol 6.3, 6.4)."""

CLOCK = ("ts", "interval_s")
"""Pseudo-quantities of a meter's clock: the end of the interval its registers hold [Unix s], its interval [s]."""


@dataclass(frozen=True)
class _Type:
    words: int
    fmt: str  # struct format, big-endian
    sentinel: int | None  # "not implemented" raw value (None for float: NaN)


TYPES: dict[str, _Type] = {
    "int16": _Type(1, ">h", -(1 << 15)),
    "uint16": _Type(1, ">H", (1 << 16) - 1),
    "int32": _Type(2, ">i", -(1 << 31)),
    "uint32": _Type(2, ">I", (1 << 32) - 1),
    "int64": _Type(4, ">q", -(1 << 63)),
    "uint64": _Type(4, ">Q", (1 << 64) - 1),
    "float32": _Type(2, ">f", None),
    "float64": _Type(4, ">d", None),
}
"""Register types: words, struct format and the SunSpec "not implemented" value."""

UNITS: dict[str, dict[str, float]] = {
    "kW": {"W": 1e-3, "kW": 1.0, "MW": 1e3},
    "kWh": {"Wh": 1e-3, "kWh": 1.0, "MWh": 1e3},
    "GJ": {"kJ": 1e-6, "MJ": 1e-3, "GJ": 1.0, "kWh": 3.6e-3, "MWh": 3.6},
    "m3": {"L": 1e-3, "m3": 1.0},
    "m3/h": {"L/h": 1e-3, "m3/h": 1.0},
    "kg": {"g": 1e-3, "kg": 1.0, "t": 1e3},
    "RMB": {"RMB": 1.0},
    "%": {"%": 1.0},
    "W/m2": {"W/m2": 1.0, "kW/m2": 1e3},
    "degC": {"degC": 1.0},
    "s": {"s": 1.0},
    "units": {"units": 1.0},
}
"""Register units each contract unit accepts, with the factor to the contract unit (SI definitions)."""


def unit_factor(register_unit: str, contract_unit: str) -> float:
    """Factor from ``register_unit`` to ``contract_unit``.

    Raises
    ------
    ValueError
        If the register's unit cannot be converted, naming the units that can.
    """
    accepted = UNITS.get(contract_unit, {})
    if register_unit not in accepted:
        raise ValueError(
            f"expected a unit convertible to {contract_unit} ({', '.join(accepted) or contract_unit}), "
            f"found {register_unit!r}"
        )
    return accepted[register_unit]


@dataclass(frozen=True)
class Register:
    """Where and how a meter holds one quantity.

    Attributes
    ----------
    quantity : str
        A name of :data:`ems.readings.QUANTITIES`, or ``ts`` / ``interval_s`` (the clock).
    address : int
        0-based protocol address of the first word.
    type : str
        A key of :data:`TYPES`.
    factor : float
        Contract unit per raw count: ``scale`` times the unit conversion.
    word_order : str
        ``big`` (high word first) or ``little``.
    """

    quantity: str
    address: int
    type: str
    factor: float = 1.0
    word_order: str = "big"

    @property
    def words(self) -> int:
        """Number of 16-bit registers the value takes."""
        return TYPES[self.type].words

    @property
    def end(self) -> int:
        """First address after the value."""
        return self.address + self.words


@dataclass(frozen=True)
class Model:
    """A meter model's register map.

    Attributes
    ----------
    name : str
    registers : tuple of Register
    function : str
        ``input`` (function 04) or ``holding`` (03).
    max_gap : int
        Most unused registers one read may span to join two values (0: only adjacent ones;
        a real meter may answer exception 02 for a read that touches an undefined address).
    """

    name: str
    registers: tuple[Register, ...]
    function: str = "input"
    max_gap: int = 0

    def register(self, quantity: str) -> Register | None:
        """The register of ``quantity`` (None if the model has none)."""
        for r in self.registers:
            if r.quantity == quantity:
                return r
        return None

    @property
    def has_clock(self) -> bool:
        """True when the meter tells the end of the interval its registers hold."""
        return self.register("ts") is not None


def encode(reg: Register, value: float) -> list[int]:
    """Encode ``value`` [contract unit] as the register's words.

    NaN gives the "not implemented" value. Integers are rounded to the nearest count and
    wrap around like a real meter's counter when they overflow the type.
    """
    t = TYPES[reg.type]
    if t.sentinel is None:
        raw = struct.pack(t.fmt, value / reg.factor if math.isfinite(value) else value)
    elif not math.isfinite(value):
        raw = struct.pack(t.fmt, t.sentinel)
    else:
        bits = 16 * t.words
        n = round(value / reg.factor) % (1 << bits)
        if t.fmt[1].islower() and n >= 1 << (bits - 1):  # signed: two's complement
            n -= 1 << bits
        raw = struct.pack(t.fmt, n)
    words = list(struct.unpack(f">{t.words}H", raw))
    return words[::-1] if reg.word_order == "little" else words


def decode(reg: Register, words: Sequence[int]) -> float | None:
    """Decode the register's words into a value [contract unit]; None if "not implemented".

    Float NaN and infinities are returned as they are: the caller rejects them.
    """
    t = TYPES[reg.type]
    ws = list(words[::-1]) if reg.word_order == "little" else list(words)
    (raw,) = struct.unpack(t.fmt, struct.pack(f">{t.words}H", *ws))
    if t.sentinel is None:
        return float(raw) * reg.factor if math.isfinite(raw) else float(raw)
    if raw == t.sentinel:
        return None
    return float(raw * reg.factor)


@dataclass(frozen=True)
class Span:
    """One read request: ``count`` registers from ``address``, holding ``registers``."""

    address: int
    count: int
    registers: tuple[Register, ...]


def plan_reads(registers: Iterable[Register], max_gap: int = 0, max_count: int = MAX_READ) -> list[Span]:
    """Group registers into as few reads as possible.

    Two values share a read when at most ``max_gap`` unused registers lie between them
    and the read stays within ``max_count`` registers.
    """
    regs = sorted(registers, key=lambda r: r.address)
    spans: list[Span] = []
    group: list[Register] = []
    for r in regs:
        if group:
            start, end = group[0].address, max(g.end for g in group)
            if r.address - end > max_gap or r.end - start > max_count:
                spans.append(Span(start, end - start, tuple(group)))
                group = []
        group.append(r)
    if group:
        start, end = group[0].address, max(g.end for g in group)
        spans.append(Span(start, end - start, tuple(group)))
    return spans


def decode_span(span: Span, words: Sequence[int]) -> dict[str, float | None]:
    """Decode every register of ``span`` from the words a read returned."""
    out: dict[str, float | None] = {}
    for r in span.registers:
        off = r.address - span.address
        out[r.quantity] = decode(r, words[off : off + r.words])
    return out
