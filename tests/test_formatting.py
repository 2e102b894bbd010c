"""The one formatting rule (ems/formatting.py): pure functions, every odd value."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ems.formatting import (
    MISSING,
    cell,
    display_of,
    header,
    labelled,
    machine_frame,
    number,
    table_of,
    with_unit,
    year,
)


@pytest.mark.parametrize(
    ("x", "decimals", "signed", "expected"),
    [
        (28524.452852897346, 0, False, "28,524"),
        (2.852e4, 1, False, "28,520.0"),
        (-0.001, 2, False, "0.00"),  # no "-0.00"
        (-0.0, 1, True, "0.0"),
        (13.73, 1, True, "+13.7"),
        (-21926.21, 1, True, "-21,926.2"),
        (1.5e-12, 2, False, "0.00"),  # never an exponent
        (3.2e15, 0, False, "3,200,000,000,000,000"),
        (math.nan, 1, False, MISSING),
        (None, 1, False, MISSING),
        (pd.NA, 1, False, MISSING),
        (math.inf, 1, False, "∞"),
        (np.float32(2.5), 1, False, "2.5"),
    ],
)
def test_number(x, decimals, signed, expected):
    assert number(x, decimals, signed=signed) == expected


def test_cell_by_type():
    assert cell(np.int64(30000)) == "30,000"
    assert cell(np.bool_(True)) == "yes" and cell(False) == "no"
    assert cell(None) == cell(np.nan) == cell(pd.NaT) == cell(pd.NA) == MISSING
    assert cell(0.1229) == "0.1229" and cell(110.0) == "110"  # factors as given
    assert cell(pd.Timestamp("2024-07-15 01:00", tz="UTC")) == "2024-07-15 01:00+00:00"
    assert cell("None") == "None"  # a real text is left alone


@pytest.mark.parametrize(
    ("column", "value", "text"),
    [
        ("green_share", 0.103016, "10.3 %"),
        ("tce_per_10k_rmb", 0.009165921, "9.17 kgce/RMB 10k"),
        ("scope12_market_intensity_t_per_10k_rmb", 0.0413838, "41.38 kgCO2e/RMB 10k"),
        ("total_tce", 533.4439, "533.4 tce"),
        ("scope2_market_t", 2315.929, "2,315.9 tCO2e"),
        ("peak_import_kw", 28524.45, "28,524 kW"),
        ("total_cost", 3582749.55, "3,582,750 CNY"),
        ("grid_import_kwh_per_10k_rmb", 62.742, "62.7 kWh/RMB 10k"),
        ("opex_per_year", 960000.0, "960,000 CNY/yr"),
        ("payback_years", 5.87, "5.9 yr"),
    ],
)
def test_units_come_from_the_column_name(column, value, text):
    assert with_unit(column, value) == text


def test_headers_carry_the_unit_and_years_have_no_separator():
    assert header("total_tce", "energy") == "energy [tce]"
    assert header("key", "site") == "site"
    assert display_of("p:add_pv.kwp") is None and display_of("p:add_storage.energy_kwh").unit == "kWh"
    assert year(2030) == "2030" and year(np.float64(2023.0)) == "2023" and year(None) == MISSING
    assert labelled(-4.7712, "Scope 1+2 intensity [kgCO2e/RMB 10k]", signed=True) == "-4.77"
    assert labelled(26109.99, "PV generated [MWh]", signed=True) == "+26,110.0"


def test_table_of_formats_every_cell():
    df = pd.DataFrame({"key": ["a", "b"], "total_tce": [1234.56, np.nan], "green_share": [0.5, -0.0],
                       "target_year": [2030, 2040], "met": [True, None]})
    t = table_of(df, "t", labels={"total_tce": "energy", "green_share": "green share"})
    assert t.headers == ["key", "energy [tce]", "green share [%]", "target_year", "met"]
    assert t.rows == [["a", "1,234.6", "50.0", "2030", "yes"], ["b", MISSING, "0.0", "2040", MISSING]]
    assert t.numeric == [False, True, True, True, False]


def test_machine_frame_keeps_precision_and_writes_real_nulls(tmp_path):
    df = pd.DataFrame({"x": [1 / 3, np.nan], "note": ["nan", None], "obj": [pd.Timestamp("2024-01-01"), "None"]})
    m = machine_frame(df)
    assert m["x"].iloc[0] == 1 / 3  # full precision
    assert m["note"].isna().all() and pd.isna(m["obj"].iloc[1]) and m["obj"].iloc[0] == "2024-01-01 00:00:00"
    m.to_csv(tmp_path / "f.csv", index=False)
    assert (tmp_path / "f.csv").read_text().splitlines()[2] == ",,"
    assert "NaN" not in m.to_json(orient="records")


@pytest.mark.parametrize("width", [100, 160])
def test_a_targets_note_wraps_in_lines_not_words(width):
    """issue 15: the targets table's note column wrapped one word per line."""
    from rich.console import Console

    from ems.accounting.report import targets_table
    from ems.formatting import to_rich

    rows = [{"target": f"t-{i}", "metric": "scope12_market_t", "kind": "change", "target_year": 2030,
             "target_value": -0.4, "base_value": 420805.3, "value_in_target_year": 284498.1, "first_year_met": 2040,
             "met": False, "status": "missed (first met in 2040)",
             "note": f"Scope 1+2 absolute -{i} % vs 2023, operational carbon neutrality (residual offset)"}
            for i in range(3)]
    con = Console(width=width, record=True)
    con.print(to_rich(targets_table(pd.DataFrame(rows), "Targets", value="value_in_target_year")))
    text = con.export_text()
    body = [line for line in text.splitlines() if line.startswith("│")]
    assert len(body) == len(rows)  # a line per target
    for r in rows:  # each note whole, under the table
        assert f"{r['target']}: {r['note']}" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= width


