"""Measures: what each changes in the sites, their costs by hand, and their effect on the KPIs."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest

from ems.errors import ConfigError
from ems.model.loader import load_scenario
from ems.studies.economics import capital_recovery_factor
from ems.studies.measures import MEASURES, apply_measures, load_costs, measure_table
from ems.studies.run import evaluate, run_kpis, summarise

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def year():
    """Qingdao, 2024, hourly (not simulated unless a test asks)."""
    return load_scenario(ROOT / "scenarios" / "qingdao-2024-hourly.yaml")


@pytest.fixture(scope="module")
def week(year):
    """Qingdao for one summer week, hourly: quick to simulate."""
    return replace(year, start=dt.date(2024, 7, 15), end=dt.date(2024, 7, 22))


@pytest.fixture(scope="module")
def base_week(week):
    return summarise(run_kpis(week))


def one(sc, measure):
    new, applied = apply_measures(sc, [measure])
    (site,) = new.sites
    return site, applied


def test_catalogue_and_costs_are_documented():
    costs = load_costs()
    doc = (ROOT / "docs" / "studies.md").read_text()
    for name in MEASURES:
        key = {"zero_carbon": "offsets"}.get(name, name)
        assert key in costs["measures"], name
        assert costs["measures"][key]["source"], name
        assert f"`{name}`" in doc, name
    assert {r["measure"] for r in measure_table()} == set(MEASURES)


def test_add_pv_by_hand(year):
    site, (a,) = one(year, {"measure": "add_pv", "site": "qingdao", "kwp": 20000, "tilt_deg": 10})
    added = site.pv[-1]
    assert (added.id, added.kwp, added.tilt_deg, added.commissioned) == ("pv-added-1", 20000, 10, dt.date(2024, 1, 1))
    assert len(site.pv) == len(year.sites[0].pv) + 1
    assert a.capex == pytest.approx(20_000 * 3_200)
    assert a.opex_per_year == pytest.approx(0.015 * 64e6)
    assert a.annual_cost == pytest.approx(64e6 * capital_recovery_factor(0.06, 25) + 960_000)
    assert len(year.sites[0].pv) == 2  # the input scenario is left alone


def test_add_storage_defaults(year):
    site, (a,) = one(year, {"measure": "add_storage", "energy_kwh": 8000, "strategy": "tou_arbitrage"})
    b = site.batteries[-1]
    assert (b.energy_kwh, b.power_kw, b.dispatch.strategy) == (8000, 4000, "tou_arbitrage")
    assert a.capex == pytest.approx(8000 * 1300) and a.lifetime_years == 12


def test_electrify_forklifts(year):
    site, (a,) = one(year, {"measure": "electrify_forklifts", "site": "qingdao"})
    assert [f.fuel for f in site.fleets] == ["gasoline"]
    assert site.loads.electrified_fleet_kwh_per_year == pytest.approx(1_660_000 + 10_000 * 3.7)
    assert a.quantity == pytest.approx(10_000 / 6_000)  # forklifts
    assert a.capex == pytest.approx(10_000 / 6_000 * 90_000)
    half, _ = one(year, {"measure": "electrify_forklifts", "fleet": "diesel-trucks", "share": 0.5})
    assert [f.annual_kg for f in half.fleets if f.fuel == "diesel"] == [5000]


def test_waste_heat_compressed_air_hvac(year):
    site, (a,) = one(year, {"measure": "waste_heat_recovery", "share": 0.45})
    assert site.steam.waste_heat_share == 0.45
    assert a.quantity == pytest.approx(0.15 * 87_300)  # GJ/yr more recovered
    site, (a,) = one(year, {"measure": "compressed_air_upgrade", "saving": 0.35, "leakage_fraction": 0.1})
    ca = site.loads.compressed_air
    assert (ca.kw, ca.annual_kwh, ca.leakage_fraction) == pytest.approx((3140 * 0.65, 23_240_000 * 0.65, 0.1))
    assert a.capex == pytest.approx(3140 * 1500)
    site, _ = one(year, {"measure": "hvac_control"})
    assert site.loads.hvac.annual_kwh == pytest.approx(28_220_000 * 0.8)


def test_fixed_certificates_and_green_power(year):
    site, (a,) = one(year, {"measure": "buy_certificates", "mwh": 20000})
    c = site.procurement.certificates[-1]
    assert (c.scheme, c.mwh, c.vintage, c.date) == ("GEC", 20000, 2024, dt.date(2024, 12, 31))
    assert a.capex == 0 and a.unit == "MWh"
    site, (a,) = one(year, {"measure": "green_power", "mwh": 10000})
    k = site.procurement.contracts[-1]
    assert k.kind == "green_power" and k.annual_mwh == pytest.approx(10000 * 365 / 366)
    assert a.opex_per_year == pytest.approx(10000 * 30)


def test_target_share_and_zero_carbon_sizing(year):
    def totals(sc):
        return {"qingdao": {"electricity_consumed_kwh": 100e6, "green_kwh": 10e6}}

    new, (a,) = apply_measures(year, [{"measure": "buy_certificates", "target_share": 0.3}], site_totals=totals)
    assert a.quantity == pytest.approx(20_000)  # 0.3 x 100 GWh - 10 GWh
    assert new.sites[0].procurement.certificates[-1].mwh == pytest.approx(20_000)
    _, (a, b) = apply_measures(year, [{"measure": "buy_certificates", "target_share": 0.3},
                                      {"measure": "zero_carbon"}], site_totals=totals)
    assert b.quantity == pytest.approx(70_000) and b.offsets  # the rest to 100 %


@pytest.mark.parametrize(
    ("measure", "match"),
    [
        ({"measure": "add_wind"}, "expected a measure in add_pv"),
        ({"measure": "add_pv"}, "expected parameter 'kwp'"),
        ({"measure": "add_pv", "kwp": -5}, r"add_pv.kwp: expected a value in"),
        ({"measure": "add_pv", "kwp": 5, "kwh": 1}, "found unknown \\['kwh'\\]"),
        ({"measure": "add_pv", "kwp": 5, "site": "nowhere"}, "expected ids of this scenario's sites"),
        ({"measure": "add_storage", "energy_kwh": 5, "strategy": "yolo"}, "expected self_consumption"),
        ({"measure": "buy_certificates"}, "expected 'mwh' or 'target_share'"),
        ({"measure": "electrify_forklifts", "fleet": "company-cars"}, "expected diesel fleet ids"),
        ("add_pv", "expected a mapping with 'measure'"),
    ],
)
def test_bad_measures(year, measure, match):
    with pytest.raises(ConfigError, match=match) as err:
        apply_measures(year, [measure])
    assert str(err.value).startswith("measures.0:")


def test_waste_heat_needs_steam(year):
    s = year.sites[0].model_copy(deep=True)
    s.steam = None
    with pytest.raises(ConfigError, match="needs a 'steam' section"):
        apply_measures(replace(year, sites=[s]), [{"measure": "waste_heat_recovery", "share": 0.5}])


def test_certificates_abroad_become_green_power():
    sc = load_scenario(ROOT / "scenarios" / "demo.yaml")
    new, (a,) = apply_measures(sc, [{"measure": "buy_certificates", "site": "velenje", "mwh": 100}])
    velenje = next(s for s in new.sites if s.id == "velenje")
    assert velenje.procurement.contracts[-1].kind == "green_power"
    assert "green power" in a.note


# ------------------------------------------------------------------ through the simulator and the KPIs


def test_add_pv_cuts_grid_import(week, base_week):
    r = evaluate(week, [{"measure": "add_pv", "kwp": 20000}], base=base_week)
    assert r["pv_generated_kwh"] > base_week["pv_generated_kwh"] + 300_000
    assert r["grid_import_kwh"] < base_week["grid_import_kwh"] - 250_000
    assert r["savings_per_year"] > 0 and r["avoided_t_per_year"] > 0
    assert 0 < r["payback_years"] < 25
    assert r["cost_per_tco2e"] == pytest.approx((r["annual_cost"] - r["savings_per_year"]) / r["avoided_t_per_year"])


def test_electrify_and_heat_measures_move_their_carriers(week, base_week):
    r = evaluate(week, [{"measure": "electrify_forklifts"}, {"measure": "waste_heat_recovery", "share": 0.6}],
                 base=base_week)
    assert base_week["diesel_kg"] > 0 and r["diesel_kg"] == 0
    assert r["electricity_consumed_kwh"] > base_week["electricity_consumed_kwh"]
    assert r["steam_gj"] < base_week["steam_gj"] * 0.75  # 70 % -> 40 % of demand bought
    assert r["scope1_t"] < base_week["scope1_t"]


def test_efficiency_measures_cut_consumption(week, base_week):
    r = evaluate(week, [{"measure": "compressed_air_upgrade"}, {"measure": "hvac_control"}], base=base_week)
    assert r["electricity_consumed_kwh"] < base_week["electricity_consumed_kwh"] * 0.97


def test_target_share_reached_and_zero_carbon(week, base_week):
    r = evaluate(week, [{"measure": "buy_certificates", "target_share": 0.5}], base=base_week)
    assert r["green_share"] == pytest.approx(0.5, abs=0.005)
    z = evaluate(week, [{"measure": "zero_carbon"}], base=base_week)
    assert z["green_share"] == pytest.approx(1.0, abs=1e-3)
    assert z["offsets_t"] == pytest.approx(z["scope12_market_t"])
    assert z["net_scope12_t"] == pytest.approx(0.0, abs=1e-6)
    offsets = next(m for m in z["measures"] if m["measure"] == "offsets")
    assert offsets["annual_cost"] == pytest.approx(z["offsets_t"] * 80 * 365 / 7, rel=1e-9)


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios" / "measures").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_scenarios_apply(path):
    sc = load_scenario(path)
    assert sc.extra["measures"], "an example scenario lists its measures"

    def totals(s):
        return {x.id: {"electricity_consumed_kwh": 100e6, "green_kwh": 10e6} for x in s.sites}

    _, applied = apply_measures(sc, site_totals=totals)
    assert len(applied) >= len(sc.extra["measures"])
    assert all(a.quantity > 0 for a in applied)


def test_cost_data_without_a_discount_rate_is_refused_with_the_file(tmp_path):
    """The discount rate is cost data like the rest: a cost file without one is refused, naming the file
    and what was expected (there is no rate written in the code to fall back on)."""
    from ems.errors import ConfigError

    text = (ROOT / "ems" / "data" / "measures" / "costs.yaml").read_text()
    bad = tmp_path / "costs.yaml"
    bad.write_text("\n".join(line for line in text.splitlines() if not line.startswith("discount_rate:")))
    with pytest.raises(ConfigError, match=r"costs\.yaml: discount_rate: expected a real rate per year .* found None"):
        load_costs(bad)
    assert load_costs()["discount_rate"] == 0.06
