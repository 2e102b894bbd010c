"""Small golden sites for the simulation tests, built in Python (no YAML loader needed)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ems.model.scenario import ResolvedScenario
from ems.model.site import Site

# monthly mean clearness index and air temperature, Jan..Dec (order of magnitude
# from NASA POWER climatology; used only to drive the synthetic weather)
CLIMATES: dict[str, dict[str, Any]] = {
    "qingdao": {
        "location": {
            "lat": 36.07,
            "lon": 120.38,
            "tz": "Asia/Shanghai",
            "altitude_m": 20,
            "country": "CN",
        },
        "kt": [0.49, 0.50, 0.51, 0.52, 0.52, 0.47, 0.41, 0.44, 0.49, 0.53, 0.50, 0.48],
        "temp": [-0.5, 1.5, 6.0, 11.5, 17.0, 21.0, 24.5, 25.5, 22.0, 16.0, 8.5, 2.0],
        "region": "CN-North",
    },
    "foshan": {
        "location": {
            "lat": 22.84,
            "lon": 113.26,
            "tz": "Asia/Shanghai",
            "altitude_m": 10,
            "country": "CN",
        },
        "kt": [0.38, 0.33, 0.31, 0.33, 0.38, 0.40, 0.45, 0.44, 0.45, 0.47, 0.46, 0.43],
        "temp": [13.5, 15.0, 18.0, 22.5, 26.0, 28.0, 29.0, 28.8, 27.5, 24.5, 20.0, 15.5],
        "region": "CN-South",
    },
    "guiyang": {
        "location": {
            "lat": 26.65,
            "lon": 106.63,
            "tz": "Asia/Shanghai",
            "altitude_m": 1100,
            "country": "CN",
        },
        "kt": [0.24, 0.26, 0.31, 0.34, 0.36, 0.33, 0.40, 0.41, 0.37, 0.30, 0.28, 0.25],
        "temp": [5.0, 7.0, 11.5, 16.0, 19.5, 22.0, 23.5, 23.0, 20.5, 16.0, 11.5, 7.0],
        "region": "CN-Southwest",
    },
    "velenje": {
        "location": {
            "lat": 46.36,
            "lon": 15.11,
            "tz": "Europe/Ljubljana",
            "altitude_m": 400,
            "country": "SI",
        },
        "kt": [0.36, 0.43, 0.47, 0.48, 0.50, 0.53, 0.55, 0.54, 0.49, 0.42, 0.34, 0.32],
        "temp": [0.0, 1.5, 6.0, 10.5, 15.5, 19.0, 21.0, 20.5, 15.5, 10.5, 5.0, 1.0],
        "region": "SI",
        "factor_set": "si-2024",
    },
}


def make_site(site_id: str = "qingdao", climate: str | None = None, **over: Any) -> Site:
    """A factory park with every kind of asset; ``over`` replaces top-level fields."""
    c = CLIMATES[climate or site_id]
    d: dict[str, Any] = {
        "id": site_id,
        "name": f"{site_id.title()} park",
        "hierarchy": {"group": "g", "company": "c", "park": site_id},
        "location": c["location"],
        "weather": {"source": "synthetic", "clearness_index": c["kt"], "temp_air_c": c["temp"]},
        "grid": {
            "contract_kw": 4000,
            "region": c["region"],
            "export_limit_kw": 500,
            "tariff": {
                "prices": {"sharp": 1.3, "peak": 1.1, "flat": 0.7, "valley": 0.3},
                "seasons": [
                    {
                        "months": list(range(1, 13)),
                        "default": "flat",
                        "windows": [
                            {"period": "valley", "start_h": 23, "end_h": 7},
                            {"period": "peak", "start_h": 8, "end_h": 11},
                            {"period": "peak", "start_h": 17, "end_h": 22},
                        ],
                    }
                ],
            },
        },
        "pv": [
            {
                "id": "pv-roof",
                "kwp": 2000,
                "tilt_deg": 20,
                "azimuth_deg": 180,
                "commissioned": "2022-06-01",
            }
        ],
        "batteries": [{"id": "bess", "energy_kwh": 2000, "power_kw": 500}],
        "loads": {
            "calendar": {
                "holidays": ["2024-05-01"],
                "shutdowns": [
                    {"start": "2024-02-09", "end": "2024-02-15", "reason": "spring festival"}
                ],
            },
            "production": {"peak_kw": 1500, "idle_fraction": 0.2},
            "base": {"kw": 200},
            "hvac": {"cooling_kw_per_degc": 30, "heating_kw_per_degc": 10, "max_kw": 600},
            "compressed_air": {"kw": 300},
            "electrified_fleet_kwh_per_year": 50000,
        },
        "steam": {
            "process_kw": 800,
            "heating_kw_per_degc": 40,
            "waste_heat_share": 0.2,
            "boiler": {"efficiency": 0.9, "share": 0.3},
        },
        "other_gas_m3_per_year": 20000,
        "fleets": [{"id": "forklift-diesel", "fuel": "diesel", "annual_kg": 6000, "fill_kg": 500}],
        "refrigerants": [
            {"gas": "R-410A", "charge_kg": 200, "annual_leak_rate": 0.06, "services_per_year": 4}
        ],
        "process_emissions": [{"source": "welding_co2", "annual_kgco2e": 12000}],
        "output": {"annual_rmb": 8.0e8},
        "procurement": {
            "contracts": [{"id": "hydro-1", "kind": "hydro", "annual_mwh": 1200}],
            "certificates": [
                {
                    "id": "gec-1",
                    "scheme": "GEC",
                    "mwh": 100,
                    "vintage": 2024,
                    "schedule": "quarterly",
                }
            ],
        },
    }
    d["factor_set"] = c.get("factor_set", "cn-2023")
    d.update(over)
    return Site.model_validate(d)


def make_scenario(
    sites: list[Site],
    start: dt.date = dt.date(2024, 6, 1),
    end: dt.date = dt.date(2024, 6, 4),
    resolution_s: int = 3600,
    seed: int = 7,
) -> ResolvedScenario:
    """A scenario over ``[start, end)`` at ``resolution_s``."""
    return ResolvedScenario(
        name="test", sites=sites, start=start, end=end, resolution_s=resolution_s, seed=seed
    )
