"""Hourly KPIs of several sites from stage-1 hourly rows: intensity choice, instruments, rollups."""

import numpy as np
import pandas as pd
import pytest

from ems.accounting.hourly import hourly_kpis, site_hours
from ems.accounting.intensity import IntensitySeries, validate_intensity
from ems.errors import AccountingError
from ems.readings import MeterInfo, SiteInfo

IDX = pd.date_range("2024-06-01", periods=24, freq="h", tz="UTC")


def _site(site, region, country, tz="UTC", park="P1"):
    return SiteInfo(site=site, name=site, group="G", company="C", park=park, tz=tz, lat=36.1, lon=120.4,
                    country=country, grid_region=region, factor_set="cn-2023")


def _meters(site, battery=True):
    ms = [MeterInfo(site, "grid", "grid", "electricity", ("import_kwh", "export_kwh"), 900),
          MeterInfo(site, "pv1", "pv", "electricity", ("energy_kwh",), 900)]
    if battery:
        ms.append(MeterInfo(site, "bess", "battery", "electricity", ("charge_kwh", "discharge_kwh"), 900,
                            {"eta_charge": 0.9486832980505138, "eta_discharge": 0.9486832980505138}))
    return ms


def _rows(site, meter, quantity, values):
    return pd.DataFrame({"site": site, "meter": meter, "quantity": quantity, "hour": IDX, "value": values,
                         "period": "", "n": 4})


def _one_day_rows(site):
    """The hand-computed day of tests/test_hourly_matching.py as stage-1 hourly rows."""
    imp = np.full(24, 100.0)
    pv, ch, dis = np.zeros(24), np.zeros(24), np.zeros(24)
    imp[[2, 3]], ch[[2, 3]] = 200.0, 100.0
    pv[10:14], imp[10:14], ch[10:14] = 150.0, 0.0, 50.0
    dis[18:22], imp[18:22] = 90.0, 10.0
    return pd.concat([_rows(site, "grid", "import_kwh", imp), _rows(site, "grid", "export_kwh", 0.0),
                      _rows(site, "pv1", "energy_kwh", pv), _rows(site, "bess", "charge_kwh", ch),
                      _rows(site, "bess", "discharge_kwh", dis)], ignore_index=True)


def _series(region, day, night):
    vals = np.where((IDX.hour >= 6) & (IDX.hour < 18), day, night)
    f = pd.DataFrame({"region": region, "hour": IDX, "average_kg_per_kwh": vals})
    return IntensitySeries(validate_intensity(f, "test"), "test series", "measured")


def _annual(si, year):
    return {"average": 0.5, "residual": 0.7, "source": "test annual"}


def _instruments(site):
    rows = [
        {"site": site, "instrument": "PPA", "status": "counted", "mwh": 0.24, "id": "ppa-1",
         "period_start": "2024-06-01", "period_end": "2024-06-01", "vintage_start": "2024-06-01",
         "vintage_end": "2024-06-01", "profile": "baseload"},
        {"site": site, "instrument": "GO", "status": "counted", "mwh": 0.05, "id": "gc-22h",
         "period_start": "2024-06-01", "period_end": "2024-06-01", "vintage_start": "2024-06-01",
         "vintage_end": "2024-06-01", "generation_start": pd.Timestamp("2024-06-01T22:00Z"),
         "generation_end": pd.Timestamp("2024-06-01T23:00Z")},
        {"site": site, "instrument": "GO", "status": "counted", "mwh": 0.1, "id": "go-annual",
         "period_start": "2024-06-01", "period_end": "2024-06-01", "vintage_start": "2024-01-01",
         "vintage_end": "2024-12-31"},
        {"site": site, "instrument": "GO", "status": "refused", "mwh": 9.0, "id": "go-refused",
         "period_start": "2024-06-01", "period_end": "2024-06-01", "vintage_start": "2020-01-01",
         "vintage_end": "2020-12-31"},
    ]
    return pd.DataFrame(rows)


