"""Carbon accounting rules against hand-computed values (issue 11).

Grid factors by place, the certificate registry and its eligibility rules, coverage of
grid electricity only (the CHP example), sold own-PV certificates, Scope 1 by gas with memo
items, both GB/T 2589 tce methods, money in currencies, the reporting boundary, and the
additivity of every additive KPI (a hypothesis property).
"""

from __future__ import annotations

import pandas as pd
import pytest
from builders import TARIFF, const, from_power, index, meter, readingset, register, site
from hypothesis import given, settings
from hypothesis import strategies as st

from ems.accounting import kpis, load_factor_set
from ems.accounting.kpis import FLOWS, MONEY
from ems.accounting.rollup import rollup
from ems.errors import AccountingError
from ems.gases import load_gases

TZ = "Asia/Shanghai"
DAY = 96
PLANT = {"plant": "wind farm", "plant_commissioned": "2020-01-01", "market_boundary": "CN"}


def annual(site_id: str, totals: dict[tuple[str, str], float], *, tz: str = TZ) -> list[pd.DataFrame]:
    """Registers read at local midnight on 1 January 2024 and 2025 (one year in one interval each)."""
    idx = pd.DatetimeIndex([pd.Timestamp("2024-01-01", tz=tz), pd.Timestamp("2025-01-01", tz=tz)]).tz_convert("UTC")
    return [pd.DataFrame({"site": site_id, "meter": m, "quantity": q, "value": [1000.0, 1000.0 + v]}, index=idx)
            for (m, q), v in totals.items()]


def cert(mwh, *, site_id="s1", ts="2024-12-20T04:00Z", first=1, prefix="GEC-T", ident="c", scheme="GEC", **detail):
    d = {"id": ident, "vintage": 2024, "period_year": 2024, "technology": "wind",
         "serials": {"prefix": prefix, "first": first, "last": first + round(mwh) - 1}, **PLANT, **detail}
    return {"ts": ts, "site": site_id, "kind": "certificate", "subject": scheme, "value": mwh, "unit": "MWh", "detail": d}


def one_day(power=100.0, pv=None, events=None, **site_attrs):
    idx = index("2024-06-01", DAY, tz=TZ)
    frames = [from_power("s1", "grid", "import_kwh", const(idx, power)), from_power("s1", "grid", "export_kwh", const(idx, 0.0))]
    meters = [meter("s1", "grid", "grid")]
    if pv is not None:
        frames.append(from_power("s1", "pv", "energy_kwh", const(idx, pv)))
        meters.append(meter("s1", "pv", "pv"))
    return readingset(frames, meters, [site("s1", TZ, **site_attrs)], events)


# ----------------------------------------------------------------- coverage of grid electricity only


def test_chp_and_certificates_example():
    """Issue 11: a 1 MW CHP covering half of 17.56 GWh, certificates equal to total use."""
    chp = 1000.0 * 8784  # 1 MW for the 8,784 h of 2024 [kWh]
    grid = 17_560_000.0 - chp  # 8,776,000 kWh
    frames = annual("s1", {("grid", "import_kwh"): grid, ("grid", "export_kwh"): 0.0, ("chp", "energy_kwh"): chp})
    ms = [meter("s1", "grid", "grid", interval_s=3600), meter("s1", "chp", "chp", interval_s=3600)]
    rs = readingset(frames, ms, [site("s1")], [cert(17_560.0)])
    row = kpis(rs, by="group", period="year").kpis.iloc[0]
    assert row["electricity_consumed_kwh"] == pytest.approx(17_560_000)
    # the certificates cover grid electricity only: 8,776,000 kWh, in the green share and in market-based Scope 2 alike
    assert row["certificates_counted_kwh"] == pytest.approx(8_776_000)
    assert row["green_share"] == pytest.approx(8_776_000 / 17_560_000)  # 49.98 %, not 100 %
    assert row["market_covered_kwh"] == pytest.approx(8_776_000)
    assert row["scope2_electricity_market_kg"] == pytest.approx(0.0)
    assert row["certificates_beyond_consumption_kwh"] == pytest.approx(17_560_000 - 8_776_000)
    assert row["scope2_location_t"] == pytest.approx(8_776_000 * 0.55 / 1000)  # East China 2023


