"""Small ReadingSets for the dashboard tests, built without the simulator."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ems.readings import METER_KINDS, MeterInfo, ReadingSet, SiteInfo, events_frame

HOSTILE = "<img src=x onerror=alert(1)>"


def site_info(site: str, name: str | None = None, tz: str = "Asia/Shanghai") -> SiteInfo:
    return SiteInfo(
        site=site,
        name=name or site.title(),
        group="g",
        company="c",
        park=f"park-{site}",
        tz=tz,
        lat=31.2,
        lon=121.5,
        country="CN",
        grid_region="CN-East",
        factor_set="cn-2023",
        attrs={"contract_kw": 5000.0},
    )


def meters(site: str, interval_s: int = 900) -> list[MeterInfo]:
    out = []
    for meter, kind in (
        ("grid", "grid"),
        ("pv1", "pv"),
        ("load1", "load"),
        ("bess", "battery"),
        ("steam", "steam"),
        ("production", "production"),
    ):
        carrier, qs = METER_KINDS[kind]
        out.append(MeterInfo(site, meter, kind, str(carrier), qs, interval_s, {}))
    return out


def readings(
    site: str,
    start: str,
    n: int,
    *,
    interval_s: int = 900,
    load_kw: float = 1000.0,
    offset: int = 0,
    base: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """``n`` intervals of readings starting ``offset`` intervals after ``start`` (UTC).

    Returns the tidy frame and the register values at its end (to continue from).
    PV follows a sine by day, the battery alternates, the grid closes the balance.
    """
    ts = pd.date_range(
        pd.Timestamp(start, tz="UTC") + pd.Timedelta(seconds=interval_s * (offset + 1)),
        periods=n,
        freq=pd.Timedelta(seconds=interval_s),
        name="ts",
    )
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
    frames = [
        pd.DataFrame({"site": site, "meter": m, "quantity": q, "value": v}, index=ts)
        for (m, q), v in cols.items()
    ]
    df = pd.concat(frames)
    for c in ("site", "meter", "quantity"):
        df[c] = df[c].astype("category")
    return df, reg


def readingset(sites: dict[str, str], start: str = "2024-07-01", n: int = 96) -> ReadingSet:
    """Sites (id -> name) with ``n`` intervals each and an outage event on the PV."""
    frames, ms, infos, evs = [], [], [], []
    for site, name in sites.items():
        df, _ = readings(site, start, n)
        frames.append(df)
        ms += meters(site)
        infos.append(site_info(site, name))
        t = df.index[n // 2]
        evs += [
            {"ts": t, "site": site, "kind": "outage_start", "subject": "pv1", "unit": ""},
            {
                "ts": t + pd.Timedelta(hours=1),
                "site": site,
                "kind": "outage_end",
                "subject": "pv1",
                "unit": "",
            },
        ]
    df = pd.concat(frames)
    for c in ("site", "meter", "quantity"):
        df[c] = df[c].astype("category")
    return ReadingSet(readings=df, events=events_frame(evs), meters=ms, sites=infos)


def write(store, rs: ReadingSet) -> None:
    store.register_sites(rs.sites)
    store.register_meters(rs.meters)
    store.write_readings(rs.readings)
    store.write_events(rs.events)
