"""The readings contract: exactly what a real meter sends, and nothing more.

The simulator produces readings, MQTT carries them, the store keeps them, the
rollups read them. Nothing downstream reaches into simulator state, so a real
meter can take the simulator's place. This module is the single definition of
that contract; ``docs/readings.md`` explains it for people.

Conventions
-----------
* A reading belongs to one meter and one **interval**. Its timestamp ``ts`` is the
  **end** of the interval, in UTC, tz-aware (as real interval meters stamp their
  load profiles). The interval is ``(ts - interval_s, ts]``.
* ``power_kw`` (and the other ``*_kw``, ``*_m3h`` rates) are **interval averages**.
* Registers (``*_kwh``, ``*_gj``, ``*_m3``, ``*_kg``, ``*_rmb``) are **cumulative**
  meter registers read at ``ts``. Energy in an interval is the difference of two
  registers, so a lost message loses no energy.
* Signs (``docs/glossary.md``): the grid meter's power is positive when
  importing; a battery's power is positive when discharging. Import and export
  have separate registers, as on real meters; all registers only grow.
* Discrete happenings (fuel deliveries, refrigerant top-ups, outages, certificate
  purchases, contract settlements, demand-response events) are **events**, kept in
  an event ledger beside the readings.

The frames
----------
``readings``: a tidy (long) frame with a tz-aware UTC ``DatetimeIndex`` named
``ts`` and columns ``site``, ``meter``, ``quantity`` (categoricals) and ``value``
(float64). One row per meter, quantity and timestamp.

``events``: columns ``ts`` (UTC), ``site``, ``kind``, ``subject``, ``value``,
``unit``, ``detail`` (a JSON object as text).

``meters``: one row per meter, from :class:`MeterInfo`; ``sites``: one row per
site, from :class:`SiteInfo`. These are what a real meter's metadata message and a
site's registration carry; they travel with the readings so that rollups never
need the simulator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ems.errors import ReadingError

__all__ = [
    "EVENT_COLUMNS",
    "METER_KINDS",
    "QUANTITIES",
    "READING_COLUMNS",
    "SCHEMA_VERSION",
    "Carrier",
    "EventKind",
    "MeterInfo",
    "MeterKind",
    "Quantity",
    "ReadingSet",
    "SiteInfo",
    "empty_events",
    "empty_readings",
    "event_detail",
    "events_frame",
    "tou_periods",
    "validate_readings",
]

SCHEMA_VERSION = 1
"""Version of the readings contract; MQTT topics carry it as ``v1``."""


class Carrier(StrEnum):
    """Energy carriers and other metered flows."""

    ELECTRICITY = "electricity"
    HEAT = "heat"
    NATURAL_GAS = "natural_gas"
    DIESEL = "diesel"
    GASOLINE = "gasoline"
    OUTPUT = "output"
    WEATHER = "weather"


@dataclass(frozen=True)
class Quantity:
    """A metered quantity.

    Attributes
    ----------
    name : str
        Name with its unit as suffix, as used in payloads and frames.
    unit : str
        Unit symbol.
    kind : str
        ``register`` (cumulative, never decreasing), ``average`` (interval
        average) or ``instant`` (sampled at ``ts``).
    description : str
        What it measures and its sign.
    """

    name: str
    unit: str
    kind: str
    description: str


_Q = [
    Quantity("power_kw", "kW", "average", "active power; grid: import > 0; battery: discharge > 0"),
    Quantity("import_kwh", "kWh", "register", "active energy imported from the grid"),
    Quantity("export_kwh", "kWh", "register", "active energy exported to the grid"),
    Quantity("energy_kwh", "kWh", "register", "active energy generated (pv, chp) or consumed (load)"),
    Quantity("curtailed_kwh", "kWh", "register", "PV energy available but curtailed (plant controller)"),
    Quantity("charge_kwh", "kWh", "register", "AC energy into the battery"),
    Quantity("discharge_kwh", "kWh", "register", "AC energy out of the battery"),
    Quantity("soc_pct", "%", "instant", "battery state of charge, 0-100 % of nameplate"),
    Quantity("heat_kw", "kW", "average", "thermal power (steam, hot water)"),
    Quantity("heat_gj", "GJ", "register", "heat delivered (purchased steam, boiler, recovery)"),
    Quantity("flow_m3h", "m3/h", "average", "natural gas flow, standard m3"),
    Quantity("volume_m3", "m3", "register", "natural gas volume, standard m3"),
    Quantity("mass_kg", "kg", "register", "fuel dispensed into the fleet (diesel, gasoline)"),
    Quantity("output_rmb", "RMB", "register", "production output value"),
    Quantity("output_units", "units", "register", "products made by a production line (count)"),
    Quantity("ghi_wm2", "W/m2", "average", "global horizontal irradiance"),
    Quantity("poa_wm2", "W/m2", "average", "plane-of-array irradiance"),
    Quantity("temp_air_c", "degC", "average", "outdoor air temperature"),
]
QUANTITIES: dict[str, Quantity] = {q.name: q for q in _Q}
"""Every quantity the contract knows, by name."""


class MeterKind(StrEnum):
    """Kinds of meter and what each one measures."""

    GRID = "grid"
    PV = "pv"
    BATTERY = "battery"
    LOAD = "load"
    CHP = "chp"
    STEAM = "steam"
    BOILER = "boiler"
    WASTE_HEAT = "waste_heat"
    GAS = "gas"
    FUEL = "fuel"
    PRODUCTION = "production"
    LINE = "line"
    WEATHER = "weather"


METER_KINDS: dict[MeterKind, tuple[Carrier, tuple[str, ...]]] = {
    MeterKind.GRID: (Carrier.ELECTRICITY, ("power_kw", "import_kwh", "export_kwh")),
    MeterKind.PV: (Carrier.ELECTRICITY, ("power_kw", "energy_kwh", "curtailed_kwh")),
    MeterKind.BATTERY: (
        Carrier.ELECTRICITY,
        ("power_kw", "charge_kwh", "discharge_kwh", "soc_pct"),
    ),
    MeterKind.LOAD: (Carrier.ELECTRICITY, ("power_kw", "energy_kwh")),
    MeterKind.CHP: (Carrier.ELECTRICITY, ("power_kw", "energy_kwh", "heat_kw", "heat_gj")),
    MeterKind.STEAM: (Carrier.HEAT, ("heat_kw", "heat_gj")),
    MeterKind.BOILER: (Carrier.HEAT, ("heat_kw", "heat_gj")),
    MeterKind.WASTE_HEAT: (Carrier.HEAT, ("heat_kw", "heat_gj")),
    MeterKind.GAS: (Carrier.NATURAL_GAS, ("flow_m3h", "volume_m3")),
    MeterKind.FUEL: (Carrier.DIESEL, ("mass_kg",)),  # carrier per meter: diesel or gasoline
    MeterKind.PRODUCTION: (Carrier.OUTPUT, ("output_rmb",)),
    MeterKind.LINE: (Carrier.OUTPUT, ("output_units",)),
    MeterKind.WEATHER: (Carrier.WEATHER, ("ghi_wm2", "poa_wm2", "temp_air_c")),
}
"""Default carrier and quantities of each meter kind.