def test_double_retirement_refused_naming_both():
    ev = [cert(100.0, ident="first", ts="2024-06-01T04:00Z"),
          cert(100.0, ident="second", first=51, ts="2024-06-01T05:00Z", site_id="s2")]
    idx = index("2024-06-01", DAY, tz=TZ)
    frames = [from_power(s, "grid", "import_kwh", const(idx, 100.0)) for s in ("s1", "s2")]
    rs = readingset(frames, [meter(s, "grid", "grid") for s in ("s1", "s2")], [site("s1"), site("s2")], ev)
    res = kpis(rs, by="group", period="year")
    inst = res.instruments.set_index("id")
    assert inst.loc["first", "status"] == "counted"
    assert inst.loc["second", "status"] == "refused"
    why = inst.loc["second", "reason"]
    assert "double retirement: serials GEC-T 51-100" in why
    assert "first (site s1, 2024-06-01" in why and "second (site s2, 2024-06-01" in why
    assert res.kpis["certificates_counted_kwh"].iloc[0] == pytest.approx(2400.0)  # s1's day of import, capped


@pytest.mark.parametrize(("start", "end", "status"), [
    ("2023-06-01", "2023-06-30", "refused"),  # before the RE100 window (2023-07-01 .. 2025-03-31)
    ("2023-07-01", "2023-07-31", "counted"),
    ("2025-03-01", "2025-03-31", "counted"),
    ("2025-04-01", "2025-04-30", "refused"),
])
def test_re100_vintage_window(start, end, status):
    rs = one_day(events=[cert(1.0, vintage_start=start, vintage_end=end)])
    inst = kpis(rs, period="year").instruments
    assert inst["status"].iloc[0] == status
    if status == "refused":
        assert "outside the RE100 window 2023-07-01..2025-03-31" in inst["reason"].iloc[0]


def test_plant_age_limit_and_ppa_exemption():
    old = {"plant": "old hydro", "plant_commissioned": "2008-12-31"}
    ev = [cert(1.0, ident="old", **old), cert(1.0, ident="ok", first=10, plant_commissioned="2009-01-01"),
          {"ts": "2024-06-01T06:00Z", "site": "s1", "kind": "contract_delivery", "subject": "hydro", "value": 0.5,
           "detail": {"id": "ppa", "period_start": "2024-06-01", "period_end": "2024-06-01", **old}}]
    res = kpis(one_day(events=ev), period="year")
    inst = res.instruments.set_index("id")
    assert inst.loc["old", "status"] == "refused" and "more than 15 years" in inst.loc["old", "reason"]
    assert inst.loc["ok", "status"] == "counted"
    assert inst.loc["ppa", "status"] == "counted"  # RE100 does not limit the age of a PPA's plant
    # the GHG Protocol's quality criteria set no age limit
    assert (kpis(one_day(events=ev), period="year", framework="GHG-Scope2").instruments["status"] == "counted").all()


def test_market_boundary():
    ev = [cert(1.0, ident="go", scheme="GO"), cert(1.0, ident="foreign", first=5, market_boundary="EU-AIB")]
    inst = kpis(one_day(events=ev), period="year").instruments.set_index("id")
    assert inst.loc["go", "status"] == "refused" and "only within one market (EU-AIB)" in inst.loc["go", "reason"]
    assert "instrument from EU-AIB, consumption in CN" in inst.loc["foreign", "reason"]


def test_sold_pv_certificate_makes_that_pv_not_green():
    sale = cert(0.6, ident="sold", action="sell", plant="s1/pv", vintage_start="2024-06-01", vintage_end="2024-06-01")
    res = kpis(one_day(power=100.0, pv=50.0, events=[sale]), period="year")
    row = res.kpis.iloc[0]
    # consumption 3,600 kWh: grid 2,400 + PV 1,200 of which 600 kWh had their certificates sold
    assert res.instruments["status"].iloc[0] == "sold"
    assert row["pv_sold_counted_kwh"] == pytest.approx(600)
    assert row["green_kwh"] == pytest.approx(600) and row["green_share"] == pytest.approx(600 / 3600)
    # market-based: the sold PV is consumed at the residual mix, like uncovered grid electricity
    assert row["scope2_market_t"] == pytest.approx((2400 + 600) * 0.6096 / 1000)
    assert row["scope2_location_t"] == pytest.approx(2400 * 0.55 / 1000)


def test_own_pv_certificate_retired_is_not_counted_twice():
    own = cert(0.6, ident="own", plant="s1/pv")
    res = kpis(one_day(power=100.0, pv=50.0, events=[own]), period="year")
    assert res.instruments["status"].iloc[0] == "own_generation"
    assert res.kpis["green_kwh"].iloc[0] == pytest.approx(1200)


# ----------------------------------------------------------------- grid factors by place


