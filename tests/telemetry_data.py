"""Small ReadingSets for telemetry tests, built without the simulator."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ems.readings import QUANTITIES, MeterInfo, ReadingSet, SiteInfo, events_frame

_METERS = {
    "grid": ("grid", "electricity", ("power_kw", "import_kwh", "export_kwh")),
    "pv1": ("pv", "electricity", ("power_kw", "energy_kwh", "curtailed_kwh")),
    "load-production": ("load", "electricity", ("power_kw", "energy_kwh")),
    "gas": ("gas", "natural_gas", ("flow_m3h", "volume_m3")),
    "weather": ("weather", "weather", ("ghi_wm2", "poa_wm2", "temp_air_c")),
}


def site_info(site: str) -> SiteInfo:
    return SiteInfo(
        site=site, name=site.title(), group="g", company="c", park=f"park-{site}",
        tz="Asia/Shanghai", lat=31.2, lon=121.5, country="CN", grid_region="CN-East",
        factor_set="cn-2023", attrs={"contract_kw": 5000.0},
    )


def make_readingset(
    sites=("alpha", "beta"), days: float = 7, interval_s: int = 900, start="2024-07-01", seed: int = 0,
    meters=tuple(_METERS),
) -> ReadingSet:
    """Readings of a few meters per site with full-precision random floats; registers grow."""
    rng = np.random.default_rng(seed)
    n = int(days * 86400 // interval_s)
    ts = pd.date_range(pd.Timestamp(start, tz="UTC") + pd.Timedelta(seconds=interval_s), periods=n,
                       freq=f"{interval_s}s", name="ts")
    frames, infos = [], []
    for site in sites:
        for meter in meters:
            kind, carrier, qs = _METERS[meter]
            infos.append(MeterInfo(site, meter, kind, carrier, qs, interval_s, {}))
            for q in qs:
                if QUANTITIES[q].kind == "register":
                    v = 1000.0 * rng.random() + np.cumsum(rng.random(n) * 100.0)
                else:
                    v = rng.normal(500.0, 200.0, n)
                frames.append(pd.DataFrame({"site": site, "meter": meter, "quantity": q, "value": v}, index=ts))
    df = pd.concat(frames)
    for c in ("site", "meter", "quantity"):
        df[c] = df[c].astype("category")
    events = events_frame(
        [{"ts": ts[min(10, n - 1)], "site": s, "kind": "fuel_delivery", "subject": "fleet1", "value": 500.0,
          "unit": "kg", "detail": {"fuel": "diesel"}} for s in sites]
    )
    return ReadingSet(readings=df, events=events, meters=infos, sites=[site_info(s) for s in sites])
