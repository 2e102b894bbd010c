"""Pure study logic with hand-computed values: economics, Pareto front, sweep variants, pathway targets."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ems.errors import ConfigError
from ems.studies.economics import (
    annualised_cost,
    capital_recovery_factor,
    cost_per_tco2e,
    simple_payback,
)
from ems.studies.pathway import assess, interpolate
from ems.studies.sweep import cheapest_meeting, measures_of, pareto_front, variants


def test_capital_recovery_factor_by_hand():
    # 0.06 * 1.06**25 / (1.06**25 - 1) = 0.06 * 4.291871 / 3.291871
    assert capital_recovery_factor(0.06, 25) == pytest.approx(0.0782267, rel=1e-6)
    assert capital_recovery_factor(0.08, 10) == pytest.approx(0.1490295, rel=1e-6)
    assert capital_recovery_factor(0.0, 10) == pytest.approx(0.1)


@pytest.mark.parametrize(("rate", "years", "match"), [(0.06, 0, "lifetime"), (-1.5, 10, "discount rate")])
def test_capital_recovery_factor_rejects(rate, years, match):
    with pytest.raises(ValueError, match=match):
        capital_recovery_factor(rate, years)


def test_annualised_cost_payback_and_cost_per_tonne_by_hand():
    # 20 MWp of PV at 3,200 CNY/kWp, O&M 1.5 %/yr, 25 yr at 6 %
    capex = 20_000 * 3_200.0
    opex = 0.015 * capex  # 960,000
    ann = annualised_cost(capex, opex, 0.06, 25)
    assert ann == pytest.approx(64e6 * 0.0782267 + 960_000, rel=1e-6)  # 5,966,509
    assert simple_payback(capex, 11_900_000.0, opex) == pytest.approx(64e6 / 10_940_000)  # 5.85 yr
    assert simple_payback(capex, 900_000.0, opex) == math.inf
    assert simple_payback(0.0, 0.0) == 0.0
    assert cost_per_tco2e(ann, 11_900_000.0, 13_000.0) == pytest.approx((ann - 11_900_000) / 13_000)  # -458.7
    assert math.isnan(cost_per_tco2e(ann, 0.0, 0.0))


def test_pareto_front_hand_cases():
    cost = [1, 2, 3, 2, 4, 5]
    emis = [5, 3, 1, 4, 0.5, 0.5]
    # (2,4) is beaten by (2,3); (5,0.5) by (4,0.5)
    assert pareto_front(cost, emis).tolist() == [True, True, True, False, True, False]
    assert pareto_front([1, 1], [2, 2]).tolist() == [True, True]  # duplicates both kept
    assert pareto_front([1, np.nan, 0], [1, 0, np.nan]).tolist() == [True, False, False]
    assert pareto_front([], []).tolist() == []
    with pytest.raises(ValueError, match="differ in length"):
        pareto_front([1, 2], [1])


def test_cheapest_meeting_target():
    df = pd.DataFrame({"total_annual_cost": [10.0, 8.0, 12.0, 7.0], "green_share": [0.31, 0.30, 0.5, 0.2]})
    best = cheapest_meeting(df, {"metric": "green_share", "min": 0.30})
    assert best is not None and best.name == 1
    assert cheapest_meeting(df, {"metric": "green_share", "min": 0.9}) is None
    assert cheapest_meeting(df, {"metric": "green_share", "max": 0.25}).name == 3
    with pytest.raises(ConfigError, match=r"target\.metric"):
        cheapest_meeting(df, {"metric": "nope", "min": 0})


def test_variants_grid_and_sample():
    grid = variants({"add_pv.kwp": [0, 10], "add_storage.energy_kwh": [0, 5, 10]})
    assert len(grid) == 6
    assert grid[0] == {"add_pv.kwp": 0, "add_storage.energy_kwh": 0}
    s1 = variants({"add_pv.kwp": {"min": 0, "max": 10}, "buy_certificates.mwh": [1, 2]}, {"n": 5, "seed": 3})
    s2 = variants({"add_pv.kwp": {"min": 0, "max": 10}, "buy_certificates.mwh": [1, 2]}, {"n": 5, "seed": 3})
    assert s1 == s2 and len(s1) == 5
    assert all(0 <= v["add_pv.kwp"] <= 10 and v["buy_certificates.mwh"] in (1, 2) for v in s1)
    with pytest.raises(ConfigError, match="needs 'sample'"):
        variants({"add_pv.kwp": {"min": 0, "max": 1}})


def test_measures_of_drops_zero_sized_measures():
    ms = measures_of({"add_pv.kwp": 0, "add_storage.energy_kwh": 5000}, "qingdao", [{"measure": "hvac_control"}])
    assert ms == [{"measure": "hvac_control"},
                  {"measure": "add_storage", "site": "qingdao", "energy_kwh": 5000}]


def test_interpolate():
    pts = {2023: 0.53, 2030: 0.45, 2050: 0.10}
    assert interpolate(pts, 2023) == pytest.approx(0.53)
    assert interpolate(pts, 2026) == pytest.approx(0.53 - 3 / 7 * 0.08)
    assert interpolate(pts, 2060) == pytest.approx(0.10)
    assert interpolate(pts, 2000) == pytest.approx(0.53)


TARGETS = {
    "base_year": 2023,
    "baseline": {},
    "targets": [
        {"id": "peak-2026", "year": 2026, "metric": "scope12_market_t", "kind": "peak", "value": None},
        {"id": "intensity-2030", "year": 2030, "metric": "scope12_market_intensity_t_per_10k_rmb",
         "kind": "change", "value": -0.40},
        {"id": "clean-2030", "year": 2030, "metric": "green_share", "kind": "level", "value": 0.30},
        {"id": "clean-2040", "year": 2040, "metric": "green_share", "kind": "level", "value": 0.60},
    ],
}


def _yearly(net, share, output=None):
    years = [2023, 2024, 2025, 2026, 2027, 2030]
    output = output or [1e8] * len(years)  # RMB
    df = pd.DataFrame({"net_scope12_t": net, "green_share": share, "output_rmb": output}, index=years)
    df["scope12_market_intensity_t_per_10k_rmb"] = df["net_scope12_t"] / (df["output_rmb"] / 1e4)
    return df


def test_assess_target_years():
    y = _yearly(net=[100, 110, 120, 125, 90, 55], share=[0.1, 0.2, 0.28, 0.31, 0.29, 0.35])
    a = assess(y, TARGETS).set_index("target")
    assert a.loc["peak-2026", "first_year_met"] == 2026 and a.loc["peak-2026", "met"] is True
    assert a.loc["peak-2026", "status"] == "met (peak in 2026)"
    # intensity -45 % in 2030 (first below -40 % in 2030)
    assert a.loc["intensity-2030", "first_year_met"] == 2030 and a.loc["intensity-2030", "met"] is True
    assert a.loc["intensity-2030", "value_in_target_year"] == pytest.approx(55 / 1e4)
    # green share first reaches 30 % in 2026 and holds in 2030
    assert a.loc["clean-2030", "first_year_met"] == 2026 and a.loc["clean-2030", "met"] is True
    assert a.loc["clean-2030", "status"] == "met (first in 2026)"
    # 2040 not simulated
    assert a.loc["clean-2040", "met"] is None and "not simulated" in a.loc["clean-2040", "note"]


def test_assess_misses():
    y = _yearly(net=[100, 110, 120, 125, 130, 70], share=[0.1, 0.1, 0.1, 0.1, 0.1, 0.25])
    a = assess(y, TARGETS).set_index("target")
    assert a.loc["peak-2026", "met"] is False  # 2027 above the 2026 level
    assert a.loc["peak-2026", "first_year_met"] == 2027  # the peak year
    assert a.loc["peak-2026", "status"] == "missed (peak in 2027)"
    assert a.loc["intensity-2030", "met"] is False  # -30 % only
    assert pd.isna(a.loc["intensity-2030", "first_year_met"])
    assert a.loc["clean-2030", "status"] == "missed"


def test_assess_intensity_uses_output_growth():
    # emissions flat, output +100 %: intensity -50 %
    y = _yearly(net=[100] * 6, share=[0.0] * 6, output=[1e8, 1e8, 1e8, 1e8, 1e8, 2e8])
    a = assess(y, TARGETS).set_index("target")
    assert a.loc["intensity-2030", "met"] is True


def test_assess_takes_the_baseline_of_a_targets_file():
    """A baseline as ems/data/targets/group.yaml writes it ({value, unit, source}), or as a plain number."""
    from ems.accounting.targets import load_targets

    group = load_targets("group")
    assert isinstance(group["baseline"]["green_share"], dict)  # the shape the README's ems pathway reads
    y = _yearly(net=[100, 110, 120, 125, 90, 55], share=[0.1, 0.2, 0.28, 0.31, 0.29, 0.35])
    for base in ({"value": 0.30, "unit": "-", "source": "published"}, 0.30):  # 2020: not simulated
        t = {**TARGETS, "base_year": 2020, "targets": [
            {"id": "half", "year": 2030, "metric": "green_share", "kind": "change", "value": -0.5}]}
        a = assess(y, {**t, "baseline": {"green_share": base}}).set_index("target")
        assert a.loc["half", "first_year_met"] == 2023  # 0.10 <= 0.30 * (1 - 0.5): the given baseline was used


def test_assess_leaves_out_a_tracked_metric_the_pathway_does_not_compute():
    """The group's targets track pv_kwp (no goal): ems pathway with them must not fail on it."""
    y = _yearly(net=[100, 110, 120, 125, 90, 55], share=[0.1, 0.2, 0.28, 0.31, 0.29, 0.35])
    t = {**TARGETS, "targets": [*TARGETS["targets"],
                                {"id": "pv", "year": 2024, "metric": "pv_kwp", "kind": "track", "value": None}]}
    assert "pv" not in set(assess(y, t)["target"])
    with pytest.raises(ConfigError, match="'pv_kwp' is not a pathway column"):
        assess(y, {**t, "targets": [{**t["targets"][-1], "kind": "level", "value": 1.0}]})


def test_assess_a_peak_target_without_values_is_not_assessed():
    """A peak target whose metric is NaN in every year: no peak year, not assessed (it used to raise
    pandas' 'Encountered all NA values')."""
    y = _yearly(net=[float("nan")] * 6, share=[0.1] * 6)
    a = assess(y, TARGETS).set_index("target")
    assert a.loc["peak-2026", "met"] is None and pd.isna(a.loc["peak-2026", "first_year_met"])
    assert a.loc["peak-2026", "status"] == "not assessed"
    assert "no simulated year has a value" in a.loc["peak-2026", "note"]