def test_grid_factor_per_site_most_local_first():
    idx = index("2024-06-01", DAY, tz=TZ)
    sites = [site("sd", province="CN-SD", grid_region="CN-North"), site("bj", grid_region="CN-North"),
             site("si", "Europe/Ljubljana", country="SI", grid_region="SI", factor_set="si-2024",
                  tariff={**TARIFF, "currency": "EUR"})]
    frames = [from_power(s.site, "grid", "import_kwh", const(idx, 100.0)) for s in sites]
    rs = readingset(frames, [meter(s.site, "grid", "grid") for s in sites], sites)
    res = kpis(rs, period="year")
    k = res.kpis.set_index("key")
    e = k["grid_import_kwh"]
    assert k.loc["sd", "scope2_location_t"] == pytest.approx(e["sd"] * 0.6191 / 1000)  # Shandong 2023
    assert k.loc["bj", "scope2_location_t"] == pytest.approx(e["bj"] * 0.6361 / 1000)  # North China 2023
    assert k.loc["si", "scope2_location_t"] == pytest.approx(e["si"] * 0.175 / 1000)  # Slovenia 2024 (EEA)
    assert k.loc["si", "scope2_market_t"] == pytest.approx(e["si"] * 0.42945 / 1000)  # AIB residual mix 2024
    fu = res.factors_used.set_index(["site", "name"])
    assert fu.loc[("sd", "grid_average_kgco2_per_kwh"), "level"] == "province"
    assert fu.loc[("si", "grid_residual_kgco2_per_kwh"), "set"] == "si-2024"


def test_combustion_uses_each_sites_own_country_factors_and_gbt2589_energy():
    """Hand-computed: 10 m3 of gas, 2 kg of diesel and 1 kg of gasoline an interval, one day, at a Chinese
    and a Slovenian site. CO2 by the site's set (cn-2023 NDRC defaults; si-2024 IPCC 2006 / EU MRR
    defaults), tce by GB/T 2589-2020 at both (the group's energy convention)."""
    idx = index("2024-06-01", DAY, tz=TZ)
    idx_si = index("2024-06-01", DAY, tz="Europe/Ljubljana")
    sites = [site("cn"), site("si", "Europe/Ljubljana", country="SI", grid_region="SI", factor_set="si-2024",
                              tariff={**TARIFF, "currency": "EUR"})]
    frames, ms = [], []
    for s, ix in (("cn", idx), ("si", idx_si)):
        frames += [from_power(s, "grid", "import_kwh", const(ix, 100.0)), register(s, "gas", "volume_m3", const(ix, 10.0)),
                   register(s, "dsl", "mass_kg", const(ix, 2.0)), register(s, "pet", "mass_kg", const(ix, 1.0))]
        ms += [meter(s, "grid", "grid"), meter(s, "gas", "gas"), meter(s, "dsl", "fuel", carrier="diesel"),
               meter(s, "pet", "fuel", carrier="gasoline")]
    res = kpis(readingset(frames, ms, sites), period="day")
    k = res.kpis.set_index("key")
    gas, diesel, gasoline = 960.0, 192.0, 96.0  # m3, kg, kg in the day (96 intervals)
    # cn-2023: 0.038931 GJ/m3 x 15.3 tC/TJ x 0.99 x 44/12; 42.652 GJ/t x 20.2 x 0.98 x 44/12; 43.070 x 18.9 x 0.98 x 44/12
    assert k.loc["cn", "scope1_natural_gas_kg"] == pytest.approx(gas * 2.1622)
    assert k.loc["cn", "scope1_diesel_kg"] == pytest.approx(diesel * 3.0959)
    assert k.loc["cn", "scope1_gasoline_kg"] == pytest.approx(gasoline * 2.9251)
    # si-2024: 0.038931 GJ/m3 x 56.1 kgCO2/GJ; 43.0 GJ/t x 74.1; 44.3 GJ/t x 69.3 (oxidation 1)
    assert k.loc["si", "scope1_natural_gas_kg"] == pytest.approx(gas * 2.1840)
    assert k.loc["si", "scope1_diesel_kg"] == pytest.approx(diesel * 3.1863)
    assert k.loc["si", "scope1_gasoline_kg"] == pytest.approx(gasoline * 3.0700)
    assert k.loc["si", "scope1_combustion_t"] == pytest.approx((gas * 2.1840 + diesel * 3.1863 + gasoline * 3.0700) / 1000)
    for s in ("cn", "si"):  # energy: GB/T 2589-2020 at every site
        assert k.loc[s, "natural_gas_tce"] == pytest.approx(gas * 1.33 / 1000)
        assert k.loc[s, "diesel_tce"] == pytest.approx(diesel * 1.4571 / 1000)
        assert k.loc[s, "gasoline_tce"] == pytest.approx(gasoline * 1.4714 / 1000)
    fu = res.factors_used.set_index(["site", "name", "set"])
    assert {"si-2024", "cn-2023"} <= {i[2] for i in fu.index if i[1] == "natural_gas_kgco2_per_m3"}
    assert not any(i[1] == "natural_gas_kgce_per_m3" and i[2] == "si-2024" for i in fu.index)  # listed under cn-2023


