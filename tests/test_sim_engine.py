"""The simulation end to end: readings contract, determinism, registers, time zones, events."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from sim_fixtures import make_scenario, make_site

from ems.errors import SimulationError
from ems.readings import METER_KINDS, EventKind, MeterKind, ReadingSet, validate_readings
from ems.sim.engine import SimulationResult, simulate

BALANCE_TOL = 1e-6


@pytest.fixture(scope="module")
def week():
    """The golden site, one week of June at 15 min."""
    return simulate(make_scenario([make_site()], dt.date(2024, 6, 3), dt.date(2024, 6, 10), 900))


@pytest.fixture(scope="module")
def year():
    """The golden site for a year, hourly."""
    return simulate(make_scenario([make_site()], dt.date(2024, 1, 1), dt.date(2025, 1, 1), 3600))


def test_result_is_a_valid_reading_set(week):
    assert isinstance(week, ReadingSet) and isinstance(week, SimulationResult)
    r = week.readings
    validate_readings(r)
    assert str(r.index.tz) == "UTC"
    assert week.n_values() == len(r)
    assert week.n_readings() == ReadingSet.n_readings(week) < week.n_values()  # a reading: a meter's values at a ts
    kinds = {m.meter: m for m in week.meters}
    expected = {
        "grid",
        "pv-roof",
        "bess",
        "load-production",
        "load-base",
        "load-hvac",
        "load-compressed_air",
        "load-electrified",
        "steam",
        "boiler",
        "waste_heat",
        "gas",
        "forklift-diesel",
        "production",
        "weather",
    }
    assert set(kinds) == expected
    for m in week.meters:
        got = set(r.loc[r["meter"] == m.meter, "quantity"].astype(str))
        assert got == set(METER_KINDS[MeterKind(m.kind)][1]), m.meter
    assert kinds["load-hvac"].attrs["end_use"] == "hvac"
    assert kinds["pv-roof"].attrs["kwp"] == 2000
    assert kinds["bess"].attrs["energy_kwh"] == 2000
    assert kinds["forklift-diesel"].carrier == "diesel"
    site = week.site("qingdao")
    assert site.attrs["contract_kw"] == 4000 and site.attrs["export_limit_kw"] == 500
    assert site.attrs["tariff"]["prices"]["valley"] == 0.3
    assert site.country == "CN" and site.grid_region == "CN-North" and site.tz == "Asia/Shanghai"


def test_missing_assets_have_no_meters():
    s = make_site(batteries=[], pv=[], steam=None, fleets=[], other_gas_m3_per_year=0)
    r = simulate(make_scenario([s]))
    assert {m.meter for m in r.meters} == {
        "grid",
        "load-production",
        "load-base",
        "load-hvac",
        "load-compressed_air",
        "load-electrified",
        "production",
        "weather",
    }


def test_chp_site_has_chp_and_gas():
    s = make_site(chp={"kw_e": 400, "eta_e": 0.4, "eta_th": 0.45})
    r = simulate(make_scenario([s]))
    w = r.wide("qingdao")
    assert w["chp.power_kw"].max() <= 400 + 1e-9 and w["chp.power_kw"].max() > 0
    f = r.flows["qingdao"].frame()
    lhv = s.gas_lhv_mj_per_m3
    gas_expect = (f["chp"] / 0.4 + f["boiler_heat"] / 0.9) * 3.6 / lhv + 20000 / 8760
    assert np.allclose(w["gas.flow_m3h"], gas_expect)


def test_energy_balance_closes(week):
    f = week.flows["qingdao"].frame()
    assert np.allclose(
        f["load"],
        f["pv_to_load"] + f["battery_to_load"] + f["grid_to_load"] + f["chp"],
        atol=BALANCE_TOL,
    )
    assert np.allclose(
        f["pv"],
        f["pv_to_load"] + f["pv_to_battery"] + f["pv_to_grid"] + f["pv_curtailed"],
        atol=BALANCE_TOL,
    )
    assert np.allclose(f["grid_import"], f["grid_to_load"] + f["grid_to_battery"], atol=BALANCE_TOL)
    assert (f["grid_export"] <= 500 + 1e-9).all()


def test_readings_agree_with_flows(week):
    w = week.wide("qingdao")
    loads = w[[c for c in w if c.startswith("load-") and c.endswith(".power_kw")]].sum(axis=1)
    gen = w["pv-roof.power_kw"] + w["bess.power_kw"] + w["grid.power_kw"]
    assert np.allclose(loads, gen, atol=1e-6)  # what a meter-only reader can check


def test_registers_monotonic_and_deltas_match_power(week):
    w = week.wide("qingdao")
    h = 0.25
    pairs = [
        ("grid", "import_kwh", None),
        ("pv-roof", "energy_kwh", "pv-roof.power_kw"),
        ("load-production", "energy_kwh", "load-production.power_kw"),
        ("steam", "heat_gj", "steam.heat_kw"),
        ("gas", "volume_m3", "gas.flow_m3h"),
    ]
    for meter in {m.meter for m in week.meters}:
        for c in [c for c in w if c.startswith(meter + ".")]:
            q = c.split(".", 1)[1]
            from ems.readings import QUANTITIES

            if QUANTITIES[q].kind == "register":
                v = w[c].to_numpy()
                assert (np.diff(v) >= -1e-9).all(), c
                assert v[0] > 0, c  # registers do not start at zero
    imp = w["grid.power_kw"].clip(lower=0)
    assert np.allclose(w["grid.import_kwh"].diff().iloc[1:], imp.iloc[1:] * h, atol=1e-5)
    for meter, q, p in pairs[1:]:
        scale = h * (3.6 / 1000 if q == "heat_gj" else 1.0)
        assert np.allclose(w[f"{meter}.{q}"].diff().iloc[1:], w[p].iloc[1:] * scale, atol=1e-5), (
            meter
        )


def test_same_seed_same_readings_other_seed_differs():
    s = make_site(pv=[{"id": "pv-roof", "kwp": 2000, "reliability": {"mtbf_h": 100, "mttr_h": 10}}])
    a = simulate(make_scenario([s], seed=1))
    b = simulate(make_scenario([s], seed=1))
    c = simulate(make_scenario([s], seed=2))
    pd.testing.assert_frame_equal(a.readings, b.readings, check_exact=True)
    pd.testing.assert_frame_equal(a.events, b.events, check_exact=True)
    assert not np.array_equal(
        a.wide("qingdao")["weather.ghi_wm2"], c.wide("qingdao")["weather.ghi_wm2"]
    )
    outages = lambda r: list(r.events.index[r.events["kind"] == "outage_start"])  # noqa: E731
    assert outages(a) != outages(c)


def test_adding_a_site_does_not_change_the_others():
    one = simulate(make_scenario([make_site()]))
    two = simulate(make_scenario([make_site("velenje"), make_site()]))
    pd.testing.assert_frame_equal(one.wide("qingdao"), two.wide("qingdao"), check_exact=True)


@pytest.mark.parametrize("tz", ["Asia/Shanghai", "Europe/Ljubljana"])
@pytest.mark.parametrize("res", [60, 900, 3600])
def test_time_zones_and_resolutions(tz, res):
    loc = (
        {"lat": 46.36, "lon": 15.11, "tz": tz, "country": "SI"} if tz.startswith("Europe") else None
    )
    s = make_site("velenje") if loc else make_site()
    # Europe: the spring-forward weekend; each local day starts at local midnight
    start, end = (dt.date(2024, 3, 30), dt.date(2024, 4, 1))
    r = simulate(make_scenario([s], start, end, res))
    w = r.wide(s.id)
    t0 = pd.Timestamp(start).tz_localize(tz)
    t1 = pd.Timestamp(end).tz_localize(tz)
    assert w.index[0] == (t0 + pd.Timedelta(seconds=res)).tz_convert("UTC")
    assert w.index[-1] == t1.tz_convert("UTC")
    assert len(w) == (t1 - t0) / pd.Timedelta(seconds=res)
    assert (np.diff(w.index.asi8) == res * 10**9).all()
    assert {m.interval_s for m in r.meters} == {res}
    # production runs in local shifts (8-24 on workdays); 2024-03-30/31 is a weekend: idle
    assert r.flows[s.id].frame()["load.production"].max() < 1500 * 0.3
    # the sun rises around local 6-7, regardless of the zone's offset
    local = w.index.tz_convert(tz)
    ghi = w["weather.ghi_wm2"]
    assert ghi[(local.hour >= 0) & (local.hour < 4)].max() == 0
    assert ghi[(local.hour >= 11) & (local.hour < 14)].mean() > 100


def test_production_follows_local_shifts():
    s = make_site()
    r = simulate(make_scenario([s], dt.date(2024, 6, 3), dt.date(2024, 6, 5), 900))  # Mon, Tue
    f = r.flows["qingdao"].frame()
    local = f.index.tz_convert("Asia/Shanghai") - pd.Timedelta(minutes=15)
    prod = f["load.production"]
    assert prod[(local.hour >= 9) & (local.hour < 15)].mean() > 1200
    assert prod[(local.hour >= 1) & (local.hour < 6)].mean() < 400
    out = r.wide("qingdao")["production.output_rmb"].diff()
    assert out[(local.hour >= 2) & (local.hour < 6)].iloc[1:].max() == 0
    assert out[(local.hour >= 9) & (local.hour < 15)].min() > 0


def test_maintenance_stops_pv_and_battery():
    s = make_site(
        pv=[
            {
                "id": "pv-roof",
                "kwp": 2000,
                "maintenance": [{"start": "2024-06-02T09:00", "end": "2024-06-02T13:00"}],
            }
        ],
        batteries=[
            {
                "id": "bess",
                "energy_kwh": 2000,
                "power_kw": 500,
                "maintenance": [{"start": "2024-06-01T00:00", "end": "2024-06-03T00:00"}],
            }
        ],
    )
    r = simulate(make_scenario([s]))
    w = r.wide("qingdao")
    local = w.index.tz_convert("Asia/Shanghai")
    in_pv = (local > pd.Timestamp("2024-06-02 09:00", tz="Asia/Shanghai")) & (
        local <= pd.Timestamp("2024-06-02 13:00", tz="Asia/Shanghai")
    )
    assert (w.loc[in_pv, "pv-roof.power_kw"] == 0).all()
    assert w.loc[~in_pv & (local.hour == 12), "pv-roof.power_kw"].min() > 0
    in_bat = local <= pd.Timestamp("2024-06-03 00:00", tz="Asia/Shanghai")
    assert (w.loc[in_bat, "bess.power_kw"] == 0).all()
    kinds = r.events["kind"].tolist()
    assert (
        kinds.count(EventKind.MAINTENANCE_START) == 2
        and kinds.count(EventKind.MAINTENANCE_END) == 2
    )


def test_failures_stop_output_between_outage_events():
    s = make_site(
        pv=[{"id": "pv-roof", "kwp": 2000, "reliability": {"mtbf_h": 48, "mttr_h": 12}}],
        batteries=[],
    )
    r = simulate(make_scenario([s], dt.date(2024, 6, 1), dt.date(2024, 6, 21), 900))
    ev = r.events
    starts = ev.index[(ev["kind"] == "outage_start") & (ev["subject"] == "pv-roof")]
    ends = ev.index[(ev["kind"] == "outage_end") & (ev["subject"] == "pv-roof")]
    assert len(starts) >= 2
    w = r.wide("qingdao")
    for a, b in zip(starts, ends, strict=False):
        down = (w.index > a) & (w.index <= b)
        assert (w.loc[down, "pv-roof.power_kw"] == 0).all()


def test_demand_response_caps_import():
    s = make_site(
        grid={
            "contract_kw": 2000,
            "region": "CN-North",
            "demand_response": {
                "events_per_year": 150,
                "duration_h": 3,
                "cap_fraction": 0.4,
                "months": [6],
                "start_hours": [10],
            },
        },
        pv=[],
        batteries=[{"id": "bess", "energy_kwh": 400, "power_kw": 200}],
    )
    r = simulate(make_scenario([s], dt.date(2024, 6, 3), dt.date(2024, 6, 17), 900))
    ev = r.events
    starts = ev.index[ev["kind"] == "dr_start"]
    ends = ev.index[ev["kind"] == "dr_end"]
    assert len(starts) >= 1 and len(starts) == len(ends)
    w = r.wide("qingdao")
    f = r.flows["qingdao"].frame()
    shed_total = 0.0
    for a, b in zip(starts, ends, strict=True):
        inside = (w.index > a) & (w.index <= b)
        assert (w.loc[inside, "grid.power_kw"] <= 800 + 1e-6).all()
        shed_total += f.loc[inside, "shed"].sum() * 0.25
    assert f["shed"].sum() > 0  # workday 10-13 h needs more than 800 kW
    recorded = sum(json.loads(d)["shed_kwh"] for d in ev.loc[ev["kind"] == "dr_end", "detail"])
    assert recorded == pytest.approx(shed_total, rel=1e-6, abs=1e-3)
    # the battery helps first
    assert (f.loc[f["shed"] > 0, "discharge"] > 0).any() or f["discharge"].sum() > 0


def test_peak_shaving_keeps_import_below_threshold():
    s = make_site(
        pv=[],
        loads={"production": {"peak_kw": 1000, "idle_fraction": 0.5, "noise": 0.0}},
        batteries=[
            {
                "id": "bess",
                "energy_kwh": 4000,
                "power_kw": 400,
                "dispatch": {"strategy": "peak_shaving", "threshold_kw": 850},
            }
        ],
    )
    r = simulate(make_scenario([s], dt.date(2024, 6, 3), dt.date(2024, 6, 6), 900))
    w = r.wide("qingdao")
    assert w["load-production.power_kw"].max() > 990
    assert w["grid.power_kw"].max() <= 850 + 1e-6


def test_arbitrage_charges_in_valley_discharges_in_peak():
    s = make_site(
        pv=[],
        batteries=[
            {
                "id": "bess",
                "energy_kwh": 2000,
                "power_kw": 500,
                "dispatch": {"strategy": "tou_arbitrage"},
            }
        ],
    )
    r = simulate(make_scenario([s], dt.date(2024, 6, 3), dt.date(2024, 6, 7), 900))
    w = r.wide("qingdao")
    local = (w.index - pd.Timedelta(minutes=15)).tz_convert("Asia/Shanghai")
    p = w["bess.power_kw"]
    valley = (local.hour >= 23) | (local.hour < 7)
    peak = ((local.hour >= 8) & (local.hour < 11)) | ((local.hour >= 17) & (local.hour < 22))
    assert p[valley].max() <= 0 and p[valley].min() < -400
    assert p[peak].min() >= 0 and p[peak].max() > 400
    assert w["bess.soc_pct"].max() == pytest.approx(95.0) and w[
        "bess.soc_pct"
    ].min() == pytest.approx(10.0)


def test_yearly_events_and_totals(year):
    ev = year.events
    fuel = ev[ev["kind"] == "fuel_delivery"]
    assert fuel["value"].sum() == pytest.approx(6000, abs=1000)
    assert set(fuel["unit"]) == {"kg"} and json.loads(fuel["detail"].iloc[0])["fuel"] == "diesel"
    w = year.wide("qingdao")
    reg = w["forklift-diesel.mass_kg"]
    assert reg.iloc[-1] - reg.iloc[0] == pytest.approx(
        fuel["value"].sum() - (fuel.index[0] == w.index[0]) * 500
    )
    jumps = reg.diff().iloc[1:]
    assert set(np.round(jumps[jumps > 0], 6)) == {500.0}
    assert (jumps.index[jumps > 0] == fuel.index[fuel.index > w.index[0]]).all()
    ref = ev[ev["kind"] == "refrigerant_topup"]
    assert 3 <= len(ref) <= 5 and set(ref["subject"]) == {"R-410A"}
    assert ref["value"].sum() == pytest.approx(200 * 0.06, rel=0.5)
    cert = ev[ev["kind"] == "certificate"]
    assert len(cert) == 4 and cert["value"].sum() == 400
    d = json.loads(cert["detail"].iloc[0])
    assert {"vintage", "technology", "scheme", "period_year"} <= set(d) and d["period_year"] == 2024
    con = ev[ev["kind"] == "contract_delivery"]
    assert len(con) == 12 and con["value"].sum() == pytest.approx(1200)
    d = json.loads(con["detail"].iloc[1])
    assert d["period_start"] == "2024-02-01" and d["period_end"] == "2024-02-29"
    pe = ev[ev["kind"] == "process_emission"]
    assert pe["value"].sum() == pytest.approx(12000, rel=1e-6)
    sd = ev[ev["kind"] == "shutdown_start"]
    assert len(sd) == 2
    assert year.summary().loc["qingdao", "output_rmb"] == pytest.approx(8.0e8, rel=1e-6)


@pytest.mark.parametrize(
    ("climate", "lo", "hi"),
    [("qingdao", 1200, 1350), ("foshan", 1000, 1150), ("velenje", 1050, 1200)],
)
def test_pv_specific_yield_in_atlas_range(climate, lo, hi):
    s = make_site(climate, batteries=[], grid={"contract_kw": 4000, "region": "x"})
    r = simulate(make_scenario([s], dt.date(2023, 1, 1), dt.date(2024, 1, 1), 3600, seed=11))
    y = r.summary().loc[climate, "pv_specific_yield_kwh_per_kwp"]
    assert lo <= y <= hi


def test_parquet_round_trip_and_per_site(tmp_path, week):
    week.to_parquet(tmp_path / "all")
    back = ReadingSet.from_parquet(tmp_path / "all")
    assert len(back.readings) == len(week.readings)
    assert [m.meter for m in back.meters] == [m.meter for m in week.meters]
    paths = week.to_parquet_per_site(tmp_path / "per")
    assert [p.name for p in paths] == ["qingdao"]
    one = ReadingSet.from_parquet(paths[0])
    assert np.array_equal(one.readings["value"].to_numpy(), week.readings["value"].to_numpy())


def test_summary_columns(week):
    s = week.summary()
    row = s.loc["qingdao"]
    assert 0 < row["self_consumption"] <= 1
    assert row["peak_import_kw"] > 0 and row["battery_cycles"] > 0
    assert row["pv_specific_yield_kwh_per_kwp"] > 20


def test_errors():
    with pytest.raises(SimulationError, match="at least one site"):
        simulate(make_scenario([]))
    with pytest.raises(SimulationError, match="repeated"):
        simulate(make_scenario([make_site(), make_site()]))
    r = simulate(make_scenario([make_site()]))
    with pytest.raises(SimulationError, match="unknown site"):
        r.wide("nowhere")


def test_iter_simulate_equals_simulate():
    from ems.sim.engine import iter_simulate

    sc = make_scenario([make_site("velenje"), make_site()])
    whole = simulate(sc)
    parts = list(iter_simulate(sc))
    assert [list(p.flows) for p in parts] == [["velenje"], ["qingdao"]]
    for p in parts:
        sid = next(iter(p.flows))
        pd.testing.assert_frame_equal(p.wide(sid), whole.wide(sid), check_exact=True)
        sub = whole.events[whole.events["site"] == sid]
        pd.testing.assert_frame_equal(p.events, sub, check_exact=True)


def test_guiyang_yield_lower_than_qingdao():
    ys = {}
    for c in ("guiyang", "qingdao"):
        s = make_site(c, batteries=[], grid={"contract_kw": 4000, "region": "x"})
        r = simulate(make_scenario([s], dt.date(2023, 1, 1), dt.date(2024, 1, 1), 3600, seed=11))
        ys[c] = r.summary().loc[c, "pv_specific_yield_kwh_per_kwp"]
    assert 800 <= ys["guiyang"] <= 950 < ys["qingdao"]


def test_outage_running_past_the_end_is_closed_in_the_ledger():
    s = make_site(
        pv=[
            {
                "id": "pv-roof",
                "kwp": 2000,
                "maintenance": [{"start": "2024-06-03T12:00", "end": "2024-06-09T00:00"}],
            }
        ],
        batteries=[],
    )
    r = simulate(make_scenario([s], dt.date(2024, 6, 1), dt.date(2024, 6, 4), 3600))
    kinds = r.events["kind"].tolist()
    assert kinds.count("maintenance_start") == 1 and kinds.count("maintenance_end") == 1
    assert r.events.index[r.events["kind"] == "maintenance_end"][0] == r.wide("qingdao").index[-1]


def test_arbitrage_needs_a_tariff_with_its_periods():
    bat = [
        {"id": "bess", "energy_kwh": 100, "power_kw": 50, "dispatch": {"strategy": "tou_arbitrage"}}
    ]
    s = make_site(batteries=bat, grid={"contract_kw": 1000, "region": "x"})
    with pytest.raises(SimulationError, match=r"tou_arbitrage, which needs grid\.tariff"):
        simulate(make_scenario([s]))
    bat[0]["dispatch"]["charge_periods"] = ["night"]
    with pytest.raises(SimulationError, match=r"periods \['night'\] are not tariff periods"):
        simulate(make_scenario([make_site(batteries=bat)]))


def test_array_commissioned_in_the_period_produces_from_then_on():
    s = make_site(pv=[{"id": "pv-roof", "kwp": 2000, "commissioned": "2024-06-02"}], batteries=[])
    r = simulate(make_scenario([s]))  # 2024-06-01 .. 06-04
    w = r.wide("qingdao")
    local = (w.index - pd.Timedelta(hours=1)).tz_convert("Asia/Shanghai")
    assert (w.loc[local.day == 1, "pv-roof.power_kw"] == 0).all()
    assert w.loc[local.day == 2, "pv-roof.power_kw"].max() > 0
    assert r.summary().loc["qingdao", "pv_kwp"] == pytest.approx(2000 * 2 / 3)


def test_maintenance_with_offset_times_equals_local_times():
    def run(start, end):
        pv = [{"id": "pv-roof", "kwp": 2000, "maintenance": [{"start": start, "end": end}]}]
        return simulate(make_scenario([make_site(pv=pv, batteries=[])])).wide("qingdao")

    naive = run("2024-06-02T09:00", "2024-06-02T13:00")
    aware = run("2024-06-02T01:00+00:00", "2024-06-02T05:00+00:00")
    pd.testing.assert_frame_equal(naive, aware, check_exact=True)