Meaning of the meters in a site's energy balance:

* ``grid``: the utility meter at the point of connection.
* ``pv``: AC output of a PV array's inverter(s); ``curtailed_kwh`` is what the
  plant controller reports as available but not taken.
* ``battery``: AC side of a storage system; ``attrs`` may give ``energy_kwh`` (usable
  capacity) and ``eta_charge``, ``eta_discharge`` (one-way efficiencies).
* ``load``: an electrical consumption sub-meter; ``MeterInfo.attrs["end_use"]``
  is one of ``production``, ``base``, ``hvac``, ``compressed_air``, ``electrified``,
  ``other``. The sum of load meters is the site's electrical consumption.
* ``chp``: a gas CHP unit's electrical and heat output.
* ``steam``: purchased steam (or heat) at the site boundary.
* ``boiler`` / ``waste_heat``: heat made on site (from gas, or recovered).
* ``gas``: the natural gas utility meter (all on-site gas use).
* ``fuel``: a fleet's fuel dispenser; ``carrier`` is ``diesel`` or ``gasoline``.
* ``production``: the MES counter of production output value.
* ``line``: a production line's unit counter; ``attrs["product"]`` names the product and
  ``attrs["emissions"]`` lists its per-unit process and fugitive emissions, each
  ``{"gas", "kg_per_unit", "kind" (fugitive|process), "activity", "source"}`` (the gas from
  ``ems/data/gases.yaml``).