def test_residual_mix_fallback_is_stated():
    """A set without a residual mix for the site's places falls back to its location-based factor and says so."""
    idx = index("2024-06-01", DAY, tz="Europe/Ljubljana")
    s = site("si", "Europe/Ljubljana", country="SI", grid_region="SI", factor_set="si-2024", tariff={**TARIFF, "currency": "EUR"})
    fs = load_factor_set("si-2024")
    fs.data["grid"] = [r for r in fs.data["grid"] if r["kind"] == "average"]
    res = kpis(readingset([from_power("si", "grid", "import_kwh", const(idx, 100.0))], [meter("si", "grid", "grid")], [s]),
               period="year", factors=fs)
    row = res.kpis.iloc[0]
    assert row["scope2_market_t"] == pytest.approx(row["scope2_location_t"])
    note = res.factors_used.set_index(["site", "name"]).loc[("si", "grid_residual_kgco2_per_kwh"), "note"]
    assert note == ("no residual-mix factor for SI in factor set 'si-2024': the location-based factor (SI 2024) is used "
                    "instead, the last step of the GHG Protocol Scope 2 market-based hierarchy")


def test_site_outside_its_set_names_the_set_that_has_it():
    idx = index("2024-06-01", DAY, tz="Europe/Ljubljana")
    s = site("si", "Europe/Ljubljana", country="SI", grid_region="SI", tariff={**TARIFF, "currency": "EUR"})
    rs = readingset([from_power("si", "grid", "import_kwh", const(idx, 100.0))], [meter("si", "grid", "grid")], [s])
    with pytest.raises(AccountingError, match="no grid-average factor for SI in factor set 'cn-2023'; name the built-in "
                                              "set 'si-2024' in the site's factor_set"):
        kpis(rs, period="year")


# ----------------------------------------------------------------- Scope 1 by gas


def test_production_line_gases_and_memo_items():
    idx = index("2024-01-25", DAY * 10, tz=TZ)  # ten days across the end of January
    rates = [{"gas": "R-32", "kg_per_unit": 0.01, "kind": "fugitive", "activity": "charging"},
             {"gas": "HFC-245fa", "kg_per_unit": 0.02, "kind": "process", "activity": "foam"},
             {"gas": "R-600a", "kg_per_unit": 0.001, "kind": "fugitive", "activity": "charging"}]
    frames = [from_power("s1", "grid", "import_kwh", const(idx, 10.0)),
              register("s1", "line-ac", "output_units", const(idx, 100.0 / DAY))]  # 100 units a day
    ms = [meter("s1", "grid", "grid"), meter("s1", "line-ac", "line", product="AC", emissions=rates)]
    ev = [{"ts": "2024-01-26T02:00Z", "site": "s1", "kind": "refrigerant_topup", "subject": "R-22", "value": 5.0},
          {"ts": "2024-01-26T02:00Z", "site": "s1", "kind": "process_emission", "subject": "foam", "value": 2.0, "unit": "kg",
           "detail": {"gas": "HCFC-141b"}}]
    rs = readingset(frames, ms, [site("s1")], ev)
    res = kpis(rs, period="year")
    row = res.kpis.iloc[0]
    assert row["output_units"] == pytest.approx(1000)
    assert row["scope1_fugitive_kg"] == pytest.approx(1000 * 0.01 * 677)  # HFC-32, AR5
    assert row["scope1_process_kg"] == pytest.approx(1000 * 0.02 * 858)  # HFC-245fa, AR5
    # R-22 and HCFC-141b (Montreal Protocol) and R-600a (no Kyoto listing): memo items, outside Scope 1
    assert row["memo_non_kyoto_kgco2e"] == pytest.approx(5 * 1760 + 2 * 782)
    assert row["memo_non_kyoto_gas_kg"] == pytest.approx(5 + 2 + 1000 * 0.001)
    assert row["scope1_t"] == pytest.approx((6770 + 17160) / 1000)
    g = res.gas_rollup(by="site", period="year").set_index("gas")
    assert not g.loc["HCFC-22", "in_scope1"] and g.loc["HCFC-22", "kg"] == pytest.approx(5)
    assert "Montreal" in g.loc["HCFC-22", "note"] and "kg only" in g.loc["R-600a", "note"]
    # months add up to the year, and the IPCC edition is a switch
    m = res.rollup(by="site", period="month")
    assert m["scope1_t"].sum() == pytest.approx(row["scope1_t"], rel=1e-12)
    ar6 = kpis(rs, period="year", factors={"gwp_edition": "AR6"}).kpis.iloc[0]
    assert ar6["scope1_t"] == pytest.approx((1000 * 0.01 * 771 + 1000 * 0.02 * 962) / 1000)


