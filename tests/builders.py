"""The one builder of test ReadingSets: sites, meters, register rows and their assembly.

Everything here builds readings the way the contract defines them (``ems/readings.py``):
tz-aware UTC interval-end timestamps, cumulative registers, categorical ``site``,
``meter``, ``quantity``. Tests pick a preset:

* :func:`readingset` assembles frames, meters, sites and events into a ReadingSet;
  :func:`register` / :func:`from_power` make register rows from increments or power
  (hand-computed accounting cases);
* :func:`plant` is a small physical plant per site (PV by day, a battery, steady
  load and steam; the grid closes the balance), for dashboards and stores;
* :func:`make_readingset` gives a few meters per site with full-precision random
  values, for transport tests (nothing in a codec may round them);
* :func:`group_2024` is the reference group's 2024 activity data as one site.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ems.readings import METER_KINDS, QUANTITIES, MeterInfo, ReadingSet, SiteInfo, events_frame

HOSTILE = "<img src=x onerror=alert(1)>"

TARIFF: dict[str, Any] = {
    "currency": "CNY",
    "prices": {"peak": 1.0, "flat": 0.6, "valley": 0.3},
    "seasons": [
        {
            "months": list(range(1, 13)),
            "windows": [
                {"period": "peak", "start_h": 8, "end_h": 12},
                {"period": "valley", "start_h": 23, "end_h": 7},
            ],
            "default": "flat",
        }
    ],
    "demand_charge_per_kw_month": 40.0,
    "export_price": 0.4,
}
"""A time-of-use tariff as it travels in ``SiteInfo.attrs["tariff"]``."""


# --------------------------------------------------------------------------- metadata


def site(site: str = "s1", tz: str = "Asia/Shanghai", *, name: str | None = None, company: str = "c1",
         park: str = "p1", group: str = "g", country: str = "CN", grid_region: str = "CN-East",
         factor_set: str = "cn-2023", lat: float = 30.0, lon: float = 120.0, province: str = "",
         **attrs: Any) -> SiteInfo:
    """A site registration; ``attrs`` go to ``SiteInfo.attrs`` (``tariff=``, ``contract_kw=``)."""
    return SiteInfo(site=site, name=name or site.upper(), group=group, company=company, park=park, tz=tz,
                    lat=lat, lon=lon, country=country, grid_region=grid_region, factor_set=factor_set, attrs=attrs,
                    province=province)


def site_info(site_id: str, name: str | None = None, tz: str = "Asia/Shanghai", **attrs: Any) -> SiteInfo:
    """A site as the plant presets register it (company ``c``, park ``park-<id>``)."""
    return site(site_id, tz, name=name or site_id.title(), company="c", park=f"park-{site_id}", lat=31.2,
                lon=121.5, **{"contract_kw": 5000.0, **attrs})


def meter(site_id: str, name: str, kind: str, *, carrier: str | None = None, interval_s: int = 900,
          quantities: Iterable[str] | None = None, **attrs: Any) -> MeterInfo:
    """A meter of ``kind`` with that kind's carrier and quantities (``METER_KINDS``)."""
    car, qs = METER_KINDS[kind]  # type: ignore[index]
    return MeterInfo(site=site_id, meter=name, kind=kind, carrier=carrier or str(car),
                     quantities=tuple(quantities or qs), interval_s=interval_s, attrs=attrs)


PLANT_METERS = (("grid", "grid"), ("pv1", "pv"), ("load1", "load"), ("bess", "battery"), ("steam", "steam"),
                ("production", "production"))


def meters(site_id: str, interval_s: int = 900) -> list[MeterInfo]:
    """The meters of :func:`plant` at one site."""
    return [meter(site_id, name, kind, interval_s=interval_s) for name, kind in PLANT_METERS]


# --------------------------------------------------------------------------- rows


