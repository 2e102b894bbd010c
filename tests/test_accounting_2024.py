"""The group's 2024 activity data (Hisense Group 2024 ESG report, docs/accounting-2024.md) through the accounting.

Hand computation with GB/T 2589-2020 coefficients and the cn-2023 factor set;
the worked example is written up in docs/accounting-2024.md.
"""

from pathlib import Path

import pandas as pd
import pytest
from builders import GROUP_2024, group_2024

from ems.accounting import kpis

G = GROUP_2024


@pytest.fixture(scope="module")
def row():
    res = kpis(group_2024(), by="group", period="year")
    assert list(res.kpis["period"]) == ["2024"]
    return res.kpis.iloc[0]


def test_energy_tce(row):
    elec = 577_330_000 * 0.1229 / 1000  # 70,953.857 tce
    steam = 360_980 * 34.12 / 1000  # 12,316.638 tce
    gas = 12_970_000 * 1.33 / 1000  # 17,250.100 tce
    diesel = 45_000 * 1.4571 / 1000  # 65.570 tce
    gasoline = 37_000 * 1.4714 / 1000  # 54.442 tce
    assert row["electricity_tce"] == pytest.approx(elec)
    assert row["direct_tce"] == pytest.approx(gas + diesel + gasoline)  # 17,370.11
    assert row["indirect_tce"] == pytest.approx(elec + steam)  # 83,270.49
    assert row["total_tce"] == pytest.approx(100_640.61, abs=0.01)
    assert row["pv_consumed_tce_equiv"] == pytest.approx(12_290.0)
    # dual control: the 50,080 MWh of GEC excluded
    assert row["total_excl_re_tce"] == pytest.approx(100_640.61 - 50_080_000 * 0.1229 / 1000, abs=0.01)
    assert row["tce_per_10k_rmb"] == pytest.approx(100_640.61 / 12_330_000, rel=1e-6)


def test_green_share(row):
    green = 100_000_000 + 13_170_000 + 50_080_000
    consumed = 577_330_000 + 100_000_000
    assert row["green_kwh"] == pytest.approx(green)
    assert row["green_share"] == pytest.approx(green / consumed)  # 24.10 %
    assert row["green_share"] == pytest.approx(0.2410, abs=5e-5)


def test_scope1_and_2(row):
    s1 = (12_970_000 * 2.1622 + 45_000 * 3.0959 + 37_000 * 2.9251) / 1000
    assert row["scope1_t"] == pytest.approx(s1)  # 28,291.28 t
    s2_loc = (577_330_000 * 0.5500 + 360_980 * 110) / 1000  # East China 2023: the region, nearest year, for 2024
    assert row["scope2_location_t"] == pytest.approx(s2_loc)  # 357,239.30 t
    s2_mkt = ((577_330_000 - 63_250_000) * 0.6096 + 360_980 * 110) / 1000
    assert row["scope2_market_t"] == pytest.approx(s2_mkt)  # 353,090.97 t
    assert row["scope12_market_intensity_t_per_10k_rmb"] == pytest.approx((s1 + s2_mkt) / 12_330_000)


def test_gas_coefficient_override():
    res = kpis(group_2024(), by="group", period="year", factors={"natural_gas_kgce_per_m3": 1.2143})
    row = res.kpis.iloc[0]
    assert row["natural_gas_tce"] == pytest.approx(15_749.47, abs=0.01)
    assert row["total_tce"] == pytest.approx(99_139.98, abs=0.01)
    fu = res.factors_used.set_index("name")
    assert fu.loc["natural_gas_kgce_per_m3", "value"] == 1.2143
    assert "override" in fu.loc["natural_gas_kgce_per_m3", "source"]


def test_against_reference_file(row):
    ref = pd.read_csv(Path(__file__).parent / "data" / "accounting" / "group-2024-expected.csv")
    for metric, value in zip(ref["metric"], ref["value"], strict=True):
        assert row[metric] == pytest.approx(value, rel=1e-6, abs=1e-4), metric
