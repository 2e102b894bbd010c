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
    assert (s["cfe"] <= s["pooled_matched_share"] + 1e-12).all()
    assert (s["cfe"] < s["pooled_matched_share"] - 1e-3).any()  # certificates and contracts don't match every hour


@pytest.mark.parametrize("by", ["site", "company", "group"])
@pytest.mark.parametrize("period", ["day", "month", "year", ("2024-03-31", "2024-04-01")])
def test_annual_matched_share_is_the_kpi_green_share_by_construction(simulated, by, period):
    """The annual figure beside the hourly one is the annual rule's own: the same function, the
    same numbers, bit for bit (it used to be recomputed on the hours and differed at velenje)."""
    res = ems.kpis(simulated, by=by, period=period)
    hourly = hourly_of(res, simulated).rollup(by, period).set_index(["key", "period"])
    kpi = res.kpis.set_index(["key", "period"])
    assert list(hourly.index) == list(kpi.index)
    np.testing.assert_array_equal(hourly["annual_matched_share"].to_numpy(), kpi["green_share"].to_numpy())
    np.testing.assert_array_equal(hourly["annual_matched_kwh"].to_numpy(), kpi["green_kwh"].to_numpy())


def test_pooled_share_equals_the_annual_rule_where_the_supplies_are_the_same(simulated):
    """With no instrument to allocate (velenje: PV and a battery that charges and discharges within
    some hours), the same hours pooled over a day or the whole span give the annual rule's green
    share: PV consumed over electricity consumed (0.30303, not 0.30291 as before the battery's
    hours were split right)."""
    for period in ("day", "year"):
        res = ems.kpis(simulated, by="site", period=period)
        h = hourly_of(res, simulated).rollup("site", period).set_index(["key", "period"]).loc["velenje"]
        k = res.kpis.set_index(["key", "period"]).loc["velenje"]
        assert h["pooled_matched_kwh"].to_numpy() == pytest.approx(k["green_kwh"].to_numpy(), rel=1e-12)
        assert h["pooled_matched_share"].to_numpy() == pytest.approx(k["green_share"].to_numpy(), rel=1e-12)
    assert round(float(k["green_share"].iloc[0]), 5) == 0.30303


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
    cols = ["use_kwh", "matched_kwh", "pooled_matched_kwh", "annual_matched_kwh", "scope2_location_hourly_kg",
            "scope2_market_hourly_kg"]
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
                                   "--format", "csv", "--tables"])
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
