"""Pure physics functions of the simulation: tariff, storage, weather, PV, thermal."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ems.errors import ReadingError
from ems.model.site import Battery, Location, PvArray, Steam, Tariff, Weather
from ems.readings import tou_periods
from ems.sim import pv as pvm
from ems.sim import thermal as th
from ems.sim import weather as wx
from ems.sim.clock import (
    TimeGrid,
    calendar_fields,
    local_day_hour,
    site_seed_sequence,
    stable_hash,
)
from ems.sim.storage import (
    BatteryLimits,
    demand_response_cap,
    dispatch_block,
    dispatch_step,
    peak_shaving,
    self_consumption,
    tou_arbitrage,
)

TARIFF = Tariff.model_validate(
    {
        "prices": {"peak": 1.0, "flat": 0.6, "valley": 0.3},
        "seasons": [
            {
                "months": list(range(1, 13)),
                "default": "flat",
                "windows": [
                    {"period": "valley", "start_h": 23, "end_h": 7},
                    {"period": "peak", "start_h": 8, "end_h": 11},
                ],
            }
        ],
    }
)


# ---------------------------------------------------------------- tariff
def test_tou_periods_windows_and_midnight_wrap():
    idx = pd.date_range("2024-03-01 00:00", periods=24, freq="h", tz="Asia/Shanghai")
    names = tou_periods(idx, TARIFF.model_dump(mode="json"))
    assert list(names[[0, 6, 7, 8, 10, 11, 22, 23]]) == [
        "valley",
        "valley",
        "flat",
        "peak",
        "peak",
        "flat",
        "flat",
        "valley",
    ]


def test_tou_periods_by_season():
    t = Tariff.model_validate(
        {
            "prices": {"peak": 1.0, "flat": 0.6, "summer": 1.5},
            "seasons": [
                {
                    "months": [7, 8],
                    "default": "flat",
                    "windows": [{"period": "summer", "start_h": 12, "end_h": 14}],
                },
                {
                    "months": [1, 2, 3, 4, 5, 6, 9, 10, 11, 12],
                    "default": "flat",
                    "windows": [{"period": "peak", "start_h": 12, "end_h": 14}],
                },
            ],
        }
    )
    idx = pd.DatetimeIndex(
        ["2024-07-01 12:30", "2024-01-01 12:30", "2024-07-01 15:00"]
    ).tz_localize("Asia/Shanghai")
    assert list(tou_periods(idx, t.model_dump(mode="json"))) == ["summer", "peak", "flat"]


def test_tou_periods_errors():
    t = Tariff.model_validate(
        {"prices": {"flat": 1.0}, "seasons": [{"months": [1], "default": "flat"}]}
    )
    idx = pd.date_range("2024-01-31 23:00", periods=3, freq="h", tz="UTC")
    with pytest.raises(ReadingError, match=r"months \[2\] are in no season"):
        tou_periods(idx, t.model_dump(mode="json"))
    with pytest.raises(ReadingError, match="naive"):
        tou_periods(pd.date_range("2024-01-01", periods=2, freq="h"), t.model_dump(mode="json"))
    with pytest.raises(ReadingError, match="expected period, start_h and end_h"):
        tou_periods(idx, {"seasons": [{"months": [1, 2], "windows": [{"period": "peak"}]}]})
    with pytest.raises(ReadingError, match="non-empty 'seasons'"):
        tou_periods(idx, {"prices": {}})


# ---------------------------------------------------------------- clock and seeds
def test_stable_hash_and_seed_sequence_are_stable():
    assert stable_hash("qingdao") == stable_hash("qingdao") != stable_hash("velenje")
    a = np.random.default_rng(site_seed_sequence(1, "x")).random(3)
    b = np.random.default_rng(site_seed_sequence(1, "x")).random(3)
    assert np.array_equal(a, b)


def test_time_grid_dst_day_lengths():
    g = TimeGrid(dt.date(2024, 3, 31), dt.date(2024, 4, 1), "Europe/Ljubljana", 3600)
    assert g.n == 23  # spring forward
    g = TimeGrid(dt.date(2024, 10, 27), dt.date(2024, 10, 28), "Europe/Ljubljana", 900)
    assert g.n == 25 * 4
    assert str(g.ts.tz) == "UTC"


# ---------------------------------------------------------------- storage
BAT = Battery(
    id="b",
    energy_kwh=100,
    power_kw=50,
    eta_charge=0.9,
    eta_discharge=0.95,
    soc_min=0.1,
    soc_max=0.9,
    soc_initial=0.5,
)


@pytest.mark.parametrize("net", [-200.0, -20.0, 0.0, 20.0, 200.0])
def test_dispatch_step_limits_and_soc_update(net):
    lim = BatteryLimits.of(BAT)
    c, d, soc = dispatch_step(50.0, net, 0, 1e9, False, lim, 0.25)
    assert c >= 0 and d >= 0 and c * d == 0
    assert c <= 50 and d <= 50
    assert d <= max(net, 0.0)
    assert soc == pytest.approx(50.0 + (c * 0.9 - d / 0.95) * 0.25)


def test_dispatch_respects_soc_window_over_time():
    lim = BatteryLimits.of(BAT)
    rng = np.random.default_rng(1)
    net = rng.normal(0, 80, 500)
    c, d, soc = dispatch_block(
        50.0, net, np.zeros(500, np.int8), np.full(500, 1e9), np.zeros(500, bool), lim, 0.5
    )
    assert soc.min() >= 10.0 - 1e-9 and soc.max() <= 90.0 + 1e-9
    assert (c * d == 0).all()


def test_dispatch_block_equals_step_function():
    for strategy, thr in (
        ("self_consumption", None),
        ("tou_arbitrage", None),
        ("peak_shaving", 30.0),
    ):
        b = Battery.model_validate(
            {**BAT.model_dump(), "dispatch": {"strategy": strategy, "threshold_kw": thr}}
        )
        lim = BatteryLimits.of(b)
        rng = np.random.default_rng(2)
        n = 200
        net = rng.normal(20, 60, n)
        per = rng.integers(0, 3, n).astype(np.int8)
        il = np.where(rng.random(n) < 0.1, 40.0, 1e9)
        dr = il < 1e9
        c, d, soc = dispatch_block(50.0, net, per, il, dr, lim, 0.25)
        s = 50.0
        for k in range(n):
            ck, dk, s = dispatch_step(
                s, float(net[k]), int(per[k]), float(il[k]), bool(dr[k]), lim, 0.25
            )
            assert (ck, dk, s) == (c[k], d[k], soc[k])  # the same rules: bit for bit


@pytest.mark.parametrize(
    ("rule", "net", "period", "expected"),
    [
        # (net, period) -> (charge, discharge); import limit 100, threshold 30, power 50,
        # room 40 (charge that fills it), avail 45 (discharge that empties it)
        (self_consumption, -60.0, 1, (40.0, 0.0)),  # surplus: charge, up to the room
        (self_consumption, 20.0, 2, (0.0, 20.0)),  # deficit: discharge (periods ignored)
        (self_consumption, 0.0, 0, (0.0, 0.0)),
        (tou_arbitrage, 80.0, 1, (20.0, 0.0)),  # charge period: from the grid up to the limit
        (tou_arbitrage, 70.0, 2, (0.0, 45.0)),  # discharge period: cover the deficit
        (tou_arbitrage, 70.0, 0, (0.0, 0.0)),  # otherwise PV surplus only
        (tou_arbitrage, -10.0, 0, (10.0, 0.0)),
        (peak_shaving, 60.0, 0, (0.0, 30.0)),  # above the threshold: shave to it
        (peak_shaving, 20.0, 0, (10.0, 0.0)),  # below: recharge up to it
    ],
)
def test_strategy_rules(rule, net, period, expected):
    assert rule(net, period, 100.0, 30.0, 50.0, 40.0, 45.0) == expected


@pytest.mark.parametrize(
    ("charge", "discharge", "net", "expected"),
    [
        (30.0, 0.0, 60.0, (20.0, 0.0)),  # grid charging cut to keep import at the cap (80)
        (10.0, 0.0, 100.0, (0.0, 20.0)),  # charging off, then discharge the rest
        (0.0, 0.0, 200.0, (0.0, 45.0)),  # no more than the battery holds (avail 45)
        (0.0, 0.0, 50.0, (0.0, 0.0)),  # under the cap: nothing changes
    ],
)
def test_demand_response_cap_cuts_charging_then_discharges(charge, discharge, net, expected):
    assert demand_response_cap(charge, discharge, net, 80.0, 50.0, 45.0) == expected


# ---------------------------------------------------------------- weather
LOC = Location(lat=36.07, lon=120.38, tz="Asia/Shanghai")
KT = [0.45, 0.48, 0.5, 0.52, 0.53, 0.47, 0.41, 0.44, 0.49, 0.53, 0.5, 0.46]
WEATHER = Weather(clearness_index=KT, temp_air_c=[0, 2, 6, 12, 17, 21, 25, 26, 22, 16, 8, 2])


def _year_weather(seed: int):
    g = TimeGrid(dt.date(2023, 1, 1), dt.date(2024, 1, 1), LOC.tz, 3600)
    zen, _azi, dni_extra, g0h = wx.solar_geometry(g.mid_utc, LOC)
    w = wx.synthetic_weather(
        np.random.default_rng(seed), g.mid_local, g.dt_h, LOC, WEATHER, zen, dni_extra, g0h
    )
    return g, w


def test_synthetic_weather_matches_monthly_clearness_and_temperature():
    g, w = _year_weather(3)
    month = np.asarray(g.mid_local.month)
    for m in range(1, 13):
        sel = month == m
        kt = w["ghi"][sel].sum() / w["g0h"][sel].sum()
        assert kt == pytest.approx(KT[m - 1], abs=0.02), m
        assert w["temp_air"][sel].mean() == pytest.approx(WEATHER.temp_air_c[m - 1], abs=2.0)
    assert (w["ghi"] >= 0).all() and (w["ghi"][w["g0h"] == 0] == 0).all()
    assert np.allclose(
        w["ghi"], w["dhi"] + w["dni"] * np.cos(np.radians(np.clip(_sun(g)[0], 0, 90))), atol=2.0
    )


def _sun(g):
    return wx.solar_geometry(g.mid_utc, LOC)


def test_synthetic_weather_has_day_to_day_persistence():
    g, w = _year_weather(4)
    days = pd.Series(w["kt_day"], index=g.mid_local).resample("D").first().to_numpy()
    r = np.corrcoef(days[:-1], days[1:])[0, 1]
    assert 0.3 < r < 0.95


def test_ar1_unit_variance():
    from ems.sim.stochastic import ar1

    x = ar1(np.random.default_rng(0), 20000, 0.8)
    assert x.std() == pytest.approx(1.0, abs=0.1)
    assert np.corrcoef(x[:-1], x[1:])[0, 1] == pytest.approx(0.8, abs=0.03)


# ---------------------------------------------------------------- PV
def test_pv_clips_at_inverter_and_degrades():
    arr = PvArray(
        id="a",
        kwp=100,
        inverter_kw=80,
        commissioned=dt.date(2020, 1, 1),
        degradation_pct_per_year=0.5,
    )
    poa = np.array([0.0, 200.0, 600.0, 1000.0, 1300.0])
    ac = pvm.ac_power(arr, poa, np.full(5, 10.0))
    assert ac[0] == 0 and (np.diff(ac) >= 0).all() and ac.max() == pytest.approx(80.0)
    assert pvm.degradation_factor(arr, dt.date(2024, 1, 1)) == pytest.approx(0.995**4, rel=1e-3)
    assert pvm.inverter_kw(PvArray(id="b", kwp=110)) == pytest.approx(100.0)


def test_pv_hotter_cells_give_less_power():
    arr = PvArray(id="a", kwp=100, inverter_kw=200)
    cold = pvm.ac_power(arr, np.array([800.0]), np.array([0.0]))
    hot = pvm.ac_power(arr, np.array([800.0]), np.array([35.0]))
    assert hot[0] < cold[0]


def _sky(n: int = 20000):
    """Random but physical skies: zenith, azimuth, GHI, DNI, DHI, E0, day of year."""
    rng = np.random.default_rng(11)
    zen = rng.uniform(0, 100, n)
    azi = rng.uniform(0, 360, n)
    doy = rng.integers(1, 367, n).astype(float)
    e0 = 1366.1 * (1 + 0.033 * np.cos(2 * np.pi * doy / 365))
    ghi = np.clip(rng.uniform(-5, 1.1, n) * e0 * np.clip(np.cos(np.radians(zen)), 0, None), 0, None)
    ghi[::97] = 0.0
    return zen, azi, ghi, e0, doy


def test_erbs_equals_pvlib():
    import pvlib

    zen, _azi, ghi, _e0, doy = _sky()
    dni, dhi = wx.erbs(ghi, zen, pvlib.irradiance.get_extra_radiation(doy))
    ref = pvlib.irradiance.erbs(ghi, zen, doy)
    assert np.array_equal(dni, np.nan_to_num(ref["dni"]))
    assert np.array_equal(dhi, np.nan_to_num(ref["dhi"]))


@pytest.mark.parametrize(("tilt", "az"), [(0, 180), (20, 180), (35, 135), (90, 270), (10, 0)])
def test_poa_equals_pvlib_haydavies(tilt, az):
    import pvlib

    zen, azi, ghi, e0, _doy = _sky()
    dni, dhi = wx.erbs(ghi, zen, e0)
    got = pvm.poa_global(tilt, az, zen, azi, dni, ghi, dhi, e0)
    ref = pvlib.irradiance.get_total_irradiance(
        tilt, az, zen, azi, dni, ghi, dhi, dni_extra=e0, albedo=pvm.ALBEDO, model="haydavies"
    )["poa_global"]
    ref = np.clip(np.nan_to_num(ref), 0, None)
    assert np.abs(got - ref).max() < 1e-9


def test_ac_power_equals_pvlib_chain():
    import pvlib

    arr = PvArray(id="a", kwp=120, inverter_kw=100, gamma_pdc=-0.0037, losses_pct=14)
    poa = np.concatenate([[0.0, 1e-9, 1.0], np.linspace(0, 1400, 5000)])
    temp = np.linspace(-20, 45, poa.size)
    t_cell = pvlib.temperature.faiman(poa, temp)
    pdc = np.clip(pvlib.pvsystem.pvwatts_dc(poa, t_cell, 120, -0.0037), 0, None) * 0.86 * 0.97
    ref = pvlib.inverter.pvwatts(pdc, 100 / arr.inverter_efficiency, arr.inverter_efficiency)
    got = pvm.ac_power(arr, poa, temp, 0.97)
    assert np.abs(got - np.clip(np.nan_to_num(ref), 0, 100)).max() < 1e-9


@pytest.mark.parametrize("tz", ["UTC", "Asia/Shanghai", "Europe/Ljubljana", "America/St_Johns"])
def test_calendar_fields_equal_pandas(tz):
    idx = pd.date_range("1969-12-28", "2025-03-02", freq="97min", tz="UTC").as_unit("ns")
    local = idx.tz_convert(tz)
    f = calendar_fields(local.tz_localize(None).asi8)
    names = {"doy": "day_of_year", "weekday": "day_of_week"}
    for key in ("year", "month", "day", "doy", "weekday", "hour", "minute"):
        assert np.array_equal(f[key], np.asarray(getattr(local, names.get(key, key)), dtype=float))


@pytest.mark.parametrize("tz", [None, "Asia/Shanghai", "Europe/Ljubljana"])
def test_local_day_hour_equals_pandas(tz):
    idx = pd.date_range("2023-12-30", "2025-01-02", freq="7min", tz="UTC").as_unit("ns")
    idx = idx.tz_convert(tz) if tz else idx.tz_localize(None)
    day, hour = local_day_hour(idx)
    dates = idx.tz_localize(None) if tz else idx
    assert np.array_equal(day, dates.normalize().values.astype("datetime64[D]").astype(np.int64))
    assert np.array_equal(hour, np.asarray(idx.hour) + np.asarray(idx.minute) / 60.0)


# ---------------------------------------------------------------- thermal
def test_gas_from_heat_uses_lhv():
    # 1000 kW heat at 90 %: 1111.1 kW fuel = 4000 MJ/h; at 38.931 MJ/m3: 102.75 m3/h
    assert th.gas_m3h(1000 / 0.9, 38.931) == pytest.approx(4000 / 38.931)


def test_heat_supply_sums_to_demand():
    s = Steam(process_kw=100, waste_heat_share=0.2, boiler={"efficiency": 0.9, "share": 0.5})
    demand = np.array([0.0, 50.0, 100.0, 400.0])
    sup = th.heat_supply(demand, np.array([0.0, 10.0, 100.0, 50.0]), s)
    total = sup["waste_heat"] + sup["chp"] + sup["boiler"] + sup["purchased"]
    assert np.allclose(total, demand)
    assert (np.array([v for v in sup.values()]) >= 0).all()


def test_steam_demand_heating_season_only():
    s = Steam(process_kw=0, heating_kw_per_degc=10, heating_base_c=15, heating_months=[1])
    d = th.steam_demand_kw(np.zeros(2), np.array([5.0, 5.0]), np.array([1, 7]), s)
    assert list(d) == [100.0, 0.0]