def test_gwp_table():
    t = load_gases()
    assert [t.gwp("R-410A", e) for e in ("AR4", "AR5", "AR6")] == [2088, 1924, 2256]  # 50/50 HFC-32/HFC-125
    assert t.gwp("r-404a", "AR5") == 3943 and t.canonical("R-22") == "HCFC-22"
    assert t.get("SF6").in_scope1 and not t.get("R-22").in_scope1 and t.get("R-600a").basket == "none"
    assert t.gwp("R-600a", "AR6") is None and t.canonical("R-999") is None
    with pytest.raises(AccountingError, match="unknown gas 'R-999'"):
        t.get("R-999")


# ----------------------------------------------------------------- tce methods


def test_both_tce_methods_and_onsite_renewables_switch():
    rs = one_day(power=100.0, pv=50.0)
    cal = kpis(rs, period="day").kpis.iloc[0]
    assert cal["tce_method"] == "calorific" and cal["total_tce"] == pytest.approx(2400 * 0.1229 / 1000)
    ce = kpis(rs, period="day", tce_method="coal_equivalent").kpis.iloc[0]
    assert ce["total_tce"] == pytest.approx(2400 * 0.3024 / 1000)  # 2024 power-supply coal rate, the period year
    inc = kpis(rs, period="day", onsite_renewables="included").kpis.iloc[0]
    assert inc["total_tce"] == pytest.approx((2400 + 1200) * 0.1229 / 1000)
    notes = kpis(rs, tce_method="coal_equivalent").notes[0]
    assert "coal equivalent (等价值)" in notes and "default: calorific value" in notes
    with pytest.raises(AccountingError, match="tce_method"):
        kpis(rs, tce_method="heat")


# ----------------------------------------------------------------- money


def test_mixed_currency_group_converts_with_dated_rates():
    idx = index("2024-03-01", DAY, tz=TZ)
    idx_si = index("2024-03-01", DAY, tz="Europe/Ljubljana")
    eur_tariff = {**TARIFF, "currency": "EUR", "prices": {"peak": 0.2, "flat": 0.1, "valley": 0.05},
                  "demand_charge_per_kw_month": 0.0, "export_price": 0.0}
    cny_tariff = {**TARIFF, "demand_charge_per_kw_month": 0.0, "export_price": 0.0}
    sites = [site("cn", tariff=cny_tariff),
             site("si", "Europe/Ljubljana", country="SI", grid_region="SI", factor_set="si-2024", tariff=eur_tariff)]
    frames = [from_power("cn", "grid", "import_kwh", const(idx, 100.0)), from_power("si", "grid", "import_kwh", const(idx_si, 100.0))]
    rs = readingset(frames, [meter("cn", "grid", "grid"), meter("si", "grid", "grid")], sites)
    res = kpis(rs, by="site", period="day")
    k = res.kpis.set_index("key")
    # peak 8-12 h (400 kWh), valley 23-07 h (800 kWh), flat the rest (1,200 kWh), in each site's own currency
    cny = 400 * 1.0 + 800 * 0.3 + 1200 * 0.6
    eur = 400 * 0.2 + 800 * 0.05 + 1200 * 0.1
    assert (k.loc["cn", "energy_cost"], k.loc["cn", "currency"]) == (pytest.approx(cny), "CNY")
    assert (k.loc["si", "energy_cost"], k.loc["si", "currency"]) == (pytest.approx(eur), "EUR")
    g = res.rollup(by="group", period="day").iloc[0]
    assert g["currency"] == "CNY"
    assert g["energy_cost"] == pytest.approx(cny + eur * 7.8218)  # CFETS parity of 2 January 2024, latest before 1 March
    assert list(res.fx_used["date"].astype(str)) == ["2024-01-02"]
    # two currencies are never summed
    with pytest.raises(AccountingError, match="refusing to add"):
        rollup(res.daily.assign(site="one"), by="site", period="day")