def test_site_hours_maps_meter_kinds_to_flows_and_fills_missing_hours():
    rows = _one_day_rows("a")
    rows = rows[~((rows["quantity"] == "import_kwh") & (rows["hour"] == IDX[5]))]  # no row: 0 kWh
    h = site_hours(rows, _meters("a"))["a"]
    assert len(h) == 24
    assert h.loc[IDX[5], "grid_import_kwh"] == 0.0
    assert h["pv_generated_kwh"].sum() == 600.0
    assert set(h.columns) == {"grid_import_kwh", "grid_export_kwh", "pv_generated_kwh", "battery_charge_kwh",
                              "battery_discharge_kwh"}


def test_hand_computed_day_through_the_site_pipeline():
    res = hourly_kpis(_one_day_rows("a"), _meters("a"), [_site("a", "TEST", "XX")], _annual,
                      _instruments("a"), series=[_series("TEST", 0.4, 0.6)])
    k = res.rollup("site", "day").iloc[0]
    assert k["key"] == "a" and k["period"] == "2024-06-01"
    assert k["use_kwh"] == pytest.approx(2440.0)
    assert k["matched_kwh"] == pytest.approx(850.0)
    assert k["cfe"] == pytest.approx(850.0 / 2440.0)
    assert k["annual_matched_kwh"] == pytest.approx(990.0)
    assert k["scope2_location_hourly_kg"] == pytest.approx(944.0)
    assert k["scope2_location_annual_kg"] == pytest.approx(920.0)
    assert k["scope2_market_hourly_kg"] == pytest.approx(1113.0)
    assert k["scope2_market_annual_kg"] == pytest.approx(1015.0)
    prov = res.intensity.iloc[0]
    assert prov["method"] == "measured" and prov["place"] == "TEST" and prov["hours_filled"] == 0
    placements = dict(zip(res.instruments["id"], res.instruments["placement"], strict=True))
    assert placements["ppa-1"] == "contract, profile baseload"
    assert placements["gc-22h"].startswith("granular")
    assert placements["go-annual"].startswith("annual certificate")
    assert "go-refused" not in placements


def test_intensity_choice_series_then_model_then_annual_and_group_sums():
    rows = pd.concat([_one_day_rows("a"), _one_day_rows("b"), _one_day_rows("c")], ignore_index=True)
    meters = _meters("a") + _meters("b") + _meters("c")
    sites = [_site("a", "TEST", "XX"), _site("b", "CN-North", "CN", tz="Asia/Shanghai", park="P2"),
             _site("c", "NOWHERE", "ZZ", park="P2")]
    res = hourly_kpis(rows, meters, sites, _annual, series=[_series("TEST", 0.4, 0.6)])
    methods = dict(zip(res.intensity["site"], res.intensity["method"], strict=True))
    assert methods == {"a": "measured", "b": "modelled", "c": "annual"}
    by_site = res.rollup("site", "year").set_index("key")
    # the annual factor flat in every hour: hourly location-based = annual
    assert by_site.loc["c", "scope2_location_diff_kg"] == pytest.approx(0.0, abs=1e-9)
    # the modelled mix is calibrated to the site's annual factor over the region's load, not the site's import
    assert by_site.loc["b", "scope2_location_hourly_kg"] != pytest.approx(by_site.loc["b", "scope2_location_annual_kg"])
    group = res.rollup("group", "year").iloc[0]
    for col in ("use_kwh", "matched_kwh", "annual_matched_kwh", "scope2_location_hourly_kg", "scope2_market_annual_kg"):
        assert group[col] == pytest.approx(by_site[col].sum()), col
    assert group["cfe"] == pytest.approx(group["matched_kwh"] / group["use_kwh"])
    assert group["sites"] == 3
    parks = res.rollup("park", "year").set_index("key")
    assert parks.loc["P2", "use_kwh"] == pytest.approx(by_site.loc[["b", "c"], "use_kwh"].sum())


