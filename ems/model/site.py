"""Schema of a site file: one factory park, its assets, loads, fuels and procurement.

Units follow ``docs/glossary.md``; where a field's unit could be mistaken, the
unit is in its name (``kwp``, ``energy_kwh``, ``annual_kwh``, ``tilt_deg``).
All models forbid unknown fields, so a misspelt key is an error, not a silent default.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from ems.gases import load_gases, unknown_gas_message

__all__ = [
    "DELIVERY_PROFILE",
    "Battery",
    "Boiler",
    "CertificatePurchase",
    "CertificateSale",
    "Chp",
    "DemandResponse",
    "Dispatch",
    "Fleet",
    "Grid",
    "Hierarchy",
    "Loads",
    "Location",
    "Output",
    "ProductLine",
    "PvArray",
    "Refrigerant",
    "Reporting",
    "Site",
    "Steam",
    "Tariff",
    "UnitEmission",
    "Weather",
]

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
Ident = Annotated[str, Field(pattern=ID_PATTERN, description="identifier: a-z, 0-9, _ and -")]
Frac = Annotated[float, Field(ge=0.0, le=1.0)]
Months = Annotated[list[Annotated[int, Field(ge=1, le=12)]], Field(min_length=1)]
Monthly = Annotated[list[float], Field(min_length=12, max_length=12)]


def _known_gas(v: str) -> str:
    """A gas of the GWP table (``ems/data/gases.yaml``), by name or alias."""
    if load_gases().canonical(v) is None:
        raise ValueError(unknown_gas_message(v))
    return v


GasName = Annotated[str, AfterValidator(_known_gas), Field(description="a gas of ems/data/gases.yaml, e.g. R-410A, HFC-245fa, SF6")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)


class Reliability(_Model):
    """Random failures of an asset: exponential times between failures and to repair."""

    mtbf_h: float | None = Field(None, gt=0, description="mean time between failures [h]")
    mttr_h: float = Field(24.0, gt=0, description="mean time to repair [h]")


class Maintenance(_Model):
    """A planned outage of an asset, in site-local time."""

    start: dt.datetime = Field(description="local start")
    end: dt.datetime = Field(description="local end (exclusive)")

    @model_validator(mode="after")
    def _order(self) -> Maintenance:
        if self.end <= self.start:
            raise ValueError(f"end must be after start; found start={self.start}, end={self.end}")
        return self


class Location(_Model):
    """Where the site is."""

    lat: float = Field(ge=-90, le=90, description="latitude [deg], north positive")
    lon: float = Field(ge=-180, le=180, description="longitude [deg], east positive")
    tz: str = Field(description="IANA time zone, e.g. Asia/Shanghai")
    altitude_m: float = Field(0.0, ge=-500, le=9000, description="altitude [m]")
    country: str = Field("CN", pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")
    province: str | None = Field(
        None,
        pattern=r"^[A-Z]{2}-[A-Z0-9]{1,3}$",
        description="ISO 3166-2 subdivision, e.g. CN-SD (Shandong): the most local place for grid factors",
    )

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
            raise ValueError(f"expected an IANA time zone such as 'Asia/Shanghai', found {v!r}") from None
        return v


class Hierarchy(_Model):
    """Where the site sits in the group for rollups."""

    group: str
    company: str
    park: str


class Weather(_Model):
    """Weather model: synthetic (default) or a TMY/EPW file.

    The synthetic model draws daily clearness around a monthly mean clearness
    index ``kt`` (ratio of global to extraterrestrial horizontal irradiation) and a
    temperature from monthly means with a daily cycle.
    """

    source: Literal["synthetic", "epw", "tmy3"] = "synthetic"
    path: str | None = Field(None, description="EPW/TMY3 file, relative to the site file")
    clearness_index: Monthly | None = Field(
        None, description="monthly mean clearness index kt [-], Jan..Dec"
    )
    temp_air_c: Monthly | None = Field(None, description="monthly mean air temperature [degC]")
    temp_daily_amplitude_c: float = Field(8.0, ge=0, le=30, description="peak-to-peak daily swing [degC]")
    cloud_persistence: Frac = Field(0.7, description="day-to-day autocorrelation of cloudiness [-]")

    @model_validator(mode="after")
    def _need(self) -> Weather:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"source {self.source!r} needs 'path' to the weather file")
        if self.source == "synthetic" and (self.clearness_index is None or self.temp_air_c is None):
            raise ValueError("synthetic weather needs 'clearness_index' and 'temp_air_c' (12 monthly values each)")
        return self


class TouWindow(_Model):
    """Hours of one tariff period, local time, ``[start, end)`` in hours 0-24; may wrap midnight."""

    period: str = Field(description="period name, one of the tariff's prices")
    start_h: float = Field(ge=0, le=24)
    end_h: float = Field(ge=0, le=24)


class TouSeason(_Model):
    """Tariff windows that apply in some months; hours not covered use ``default``."""

    months: Months = Field(default_factory=lambda: list(range(1, 13)))
    windows: list[TouWindow] = Field(default_factory=list)
    default: str = "flat"


class Tariff(_Model):
    """Time-of-use electricity tariff."""

    currency: str = "CNY"
    prices: dict[str, float] = Field(description="energy price by period [currency/kWh]")
    seasons: list[TouSeason] = Field(min_length=1)
    demand_charge_per_kw_month: float = Field(0.0, ge=0, description="[currency/kW/month] on monthly peak import")
    export_price: float = Field(0.0, ge=0, description="[currency/kWh] paid for exports")

    @model_validator(mode="after")
    def _periods_priced(self) -> Tariff:
        for s in self.seasons:
            names = {w.period for w in s.windows} | {s.default}
            missing = names - set(self.prices)
            if missing:
                raise ValueError(
                    f"expected a price for every tariff period; found no price for {sorted(missing)} "
                    f"(priced periods: {sorted(self.prices)})"
                )
        seen: dict[int, int] = {}
        for i, s in enumerate(self.seasons):
            for m in s.months:
                if m in seen:
                    raise ValueError(
                        f"expected each month in one season; found month {m} in seasons {seen[m]} and {i}"
                    )
                seen[m] = i
        return self


class DemandResponse(_Model):
    """Demand-response events that cap grid import for a few hours."""

    events_per_year: float = Field(0.0, ge=0)
    duration_h: float = Field(2.0, gt=0, le=24)
    cap_fraction: Frac = Field(0.8, description="import cap as a fraction of contract capacity [-]")
    months: Months = Field(default_factory=lambda: [6, 7, 8, 12, 1])
    start_hours: list[int] = Field(default_factory=lambda: [10, 14, 19], description="local start hours drawn from")


class Grid(_Model):
    """Connection to the public grid."""

    contract_kw: float = Field(gt=0, description="contracted import capacity [kW]")
    region: str = Field(description="grid region for emission factors, e.g. CN-East, SI")
    export_limit_kw: float | None = Field(None, ge=0, description="max export [kW]; 0 = zero export; None = contract_kw")
    tariff: Tariff | None = None
    demand_response: DemandResponse | None = None


class PvArray(_Model):
    """A rooftop PV array with its inverter."""

    id: Ident
    kwp: float = Field(gt=0, description="DC nameplate [kWp]")
    tilt_deg: float = Field(20.0, ge=0, le=90)
    azimuth_deg: float = Field(180.0, ge=0, lt=360, description="degrees east of north; 180 = south")
    losses_pct: float = Field(14.0, ge=0, lt=100, description="DC system losses (soiling, wiring, mismatch) [%]")
    inverter_kw: float | None = Field(None, gt=0, description="AC rating [kW]; output is clipped to it; default kwp/1.1")
    inverter_efficiency: float = Field(0.97, gt=0.5, le=1.0, description="nominal efficiency [-]")
    gamma_pdc: float = Field(-0.0037, ge=-0.01, le=0, description="power temperature coefficient [1/degC]")
    degradation_pct_per_year: float = Field(0.5, ge=0, le=5)
    commissioned: dt.date | None = Field(None, description="date of commissioning; degradation counts from it")
    reliability: Reliability = Field(default_factory=Reliability)
    maintenance: list[Maintenance] = Field(default_factory=list)


class Dispatch(_Model):
    """Battery dispatch strategy."""

    strategy: Literal["self_consumption", "tou_arbitrage", "peak_shaving"] = "self_consumption"
    threshold_kw: float | None = Field(None, gt=0, description="peak shaving: keep grid import below [kW]")
    charge_periods: list[str] = Field(default_factory=lambda: ["valley"], description="tou_arbitrage: charge from grid in")
    discharge_periods: list[str] = Field(default_factory=lambda: ["peak", "sharp"], description="tou_arbitrage: discharge in")

    @model_validator(mode="after")
    def _threshold(self) -> Dispatch:
        if self.strategy == "peak_shaving" and self.threshold_kw is None:
            raise ValueError("peak_shaving needs 'threshold_kw' (grid import to stay below) [kW]")
        return self


class Battery(_Model):
    """A battery energy storage system."""

    id: Ident
    energy_kwh: float = Field(gt=0, description="usable nameplate energy [kWh]")
    power_kw: float = Field(gt=0, description="max charge and discharge power, AC [kW]")
    eta_charge: float = Field(0.95, gt=0, le=1)
    eta_discharge: float = Field(0.95, gt=0, le=1)
    soc_min: Frac = 0.1
    soc_max: Frac = 0.95
    soc_initial: Frac = 0.5
    dispatch: Dispatch = Field(default_factory=Dispatch)
    reliability: Reliability = Field(default_factory=Reliability)
    maintenance: list[Maintenance] = Field(default_factory=list)

    @model_validator(mode="after")
    def _window(self) -> Battery:
        if not self.soc_min < self.soc_max:
            raise ValueError(f"soc_min must be below soc_max; found {self.soc_min} >= {self.soc_max}")
        if not self.soc_min <= self.soc_initial <= self.soc_max:
            raise ValueError(
                f"soc_initial must be within [soc_min, soc_max] = [{self.soc_min}, {self.soc_max}]; found {self.soc_initial}"
            )
        return self


class Shift(_Model):
    """A production shift, local hours ``[start_h, end_h)``; may wrap midnight."""

    start_h: float = Field(ge=0, le=24)
    end_h: float = Field(ge=0, le=24)


class Shutdown(_Model):
    """A production shutdown (holiday, overhaul), local dates inclusive."""

    start: dt.date
    end: dt.date
    reason: str = "shutdown"

    @model_validator(mode="after")
    def _order(self) -> Shutdown:
        if self.end < self.start:
            raise ValueError(f"end must not be before start; found start={self.start}, end={self.end}")
        return self


class Calendar(_Model):
    """The production calendar."""

    shifts: list[Shift] = Field(default_factory=lambda: [Shift(start_h=8, end_h=16), Shift(start_h=16, end_h=24)])
    workdays: list[Annotated[int, Field(ge=0, le=6)]] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4], description="0 = Monday .. 6 = Sunday"
    )
    holidays: list[dt.date] = Field(default_factory=list, description="public holidays, no production")
    shutdowns: list[Shutdown] = Field(default_factory=list)


class ProductionLoad(_Model):
    """Production lines: ``peak_kw`` while running, ``idle_fraction`` of it otherwise."""

    peak_kw: float = Field(ge=0)
    idle_fraction: Frac = 0.15
    noise: Frac = Field(0.05, description="relative std of step-to-step load noise [-]")
    annual_kwh: float | None = Field(None, gt=0, description="scale the profile to this yearly energy [kWh]")


class BaseLoad(_Model):
    """Lighting, IT, offices: constant with a small daily cycle."""

    kw: float = Field(ge=0)
    annual_kwh: float | None = Field(None, gt=0)


class HvacLoad(_Model):
    """HVAC driven by outdoor temperature (degree-hour model)."""

    cooling_kw_per_degc: float = Field(0.0, ge=0, description="[kW/degC] above cooling_setpoint_c")
    heating_kw_per_degc: float = Field(0.0, ge=0, description="electric heating [kW/degC] below heating_setpoint_c")
    cooling_setpoint_c: float = 24.0
    heating_setpoint_c: float = 14.0
    max_kw: float | None = Field(None, gt=0)
    occupied_only: bool = Field(False, description="run only in shifts (offices) or always (process cooling)")
    annual_kwh: float | None = Field(None, gt=0)


class CompressedAirLoad(_Model):
    """Compressors: a share of rated power follows production, the rest is leakage."""

    kw: float = Field(ge=0, description="rated electrical power [kW]")
    leakage_fraction: Frac = Field(0.25, description="share drawn even without production [-]")
    annual_kwh: float | None = Field(None, gt=0)


class Loads(_Model):
    """Electrical loads of the site."""

    calendar: Calendar = Field(default_factory=Calendar)
    production: ProductionLoad | None = None
    base: BaseLoad | None = None
    hvac: HvacLoad | None = None
    compressed_air: CompressedAirLoad | None = None
    electrified_fleet_kwh_per_year: float = Field(0.0, ge=0, description="electric forklifts charged overnight [kWh/yr]")


class Boiler(_Model):
    """A natural-gas steam boiler."""

    efficiency: float = Field(0.9, gt=0.3, le=1.0, description="heat out / fuel heat in (LHV) [-]")
    share: Frac = Field(description="share of steam demand it covers [-]")


class Chp(_Model):
    """A natural-gas combined heat and power unit running in production hours."""

    kw_e: float = Field(gt=0, description="electrical rating [kW]")
    eta_e: float = Field(0.38, gt=0, lt=1)
    eta_th: float = Field(0.45, gt=0, lt=1)
    run: Literal["production", "always"] = "production"
    reliability: Reliability = Field(default_factory=Reliability)


class Steam(_Model):
    """Heat (steam) demand and how it is supplied."""

    process_kw: float = Field(0.0, ge=0, description="process heat while producing [kW thermal]")
    process_idle_fraction: Frac = 0.1
    heating_kw_per_degc: float = Field(0.0, ge=0, description="space heating below heating_base_c [kW/degC]")
    heating_base_c: float = 15.0
    heating_months: list[Annotated[int, Field(ge=1, le=12)]] = Field(default_factory=lambda: [11, 12, 1, 2, 3])
    waste_heat_share: Frac = Field(0.0, description="share of demand met by recovered compressor heat [-]")
    boiler: Boiler | None = None
    annual_gj: float | None = Field(None, gt=0, description="scale total heat demand to this [GJ/yr]")


class Fleet(_Model):
    """A vehicle fleet fuelled on site: deliveries of ``fill_kg`` whenever the tank runs low."""

    id: Ident
    fuel: Literal["diesel", "gasoline"]
    annual_kg: float = Field(gt=0, description="yearly consumption [kg]")
    fill_kg: float = Field(500.0, gt=0, description="size of one delivery [kg]")
    workdays_only: bool = True


class Refrigerant(_Model):
    """A charge of gas in equipment (chillers, AC, SF6 switchgear) and its yearly leak, topped up at service visits."""

    gas: GasName
    equipment: str = Field("chillers and air conditioning", description="what holds the charge, e.g. SF6 switchgear")
    charge_kg: float = Field(gt=0)
    annual_leak_rate: Frac = Field(0.05, description="share of charge lost per year [-]")
    services_per_year: int = Field(2, ge=1, le=52)


class UnitEmission(_Model):
    """Process or fugitive emission per unit of a product, in kg of a named gas."""

    gas: GasName
    kg_per_unit: float = Field(ge=0, description="kg of the gas emitted per unit made [kg/unit]")
    kind: Literal["fugitive", "process"] = "fugitive"
    activity: str = Field(description="e.g. refrigerant charging losses, foam blowing agent")
    source: str = Field("", description="where the rate comes from (published figure, guideline, assumption)")


class ProductLine(_Model):
    """A production line: units made per year, following the shift calendar, and per-unit emissions."""

    id: Ident
    product: str
    annual_units: float = Field(gt=0, description="units made per year (reference year) [units]")
    emissions: list[UnitEmission] = Field(default_factory=list)


class Output(_Model):
    """Production output value, following the production schedule."""

    annual_rmb: float = Field(gt=0, description="output value per year [RMB]")
    growth_pct_per_year: float = 0.0


DELIVERY_PROFILE = r"^(baseload|solar|as_consumed|[A-Za-z0-9][A-Za-z0-9_-]*:[a-z_]+)$"
"""Delivery profiles a contract may name (``ems.accounting.profiles``; ``docs/hourly-matching.md``)."""


class Contract(_Model):
    """A green power or hydropower contract (instrument type PPA), settled monthly."""

    id: Ident
    kind: Literal["hydro", "green_power"]
    annual_mwh: float = Field(gt=0)
    start: dt.date | None = None
    end: dt.date | None = None
    plant: str = Field("", description="generating plant")
    plant_commissioned: dt.date | None = None
    market_boundary: str | None = Field(None, description="market of the plant, e.g. CN, EU-AIB; default the site's")
    profile: str | None = Field(
        None,
        pattern=DELIVERY_PROFILE,
        description=(
            "how each settlement's energy falls on the hours of its period, for hourly matching: baseload, "
            "solar, as_consumed or <grid region>:<technology> of ems's modelled mix (e.g. CN-South:hydro); "
            "default baseload"
        ),
    )


class CertificatePurchase(_Model):
    """Unbundled renewable certificates (1 MWh each) bought and retired on a schedule.

    Each purchase retires the next ``mwh`` serials from ``serial_first`` on, so a
    monthly schedule retires consecutive ranges.
    """

    id: Ident
    scheme: Literal["GEC", "I-REC", "GO"] = "GEC"
    mwh: float = Field(gt=0, description="MWh per purchase")
    vintage: int = Field(ge=2015, le=2100, description="generation year of the certificates")
    technology: str = "solar"
    schedule: Literal["once", "monthly", "quarterly"] = "once"
    date: dt.date | None = Field(None, description="date of a 'once' purchase; default end of the period")
    period_year: int | None = Field(None, description="reporting year it is retired for; default the purchase year")
    serial_prefix: str | None = Field(None, description="registry serial prefix; default '<scheme>-<vintage>-<id>'")
    serial_first: int = Field(1, ge=0, description="first serial number retired")
    plant: str = Field("", description="generating plant")
    plant_commissioned: dt.date | None = Field(None, description="commissioning (or re-powering) date of the plant")
    market_boundary: str | None = Field(None, description="market of the plant, e.g. CN, EU-AIB; default the site's")


class CertificateSale(_Model):
    """Certificates registered for the site's own PV and sold: that PV electricity is no longer green."""

    id: Ident
    scheme: Literal["GEC", "I-REC", "GO"] = "GEC"
    pv: Ident = Field(description="id of the site's PV array the certificates were issued for")
    mwh: float = Field(gt=0)
    vintage: int = Field(ge=2015, le=2100)
    date: dt.date | None = Field(None, description="sale date; default end of the period")
    serial_prefix: str | None = None
    serial_first: int = Field(1, ge=0)


