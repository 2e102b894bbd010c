"""Formulas of the accounting against hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest
from builders import (
    TARIFF,
    const,
    from_power,
    index,
    meter,
    readingset,
    register,
    site,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from ems.accounting import FactorSet, kpis, load_factor_set, load_targets, progress
from ems.accounting.energy import stage1
from ems.errors import AccountingError, ConfigError

DAY = 96  # 15-min intervals in a 24 h day


def _simple(power=100.0, periods=DAY, start="2024-06-01", tz="Asia/Shanghai", pv=None, export=None,
            output=None, extra_frames=(), extra_meters=(), events=None, **site_attrs):
    idx = index(start, periods, tz=tz)
    frames = [from_power("s1", "grid", "import_kwh", const(idx, power))]
    meters = [meter("s1", "grid", "grid")]
    frames.append(from_power("s1", "grid", "export_kwh", const(idx, export or 0.0)))
    if pv is not None:
        frames.append(from_power("s1", "pv", "energy_kwh", const(idx, pv)))
        meters.append(meter("s1", "pv", "pv"))
    if output is not None:
        frames.append(register("s1", "mes", "output_rmb", const(idx, output)))
        meters.append(meter("s1", "mes", "production"))
    frames += list(extra_frames)
    meters += list(extra_meters)
    return readingset(frames, meters, [site("s1", tz, **site_attrs)], events), idx


def _one(res, col):
    assert len(res.kpis) == 1, res.kpis[["key", "period"]]
    return float(res.kpis[col].iloc[0])


def test_energy_from_register_differences():
    rs, _ = _simple(power=100.0)
    res = kpis(rs, period="day")
    assert _one(res, "grid_import_kwh") == pytest.approx(2400.0)
    assert _one(res, "peak_import_kw") == pytest.approx(100.0)
    assert _one(res, "load_factor") == pytest.approx(1.0)
    assert _one(res, "hours") == pytest.approx(24.0)
    # GB/T 2589: 2400 kWh x 0.1229 kgce/kWh
    assert _one(res, "total_tce") == pytest.approx(2400 * 0.1229 / 1000)
    # location-based: a CN-East site without a province -> the regional factor, nearest year (2023: 0.5500)
    assert _one(res, "scope2_location_t") == pytest.approx(2400 * 0.5500 / 1000)
    assert _one(res, "scope2_market_t") == pytest.approx(2400 * 0.6096 / 1000)


def test_lost_messages_give_the_same_energy():
    rs, _ = _simple(power=100.0, periods=2 * DAY, start="2024-06-01")
    full = kpis(rs, period="day").kpis.set_index("period")["grid_import_kwh"]
    r = rs.readings
    # lose 20 messages (5 h) of every series around local midnight (16:00 UTC), across the day boundary
    ts = r.index
    lost = (ts > pd.Timestamp("2024-06-01T14:00Z")) & (ts <= pd.Timestamp("2024-06-01T19:00Z"))
    rs.readings = r[~lost]
    res = kpis(rs, period="day")
    got = res.kpis.set_index("period")["grid_import_kwh"]
    pd.testing.assert_series_equal(got, full)
    gaps = res.anomalies[res.anomalies["kind"] == "gap"]
    assert len(gaps) == 2 and gaps["detail"].str.contains("20 interval").all()


def test_gap_split_pro_rata_across_days():
    # two register readings only: 12:00 local day 1 and 12:00 local day 2, 240 kWh between
    tz = "Asia/Shanghai"
    idx = pd.DatetimeIndex([pd.Timestamp("2024-06-01 12:00", tz=tz), pd.Timestamp("2024-06-02 12:00", tz=tz)]).tz_convert("UTC")
    df = pd.DataFrame({"site": "s1", "meter": "grid", "quantity": "import_kwh", "value": [10.0, 250.0]}, index=idx)
    rs = readingset([df], [meter("s1", "grid", "grid", interval_s=3600)], [site("s1", tz)])
    e = stage1(rs).energy
    by_day = e.groupby("date")["value"].sum()
    assert by_day.to_dict() == {pd.Timestamp("2024-06-01"): 120.0, pd.Timestamp("2024-06-02"): 120.0}


def test_meter_reset_is_reported_not_negative():
    idx = index("2024-06-01", 4, tz="Asia/Shanghai")
    vals = [1000.0, 1025.0, 1050.0, 5.0, 30.0]  # reset to 0 between 3rd and 4th interval end
    ts = pd.DatetimeIndex([idx[0] - pd.Timedelta(minutes=15), *idx], name="ts")
    df = pd.DataFrame({"site": "s1", "meter": "grid", "quantity": "import_kwh", "value": vals}, index=ts)
    rs = readingset([df], [meter("s1", "grid", "grid")], [site("s1")])
    res = kpis(rs, period="day")
    assert _one(res, "grid_import_kwh") == pytest.approx(25 + 25 + 5 + 25)
    a = res.anomalies
    assert list(a["kind"]) == ["reset"] and a["energy"].iloc[0] == 5.0 and a["prev_value"].iloc[0] == 1050.0


def test_register_rollover():
    idx = index("2024-06-01", 2, tz="Asia/Shanghai")
    ts = pd.DatetimeIndex([idx[0] - pd.Timedelta(minutes=15), *idx], name="ts")
    df = pd.DataFrame({"site": "s1", "meter": "grid", "quantity": "import_kwh", "value": [99990.0, 99995.0, 3.0]}, index=ts)
    rs = readingset([df], [meter("s1", "grid", "grid", rollover_at=100000.0)], [site("s1")])
    s1 = stage1(rs)
    assert s1.energy["value"].sum() == pytest.approx(5.0 + 8.0)
    assert list(s1.anomalies["kind"]) == ["rollover"]


@pytest.mark.parametrize(("day", "hours"), [("2024-03-31", 23), ("2024-10-27", 25), ("2024-06-01", 24)])
def test_dst_days_in_ljubljana(day, hours):
    tz = "Europe/Ljubljana"
    rs, _ = _simple(power=100.0, periods=4 * 26, start=day, tz=tz, grid_region="SI", country="SI", factor_set="si-2024")
    res = kpis(rs, period="day")
    k = res.kpis.set_index("period")
    assert k.loc[day, "grid_import_kwh"] == pytest.approx(100.0 * hours)
    assert k.loc[day, "hours"] == pytest.approx(hours)
    assert k.loc[day, "load_factor"] == pytest.approx(1.0)


def test_zero_output_value_gives_nan_with_reason():
    rs, _ = _simple(output=0.0)
    res = kpis(rs, period="day")
    row = res.kpis.iloc[0]
    assert math.isnan(row["tce_per_10k_rmb"]) and math.isnan(row["scope12_market_intensity_t_per_10k_rmb"])
    assert "zero" in row["intensity_note"]
    assert not np.isinf(res.kpis.select_dtypes("number").to_numpy()).any()


def test_intensity_per_10k_rmb():
    rs, _ = _simple(power=100.0, output=1000.0)  # 96,000 RMB a day
    res = kpis(rs, period="day")
    assert _one(res, "grid_import_kwh_per_10k_rmb") == pytest.approx(2400 / 9.6)
    assert _one(res, "tce_per_10k_rmb") == pytest.approx(2400 * 0.1229 / 1000 / 9.6)


def test_no_pv():
    rs, _ = _simple(power=50.0)
    row = kpis(rs, period="day").kpis.iloc[0]
    assert row["pv_consumed_kwh"] == 0 and row["green_share"] == 0
    assert math.isnan(row["self_consumption"]) and row["self_consumption_note"] == "no PV generation"
    assert row["self_sufficiency"] == pytest.approx(0.0)


def test_pv_export_attribution_and_shares():
    # import 100 kW, PV 50 kW, export 30 kW -> PV exported 30, consumed 20 per interval-hour
    rs, _ = _simple(power=100.0, pv=50.0, export=30.0)
    res = kpis(rs, period="day")
    assert _one(res, "pv_exported_kwh") == pytest.approx(30 * 24)
    assert _one(res, "pv_consumed_kwh") == pytest.approx(20 * 24)
    assert _one(res, "electricity_consumed_kwh") == pytest.approx((100 + 50 - 30) * 24)
    assert _one(res, "self_consumption") == pytest.approx(20 / 50)
    assert _one(res, "self_sufficiency") == pytest.approx(1 - 100 / 120)
    assert _one(res, "green_share") == pytest.approx(20 / 120)
    assert _one(res, "pv_consumed_tce_equiv") == pytest.approx(20 * 24 * 0.1229 / 1000)
    assert _one(res, "total_tce") == pytest.approx(100 * 24 * 0.1229 / 1000)  # PV not in the total


def test_export_larger_than_pv_counts_only_pv():
    rs, _ = _simple(power=0.0, pv=20.0, export=30.0)
    res = kpis(rs, period="day")
    assert _one(res, "pv_exported_kwh") == pytest.approx(20 * 24)
    assert _one(res, "pv_consumed_kwh") == 0


def _cert(mwh, vintage, scheme="GEC", ts="2024-06-01T06:00Z", **detail):
    return {"ts": ts, "site": "s1", "kind": "certificate", "subject": scheme, "value": mwh, "unit": "MWh",
            "detail": {"vintage": vintage, "technology": "wind", "plant": "wind farm", "plant_commissioned": "2020-01-01",
                       **detail}}


def test_certificates_exceeding_consumption_are_capped():
    ev = [_cert(5.0, 2024), {"ts": "2024-06-01T06:00Z", "site": "s1", "kind": "contract_delivery",
                              "subject": "hydro", "value": 0.4,
                              "detail": {"period_start": "2024-06-01", "period_end": "2024-06-01"}}]
    rs, _ = _simple(power=100.0, pv=50.0, events=ev)  # consumption 3600 kWh, PV 1200
    res = kpis(rs, period="year")
    row = res.kpis.iloc[0]
    assert row["green_share"] == pytest.approx(1.0)
    assert row["contracts_counted_kwh"] == pytest.approx(400)
    assert row["certificates_counted_kwh"] == pytest.approx(3600 - 1200 - 400)
    assert row["certificates_beyond_consumption_kwh"] == pytest.approx(5000 - 2000)
    # market-based: all grid import covered -> only heat (none) left
    assert row["scope2_market_t"] == pytest.approx(0.0)
    # dual control: GEC counts as the basis (capped at grid import)
    assert row["re_excluded_kwh"] == pytest.approx(2000)
    assert row["total_excl_re_tce"] == pytest.approx((2400 - 2000) * 0.1229 / 1000)


def test_invalid_certificate_vintage_and_irec_rule():
    ev = [_cert(1.0, 2021), _cert(1.0, 2025, scheme="I-REC"), _cert(1.0, 2023), _cert(1.0, 2024, scheme="XYZ"),
          _cert(1.0, 2024, action="purchase"), _cert(1.0, 2024)]
    rs, _ = _simple(power=100.0, events=ev)
    res = kpis(rs, period="year")  # RE100: generation from 2023-07-01 to 2025-03-31 for 2024
    c = res.instruments
    status = dict(zip(zip(c["instrument"], c["vintage_start"].astype(str), strict=True), c["status"], strict=True))
    reason = c.set_index(["instrument", c["vintage_start"].astype(str)])["reason"]
    assert status[("GEC", "2021-01-01")] == "refused" and "outside the RE100 window" in reason[("GEC", "2021-01-01")]
    assert status[("I-REC", "2025-01-01")] == "refused" and "> 2024" in reason[("I-REC", "2025-01-01")]
    assert status[("GEC", "2023-01-01")] == "refused"  # a 2023 vintage does not count in full for 2024
    assert "XYZ is not an instrument RE100 accepts" in reason[("XYZ", "2024-01-01")]
    assert c["reason"].str.contains("only retirements").sum() == 1
    row = res.kpis.iloc[0]
    assert row["certificates_counted_kwh"] == pytest.approx(1000)
    assert row["certificates_invalid_kwh"] == pytest.approx(5000)
    # China's GEC rules: valid two years from generation, so the 2023 vintage counts
    res2 = kpis(rs, period="year", framework="CN-GEC")
    assert res2.kpis["certificates_counted_kwh"].iloc[0] == pytest.approx(2000)


def test_events_attributed_to_local_periods():
    # 20:00 UTC on 31 January is 04:00 on 1 February in Shanghai
    ev = [{"ts": "2024-01-31T20:00Z", "site": "s1", "kind": "refrigerant_topup", "subject": "R-410A", "value": 2.0},
          {"ts": "2024-01-31T15:00Z", "site": "s1", "kind": "process_emission", "subject": "weld", "value": 100.0}]
    rs, _ = _simple(power=10.0, periods=DAY * 3, start="2024-01-30", events=ev)
    k = kpis(rs, period="month").kpis.set_index("period")
    assert k.loc["2024-02", "scope1_refrigerant_kg"] == pytest.approx(2 * 1924)  # AR5
    assert k.loc["2024-01", "scope1_refrigerant_kg"] == 0
    assert k.loc["2024-01", "scope1_process_kg"] == pytest.approx(100)
    k4 = kpis(rs, period="month", factors={"gwp_edition": "AR4"}).kpis.set_index("period")
    assert k4.loc["2024-02", "scope1_t"] == pytest.approx(2 * 2088 / 1000)


def test_unknown_refrigerant_is_reported_not_counted():
    ev = [{"ts": "2024-06-01T02:00Z", "site": "s1", "kind": "refrigerant_topup", "subject": "R-999", "value": 1.0},
          {"ts": "2024-06-01T02:00Z", "site": "s1", "kind": "refrigerant_topup", "subject": "R-32", "value": 1.0}]
    rs, _ = _simple(events=ev)
    res = kpis(rs, period="year")  # one unknown gas does not stop the report
    row = res.kpis.iloc[0]
    assert row["scope1_refrigerant_kg"] == pytest.approx(677) and row["unknown_gas_kg"] == pytest.approx(1.0)
    assert any("R-999" in n for n in res.notes)
    g = res.gases.set_index("gas")
    assert "not in the GWP table" in g.loc["R-999", "note"] and not g.loc["R-999", "in_scope1"]


def test_fuels_and_steam_scope1_and_tce():
    idx = index("2024-06-01", DAY, tz="Asia/Shanghai")
    frames = [register("s1", "gas", "volume_m3", const(idx, 1.0)), register("s1", "fl", "mass_kg", const(idx, 0.5)),
              register("s1", "st", "heat_gj", const(idx, 0.1))]
    ms = [meter("s1", "gas", "gas"), meter("s1", "fl", "fuel", carrier="diesel"), meter("s1", "st", "steam")]
    rs, _ = _simple(power=0.0, extra_frames=frames, extra_meters=ms)
    row = kpis(rs, period="day").kpis.iloc[0]
    assert row["direct_tce"] == pytest.approx((96 * 1.33 + 48 * 1.4571) / 1000)
    assert row["indirect_tce"] == pytest.approx(9.6 * 34.12 / 1000)
    assert row["scope1_t"] == pytest.approx((96 * 2.1622 + 48 * 3.0959) / 1000)
    assert row["scope2_location_t"] == pytest.approx(9.6 * 0.11)


def test_battery_losses_and_cycles():
    idx = index("2024-06-01", DAY, tz="Asia/Shanghai")
    frames = [from_power("s1", "bat", "charge_kwh", const(idx, 50.0)), from_power("s1", "bat", "discharge_kwh", const(idx, 45.0))]
    rs, _ = _simple(power=100.0, extra_frames=frames, extra_meters=[meter("s1", "bat", "battery", energy_kwh=540.0)])
    row = kpis(rs, period="day").kpis.iloc[0]
    assert row["battery_losses_kwh"] == pytest.approx(5 * 24)
    assert row["battery_efc"] == pytest.approx(45 * 24 / 540)


def test_tariff_costs():
    rs, _ = _simple(power=100.0, export=10.0, tariff=TARIFF)
    row = kpis(rs, period="month").kpis.iloc[0]
    # peak 8-12 (4 h), valley 23-07 (8 h), flat 12 h; 100 kW
    assert row["import_peak_kwh"] == pytest.approx(400)
    assert row["import_valley_kwh"] == pytest.approx(800)
    assert row["energy_cost"] == pytest.approx(400 * 1.0 + 800 * 0.3 + 1200 * 0.6)
    assert row["demand_charge"] == pytest.approx(100 * 40.0)
    assert row["export_revenue"] == pytest.approx(240 * 0.4)


def test_bad_tariff():
    rs, _ = _simple(tariff={"prices": {"flat": 1}, "seasons": []})
    with pytest.raises(AccountingError, match="not a valid tariff"):
        kpis(rs)


def test_grid_factor_year_selection():
    fs = load_factor_set("cn-2023")
    east = [("province", ""), ("region", "CN-East"), ("country", "CN")]
    assert fs.grid_factor("average", east, 2022)["value"] == 0.5617
    g = fs.grid_factor("average", east, 2024)  # the region's nearest year, not the newer national value
    assert (g["value"], g["year"], g["place"], g["level"]) == (0.55, 2023, "CN-East", "region")
    g = fs.grid_factor("average", east, 2019)
    assert g["year"] == 2021 and "nearest year 2021" in g["note"]
    sd = [("province", "CN-SD"), ("region", "CN-North"), ("country", "CN")]
    g = fs.grid_factor("average", sd, 2024)  # the province's newest value: Shandong 2023
    assert (g["value"], g["year"], g["level"]) == (0.6191, 2023, "province")
    assert fs.grid_factor("residual", sd, 2024)["place"] == "CN"  # residual mix: national only
    si = [("province", ""), ("region", "SI"), ("country", "SI")]
    g = fs.grid_factor("residual", si, 2024)  # Slovenia is not in the Chinese set; the place is named once
    assert g["value"] is None and g["note"] == "no residual-mix factor for SI in factor set 'cn-2023'"
    g = load_factor_set("si-2024").grid_factor("residual", si, 2024)
    assert (g["value"], g["year"], g["level"]) == (0.42945, 2024, "country")


def test_grid_factor_locality_beats_recency():
    rows = [{"place": "CN-SD", "level": "province", "year": 2022, "kind": "average", "value": 0.641},
            {"place": "CN-North", "level": "region", "year": 2023, "kind": "average", "value": 0.6361}]
    fs = FactorSet(name="t", version="", data={"grid": rows})
    g = fs.grid_factor("average", [("province", "CN-SD"), ("region", "CN-North"), ("country", "CN")], 2024)
    assert (g["value"], g["year"], g["level"]) == (0.641, 2022, "province")  # Shandong 2022 over North China 2023
    assert "nearest year 2022 for 2024" in g["note"]


def test_factor_overrides_and_errors():
    fs = load_factor_set("cn-2023", overrides={"natural_gas_kgce_per_m3": 1.2143, "grid:average:CN-East:2024": 0.5})
    assert fs.value("natural_gas_kgce_per_m3") == 1.2143
    g = fs.grid_factor("average", [("region", "CN-East"), ("country", "CN")], 2024)
    assert (g["value"], g["level"]) == (0.5, "override")
    # the Slovenian set extends the Chinese one: its home currency is EUR, the CNY table is inherited
    si = load_factor_set("si-2024", overrides={"steam_per_gj": 20.0, "prices:CNY:steam_per_gj": 80.0})
    assert si.home_currency == "EUR" and si.value("electricity_kgce_per_kwh") == 0.1229
    assert (si.price_entry("steam_per_gj", "EUR")["value"], si.price_entry("steam_per_gj", "CNY")["value"]) == (20.0, 80.0)
    with pytest.raises(AccountingError, match="expected a price table in EUR"):
        load_factor_set("cn-2023").price_entry("steam_per_gj", "EUR")
    with pytest.raises(ConfigError, match="unknown factor set"):
        load_factor_set("nope")
    with pytest.raises(ConfigError, match="no such factor"):
        load_factor_set("cn-2023", overrides={"bogus": 1})
    with pytest.raises(ConfigError, match="AR4, AR5"):
        load_factor_set("cn-2023", overrides={"gwp_edition": "AR9"})
    with pytest.raises(AccountingError, match="price table in USD"):
        fs.price_entry("steam_per_gj", "USD")


def test_missing_grid_factor():
    rs, _ = _simple(grid_region="XX-Nowhere", country="XX", tariff={**TARIFF, "currency": "CNY"})
    with pytest.raises(AccountingError, match="no grid-average factor"):
        kpis(rs)


def test_factors_used_are_listed():
    rs, _ = _simple()
    fu = kpis(rs).factors_used
    row = fu[fu["name"] == "grid_average_kgco2_per_kwh"].iloc[0]
    assert (row["site"], row["level"], row["place"], row["year_used"], row["value"], row["set"]) == (
        "s1", "region", "CN-East", "2023", 0.55, "cn-2023")
    assert (fu["source"].str.len() > 0).all()


def test_rollup_by_company_and_group():
    idx = index("2024-06-01", DAY, tz="Asia/Shanghai")
    frames, meters, sites = [], [], []
    for i, (comp, p) in enumerate([("a", 100.0), ("a", 50.0), ("b", 10.0)]):
        sid = f"s{i}"
        frames += [from_power(sid, "grid", "import_kwh", const(idx, p)), register(sid, "mes", "output_rmb", const(idx, 100.0))]
        meters += [meter(sid, "grid", "grid"), meter(sid, "mes", "production")]
        sites.append(site(sid, company=comp, park=f"park{i % 2}"))
    rs = readingset(frames, meters, sites)
    c = kpis(rs, by="company", period="day").kpis.set_index("key")
    assert c.loc["a", "grid_import_kwh"] == pytest.approx(3600) and c.loc["a", "sites"] == 2
    assert c.loc["a", "peak_import_kw"] == pytest.approx(150)  # sum of site peaks
    g = kpis(rs, by="group", period="day").kpis.iloc[0]
    assert g["grid_import_kwh_per_10k_rmb"] == pytest.approx(160 * 24 / (3 * 9600 / 1e4))
    with pytest.raises(AccountingError, match="by: expected"):
        kpis(rs, by="country")
    with pytest.raises(AccountingError, match="period: expected"):
        kpis(rs, period="week")


def test_custom_period_and_energy_saving_rate():
    # two years, output constant, consumption falls 10 %
    tz = "Asia/Shanghai"
    idx = pd.DatetimeIndex([pd.Timestamp(f"{y}-01-01", tz=tz) for y in (2023, 2024, 2025)]).tz_convert("UTC")
    frames = [pd.DataFrame({"site": "s1", "meter": "grid", "quantity": "import_kwh", "value": [0.0, 1000.0, 1900.0]}, index=idx),
              pd.DataFrame({"site": "s1", "meter": "mes", "quantity": "output_rmb", "value": [0.0, 1e5, 2e5]}, index=idx)]
    rs = readingset(frames, [meter("s1", "grid", "grid", interval_s=86400), meter("s1", "mes", "production", interval_s=86400)], [site("s1", tz)])
    y = kpis(rs, period="year").kpis.set_index("period")
    assert y.loc["2024", "energy_saving_rate"] == pytest.approx(0.1)
    assert math.isnan(y.loc["2023", "energy_saving_rate"])
    c = kpis(rs, period=("2024-01-01", "2024-06-30")).kpis
    assert c["period"].iloc[0] == "2024-01-01..2024-06-30"
    assert c["grid_import_kwh"].iloc[0] == pytest.approx(900 * 182 / 366)


def test_targets_progress():
    yearly = pd.DataFrame({
        "key": ["g", "g"], "period": ["2023", "2024"], "days": [365, 366],
        "scope12_market_t": [100.0, 90.0], "scope12_market_intensity_t_per_10k_rmb": [1.0, 0.5],
        "green_share": [0.1, 0.35], "pv_kwp": [1.0, 2.0],
    })
    p = progress(yearly, load_targets("group")).set_index("target")
    # published 2023 bases are data: 647,251 t and 15.10 %; the intensity base comes from the readings
    assert p.loc["absolute-2040", "base_value"] == 647_251 and p.loc["clean-2030", "base_value"] == pytest.approx(0.151)
    assert p.loc["intensity-2030", "base_value"] == 1.0 and p.loc["intensity-2030", "change_vs_base"] == pytest.approx(-0.5)
    # straight line from 1.0 (2023) to 0.6 (2030): 1 - 0.4/7 in 2024
    assert p.loc["intensity-2030", "required_value"] == pytest.approx(1 - 0.4 / 7)
    assert p.loc["intensity-2030", "status"] == "on track" and p.loc["intensity-2030", "met"]
    assert p.loc["clean-2030", "required_value"] == pytest.approx(0.151 + (0.30 - 0.151) / 7)
    assert p.loc["clean-2030", "status"] == "on track"
    assert p.loc["peak-2026", "status"] == "not assessable" and "peak year 2026" in p.loc["peak-2026", "reason"]
    assert p.loc["pv-capacity", "status"] == "not assessable" and p.loc["pv-capacity", "met"] is None
    # an incomplete year is not assessable, with the reason
    short = progress(yearly.assign(days=[365, 200]), load_targets("group")).set_index("target")
    assert (short.drop(index="pv-capacity")["status"] == "not assessable").all()
    assert "less than a year of data (200 of 366 days" in short.loc["clean-2030", "reason"]
    # off track: a green share below the line
    low = progress(yearly.assign(green_share=[0.1, 0.16]), load_targets("group")).set_index("target")
    assert low.loc["clean-2030", "status"] == "off track" and low.loc["clean-2030", "met"] is False
    text = p.drop(columns=["met"]).select_dtypes(exclude="number")  # every text cell says something or is empty
    assert text.notna().all().all() and not text.isin(["nan", "None", "<NA>"]).to_numpy().any()
    with pytest.raises(AccountingError, match="yearly"):
        progress(yearly.assign(period=["2023-01", "2023-02"]))


def test_row_order_does_not_matter():
    rs, _ = _simple(power=100.0, pv=30.0, export=10.0, periods=DAY * 2, tariff=TARIFF)
    ref = kpis(rs, period="day").kpis
    r = rs.readings
    rs.readings = r.sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(kpis(rs, period="day").kpis, ref)
    # already ordered by series then time (the fast path without sorting)
    rs.readings = r.reset_index().sort_values(["site", "meter", "quantity", "ts"]).set_index("ts")
    pd.testing.assert_frame_equal(kpis(rs, period="day").kpis, ref)
    # a series with only its baseline reading contributes nothing
    one = readingset([register("s1", "gas", "volume_m3", const(index("2024-06-01", 1), 5.0)).iloc[:1]],
                     [meter("s1", "gas", "gas")], [site("s1")])
    with pytest.raises(AccountingError, match="no register readings"):
        kpis(one)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.booleans(), min_size=DAY * 2, max_size=DAY * 2), st.floats(0.0, 500.0))
def test_energy_conserved_under_message_loss(keep, power):
    """Property: whatever messages are lost (except the last), the total energy is unchanged."""
    rs, _ = _simple(power=power, pv=power / 3, export=power / 5, periods=DAY * 2)
    total = kpis(rs, period="year").kpis[["grid_import_kwh", "pv_generated_kwh"]].to_numpy()
    r = rs.readings
    ts = r.index.unique().sort_values()
    mask = np.asarray([True, *keep[: len(ts) - 2], True])  # keep the baseline and the last reading
    rs.readings = r[r.index.isin(ts[mask])]
    got = kpis(rs, period="year").kpis[["grid_import_kwh", "pv_generated_kwh"]].to_numpy()
    np.testing.assert_allclose(got, total, rtol=1e-9, atol=1e-9)