def test_sold_own_pv_and_announced_efficiency():
    inst = pd.DataFrame([{"site": "a", "instrument": "GEC", "status": "sold", "mwh": 0.3, "id": "own-pv",
                          "period_start": "2024-06-01", "period_end": "2024-06-01", "vintage_start": "2024-06-01",
                          "vintage_end": "2024-06-01"}])
    res = hourly_kpis(_one_day_rows("a"), _meters("a"), [_site("a", "TEST", "XX")], _annual, inst,
                      series=[_series("TEST", 0.4, 0.6)])
    k = res.rollup("site", "day").iloc[0]
    assert k["green_onsite_kwh"] == pytest.approx(300.0)  # half of the 600 kWh PV sold
    h = res.hours["a"]
    assert h["stored_green_kwh"].iloc[13] == pytest.approx(100.0)  # rte 0.9 from the meter's etas


def test_month_hour_and_errors():
    res = hourly_kpis(_one_day_rows("a"), _meters("a"), [_site("a", "TEST", "XX")], _annual,
                      series=[_series("TEST", 0.4, 0.6)])
    t = res.month_hour("a", "unmatched_kwh")
    assert t.loc[6].sum() == pytest.approx(res.hours["a"]["unmatched_kwh"].sum())
    with pytest.raises(AccountingError, match="expected one of the sites"):
        res.month_hour("z")
    with pytest.raises(AccountingError, match="by: expected one of"):
        res.rollup("country")
    with pytest.raises(AccountingError, match="no SiteInfo for it"):
        hourly_kpis(_one_day_rows("a"), _meters("a"), [], _annual)


def test_registry_reads_generation_hours_and_delivery_profile_from_the_ledger():
    from ems.accounting.certificates import instrument_table, load_framework
    from ems.readings import events_frame

    si = _site("a", "CN-North", "CN", tz="Asia/Shanghai")
    ev = events_frame([
        {"ts": "2024-06-02T00:00Z", "site": "a", "kind": "certificate", "subject": "GEC", "value": 1.0, "unit": "MWh",
         "detail": {"id": "gc-1", "serials": {"prefix": "GEC-X", "first": 1, "last": 1}, "plant": "wind farm",
                    "plant_commissioned": "2020-01-01", "generation_start": "2024-06-01T20:00+08:00",
                    "generation_end": "2024-06-01T21:00+08:00", "period_start": "2024-06-01", "period_end": "2024-06-30"}},
        {"ts": "2024-06-30T00:00Z", "site": "a", "kind": "contract_delivery", "subject": "green_power", "value": 30.0,
         "unit": "MWh", "detail": {"id": "ppa-1", "period_start": "2024-06-01", "period_end": "2024-06-30", "profile": "solar"}},
    ])
    t = instrument_table(ev, {"a": si}, load_framework("RE100"))
    gc, ppa = t.iloc[0], t.iloc[1]
    assert gc["generation_start"] == pd.Timestamp("2024-06-01T12:00Z") and gc["generation_end"] == pd.Timestamp("2024-06-01T13:00Z")
    assert str(gc["vintage_start"]) == "2024-06-01"  # the generation day stands for the vintage
    assert gc["status"] == "counted"
    assert ppa["profile"] == "solar" and pd.isna(ppa["generation_start"])


def test_annual_factors_follow_the_factor_set_rule_most_local_first():
    from ems.accounting.factors import load_factor_set
    from ems.accounting.hourly import annual_factors

    fs = load_factor_set("cn-2023")
    si = SiteInfo(site="q", name="q", group="G", company="C", park="P", tz="Asia/Shanghai", lat=36.1, lon=120.4,
                  country="CN", grid_region="CN-North", factor_set="cn-2023", province="CN-SD")
    pick = annual_factors({"q": fs})(si, 2024)
    expected = fs.grid_factor("average", si.places(), 2024)
    assert pick["average"] == pytest.approx(expected["value"])
    assert expected["place"] == "CN-SD"  # Shandong's provincial factor, not the region's
    with pytest.raises(AccountingError, match="no factor set"):
        annual_factors({})(si, 2024)