class Procurement(_Model):
    """Green power bought to raise the green share, and own-PV certificates sold."""

    contracts: list[Contract] = Field(default_factory=list)
    certificates: list[CertificatePurchase] = Field(default_factory=list)
    certificates_sold: list[CertificateSale] = Field(default_factory=list)


class Reporting(_Model):
    """Where the site stands in the group's reporting boundary (GHG Protocol Corporate Standard, chapter 3).

    ``approach``, ``included`` and ``reason`` are normally set by the scenario's ``boundary``.
    """

    operational_control: bool = Field(True, description="the group has operational control of the site")
    financial_control: bool = True
    equity_pct: float = Field(100.0, ge=0, le=100)
    approach: Literal["operational_control", "financial_control", "equity_share"] = "operational_control"
    included: bool = True
    reason: str = ""


class ProcessEmission(_Model):
    """Non-energy process emissions spread over production hours: kg of a named gas, or kgCO2e."""

    source: str
    gas: GasName | None = Field(None, description="the gas emitted; with annual_kg")
    annual_kg: float | None = Field(None, gt=0, description="kg of the gas per year")
    annual_kgco2e: float | None = Field(None, gt=0, description="when only CO2e is known")

    @model_validator(mode="after")
    def _one_form(self) -> ProcessEmission:
        if (self.gas is None or self.annual_kg is None) == (self.annual_kgco2e is None):
            raise ValueError("expected either 'gas' with 'annual_kg', or 'annual_kgco2e'")
        return self


