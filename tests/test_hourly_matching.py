"""Hourly matching (24/7 CFE): hand-computed cases, the battery's colours, and the properties."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ems.accounting.matching import (
    battery_inputs,
    initial_content,
    match_hours,
    month_hour_table,
    period_kpis,
    round_trip_efficiency,
    scope2_hourly,
    site_flows,
    spread_by_weight,
    track_battery,
)
from ems.accounting.profiles import delivery_kwh, profile_weights
from ems.errors import AccountingError

IDX = pd.date_range("2024-06-01", periods=24, freq="h", tz="UTC")


def _run(hourly, rte=1.0, contract=None, granular=None, initial=0.0, sold=None):
    f = site_flows(hourly)
    green_in, other_in = battery_inputs(f, sold)
    b = track_battery(green_in, other_in, f["battery_discharge_kwh"], rte, initial)
    return f, b, match_hours(f, b, contract, granular, sold)


def _one_day():
    """Load 100 kWh every hour; PV 150 kWh at 10-13 h (50 of it into the battery); the battery also
    charges 100 kWh from the grid at 2 and 3 h (half PV, half grid) and gives 90 kWh at 18-21 h."""
    imp = np.full(24, 100.0)
    pv, ch, dis = np.zeros(24), np.zeros(24), np.zeros(24)
    imp[[2, 3]], ch[[2, 3]] = 200.0, 100.0
    pv[10:14], imp[10:14], ch[10:14] = 150.0, 0.0, 50.0
    dis[18:22], imp[18:22] = 90.0, 10.0
    return pd.DataFrame({"grid_import_kwh": imp, "pv_generated_kwh": pv, "battery_charge_kwh": ch,
                         "battery_discharge_kwh": dis}, index=IDX)


def test_one_day_pv_battery_ppa_and_granular_certificate_by_hand():
    h = _one_day()
    contract = np.full(24, 10.0)  # a baseload PPA: 240 kWh over the day, 10 kWh each hour
    granular = np.zeros(24)
    granular[22] = 50.0  # one granular certificate generated 22-23 h
    f, b, m = _run(h, rte=round_trip_efficiency(400.0, 360.0), contract=contract, granular=granular)

    # the load is 100 kWh every hour; PV feeds it first, its surplus charges the battery
    assert f["load_kwh"].tolist() == pytest.approx([100.0] * 24)
    assert f["pv_to_battery_kwh"].sum() == pytest.approx(200.0)
    assert f["grid_to_battery_kwh"].sum() == pytest.approx(200.0)
    # battery: grid 200 in at night, PV 200 at noon: a 50/50 pool; each 90 kWh discharge takes 100
    assert b["out_green_kwh"].iloc[18:22].tolist() == pytest.approx([45.0] * 4)
    assert b["out_other_kwh"].iloc[18:22].tolist() == pytest.approx([45.0] * 4)
    assert b["loss_green_kwh"].sum() == pytest.approx(20.0)
    assert b["loss_other_kwh"].sum() == pytest.approx(20.0)
    assert b["stored_green_kwh"].iloc[-1] == pytest.approx(0.0)

    day = m.sum()
    assert day["use_kwh"] == pytest.approx(2440.0)  # 2400 load + 40 losses = import 1840 + PV 600
    assert day["consumed_kwh"] == pytest.approx(2440.0)
    assert day["green_onsite_kwh"] == pytest.approx(600.0)  # PV 400 direct + 180 via battery + 20 losses
    # PPA: 10 kWh match the grid's direct supply in 20 hours; at 10-13 h PV covers the load (40 excess)
    assert day["contract_matched_kwh"] == pytest.approx(200.0)
    # the certificate of 22 h covers 50 of the 90 kWh the grid supplied directly after the PPA
    assert day["granular_matched_kwh"] == pytest.approx(50.0)
    assert day["matched_kwh"] == pytest.approx(850.0)

    factors = pd.DataFrame({"average_kg_per_kwh": np.where((IDX.hour >= 6) & (IDX.hour < 18), 0.4, 0.6),
                            "marginal_kg_per_kwh": np.nan, "residual_kg_per_kwh": np.nan}, index=IDX)
    hourly = m.join(scope2_hourly(m, factors, annual_average=0.5, annual_residual=0.7))
    hourly["annual_cert_kwh"] = spread_by_weight(100.0, m["grid_origin_use_kwh"], IDX[0], IDX[-1] + pd.Timedelta("1h"))
    k = period_kpis(hourly, "UTC", "day").iloc[0]
    assert k["cfe"] == pytest.approx(850.0 / 2440.0)
    # annual rule: PV 600 + PPA 240 + certificate 50 + annual certificate 100, pooled over the day
    assert k["annual_matched_kwh"] == pytest.approx(990.0)
    assert k["annual_matched_share"] == pytest.approx(990.0 / 2440.0)
    # location: night import 800 + evening 240 at 0.6, day import 800 at 0.4 = 944; annual 1840 x 0.5
    assert k["scope2_location_hourly_kg"] == pytest.approx(944.0)
    assert k["scope2_location_annual_kg"] == pytest.approx(920.0)
    assert k["scope2_location_diff_kg"] == pytest.approx(24.0)
    # market: (1840 - 250 matched) x 0.7 hourly; (1840 - 390 instruments) x 0.7 annual
    assert k["scope2_market_hourly_kg"] == pytest.approx(1113.0)
    assert k["scope2_market_annual_kg"] == pytest.approx(1015.0)
    assert np.isnan(k["scope2_marginal_kg"])  # the series has no marginal factor


def test_grid_charged_energy_never_becomes_green_even_with_a_ppa_at_charge_time():
    h = _one_day()
    contract = np.zeros(24)
    contract[[2, 3]] = 200.0  # a PPA delivering exactly the night import, load and charge
    _, _, m = _run(h, rte=0.9, contract=contract)
    # only the 100 kWh of load per hour are matched; the 100 kWh into the battery are not
    assert m["contract_matched_kwh"].iloc[[2, 3]].tolist() == pytest.approx([100.0, 100.0])
    assert m["green_onsite_kwh"].sum() == pytest.approx(600.0)


def test_battery_pool_mixes_in_proportion_and_losses_follow_the_colour():
    b = track_battery(np.array([80.0, 0.0, 0.0]), np.array([0.0, 20.0, 0.0]), np.array([0.0, 0.0, 45.0]), rte=0.9)
    # pool 80 green + 20 grid; 45 out needs 50: 40 green and 10 grid, 10 % of each lost
    assert b["out_green_kwh"].iloc[2] == pytest.approx(36.0)
    assert b["out_other_kwh"].iloc[2] == pytest.approx(9.0)
    assert b["loss_green_kwh"].iloc[2] == pytest.approx(4.0)
    assert b["loss_other_kwh"].iloc[2] == pytest.approx(1.0)
    assert (b["stored_green_kwh"].iloc[2], b["stored_other_kwh"].iloc[2]) == pytest.approx((40.0, 10.0))


def test_energy_stored_before_the_data_is_not_green():
    b = track_battery(np.array([0.0, 50.0]), np.zeros(2), np.array([30.0, 30.0]), rte=1.0, initial_kwh=20.0)
    # hour 0: 30 out of a pool of 20 (unknown origin) -> 10 short, all counted not green
    assert b["out_green_kwh"].iloc[0] == 0.0
    assert b["out_other_kwh"].iloc[0] == pytest.approx(30.0)
    # hour 1: 50 green in, 30 out: all green
    assert b["out_green_kwh"].iloc[1] == pytest.approx(30.0)
    assert b["stored_green_kwh"].iloc[1] == pytest.approx(20.0)


def test_initial_content_is_the_least_that_explains_the_discharges():
    charged, out = np.array([0.0, 50.0, 0.0]), np.array([30.0, 0.0, 45.0])
    s0 = initial_content(charged, out, rte=0.9)
    assert s0 == pytest.approx(max(30 / 0.9, 30 / 0.9 - 50 + 45 / 0.9))  # 33.3: the first hour's discharge
    b = track_battery(np.zeros(3), charged, out, 0.9, s0)
    assert b["stored_other_kwh"].min() >= -1e-9
    assert initial_content(np.array([10.0]), np.array([5.0]), 1.0) == 0.0


def test_round_trip_efficiency_from_totals_and_bad_values():
    assert round_trip_efficiency(400.0, 360.0) == pytest.approx(0.9)
    assert round_trip_efficiency(400.0, 342.0, stored_change_kwh=20.0) == pytest.approx(0.9)
    assert round_trip_efficiency(0.0, 0.0) == 1.0
    assert round_trip_efficiency(100.0, 10.0) == 0.5  # clipped
    with pytest.raises(AccountingError, match=r"round-trip efficiency in \(0, 1\]"):
        track_battery(np.zeros(1), np.zeros(1), np.zeros(1), rte=1.2)


def test_energy_left_in_the_battery_counts_in_the_period_by_its_colour():
    h = _one_day()
    h.loc[IDX[18:22], "battery_discharge_kwh"] = 0.0
    h.loc[IDX[18:22], "grid_import_kwh"] = 100.0
    _, _, m = _run(h, rte=0.9)
    # the hours show who served the load; 400 kWh went into the battery and stayed there
    assert m["consumed_kwh"].sum() - m["use_kwh"].sum() == pytest.approx(400.0)
    assert m["stored_green_kwh"].iloc[-1] == pytest.approx(200.0)
    k = period_kpis(m, "UTC", "day").iloc[0]
    assert k["use_kwh"] == pytest.approx(m["consumed_kwh"].sum())  # the period's use is its consumption
    assert k["green_onsite_kwh"] == pytest.approx(600.0)  # PV 400 to the load + 200 stored green
    assert k["grid_origin_use_kwh"] == pytest.approx(2000.0 + 200.0)  # grid to load + grid stored
    # by local day in Shanghai the energy stored on one day is used the next: the days add up
    days = period_kpis(m, "Asia/Shanghai", "day")
    assert days["use_kwh"].sum() == pytest.approx(k["use_kwh"])
    assert days["matched_kwh"].sum() == pytest.approx(k["matched_kwh"])


def test_chp_is_use_that_no_instrument_covers():
    h = pd.DataFrame({"grid_import_kwh": [50.0], "chp_generated_kwh": [50.0]}, index=IDX[:1])
    _, _, m = _run(h, contract=np.array([100.0]))
    assert m["onsite_other_use_kwh"].iloc[0] == 50.0
    assert m["contract_matched_kwh"].iloc[0] == 50.0  # only the grid's 50
    assert m["matched_kwh"].iloc[0] == 50.0


def test_pv_whose_certificates_were_sold_is_not_green_even_through_the_battery():
    h = _one_day()
    sold = np.where(h["pv_generated_kwh"] > 0, 0.5, 0.0)  # half the PV's certificates were sold
    f, b, m = _run(h, rte=0.9, sold=sold)
    assert m["green_onsite_kwh"].sum() == pytest.approx(300.0)  # half of 600
    assert m["onsite_other_use_kwh"].sum() == pytest.approx(200.0)  # half of the 400 PV to load
    assert b["out_green_kwh"].sum() == pytest.approx(90.0)  # pool 100 green of 400
    with pytest.raises(AccountingError, match=r"expected 24 hourly shares in \[0, 1\]"):
        battery_inputs(f, np.full(24, 2.0))


def test_pv_exported_is_not_green_use():
    h = pd.DataFrame({"grid_export_kwh": [30.0], "pv_generated_kwh": [100.0]}, index=IDX[:1])
    f, _, m = _run(h)
    assert f["pv_to_load_kwh"].iloc[0] == 70.0
    assert m["use_kwh"].iloc[0] == 70.0 and m["matched_kwh"].iloc[0] == 70.0


def test_spread_by_weight_over_a_period_and_local_periods():
    w = pd.Series(np.arange(24, dtype=float), index=IDX)
    s = spread_by_weight(60.0, w, IDX[10], IDX[13])  # hours 10, 11, 12: weights 10, 11, 12
    assert s.sum() == pytest.approx(60.0)
    assert s.iloc[10] == pytest.approx(60.0 * 10 / 33)
    assert spread_by_weight(6.0, w * 0, IDX[0], IDX[3]).iloc[:3].tolist() == pytest.approx([2.0, 2.0, 2.0])
    # a local day in Shanghai starts at 16:00 UTC the day before
    _, _, m = _run(_one_day())
    days = period_kpis(m, "Asia/Shanghai", "day")
    assert list(days.index) == ["2024-06-01", "2024-06-02"]
    assert days["use_kwh"].sum() == pytest.approx(m["consumed_kwh"].sum())
    with pytest.raises(AccountingError, match="period: expected one of"):
        period_kpis(m, "UTC", "week")


def test_bad_hourly_input_is_refused():
    with pytest.raises(AccountingError, match="column 'grid_import_kwh': expected kWh >= 0"):
        site_flows(pd.DataFrame({"grid_import_kwh": [-1.0]}, index=IDX[:1]))
    f = site_flows(pd.DataFrame({"grid_import_kwh": [1.0]}, index=IDX[:1]))
    with pytest.raises(AccountingError, match="contract_kwh: expected 1 hourly values"):
        match_hours(f, None, np.array([1.0, 2.0]))


# -- properties -------------------------------------------------------------------------------------

_kwh = st.floats(min_value=0.0, max_value=500.0, allow_nan=False)


@st.composite
def _site_days(draw):
    """A physically consistent site: load, PV, a battery that charges on PV surplus and at night."""
    n = draw(st.integers(min_value=1, max_value=72))
    load = np.array(draw(st.lists(_kwh, min_size=n, max_size=n)))
    pv = np.array(draw(st.lists(_kwh, min_size=n, max_size=n)))
    cap = draw(st.floats(min_value=0.0, max_value=400.0))
    rte = draw(st.floats(min_value=0.6, max_value=1.0))
    night = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    soc, ch, dis = 0.0, np.zeros(n), np.zeros(n)
    for i in range(n):
        surplus = max(pv[i] - load[i], 0.0)
        c = min(surplus + (50.0 if night[i] else 0.0), cap - soc)
        d = 0.0 if c > 0 else min(max(load[i] - pv[i], 0.0), soc * rte)
        ch[i], dis[i] = c, d
        soc = max(soc + c - d / rte, 0.0)
    ch, dis = np.clip(ch, 0.0, None), np.clip(dis, 0.0, None)
    imp = np.clip(load + ch - pv - dis, 0.0, None)
    exp = np.clip(pv + dis - load - ch, 0.0, None)
    hourly = pd.DataFrame({"grid_import_kwh": imp, "grid_export_kwh": exp, "pv_generated_kwh": pv,
                           "battery_charge_kwh": ch, "battery_discharge_kwh": dis},
                          index=pd.date_range("2024-03-01", periods=n, freq="h", tz="UTC"))
    contract = np.array(draw(st.lists(_kwh, min_size=n, max_size=n)))
    granular = np.array(draw(st.lists(_kwh, min_size=n, max_size=n)))
    annual = draw(_kwh)
    return hourly, rte, contract, granular, annual


@settings(max_examples=150, deadline=None)
@given(_site_days())
def test_property_hourly_matched_share_never_above_annual_matched(case):
    hourly, rte, contract, granular, annual = case
    f, b, m = _run(hourly, rte, contract, granular)
    m["annual_cert_kwh"] = spread_by_weight(annual, m["grid_origin_use_kwh"], m.index[0], m.index[-1] + pd.Timedelta("1h"))
    k = period_kpis(m, "UTC", "year").iloc[0]
    assert k["matched_kwh"] <= k["annual_matched_kwh"] + 1e-6
    # a period's use is its electricity consumed, whatever the battery holds at the end
    assert k["use_kwh"] == pytest.approx(m["consumed_kwh"].sum(), rel=1e-9, abs=1e-6)
    if k["use_kwh"] > 0:
        assert k["cfe"] <= k["annual_matched_share"] + 1e-9
        assert 0.0 <= k["cfe"] <= 1.0 + 1e-9
    # energy balances of every hour
    assert np.allclose(f["pv_to_load_kwh"] + f["pv_to_battery_kwh"],
                       hourly["pv_generated_kwh"] - np.minimum(hourly["grid_export_kwh"], hourly["pv_generated_kwh"]))
    assert np.allclose(m["use_kwh"], m["green_onsite_kwh"] + m["grid_origin_use_kwh"] + m["onsite_other_use_kwh"])
    assert np.allclose(b["out_green_kwh"] + b["out_other_kwh"], hourly["battery_discharge_kwh"])
    # what the battery took in is out, lost or still stored
    inflow = f["pv_to_battery_kwh"].sum() + f["grid_to_battery_kwh"].sum() + f["other_to_battery_kwh"].sum()
    outflow = (b["out_green_kwh"] + b["out_other_kwh"] + b["loss_green_kwh"] + b["loss_other_kwh"]).sum()
    stored = b["stored_green_kwh"].iloc[-1] + b["stored_other_kwh"].iloc[-1]
    assert inflow == pytest.approx(outflow + stored, abs=1e-6)
    # green from the battery never exceeds the PV put into it
    assert b["out_green_kwh"].sum() + b["loss_green_kwh"].sum() <= f["pv_to_battery_kwh"].sum() + 1e-6


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=96), _kwh, _kwh, _kwh, _kwh)
def test_property_flat_supply_and_use_give_equal_hourly_and_annual_shares(n, load, pv, contract, granular):
    idx = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    imp, exp = max(load - pv, 0.0), max(pv - load, 0.0)
    hourly = pd.DataFrame({"grid_import_kwh": imp, "grid_export_kwh": exp, "pv_generated_kwh": pv}, index=idx)
    _, _, m = _run(hourly, contract=np.full(n, contract), granular=np.full(n, granular))
    k = period_kpis(m, "UTC", "year").iloc[0]
    assert k["matched_kwh"] == pytest.approx(k["annual_matched_kwh"], rel=1e-9, abs=1e-9)
    if k["use_kwh"] > 0:
        assert k["cfe"] == pytest.approx(k["annual_matched_share"], rel=1e-9)


# -- delivery profiles ---------------------------------------------------------------------------------

def test_baseload_and_solar_profiles_place_a_contract_on_its_hours():
    hours = pd.date_range("2024-06-01", periods=48, freq="h", tz="Asia/Shanghai")
    start, end = hours[0], hours[24]  # the first local day
    flat = delivery_kwh(240.0, "baseload", hours, start, end)
    assert flat.iloc[:24].tolist() == pytest.approx([10.0] * 24)
    assert flat.iloc[24:].sum() == 0.0
    sun = delivery_kwh(240.0, "solar", hours, start, end, lat=36.1, lon=120.4)
    assert sun.sum() == pytest.approx(240.0)
    local = sun.index.hour
    assert sun[(local < 4) | (local >= 20)].sum() == 0.0  # Qingdao in June: dark before 4 and after 20 h
    assert sun.idxmax().hour in (11, 12)


def test_region_technology_and_as_consumed_profiles():
    hours = pd.date_range("2024-01-01", "2025-01-01", freq="h", tz="Asia/Shanghai", inclusive="left")
    hydro = delivery_kwh(1.2e6, "CN-South:hydro", hours, hours[0], hours[-1] + pd.Timedelta("1h"))
    assert hydro.sum() == pytest.approx(1.2e6)
    by_month = hydro.groupby(hydro.index.month).sum()
    assert by_month.loc[8] > 2 * by_month.loc[2]  # wet season
    use = pd.Series(np.where(hours.hour < 12, 1.0, 3.0), index=hours)
    pac = delivery_kwh(400.0, "as_consumed", hours[:24], hours[0], hours[24], weights=use)
    assert pac.iloc[0] == pytest.approx(400.0 / 48) and pac.iloc[12] == pytest.approx(400.0 * 3 / 48)
    schedule = pd.Series(5.0, index=hours[:3])
    assert delivery_kwh(0.0, schedule, hours[:5], hours[0], hours[2]).tolist() == [5.0, 5.0, 0.0, 0.0, 0.0]


def test_profile_errors_say_what_was_expected():
    hours = pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC")
    with pytest.raises(AccountingError, match="expected lat and lon"):
        profile_weights("solar", hours)
    with pytest.raises(AccountingError, match="expected the weights"):
        profile_weights("as_consumed", hours)
    with pytest.raises(AccountingError, match=r"delivery profile 'peaky': expected one of"):
        profile_weights("peaky", hours)
    with pytest.raises(AccountingError, match=r"the CN-South mix has no 'lignite'"):
        profile_weights("CN-South:lignite", hours)


def test_month_hour_table_sums_by_local_month_and_hour():
    _, _, m = _run(_one_day(), rte=0.9, contract=np.full(24, 10.0))
    t = month_hour_table(m, "Asia/Shanghai", "matched_kwh")
    assert t.shape == (12, 24)
    assert t.to_numpy().sum() == pytest.approx(m["matched_kwh"].sum())
    assert t.loc[6, 18] == pytest.approx(m["matched_kwh"].iloc[10])  # 10:00 UTC is 18:00 in Shanghai
    assert t.loc[1].sum() == 0.0
    with pytest.raises(AccountingError, match="expected a column 'nope'"):
        month_hour_table(m, "UTC", "nope")
