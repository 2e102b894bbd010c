"""The gateway's device list (``ems gateway GATEWAY.yaml``) and the meter models it names.

A gateway file lists Modbus TCP devices (one meter each: host, port, unit id), the meter
models whose register maps they follow, and optionally the sites' registrations::

    models:                       # optional: ems's own (ems-em3-*) are always known
      sdm630:
        function: input           # input (04) or holding (03) registers
        max_gap: 0                # unused registers one read may span
        registers:
          - {quantity: power_kw, address: 0x0034, type: float32, unit: W}
          - {quantity: import_kwh, address: 0x0048, type: float32, unit: kWh}
    devices:
      - {site: qingdao, meter: grid, kind: grid, host: 10.0.0.7, port: 502, unit: 1,
         model: sdm630, interval_s: 900}

It is read with the same YAML loader as site and scenario files, so every mistake is
reported as ``file:line: field.path: expected ..., found ...``. ems's own register map
is data (``ems/data/modbus/ems-em3.yaml``) checked by the same schema.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ems.datafiles import data_path
from ems.errors import LocatedError
from ems.modbus.registers import CLOCK, TYPES, Model, Register, unit_factor
from ems.readings import METER_KINDS, QUANTITIES, Carrier, MeterInfo, MeterKind, SiteInfo

__all__ = ["DeviceSpec", "GatewaySpec", "builtin_models", "load_gateway", "load_gateway_data", "to_model"]

_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
Ident = Annotated[str, Field(pattern=_ID, description="identifier: a-z, 0-9, _ and -")]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterSpec(_Spec):
    """One value in a meter's register map."""

    quantity: str = Field(description="a contract quantity (power_kw, import_kwh, ...) or ts / interval_s")
    address: int = Field(ge=0, le=65535, description="0-based protocol address of the first word")
    type: Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
    unit: str = Field(description="the register's unit, e.g. W, Wh, kWh, MJ")
    scale: float = Field(1.0, description="value = raw * scale, in unit")
    word_order: Literal["big", "little"] = Field("big", description="big: high word first")

    @field_validator("quantity")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in QUANTITIES and v not in CLOCK:
            raise ValueError(f"expected a quantity of ems.readings.QUANTITIES or one of {list(CLOCK)}, found {v!r}")
        return v

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float) -> float:
        if not (v == v and abs(v) not in (0.0, float("inf"))):
            raise ValueError(f"expected a finite, non-zero scale, found {v!r}")
        return v

    @model_validator(mode="after")
    def _unit(self) -> RegisterSpec:
        contract = "s" if self.quantity in CLOCK else QUANTITIES[self.quantity].unit
        try:
            unit_factor(self.unit, contract)
        except ValueError as exc:
            raise ValueError(f"unit of {self.quantity}: {exc}") from None
        return self


class ModelSpec(_Spec):
    """A meter model: how its registers are read."""

    function: Literal["input", "holding"] = "input"
    max_gap: int = Field(0, ge=0, le=120)
    registers: list[RegisterSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> ModelSpec:
        seen: set[str] = set()
        used: dict[int, str] = {}
        for r in self.registers:
            if r.quantity in seen:
                raise ValueError(f"expected each quantity once, found {r.quantity} twice")
            seen.add(r.quantity)
            for a in range(r.address, r.address + TYPES[r.type].words):
                if a in used:
                    raise ValueError(f"expected registers that do not overlap, found {r.quantity} and {used[a]} at {a:#06x}")
                used[a] = r.quantity
        return self


class SiteSpec(_Spec):
    """A site's registration (what accounting needs to know about it)."""

    site: Ident
    name: str
    group: str
    company: str
    park: str
    tz: str
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    country: str = Field(pattern=r"^[A-Z]{2}$")
    grid_region: str
    province: str = Field("", description="ISO 3166-2 subdivision (e.g. CN-SD), the most local grid-factor place; '' if none")
    factor_set: str
    attrs: dict[str, Any] = Field(default_factory=dict)


class DeviceSpec(_Spec):
    """One Modbus TCP device: a meter."""

    site: Ident
    meter: Ident
    kind: MeterKind
    carrier: Carrier | None = Field(None, description="default: the kind's carrier")
    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=255, description="Modbus unit id (1-247 on a serial line)")
    model: str
    interval_s: int = Field(ge=1, le=86400, description="reading interval [s]: readings are stamped at its ends")
    poll_s: float | None = Field(
        None, gt=0, le=86400,
        description="[s] how often to poll; default: interval_s, or 1 s for a meter with a clock",
    )
    timeout_s: float = Field(1.0, gt=0, le=60, description="[s] answer timeout of one read")
    quantities: list[str] | None = Field(None, description="default: the kind's quantities the model has")
    attrs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("quantities")
    @classmethod
    def _quantities(cls, v: list[str] | None) -> list[str] | None:
        for q in v or []:
            if q not in QUANTITIES:
                raise ValueError(f"expected quantities of ems.readings.QUANTITIES, found {q!r}")
        return v


class GatewaySpec(_Spec):
    """A gateway file."""

    models: dict[str, ModelSpec] = Field(default_factory=dict)
    sites: list[SiteSpec] = Field(default_factory=list)
    devices: list[DeviceSpec] = Field(min_length=1)


