"""Hourly matching end to end: from readings (in memory and from the store's aggregates) to the
report's side-by-side table, its files and its HTML heatmap; and the command line."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import ems
from ems.accounting.hourly import hourly_of
from ems.accounting.reporting import make_report, write_report
from ems.cli import cli


@pytest.fixture(scope="module")
def report(simulated):
    return make_report(simulated, by="site", period="day")


def test_a_period_use_is_its_electricity_consumed_and_hourly_never_above_annual(report):
    side = report.side_by_side()
    k = report.result.kpis.set_index(["key", "period"])
    s = side.set_index(["key", "period"])
    assert len(s) == len(k) > 0
    assert np.allclose(s["use_kwh"], k.loc[s.index, "electricity_consumed_kwh"], rtol=1e-6, atol=1e-3)
    # the hourly share against the annual share the KPI table reports (same PV, stricter instruments)
    assert (s["cfe"] <= k.loc[s.index, "green_share"] + 1e-6).all()
    assert (s["cfe"] <= s["annual_matched_share"] + 1e-12).all()
    assert (s["cfe"] < s["annual_matched_share"] - 1e-3).any()  # certificates and contracts don't match every hour


def test_hourly_scope2_is_import_times_the_hour_factor(report):
    h = report.hourly.hours["qingdao"]
    assert h["scope2_location_hourly_kg"].to_numpy() == pytest.approx(
        h["grid_import_kwh"].to_numpy() * h["average_kg_per_kwh"].to_numpy())
    # the annual figure of the KPI table is the same import at the annual factor
    side = report.side_by_side()
    q = side[side["key"] == "qingdao"]
    k = report.result.kpis[report.result.kpis["key"] == "qingdao"]
    assert q["scope2_electricity_location_t"].sum() == pytest.approx(k["scope2_electricity_location_kg"].sum() / 1000)


def test_hourly_from_the_store_aggregates_equals_hourly_from_the_readings(simulated, store):
    store.register_sites(simulated.sites)
    store.register_meters(simulated.meters)
    store.write_readings(simulated.readings)
    store.write_events(simulated.events)
    with ems.open_readings(store.root, store=True) as stored:
        res_store = ems.kpis(stored, by="site", period="day")
        a = hourly_of(res_store, stored).rollup("site", "day")
        assert stored._readings is None  # stage 1 and its hours came from the aggregates, not a raw read
    res_mem = ems.kpis(simulated, by="site", period="day")
    b = hourly_of(res_mem, simulated).rollup("site", "day")
    cols = ["use_kwh", "matched_kwh", "annual_matched_kwh", "scope2_location_hourly_kg", "scope2_market_hourly_kg"]
    pd.testing.assert_frame_equal(a[["key", "period", *cols]], b[["key", "period", *cols]], check_exact=False, rtol=1e-9)


def test_report_files_and_html_heatmap(report, tmp_path):
    paths = write_report(report, tmp_path, ("csv", "html"))
    names = {p.name for p in paths}
    assert {"hourly.csv", "hourly_intensity.csv", "report.html"} <= names
    hourly = pd.read_csv(tmp_path / "hourly.csv")
    assert {"green_share", "cfe", "scope2_location_hourly_t", "scope2_electricity_location_t"} <= set(hourly.columns)
    page = (tmp_path / "report.html").read_text()
    assert "Annual and hourly matching" in page
    assert "Matched and unmatched energy by month and hour" in page
    assert page.count("<h3>") >= 2 and "<svg" in page
    assert "nan" not in page.replace("nanum", "")


def test_ems_report_cli_with_a_measured_intensity_file(simulated, tmp_path):
    hours = pd.date_range("2024-03-29T16:00Z", "2024-04-02T00:00Z", freq="h")
    pd.DataFrame({"region": "SI", "hour_utc": hours.strftime("%Y-%m-%dT%H:%MZ"), "average_g_per_kwh": 250.0}).to_csv(
        tmp_path / "si.csv", index=False)
    folder = tmp_path / "readings"
    simulated.to_parquet(folder)
    res = CliRunner().invoke(cli, ["report", str(folder), "--by", "site", "--period", "month",
                                   "--intensity", str(tmp_path / "si.csv"), "--out", str(tmp_path / "out"),
                                   "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert "hourly (CFE)" in res.output
    prov = pd.read_csv(tmp_path / "out" / "hourly_intensity.csv").set_index("site")
    assert prov.loc["velenje", "method"] == "measured"
    assert prov.loc["qingdao", "method"] == "modelled"
    out = CliRunner().invoke(cli, ["report", str(folder), "--no-hourly"])
    assert out.exit_code == 0 and "hourly (CFE)" not in out.output


def test_store_pushes_down_the_hourly_series_matching_reads(simulated, store):
    from ems.accounting.hourly import flow_series

    store.register_sites(simulated.sites)
    store.register_meters(simulated.meters)
    store.write_readings(simulated.readings)
    pairs = flow_series(simulated.meters)
    got = store.hourly(series=pairs)
    full = store.stage1().hourly
    anyq = {q for m, q in pairs if m == "*"}
    keep = [q in anyq or (m, q) in set(pairs) for m, q in zip(full["meter"].astype(str), full["quantity"].astype(str), strict=True)]
    want = full[keep]
    key = ["site", "meter", "quantity", "hour"]
    a = got.astype({c: str for c in key[:3]}).groupby(key)["value"].sum()
    b = want.astype({c: str for c in key[:3]}).groupby(key)["value"].sum()
    pd.testing.assert_series_equal(a, b, check_exact=True)
    assert set(got["quantity"].astype(str)) <= {q for _, q in pairs}