def index(start: str, periods: int, interval_s: int = 900, tz: str = "UTC") -> pd.DatetimeIndex:
    """Interval END timestamps (UTC) of ``periods`` intervals whose first starts at ``start`` (local ``tz``)."""
    t0 = pd.Timestamp(start, tz=tz).tz_convert("UTC")
    return pd.date_range(t0 + pd.Timedelta(seconds=interval_s), periods=periods,
                         freq=pd.Timedelta(seconds=interval_s), name="ts")


def const(idx: pd.DatetimeIndex, value: float) -> pd.Series:
    return pd.Series(float(value), index=idx)


def rows(site_id: str, meter_id: str, quantity: str, ts: pd.DatetimeIndex, values: Iterable[float]) -> pd.DataFrame:
    """Tidy rows of one series."""
    return pd.DataFrame({"site": site_id, "meter": meter_id, "quantity": quantity,
                         "value": np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                                             dtype=float)}, index=ts)


def register(site_id: str, meter_id: str, quantity: str, increments: pd.Series, *, interval_s: int = 900,
             start_value: float = 0.0) -> pd.DataFrame:
    """Cumulative register rows from per-interval increments indexed by interval END (UTC).

    A baseline row (``start_value``) is written at the start of the first interval.
    """
    ts = increments.index
    base = ts[0] - pd.Timedelta(seconds=interval_s)
    vals = np.concatenate([[start_value], start_value + np.cumsum(increments.to_numpy(dtype=float))])
    return rows(site_id, meter_id, quantity, pd.DatetimeIndex([base, *ts], name="ts"), vals)


def from_power(site_id: str, meter_id: str, quantity: str, power_kw: pd.Series, *, interval_s: int = 900,
               start_value: float = 0.0) -> pd.DataFrame:
    """Register rows from an interval-average power series [kW] (energy = power x interval)."""
    return register(site_id, meter_id, quantity, power_kw * interval_s / 3600.0,
                    interval_s=interval_s, start_value=start_value)


# --------------------------------------------------------------------------- the assembly


def readingset(frames: list[pd.DataFrame], meters: list[MeterInfo], sites: list[SiteInfo],
               events: list[dict[str, Any]] | pd.DataFrame | None = None, *, sort: bool = True) -> ReadingSet:
    """The ReadingSet of tidy ``frames`` (concatenated, contract dtypes) with its metadata.

    ``sort`` orders the rows by ts (stable); without it they keep the frames' order.
    """
    df = pd.concat(frames)
    if sort:
        df = df.sort_index(kind="stable")
    for c in ("site", "meter", "quantity"):
        df[c] = df[c].astype("category")
    df["value"] = df["value"].astype("float64")
    df.index = pd.DatetimeIndex(df.index).as_unit("ns")
    df.index.name = "ts"
    ev = events if isinstance(events, pd.DataFrame) else events_frame(events or [])
    return ReadingSet(readings=df, events=ev, meters=list(meters), sites=list(sites))


# --------------------------------------------------------------------------- presets


