"""The built-in factor sets as an auditor reads them: every value sourced, derivations that reproduce,
and China's grid factors consistent with what the ministry said when it published them.

The published statements below are quoted from the press coverage of each MEE/NBS announcement (links in
docs/factors.md); a transcription error in ems/data/factors/cn-2023.yaml breaks one of them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from ems.accounting import load_factor_set

SETS = sorted(Path(str(p)).stem for p in resources.files("ems").joinpath("data", "factors").iterdir()
              if str(p).endswith(".yaml"))


def _entries(data):
    for sec in ("coefficients", "emission"):
        yield from ((f"{sec}.{k}", e) for k, e in (data.get(sec) or {}).items())
    yield from ((f"coal_equivalent.{e['year']}", e) for e in data.get("electricity_coal_equivalent") or [])
    for cur, table in (data.get("prices") or {}).items():
        yield from ((f"prices.{cur}.{k}", e) for k, e in table.items())


@pytest.mark.parametrize("name", SETS)
def test_every_value_has_unit_and_source(name):
    fs = load_factor_set(name)
    for key, e in _entries(fs.data):
        assert isinstance(e["value"], int | float) and str(e.get("unit", "")).strip(), key
        assert len(str(e.get("source", "")).strip()) > 20, key
        assert isinstance(e.get("to_confirm", False), bool), key
    grid = fs.grid_table()
    assert (grid["source"].str.len() > 20).all() and grid["value"].between(0.0, 1.5).all()
    assert not grid.duplicated(["place", "kind", "year"]).any()
    assert grid["to_confirm"].map(type).eq(bool).all()


@pytest.mark.parametrize("name", SETS)
def test_derived_emission_factors_reproduce(name):
    """value = net calorific value x (carbon content x 44/12, or CO2 per GJ) x oxidation, at the printed four
    decimals."""
    for key, e in (load_factor_set(name).data.get("emission") or {}).items():
        d = e.get("derivation")
        if d:
            per_gj = d["co2_kg_per_gj"] if "co2_kg_per_gj" in d else d["carbon_tc_per_tj"] * 44 / 12
            assert round(d["ncv_gj_per_unit"] * per_gj * d["oxidation"], 4) == e["value"], key


def _grid(kind="average"):
    g = load_factor_set("cn-2023").grid_table()
    return g[g["kind"] == kind].set_index(["place", "year"])["value"]


def test_thirty_provinces_in_each_edition():
    g = load_factor_set("cn-2023").grid_table()
    prov = g[g["level"] == "province"]
    assert prov.groupby("year")["place"].nunique().to_dict() == {2021: 30, 2022: 30, 2023: 30}


def _change(v, place, new, old):
    return round((v[(place, new)] / v[(place, old)] - 1) * 100, 1)


def test_2023_edition_matches_the_ministry_statement():
    """Guangming Daily / China Electric Power News, January 2026, on Announcement No. 47 of 2025."""
    v, r = _grid(), _grid("residual")
    assert _change(v, "CN", 2023, 2022) == -1.1
    assert _change(r, "CN", 2023, 2022) == 4.1
    published = {"CN-North": -6.1, "CN-Northeast": -8.0, "CN-East": -2.1, "CN-Central": -2.3, "CN-Northwest": -5.4,
                 "CN-South": 4.5, "CN-Southwest": 9.0}
    for region, pct in published.items():  # computed from four-decimal values: within 0.1 point
        assert abs(_change(v, region, 2023, 2022) - pct) <= 0.1, region
    provinces = [p for p, y in v.index if y == 2023 and len(p) == 5]  # ISO 3166-2: CN-XX
    fell = {p for p in provinces if v[(p, 2023)] < v[(p, 2022)]}
    assert (len(fell), len(provinces) - len(fell)) == (20, 10)  # "北京等20个省份 ... 下降", "广东等10个省份 ... 上升"
    assert "CN-BJ" in fell and "CN-GD" not in fell


def test_2022_edition_matches_the_press_coverage():
    """Beijing News, 27 December 2024, on Announcement No. 33 of 2024."""
    v = _grid()
    assert round(v[("CN", 2022)] - v[("CN", 2021)], 4) == -0.0202
    ranked = sorted((p for p, y in v.index if y == 2022 and len(p) == 5), key=lambda p: -v[(p, 2022)])
    assert ranked[:5] == ["CN-HE", "CN-SX", "CN-TJ", "CN-NM", "CN-AH"]
    assert ranked[-5:] == ["CN-FJ", "CN-GX", "CN-QH", "CN-SC", "CN-YN"]
    g = load_factor_set("cn-2023").grid_table()
    regions = g[(g["level"] == "region") & (g["year"] == 2022)].sort_values("value", ascending=False)["place"].tolist()
    assert regions == ["CN-North", "CN-Northwest", "CN-East", "CN-Northeast", "CN-Central", "CN-South", "CN-Southwest"]


def test_rows_confirmed_only_where_the_issuer_was_read():
    """Provinces and 2021 regions rest on transcriptions and stay flagged, except the ten quoted provinces of 2022."""
    g = load_factor_set("cn-2023").grid_table()
    confirmed = g[~g["to_confirm"]]
    assert set(confirmed[confirmed["level"] == "province"]["year"]) == {2022}
    assert len(confirmed[confirmed["level"] == "province"]) == 10
    assert g[(g["level"] == "region") & (g["year"] == 2021)]["to_confirm"].all()
    assert not g[(g["level"] == "country")]["to_confirm"].any()


def test_slovenia_has_its_own_fuel_factors_and_keeps_gbt2589_energy():
    """Emissions by the site's country, energy by the group's GB/T 2589 convention (docs/factors.md)."""
    si, cn = load_factor_set("si-2024"), load_factor_set("cn-2023")
    ipcc = {"natural_gas_kgco2_per_m3": 56.1, "diesel_kgco2_per_kg": 74.1, "gasoline_kgco2_per_kg": 69.3}
    for key, per_gj in ipcc.items():  # IPCC 2006 Vol. 2 Table 1.4 = EU MRR Annex VI defaults [tCO2/TJ]
        e = si.entry(key)
        assert "_set" not in e and e["derivation"]["co2_kg_per_gj"] == per_gj and e["derivation"]["oxidation"] == 1.0
        assert e["to_confirm"] is True and "IPCC 2006" in e["source"] and "2018/2066" in e["source"], key
        assert "not found" in e["source"], key  # says the Slovenian inventory value was not read
        assert si.value(key) != cn.value(key), key
    assert si.value("natural_gas_kgco2_per_m3") == 2.1840
    assert (si.value("diesel_kgco2_per_kg"), si.value("gasoline_kgco2_per_kg")) == (3.1863, 3.0700)
    for key in ("natural_gas_kgce_per_m3", "diesel_kgce_per_kg", "gasoline_kgce_per_kg", "electricity_kgce_per_kwh",
                "heat_kgco2_per_gj"):  # inherited unchanged, listed under cn-2023
        assert si.entry(key)["_set"] == "cn-2023" and si.value(key) == cn.value(key), key


def test_slovenia_has_its_own_set():
    si = load_factor_set("si-2024")
    assert (si.name, si.home_currency) == ("si-2024", "EUR")
    assert set(si.grid_table()["place"]) == {"SI"}
    cn = load_factor_set("cn-2023")
    assert "SI" not in set(cn.grid_table()["place"]) and "EUR" not in cn.data["prices"]