# ----------------------------------------------------------------- reporting boundary


def test_reporting_boundary():
    idx = index("2024-06-01", DAY, tz=TZ)
    out = {"approach": "operational_control", "included": False, "reason": "joint venture without control"}
    sites = [site("a"), site("b", boundary=out)]
    frames = [from_power(s, "grid", "import_kwh", const(idx, p)) for s, p in (("a", 100.0), ("b", 50.0))]
    res = kpis(readingset(frames, [meter("a", "grid", "grid"), meter("b", "grid", "grid")], sites), by="group", period="day")
    assert res.kpis["grid_import_kwh"].iloc[0] == pytest.approx(2400)  # site b is outside the boundary
    assert res.options["boundary"]["outside"] == ["b"]
    assert any("outside: b" in n for n in res.notes)
    assert set(res.rollup(by="site", period="day")["key"]) == {"a", "b"}


# ----------------------------------------------------------------- additivity


ADDITIVE = [c for c in (*FLOWS, "electricity_consumed_kwh", "pv_consumed_kwh", "green_kwh", "contracts_counted_kwh",
                        "certificates_counted_kwh", "market_covered_kwh", "pv_sold_counted_kwh", "total_tce",
                        "scope1_t", "scope2_location_t", "scope2_market_t", "total_cost", *MONEY) if c != "pv_exported_kwh"]


def _instrument(draw_month, mwh, kind, i):
    m = draw_month
    period = (f"2024-{m:02d}-01", f"2024-{m:02d}-{[31, 29, 31][m - 1]}")
    if kind == "contract":
        return {"ts": f"2024-{m:02d}-10T04:00Z", "site": "a", "kind": "contract_delivery", "subject": "hydro", "value": mwh,
                "detail": {"id": f"k{i}", "period_start": period[0], "period_end": period[1], **PLANT}}
    year = kind == "annual"
    return cert(mwh, site_id="a", ident=f"c{i}", first=1000 * i + 1, ts=f"2024-{m:02d}-10T04:00Z",
                **({} if year else {"period_start": period[0], "period_end": period[1]}))


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.floats(0.5, 400.0), st.sampled_from(["contract", "annual", "monthly"])),
                max_size=6),
       st.lists(st.floats(0.0, 300.0), min_size=3, max_size=3), st.floats(0.0, 150.0))
def test_months_add_up_to_the_year(instruments, powers, pv):
    """Property: every additive KPI of the months sums to the year, per site and for the group."""
    days = pd.date_range("2024-01-01", "2024-03-31", freq="D")
    frames, meters = [], []
    for s, tz in (("a", TZ), ("b", "Europe/Ljubljana")):
        idx = index("2024-01-01", 91 * 24, interval_s=3600, tz=tz)
        local = idx.tz_convert(tz) - pd.Timedelta(hours=1)
        p = pd.Series([powers[min(d.month, 3) - 1] for d in local], index=idx)
        frames += [from_power(s, "grid", "import_kwh", p, interval_s=3600),
                   from_power(s, "pv", "energy_kwh", const(idx, pv), interval_s=3600),
                   register(s, "line-x", "output_units", const(idx, 1.0), interval_s=3600)]
        meters += [meter(s, "grid", "grid", interval_s=3600), meter(s, "pv", "pv", interval_s=3600),
                   meter(s, "line-x", "line", interval_s=3600, emissions=[{"gas": "R-32", "kg_per_unit": 0.01}])]
    sites = [site("a", tariff=TARIFF), site("b", "Europe/Ljubljana", country="SI", grid_region="SI", factor_set="si-2024",
                                          tariff={**TARIFF, "currency": "EUR"})]
    ev = [_instrument(m, mwh, kind, i) for i, (m, mwh, kind) in enumerate(instruments)]
    res = kpis(readingset(frames, meters, sites, ev), period="year")
    assert len(days) == 91
    for by in ("site", "group"):
        year = res.rollup(by=by, period="year").set_index("key")
        months = res.rollup(by=by, period="month").groupby("key")[ADDITIVE].sum()
        for c in ADDITIVE:
            pd.testing.assert_series_equal(months[c], year[c].loc[months.index], check_names=False, rtol=1e-9, atol=1e-6)