class Site(_Model):
    """A factory park."""

    id: Ident
    name: str
    hierarchy: Hierarchy
    location: Location
    weather: Weather
    grid: Grid
    factor_set: str = Field("cn-2023", description="factor set name, see ems/data/factors/")
    pv: list[PvArray] = Field(default_factory=list)
    batteries: list[Battery] = Field(default_factory=list)
    loads: Loads = Field(default_factory=Loads)
    steam: Steam | None = None
    chp: Chp | None = None
    other_gas_m3_per_year: float = Field(0.0, ge=0, description="canteens, furnaces [m3/yr]")
    gas_lhv_mj_per_m3: float = Field(
        38.931,
        gt=0,
        description="lower heating value of the natural gas [MJ/m3, standard]; default 38 931 kJ/m3, "
        "the natural gas of GB/T 2589-2020 Annex A (1.3300 kgce/m3)",
    )
    fleets: list[Fleet] = Field(default_factory=list)
    refrigerants: list[Refrigerant] = Field(default_factory=list)
    process_emissions: list[ProcessEmission] = Field(default_factory=list)
    products: list[ProductLine] = Field(default_factory=list, description="production lines with per-unit emissions")
    output: Output
    procurement: Procurement = Field(default_factory=Procurement)
    reporting: Reporting = Field(default_factory=Reporting)

    @model_validator(mode="after")
    def _unique_ids(self) -> Site:
        seen: dict[str, str] = {}
        for kind, items in (
            ("pv", self.pv),
            ("batteries", self.batteries),
            ("fleets", self.fleets),
            ("products", self.products),
        ):
            for it in items:
                if it.id in seen:
                    raise ValueError(f"asset id {it.id!r} in {kind} is already used in {seen[it.id]}")
                seen[it.id] = kind
        reserved = {"grid", "gas", "steam", "boiler", "waste_heat", "chp", "production", "weather"}
        clash = reserved & set(seen)
        if clash or any(re.match(r"^(load|line)-", i) for i in seen):
            raise ValueError(f"asset ids {sorted(clash)} are reserved meter names")
        pv = {p.id for p in self.pv}
        for sale in self.procurement.certificates_sold:
            if sale.pv not in pv:
                raise ValueError(f"procurement.certificates_sold {sale.id}: expected one of the site's PV arrays {sorted(pv)}; found {sale.pv!r}")
        return self