* ``weather``: the plant's weather station.
"""


class EventKind(StrEnum):
    """Kinds of event in the ledger; ``subject``, ``value`` and ``unit`` per kind."""

    OUTAGE_START = "outage_start"  # subject: asset id
    OUTAGE_END = "outage_end"
    MAINTENANCE_START = "maintenance_start"  # subject: asset id
    MAINTENANCE_END = "maintenance_end"
    SHUTDOWN_START = "shutdown_start"  # subject: "site"; detail.reason
    SHUTDOWN_END = "shutdown_end"
    DR_START = "dr_start"  # subject: "grid"; value: import cap [kW]
    DR_END = "dr_end"
    FUEL_DELIVERY = "fuel_delivery"  # subject: fuel meter id; value [kg]; detail.fuel
    REFRIGERANT_TOPUP = "refrigerant_topup"  # subject: gas name, e.g. R-410A; value [kg]
    CERTIFICATE = "certificate"  # subject: instrument (GEC, I-REC, GO); value [MWh]; detail below
    CONTRACT_DELIVERY = "contract_delivery"  # subject: contract kind (hydro, green_power); value [MWh]
    PROCESS_EMISSION = "process_emission"  # subject: source; value [kg of detail.gas] or [kgCO2e]


EVENT_COLUMNS = ("site", "kind", "subject", "value", "unit", "detail")
"""Columns of the events frame besides its ``ts`` index.

``detail`` is a JSON object as text. For ``certificate``: ``{"id": "...", "action":
"retire" (or "sell", for certificates of the site's own PV), "serials": {"prefix":
"GEC-...", "first": 1, "last": 500}, "technology": "solar", "plant": "...",
"plant_commissioned": "2021-06-30", "vintage_start": "2024-01-01", "vintage_end":
"2024-12-31" (or "vintage": 2024), "market_boundary": "CN", "period_start": "2024-01-01",
"period_end": "2024-12-31" (or "period_year": 2024)}``: the consumption period it is
retired for, local dates inclusive; a certificate of the site's own PV names the plant
``"<site>/<pv meter>"``. A granular certificate (EnergyTag) also gives the hour(s) it was
generated in: ``"generation_start": "2024-06-01T12:00+08:00", "generation_end":
"2024-06-01T13:00+08:00"`` (times with their offset). For ``contract_delivery``: ``{"id": ...,
"period_start": ..., "period_end": ..., "plant": ..., "plant_commissioned": ...,
"market_boundary": ..., "profile": "solar"}``; ``profile`` says how the delivery falls on the
hours of its period (``baseload``, ``solar``, ``<region>:<technology>``, ``as_consumed``;
``docs/hourly-matching.md``).
For ``process_emission`` in kg of a gas: ``unit: "kg"`` and ``{"gas": "HFC-245fa",
"kind": "process", "activity": "..."}``; with ``unit: "kgCO2e"`` the value is already CO2e.
"""

READING_COLUMNS = ("site", "meter", "quantity", "value")
"""Columns of the readings frame besides its ``ts`` index."""


@dataclass(frozen=True)
class MeterInfo:
    """What a meter's metadata message says about it.

    Attributes
    ----------
    site : str
        Site identifier (``[a-z0-9_-]``).
    meter : str
        Meter identifier, unique within the site.
    kind : str
        A :class:`MeterKind` value.
    carrier : str
        A :class:`Carrier` value.
    quantities : tuple of str
        Names from :data:`QUANTITIES` the meter reports.
    interval_s : int [s]
        Reading interval.
    attrs : dict
        Kind-specific attributes, e.g. ``{"end_use": "hvac"}``, ``{"kwp": 5000}``.
    """

    site: str
    meter: str
    kind: str
    carrier: str
    quantities: tuple[str, ...]
    interval_s: int
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        d = asdict(self)
        d["quantities"] = list(self.quantities)
        d["attrs"] = dict(self.attrs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MeterInfo:
        """Build from :meth:`to_dict` output (or a metadata payload)."""
        return cls(
            site=str(d["site"]),
            meter=str(d["meter"]),
            kind=str(d["kind"]),
            carrier=str(d["carrier"]),
            quantities=tuple(d["quantities"]),
            interval_s=int(d["interval_s"]),
            attrs=dict(d.get("attrs") or {}),
        )


@dataclass(frozen=True)
class SiteInfo:
    """What a site's registration says: identity, hierarchy, place and accounting basis.

    Attributes
    ----------
    site : str
        Site identifier.
    name : str
        Human-readable name.
    group, company, park : str
        Hierarchy for rollups.
    tz : str
        IANA time zone; local calendars (days, months, years) use it.
    lat, lon : float [deg]
        Location.
    country : str
        ISO 3166-1 alpha-2 code, e.g. ``CN``, ``SI``.
    grid_region : str
        Grid region used to pick the grid emission factor, e.g. ``CN-East``.
    factor_set : str
        Name of the factor set to account with.
    attrs : dict
        Anything else the accounting needs (tariff, contract capacity kW, reporting
        boundary, ...).
    province : str
        ISO 3166-2 subdivision (e.g. ``CN-SD``), the most local place a grid factor can
        belong to; empty when unknown.
    """

    site: str
    name: str
    group: str
    company: str
    park: str
    tz: str
    lat: float
    lon: float
    country: str
    grid_region: str
    factor_set: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    province: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        d = asdict(self)
        d["attrs"] = dict(self.attrs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SiteInfo:
        """Build from :meth:`to_dict` output (``province`` may be absent: older registrations)."""
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k not in ("attrs", "province")}
        return cls(**kw, attrs=dict(d.get("attrs") or {}), province=str(d.get("province") or ""))

    def places(self) -> list[tuple[str, str]]:
        """The site's places for grid factors, most local first: province, grid region, country."""
        return [("province", self.province), ("region", self.grid_region), ("country", self.country)]