def to_model(name: str, spec: ModelSpec) -> Model:
    """Turn a checked model spec into a :class:`~ems.modbus.registers.Model`."""
    regs = []
    for r in spec.registers:
        contract = "s" if r.quantity in CLOCK else QUANTITIES[r.quantity].unit
        factor = r.scale * unit_factor(r.unit, contract)
        regs.append(Register(r.quantity, r.address, r.type, factor, r.word_order))
    return Model(name, tuple(regs), spec.function, spec.max_gap)


@cache
def builtin_models() -> dict[str, Model]:
    """ems's own meter models (``ems/data/modbus/ems-em3.yaml``), by name."""
    path = data_path("modbus", "ems-em3.yaml")
    spec = _validate(path.read_text(encoding="utf-8"), str(path), _MapFile)
    return {name: to_model(name, m) for name, m in spec.models.items()}


class _MapFile(_Spec):
    name: str
    models: dict[str, ModelSpec]


def _validate(text: str, name: str, schema: type[Any]) -> Any:
    from ems.model.validation import validate_document
    from ems.yamldoc import parse

    return validate_document(parse(text, name), schema)


def load_gateway(path: str | Path) -> tuple[GatewaySpec, dict[str, Model]]:
    """Read and check a gateway file; return it with every model its devices use.

    Raises
    ------
    LocatedError
        Each problem as ``file:line: field: expected ..., found ...``.
    ConfigError
        If the file cannot be read.
    """
    from ems.model.validation import validate_document
    from ems.yamldoc import load_document

    doc = load_document(path)
    spec: GatewaySpec = validate_document(doc, GatewaySpec)
    return spec, _check_devices(spec, doc)


def load_gateway_data(text: str, name: str = "<string>") -> tuple[GatewaySpec, dict[str, Model]]:
    """:func:`load_gateway` from text."""
    from ems.model.validation import validate_document
    from ems.yamldoc import parse

    doc = parse(text, name)
    spec: GatewaySpec = validate_document(doc, GatewaySpec)
    return spec, _check_devices(spec, doc)


def _check_devices(spec: GatewaySpec, doc: Any) -> dict[str, Model]:
    """Cross-checks: models exist, quantities are in the model, devices and meters are unique."""
    models = dict(builtin_models())
    models.update({n: to_model(n, m) for n, m in spec.models.items()})
    problems: list[tuple[tuple[Any, ...], str]] = []
    seen_dev: dict[tuple[Any, ...], int] = {}
    seen_meter: dict[tuple[Any, ...], int] = {}
    for i, d in enumerate(spec.devices):
        for key, seen, what in (((d.host, d.port, d.unit), seen_dev, "host, port and unit"),
                                ((d.site, d.meter), seen_meter, "site and meter")):
            if key in seen:
                problems.append(((i,), f"expected each {what} once, found them again (first in devices[{seen[key]}])"))
            seen.setdefault(key, i)
        model = models.get(d.model)
        if model is None:
            problems.append(((i, "model"), f"expected a model of this file or {sorted(builtin_models())}, found {d.model!r}"))
            continue
        missing = [q for q in d.quantities or () if model.register(q) is None]
        if missing:
            problems.append(((i, "quantities"), f"expected quantities model {d.model} has, found {missing}"))
        elif not device_quantities(d, model):
            problems.append(((i, "model"), f"expected a model with registers of a {d.kind} meter, found none in {d.model}"))
        if not model.has_clock and d.poll_s is not None and d.poll_s != d.interval_s:
            problems.append(((i, "poll_s"), f"expected interval_s ({d.interval_s}) for model {d.model}, which has no "
                             f"clock register (ts): it is polled at each interval end; found {d.poll_s:g}"))
    if problems:
        lines = []
        for path, text in problems:
            file, line = doc.locate(("devices", *path))
            lines.append(f"{file}:{line}: devices.{'.'.join(map(str, path))}: {text}")
        err = LocatedError(problems[0][1], file=doc.name, line=doc.locate(("devices", *problems[0][0]))[1])
        err.args = ("\n".join(lines),)
        raise err
    return {d.model: models[d.model] for d in spec.devices}


def device_quantities(d: DeviceSpec, model: Model) -> tuple[str, ...]:
    """The quantities a device reports: as listed, or those of its kind the model has."""
    if d.quantities:
        return tuple(d.quantities)
    return tuple(q for q in METER_KINDS[d.kind][1] if model.register(q) is not None)


def meter_info(d: DeviceSpec, model: Model) -> MeterInfo:
    """The metadata the gateway announces for a device."""
    carrier = d.carrier or METER_KINDS[d.kind][0]
    attrs = {"protocol": "modbus-tcp", "host": d.host, "port": d.port, "unit": d.unit, "model": model.name, **d.attrs}
    return MeterInfo(d.site, d.meter, str(d.kind), str(carrier), device_quantities(d, model), d.interval_s, attrs)


def site_info(s: SiteSpec) -> SiteInfo:
    """The registration the gateway announces for a site."""
    return SiteInfo.from_dict(s.model_dump())
