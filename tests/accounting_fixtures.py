"""Tiny builders of ReadingSets for the accounting tests: registers from power series."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ems.readings import METER_KINDS, MeterInfo, ReadingSet, SiteInfo, events_frame

TARIFF = {
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


def site(site="s1", tz="Asia/Shanghai", *, company="c1", park="p1", group="g", country="CN",
         grid_region="CN-East", factor_set="cn-2023", province="", **attrs: Any) -> SiteInfo:
    return SiteInfo(site=site, name=site.upper(), group=group, company=company, park=park, tz=tz,
                    lat=30.0, lon=120.0, country=country, grid_region=grid_region,
                    factor_set=factor_set, attrs=attrs, province=province)


def index(start: str, periods: int, interval_s: int = 900, tz: str = "UTC") -> pd.DatetimeIndex:
    """Interval END timestamps (UTC) of ``periods`` intervals whose first starts at ``start`` (local ``tz``)."""
    t0 = pd.Timestamp(start, tz=tz).tz_convert("UTC")
    return pd.date_range(t0 + pd.Timedelta(seconds=interval_s), periods=periods,
                         freq=pd.Timedelta(seconds=interval_s), name="ts")


def register(site_id: str, meter: str, quantity: str, increments: pd.Series, *, interval_s: int = 900,
             start_value: float = 0.0) -> pd.DataFrame:
    """Cumulative register rows from per-interval increments indexed by interval END (UTC).

    A baseline row (``start_value``) is written at the start of the first interval.
    """
    ts = increments.index
    base = ts[0] - pd.Timedelta(seconds=interval_s)
    vals = np.concatenate([[start_value], start_value + np.cumsum(increments.to_numpy(dtype=float))])
    idx = pd.DatetimeIndex([base, *ts], name="ts")
    return pd.DataFrame({"site": site_id, "meter": meter, "quantity": quantity, "value": vals}, index=idx)


def from_power(site_id: str, meter: str, quantity: str, power_kw: pd.Series, *, interval_s: int = 900,
               start_value: float = 0.0) -> pd.DataFrame:
    """Register rows from an interval-average power series [kW] (energy = power x interval)."""
    return register(site_id, meter, quantity, power_kw * interval_s / 3600.0,
                    interval_s=interval_s, start_value=start_value)


def meter(site_id: str, name: str, kind: str, *, carrier: str | None = None, interval_s: int = 900,
          **attrs: Any) -> MeterInfo:
    car, qs = METER_KINDS[kind]  # type: ignore[index]
    return MeterInfo(site=site_id, meter=name, kind=kind, carrier=carrier or str(car),
                     quantities=tuple(qs), interval_s=interval_s, attrs=attrs)


def readingset(frames: list[pd.DataFrame], meters: list[MeterInfo], sites: list[SiteInfo],
               events: list[dict[str, Any]] | None = None) -> ReadingSet:
    df = pd.concat(frames).sort_index(kind="stable")
    for c in ("site", "meter", "quantity"):
        df[c] = df[c].astype("category")
    df["value"] = df["value"].astype("float64")
    df.index = df.index.as_unit("ns")
    df.index.name = "ts"
    return ReadingSet(readings=df, events=events_frame(events or []), meters=meters, sites=sites)


def const(idx: pd.DatetimeIndex, value: float) -> pd.Series:
    return pd.Series(float(value), index=idx)


# The group's 2024 activity data (shared/domain.md section 4) as one synthetic site with
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

    def reg(meter_id, quantity, total, start=1000.0):
        return pd.DataFrame({"site": "grp", "meter": meter_id, "quantity": quantity,
                             "value": [start, start + total]}, index=idx)

    frames = [
        reg("grid", "import_kwh", g["grid_import_kwh"]), reg("grid", "export_kwh", 0.0),
        reg("pv", "energy_kwh", g["pv_generated_kwh"]), reg("steam", "heat_gj", g["steam_gj"]),
        reg("gas", "volume_m3", g["natural_gas_m3"]), reg("diesel", "mass_kg", g["diesel_kg"]),
        reg("gasoline", "mass_kg", g["gasoline_kg"]), reg("production", "output_rmb", g["output_rmb"]),
    ]
    iv = 3600
    meters = [meter("grp", "grid", "grid", interval_s=iv), meter("grp", "pv", "pv", interval_s=iv),
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
    return readingset(frames, meters, [site("grp", tz, company="group", park="all", group="hisense")], events)