def empty_readings() -> pd.DataFrame:
    """Return an empty readings frame with the contract's dtypes."""
    idx = pd.DatetimeIndex([], tz="UTC", name="ts").as_unit("ns")
    return pd.DataFrame(
        {
            "site": pd.Categorical([]),
            "meter": pd.Categorical([]),
            "quantity": pd.Categorical([]),
            "value": np.array([], dtype="float64"),
        },
        index=idx,
    )


def empty_events() -> pd.DataFrame:
    """Return an empty events frame with the contract's dtypes."""
    return events_frame([])


def events_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build an events frame from dicts with keys ``ts`` and :data:`EVENT_COLUMNS`.

    ``detail`` may be a dict (it is serialised to JSON text) or text.
    """
    rows = list(rows)
    ts = pd.DatetimeIndex([pd.Timestamp(r["ts"]) for r in rows], name="ts")
    if len(rows) and ts.tz is None:
        raise ReadingError("events need tz-aware timestamps; found naive ones")
    ts = ts.tz_convert("UTC") if len(rows) else pd.DatetimeIndex([], tz="UTC", name="ts")
    ts = ts.as_unit("ns")

    def _detail(v: Any) -> str:
        if v is None:
            return "{}"
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)

    df = pd.DataFrame(
        {
            "site": [str(r["site"]) for r in rows],
            "kind": [str(r["kind"]) for r in rows],
            "subject": [str(r.get("subject", "")) for r in rows],
            "value": np.array([float(r.get("value", math.nan)) for r in rows], dtype="float64"),
            "unit": [str(r.get("unit", "")) for r in rows],
            "detail": [_detail(r.get("detail")) for r in rows],
        },
        index=ts,
    )
    for col in ("site", "kind", "subject", "unit", "detail"):
        df[col] = df[col].astype(object)
    return df.sort_index(kind="stable")


def event_detail(text: Any) -> dict[str, Any]:
    """The ``detail`` of an event as a dict (JSON text or a dict); ``{}`` when it is empty or not an object."""
    if isinstance(text, dict):
        return text
    try:
        d = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def validate_readings(df: pd.DataFrame, *, where: str = "readings") -> None:
    """Check a readings frame against the contract.

    Parameters
    ----------
    df : DataFrame
        Frame to check.
    where : str
        Name used in error messages.

    Raises
    ------
    ReadingError
        Naming what was expected and what was found.
    """
    if not isinstance(df.index, pd.DatetimeIndex):
        raise ReadingError(
            f"{where}: expected a DatetimeIndex named 'ts', found {type(df.index).__name__}"
        )
    if df.index.tz is None:
        raise ReadingError(f"{where}: expected tz-aware UTC timestamps, found naive ones")
    missing = [c for c in READING_COLUMNS if c not in df.columns]
    if missing:
        raise ReadingError(
            f"{where}: expected columns {list(READING_COLUMNS)}, missing {missing}; "
            f"found {list(df.columns)}"
        )
    unknown = set(map(str, pd.unique(df["quantity"]))) - set(QUANTITIES)
    if unknown:
        raise ReadingError(
            f"{where}: unknown quantities {sorted(unknown)}; expected names from "
            f"ems.readings.QUANTITIES"
        )
    vals = df["value"].to_numpy(dtype="float64", copy=False)
    if not np.isfinite(vals).all():
        raise ReadingError(f"{where}: {int((~np.isfinite(vals)).sum())} values are NaN or infinite")


def tou_periods(index_local: pd.DatetimeIndex, tariff: Mapping[str, Any]) -> np.ndarray:
    """Map local times to the time-of-use periods of a tariff description.

    The tariff travels with the readings as ``SiteInfo.attrs["tariff"]`` (the site
    file's ``grid.tariff`` as JSON data): ``seasons``, each with ``months`` (1-12),
    ``windows`` (``period``, local ``start_h``, ``end_h`` in hours 0-24, ``[start,
    end)``, wrapping midnight when ``end_h < start_h``) and a ``default`` period for
    the hours outside every window. The simulator (battery arbitrage) and the
    accounting (energy per period) both read periods through this function.

    Parameters
    ----------
    index_local : DatetimeIndex
        Times in the site's zone (tz-aware). Pass the **start** of each interval: an
        interval belongs to the period in force when it starts.
    tariff : mapping
        The tariff description (see above).

    Returns
    -------
    ndarray of str (object)
        Period name per time, e.g. ``"peak"``, ``"valley"``.

    Raises
    ------
    ReadingError
        If the index is naive, the description lacks ``seasons`` or a window field,
        or a month is covered by no season.
    """
    if index_local.tz is None:
        raise ReadingError("tou_periods: expected tz-aware local timestamps, found naive ones")
    seasons = tariff.get("seasons") if isinstance(tariff, Mapping) else None
    if not isinstance(seasons, list) or not seasons:
        raise ReadingError(
            "tariff: expected a mapping with a non-empty 'seasons' list (Tariff.model_dump(mode='json')); "
            f"found {type(tariff).__name__} {str(tariff)[:80]}"
        )
    month = np.asarray(index_local.month)
    hour = np.asarray(index_local.hour) + np.asarray(index_local.minute) / 60.0
    hour = hour + np.asarray(index_local.second) / 3600.0
    out = np.full(len(index_local), None, dtype=object)
    covered = np.zeros(len(index_local), dtype=bool)
    for i, season in enumerate(seasons):
        in_season = np.isin(month, list(season.get("months") or range(1, 13))) & ~covered
        if in_season.any():
            out[in_season] = _season_periods(hour, season, i)[in_season]
            covered |= in_season
    if not covered.all():
        missing = sorted(set(month[~covered].tolist()))
        raise ReadingError(f"tariff: expected seasons covering every month; months {missing} are in no season")
    return out


def _season_periods(hour: np.ndarray, season: Mapping[str, Any], i: int) -> np.ndarray:
    """Period names of one season at local hours ``hour`` [h]."""
    names = np.full(len(hour), str(season.get("default", "flat")), dtype=object)
    for j, w in enumerate(season.get("windows") or []):
        try:
            period, lo, hi = str(w["period"]), float(w["start_h"]), float(w["end_h"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReadingError(
                f"tariff.seasons.{i}.windows.{j}: expected period, start_h and end_h [h]; found {w!r}"
            ) from exc
        hit = (hour >= lo) & (hour < hi) if lo <= hi else (hour >= lo) | (hour < hi)
        names[hit] = period
    return names


@dataclass
class ReadingSet:
    """Readings with their event ledger and the metadata that travels with them.

    A *reading* is one meter's values at one timestamp; in the tidy frame it
    spans one row per quantity (``value`` rows). ``SiteInfo.attrs`` carries what
    accounting needs from the site's configuration: ``contract_kw`` [kW],
    ``tariff`` (the site file's ``grid.tariff`` as JSON data, or None),
    ``export_limit_kw``.

    This is what the simulator returns, what a store gives back, and what the
    accounting reads.

    Attributes
    ----------
    readings : DataFrame
        The tidy readings frame (see module docs).
    events : DataFrame
        The event ledger.
    meters : list of MeterInfo
        Metadata of every meter in ``readings``.
    sites : list of SiteInfo
        Registration of every site in ``readings``.
    """

    readings: pd.DataFrame
    events: pd.DataFrame
    meters: list[MeterInfo]
    sites: list[SiteInfo]

    def close(self) -> None:
        """Release what the set holds open (a store for :func:`ems.open_readings`); in memory: nothing."""

    def __enter__(self) -> ReadingSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def n_readings(self) -> int:
        """Number of readings: distinct (site, meter, ts), what a meter sends and a command counts."""
        r = self.readings
        if r.empty:
            return 0
        key = pd.DataFrame({"s": pd.Categorical(r["site"]).codes, "m": pd.Categorical(r["meter"]).codes,
                            "t": r.index.asi8})
        return len(key.drop_duplicates())

    def n_values(self) -> int:
        """Number of values: rows of the tidy frame, one per quantity of a reading."""
        return len(self.readings)

    def site(self, site: str) -> SiteInfo:
        """Return the :class:`SiteInfo` of ``site``."""
        for s in self.sites:
            if s.site == site:
                return s
        raise ReadingError(f"unknown site {site!r}; known: {[s.site for s in self.sites]}")

    def meters_frame(self) -> pd.DataFrame:
        """Return the meters as a frame indexed by (site, meter)."""
        rows = [
            {
                "site": m.site,
                "meter": m.meter,
                "kind": m.kind,
                "carrier": m.carrier,
                "interval_s": m.interval_s,
                **{f"attr_{k}": v for k, v in m.attrs.items()},
            }
            for m in self.meters
        ]
        cols = ["site", "meter", "kind", "carrier", "interval_s"]
        df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols)
        return df.set_index(["site", "meter"])

    def wide(self, site: str) -> pd.DataFrame:
        """Return one site's readings as a wide frame.

        Columns are ``(meter, quantity)`` pairs flattened to ``meter.quantity``;
        the index is the UTC ``ts``.
        """
        r = self.readings
        sub = r[r["site"] == site]
        if sub.empty:
            raise ReadingError(f"no readings for site {site!r}")
        key = sub["meter"].astype(str) + "." + sub["quantity"].astype(str)
        w = (
            pd.DataFrame({"key": key.to_numpy(), "value": sub["value"].to_numpy()}, index=sub.index)
            .reset_index()
            .pivot_table(index="ts", columns="key", values="value", aggfunc="last", observed=True)
        )
        w.columns.name = None
        return w

    def to_parquet(self, folder: str | Path) -> Path:
        """Write the set to ``folder``: ``readings.parquet``, ``events.parquet``, ``meters.json``, ``sites.json``.

        This is the exchange format of ``ems run --out`` before a store is used.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.readings.to_parquet(out / "readings.parquet")
        self.events.to_parquet(out / "events.parquet")
        (out / "meters.json").write_text(
            json.dumps([m.to_dict() for m in self.meters], indent=1, default=str)
        )
        (out / "sites.json").write_text(
            json.dumps([s.to_dict() for s in self.sites], indent=1, default=str)
        )
        return out

    @classmethod
    def from_parquet(cls, folder: str | Path) -> ReadingSet:
        """Read a set written by :meth:`to_parquet`."""
        src = Path(folder)
        missing = [
            n
            for n in ("readings.parquet", "events.parquet", "meters.json", "sites.json")
            if not (src / n).exists()
        ]
        if missing:
            raise ReadingError(f"{src}: expected a readings folder; missing {missing}")
        readings = pd.read_parquet(src / "readings.parquet")
        validate_readings(readings, where=str(src / "readings.parquet"))
        events = pd.read_parquet(src / "events.parquet")
        meters = [MeterInfo.from_dict(d) for d in json.loads((src / "meters.json").read_text())]
        sites = [SiteInfo.from_dict(d) for d in json.loads((src / "sites.json").read_text())]
        return cls(readings=readings, events=events, meters=meters, sites=sites)