def plant_readings(site_id: str, start: str, n: int, *, interval_s: int = 900, load_kw: float = 1000.0,
                   offset: int = 0, base: dict[str, float] | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """``n`` intervals of :func:`plant` readings starting ``offset`` intervals after ``start`` (UTC).

    Returns the tidy frame and the register values at its end (to continue from).
    PV follows a sine by day, the battery alternates, the grid closes the balance.
    """
    ts = pd.date_range(pd.Timestamp(start, tz="UTC") + pd.Timedelta(seconds=interval_s * (offset + 1)),
                       periods=n, freq=pd.Timedelta(seconds=interval_s), name="ts")
    h = (ts.hour + ts.minute / 60).to_numpy()
    pv = np.clip(800.0 * np.sin((h - 22) / 12 * np.pi), 0, None)  # daylight in UTC+8
    load = np.full(n, load_kw)
    bat = np.where((np.arange(n) + offset) % 8 < 4, 100.0, -100.0)
    grid = load - pv - bat
    steam = np.full(n, 300.0)
    dt_h = interval_s / 3600.0
    reg = dict(base or {})

    def cum(key: str, inc: np.ndarray) -> np.ndarray:
        v = reg.get(key, 0.0) + np.cumsum(inc)
        reg[key] = float(v[-1])
        return v

    cols = {
        ("grid", "power_kw"): grid,
        ("grid", "import_kwh"): cum("imp", np.clip(grid, 0, None) * dt_h),
        ("grid", "export_kwh"): cum("exp", np.clip(-grid, 0, None) * dt_h),
        ("pv1", "power_kw"): pv,
        ("pv1", "energy_kwh"): cum("pv", pv * dt_h),
        ("pv1", "curtailed_kwh"): cum("curt", np.zeros(n)),
        ("load1", "power_kw"): load,
        ("load1", "energy_kwh"): cum("load", load * dt_h),
        ("bess", "power_kw"): bat,
        ("bess", "charge_kwh"): cum("ch", np.clip(-bat, 0, None) * dt_h),
        ("bess", "discharge_kwh"): cum("dis", np.clip(bat, 0, None) * dt_h),
        ("bess", "soc_pct"): 50.0 + 10.0 * np.sin(np.arange(n) / 4.0),
        ("steam", "heat_kw"): steam,
        ("steam", "heat_gj"): cum("steam", steam * interval_s / 1e6),
        ("production", "output_rmb"): cum("out", np.full(n, 20000.0)),
    }
    frame = readingset([rows(site_id, m, q, ts, v) for (m, q), v in cols.items()], [], [], sort=False).readings
    return frame, reg


def plant(sites: Mapping[str, str], start: str = "2024-07-01", n: int = 96, **site_attrs: Any) -> ReadingSet:
    """:func:`plant_readings` of sites (id -> name), ``n`` intervals each, and an outage event on the PV."""
    frames, ms, infos, evs = [], [], [], []
    for sid, name in sites.items():
        df, _ = plant_readings(sid, start, n)
        frames.append(df)
        ms += meters(sid)
        infos.append(site_info(sid, name, **site_attrs))
        t = df.index[n // 2]
        evs += [
            {"ts": t, "site": sid, "kind": "outage_start", "subject": "pv1", "unit": ""},
            {"ts": t + pd.Timedelta(hours=1), "site": sid, "kind": "outage_end", "subject": "pv1", "unit": ""},
        ]
    return readingset(frames, ms, infos, evs, sort=False)


_TRANSPORT_METERS = {
    "grid": ("grid", "electricity", ("power_kw", "import_kwh", "export_kwh")),
    "pv1": ("pv", "electricity", ("power_kw", "energy_kwh", "curtailed_kwh")),
    "load-production": ("load", "electricity", ("power_kw", "energy_kwh")),
    "gas": ("gas", "natural_gas", ("flow_m3h", "volume_m3")),
    "weather": ("weather", "weather", ("ghi_wm2", "poa_wm2", "temp_air_c")),
}


def make_readingset(sites: Iterable[str] = ("alpha", "beta"), days: float = 7, interval_s: int = 900,
                    start: str = "2024-07-01", seed: int = 0,
                    meters: Iterable[str] = tuple(_TRANSPORT_METERS)) -> ReadingSet:
    """Readings of a few meters per site with full-precision random floats; registers grow."""
    rng = np.random.default_rng(seed)
    n = int(days * 86400 // interval_s)
    ts = pd.date_range(pd.Timestamp(start, tz="UTC") + pd.Timedelta(seconds=interval_s), periods=n,
                       freq=f"{interval_s}s", name="ts")
    sites = list(sites)
    frames, infos = [], []
    for s in sites:
        for m in meters:
            kind, carrier, qs = _TRANSPORT_METERS[m]
            infos.append(MeterInfo(s, m, kind, carrier, qs, interval_s, {}))
            for q in qs:
                if QUANTITIES[q].kind == "register":
                    v = 1000.0 * rng.random() + np.cumsum(rng.random(n) * 100.0)
                else:
                    v = rng.normal(500.0, 200.0, n)
                frames.append(rows(s, m, q, ts, v))
    events = [{"ts": ts[min(10, n - 1)], "site": s, "kind": "fuel_delivery", "subject": "fleet1", "value": 500.0,
               "unit": "kg", "detail": {"fuel": "diesel"}} for s in sites]
    return readingset(frames, infos, [site_info(s, tz="Asia/Shanghai") for s in sites], events, sort=False)


# The reference group's 2024 activity data (docs/accounting-2024.md) as one synthetic site with
# registers read at local midnight on 1 January 2024 and 1 January 2025.
GROUP_2024 = {
    "grid_import_kwh": 57_733e4,
    "pv_generated_kwh": 10_000e4,
    "hydro_mwh": 13_170.0,
    "gec_mwh": 50_080.0,
    "steam_gj": 360_980.0,
    "natural_gas_m3": 1_297e4,
    "diesel_kg": 45_000.0,
    "gasoline_kg": 37_000.0,
    "output_rmb": 123.3e9,
}


def group_2024() -> ReadingSet:
    tz = "Asia/Shanghai"
    t0 = pd.Timestamp("2024-01-01", tz=tz).tz_convert("UTC")
    t1 = pd.Timestamp("2025-01-01", tz=tz).tz_convert("UTC")
    idx = pd.DatetimeIndex([t0, t1], name="ts")
    g = GROUP_2024

    def reg(meter_id: str, quantity: str, total: float, start: float = 1000.0) -> pd.DataFrame:
        return rows("grp", meter_id, quantity, idx, [start, start + total])

    frames = [
        reg("grid", "import_kwh", g["grid_import_kwh"]), reg("grid", "export_kwh", 0.0),
        reg("pv", "energy_kwh", g["pv_generated_kwh"]), reg("steam", "heat_gj", g["steam_gj"]),
        reg("gas", "volume_m3", g["natural_gas_m3"]), reg("diesel", "mass_kg", g["diesel_kg"]),
        reg("gasoline", "mass_kg", g["gasoline_kg"]), reg("production", "output_rmb", g["output_rmb"]),
    ]
    iv = 3600
    ms = [meter("grp", "grid", "grid", interval_s=iv), meter("grp", "pv", "pv", interval_s=iv),
          meter("grp", "steam", "steam", interval_s=iv), meter("grp", "gas", "gas", interval_s=iv),
          meter("grp", "diesel", "fuel", carrier="diesel", interval_s=iv),
          meter("grp", "gasoline", "fuel", carrier="gasoline", interval_s=iv),
          meter("grp", "production", "production", interval_s=iv)]
    events = [
        {"ts": "2024-12-31T08:00Z", "site": "grp", "kind": "contract_delivery", "subject": "hydro",
         "value": g["hydro_mwh"], "unit": "MWh",
         "detail": {"period_start": "2024-01-01", "period_end": "2024-12-31", "id": "hydro-2024"}},
        {"ts": "2024-12-31T08:00Z", "site": "grp", "kind": "certificate", "subject": "GEC",
         "value": g["gec_mwh"], "unit": "MWh",
         "detail": {"vintage": 2024, "technology": "solar", "period_year": 2024, "id": "gec-2024",
                    "serials": {"prefix": "GEC-2024-TEST", "first": 1, "last": 50_080},
                    "plant": "solar farm (test)", "plant_commissioned": "2021-06-30", "market_boundary": "CN"}},
    ]
    return readingset(frames, ms, [site("grp", tz, company="group", park="all", group="hisense")], events)


def write(store: Any, rs: ReadingSet) -> None:
    """Register a set's sites and meters and write its readings and events into ``store``."""
    store.register_sites(rs.sites)
    store.register_meters(rs.meters)
    store.write_readings(rs.readings)
    store.write_events(rs.events)