def test_targets_table_of_progress_shows_value_base_change_requirement_status_reason():
    """issue 11's progress rows through issue 15's rule: values in their metric's unit, a change signed in %."""
    from ems.accounting.report import targets_table
    from ems.accounting.targets import load_targets, progress

    yearly = pd.DataFrame({
        "key": ["g", "g"], "period": ["2023", "2024"], "days": [365, 200],
        "scope12_market_t": [700_000.0, 640_000.0], "scope12_market_intensity_t_per_10k_rmb": [np.nan, 0.0052],
        "green_share": [0.12, 0.1812], "pv_kwp": [68_600.0, 73_000.0],
    })
    t = targets_table(progress(yearly, load_targets("group")), "Progress")
    assert t.headers == ["target", "value", "base", "change vs base [%]", "requirement", "status", "reason"]
    rows = {r[0]: r for r in t.rows}
    assert rows["absolute-2040"][1:4] == ["640,000.0 tCO2e", "647,251.0 tCO2e", "-1.1"]
    assert rows["clean-2030"][1:4] == ["18.1 %", "15.1 %", "+20.0"]
    assert rows["intensity-2030"][1:4] == ["5.20 kgCO2e/RMB 10k", "–", "–"]
    assert rows["pv-capacity"][1] == "73,000 kWp"
    assert rows["clean-2030"][4].startswith("at least 30.0 % by 2030") and rows["clean-2030"][5] == "not assessable"
    assert "less than a year of data (200 of 366 days in 2024)" in rows["clean-2030"][6]
    assert t.numeric == [False, True, True, True, False, False, False] and t.wrap == {4, 6}
    text = " ".join(" ".join(r) for r in t.rows)
    assert not any(bad in text for bad in ("nan", "None", "<NA>", "e-0", "%)")), text


def test_kpi_table_names_the_currency_of_costs():
    from types import SimpleNamespace

    from ems.accounting.report import kpi_table

    one = pd.DataFrame({"key": ["a", "b"], "period": ["2024", "2024"], "total_cost": [1234.4, 5.0],
                        "currency": ["CNY", "CNY"]})
    t = kpi_table(SimpleNamespace(kpis=one, by="site", period="year"))  # type: ignore[arg-type]
    assert t.headers[-1] == "energy cost [CNY]" and "currency" not in t.headers
    two = one.assign(currency=["CNY", "EUR"])
    t = kpi_table(SimpleNamespace(kpis=two, by="site", period="year"))  # type: ignore[arg-type]
    assert t.headers[-2:] == ["energy cost", "currency"] and t.rows[1][-2:] == ["5", "EUR"]
