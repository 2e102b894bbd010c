"""Hourly grid carbon intensity: file layouts, validation, the modelled mix and its calibration."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ems.accounting.gridmix import (
    load_mix,
    load_technologies,
    mix_regions,
    model_mix,
    modelled_intensity,
    year_hours,
)
from ems.accounting.intensity import (
    IntensitySeries,
    calibrate,
    factors_at,
    validate_intensity,
    weighted_mean,
)
from ems.accounting.intensity_files import read_intensity, write_intensity
from ems.errors import AccountingError, ConfigError

DATA = Path(__file__).parent / "data" / "intensity"
EF = {k: v["kg_per_kwh"] for k, v in load_technologies()["technologies"].items()}


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# -- file layouts ------------------------------------------------------------------------------

def test_ems_layout_two_regions_in_kg():
    s = read_intensity(DATA / "ems-hourly.csv")
    assert s.regions == ["CN-North", "SI"]
    north = s.region("CN-North")
    assert len(north) == 24
    assert north.index[0] == pd.Timestamp("2024-06-01T00:00Z")
    assert north["average_kg_per_kwh"].iloc[0] == pytest.approx(0.65)  # 650 g/kWh
    assert north["average_kg_per_kwh"].iloc[12] == pytest.approx(0.55)
    assert north["marginal_kg_per_kwh"].iloc[12] == pytest.approx(0.42)
    assert s.region("SI")["marginal_kg_per_kwh"].isna().all()  # the column is blank for SI
    assert s.method == "measured"
    assert "synthetic test data" in s.describe()


def test_electricitymaps_hourly_direct_and_lifecycle():
    s = read_intensity(DATA / "electricitymaps-SI-hourly.csv")
    si = s.region("SI")
    assert si["average_kg_per_kwh"].iloc[0] == pytest.approx(0.250)
    assert si["average_kg_per_kwh"].iloc[11] == pytest.approx(0.195)
    assert "2 of 24 rows estimated" in s.describe()
    assert "eles.si" in s.data_source
    lca = read_intensity(DATA / "electricitymaps-SI-hourly.csv", kind="lifecycle").region("SI")
    assert lca["average_kg_per_kwh"].iloc[0] == pytest.approx(0.290)  # direct + 40 in the file


def test_electricitymaps_older_header_five_minutes_averaged_to_hours():
    s = read_intensity(DATA / "electricitymaps-CY-5min.csv")
    cy = s.region("CY")
    assert list(cy.index) == [pd.Timestamp("2023-01-01T00:00Z"), pd.Timestamp("2023-01-01T01:00Z")]
    assert cy["average_kg_per_kwh"].tolist() == pytest.approx([0.1055, 0.1175])  # mean of 100..111, 112..123
    assert "22 sub-hourly rows averaged" in s.describe()


def test_entsoe_file_library_layout_derived_from_generation_mix():
    s = read_intensity(DATA / "entsoe-aggregated-generation.csv")
    assert s.method == "derived"
    si = s.region("SI")
    # hour 0: lignite 400 MW, nuclear 600, run-of-river 300, solar 0; pumped storage left out
    assert si["average_kg_per_kwh"].iloc[0] == pytest.approx(400 * EF["lignite"] / 1300)
    assert si["average_kg_per_kwh"].iloc[1] == pytest.approx(500 * EF["lignite"] / 1600)
    # Austria comes as CTY and BZN rows: only the country rows count (gas 1000 + wind 1000)
    assert s.region("AT")["average_kg_per_kwh"].iloc[0] == pytest.approx(1000 * EF["gas"] / 2000)
    assert si["marginal_kg_per_kwh"].isna().all()


def test_entsoe_web_layout_over_the_autumn_dst_change():
    s = read_intensity(DATA / "entsoe-web-generation.csv")
    si = s.region("SI")
    # 01:00 CEST, 02:00 CEST, 02:00 CET, 03:00 CET on 2024-10-27 are four consecutive UTC hours
    assert list(si.index) == list(pd.date_range("2024-10-26T23:00Z", periods=4, freq="h"))
    total = 20 + 480 + 690  # biomass, run-of-river, nuclear; 'n/e' is 0; pumped storage left out
    for i, lig in enumerate((500, 400, 300, 200)):
        assert si["average_kg_per_kwh"].iloc[i] == pytest.approx(lig * EF["lignite"] / (total + lig))


def test_entsoe_web_mtu_without_zone_needs_mtu_tz(tmp_path):
    text = (DATA / "entsoe-web-generation.csv").read_text().replace("MTU (CET/CEST)", "MTU")
    text = text.replace(" (CEST)", "").replace(" (CET)", "")
    p = _write(tmp_path, "web.csv", "\n".join(text.splitlines()[:2]) + "\n")
    with pytest.raises(AccountingError, match="names no time zone"):
        read_intensity(p)
    s = read_intensity(p, mtu_tz="Europe/Ljubljana")
    assert s.frame["hour"].iloc[0] == pd.Timestamp("2024-10-26T23:00Z")


def test_region_argument_renames_a_single_region_file():
    s = read_intensity(DATA / "electricitymaps-SI-hourly.csv", region="SI-ELES")
    assert s.regions == ["SI-ELES"]


def test_parquet_in_the_ems_layout(tmp_path):
    hours = pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC")
    df = pd.DataFrame({"region": "X", "hour_utc": hours, "average_g_per_kwh": [100.0, 200.0, 300.0]})
    p = tmp_path / "x.parquet"
    df.to_parquet(p)
    s = read_intensity(p)
    assert s.region("X")["average_kg_per_kwh"].tolist() == pytest.approx([0.1, 0.2, 0.3])


# -- errors say file, line and field ---------------------------------------------------------------

HEAD = "region,hour_utc,average_g_per_kwh\n"


@pytest.mark.parametrize(("body", "match"), [
    ("X,2024-01-01T00:00,500\n", r"bad.csv:2: field 'hour_utc': expected a time with its UTC offset"),
    ("X,2024-01-01T00:00Z,500\nX,2024-01-01T00:00Z,400\n", r"bad.csv:3: field 'hour': expected one row per region and hour"),
    ("X,2024-01-01T00:00Z,500\nX,2024-01-01T01:00Z,-4\n", r"bad.csv:3: field 'average_kg_per_kwh': expected a value >= 0"),
    ("X,2024-01-01T00:30Z,500\n", r"bad.csv:2: field 'hour': expected a whole hour"),
    ("X,2024-01-01T00:00Z,abc\n", r"bad.csv:2: field 'average_g_per_kwh': expected a number; found 'abc'"),
    ("X,yesterday,500\n", r"bad.csv:2: field 'hour_utc': expected an ISO 8601 time"),
])
def test_bad_rows_are_refused_with_file_line_and_field(tmp_path, body, match):
    with pytest.raises(AccountingError, match=match):
        read_intensity(_write(tmp_path, "bad.csv", HEAD + body))


def test_unknown_layout_names_what_was_expected(tmp_path):
    with pytest.raises(AccountingError, match="unknown layout; expected the ems columns"):
        read_intensity(_write(tmp_path, "odd.csv", "a,b\n1,2\n"))
    with pytest.raises(AccountingError, match=r"expected a \.csv or \.parquet"):
        read_intensity(_write(tmp_path, "odd.xlsx", "x"))
    with pytest.raises(AccountingError, match="no such file"):
        read_intensity(tmp_path / "missing.csv")


def test_entsoe_unknown_production_type_is_named(tmp_path):
    text = (DATA / "entsoe-aggregated-generation.csv").read_text().replace("\tSolar\t", "\tFusion\t")
    with pytest.raises(AccountingError, match=r"production types \['Fusion'\]"):
        read_intensity(_write(tmp_path, "e.csv", text))


def test_validate_refuses_naive_hours():
    f = pd.DataFrame({"region": ["X"], "hour": [pd.Timestamp("2024-01-01")], "average_kg_per_kwh": [0.5]})
    with pytest.raises(AccountingError, match="expected tz-aware timestamps"):
        validate_intensity(f, "frame")


# -- using a series ----------------------------------------------------------------------------------

def _series(values, start="2024-01-01", region="X"):
    hours = pd.date_range(start, periods=len(values), freq="h", tz="UTC")
    f = pd.DataFrame({"region": region, "hour": hours, "average_kg_per_kwh": values})
    return IntensitySeries(validate_intensity(f, "test"), "test", "measured")


def test_factors_at_missing_hours_error_or_fallback():
    s = _series([0.5, 0.6])
    want = pd.date_range("2024-01-01", periods=3, freq="h", tz="Asia/Shanghai").tz_convert("UTC") + pd.Timedelta(hours=8)
    with pytest.raises(AccountingError, match="1 hours missing, first 2024-01-01 02:00"):
        factors_at(s, "X", want)
    got = factors_at(s, "X", want, fallback={"average_kg_per_kwh": 0.55})
    assert got["average_kg_per_kwh"].tolist() == pytest.approx([0.5, 0.6, 0.55])
    assert got.attrs["filled_hours"] == 1
    with pytest.raises(AccountingError, match="expected region 'Y'"):
        factors_at(s, "Y", want)
    # a local hour starting at :30 UTC (India, UTC+5:30) reads the UTC hour it starts in
    india = pd.DatetimeIndex([pd.Timestamp("2024-01-01T05:30+05:30"), pd.Timestamp("2024-01-01T06:30+05:30")])
    assert factors_at(s, "X", india)["average_kg_per_kwh"].tolist() == pytest.approx([0.5, 0.6])


def test_weighted_mean_and_calibration_hit_the_annual_factor():
    s = _series([0.4, 0.8, 0.6])
    w = pd.Series([1.0, 3.0, 0.0], index=s.region("X").index)
    assert weighted_mean([0.4, 0.8, 0.6], [1.0, 3.0, 0.0]) == pytest.approx(0.7)
    c = calibrate(s, "X", 0.35, w, "published")
    assert weighted_mean(c.region("X")["average_kg_per_kwh"], w) == pytest.approx(0.35, rel=1e-12)
    assert c.region("X")["average_kg_per_kwh"].tolist() == pytest.approx([0.2, 0.4, 0.3])  # shape kept, k = 0.5
    assert "k = 0.5000" in c.describe()
    with pytest.raises(AccountingError, match="positive sum"):
        weighted_mean([0.1], [0.0])


# -- the modelled mix ----------------------------------------------------------------------------------

# the regions' published annual factors (MEE/NBS 2022 regional factors; SI as in the cn-2023 factor set)
PUBLISHED = {"CN-North": 0.6776, "CN-Northeast": 0.5564, "CN-East": 0.5617, "CN-Central": 0.5395,
             "CN-Northwest": 0.5857, "CN-South": 0.3869, "CN-Southwest": 0.2268, "SI": 0.224}


def test_every_built_in_region_has_a_published_factor_in_this_test():
    assert set(mix_regions()) == set(PUBLISHED)


@pytest.mark.parametrize(("region", "annual"), sorted(PUBLISHED.items()))
def test_modelled_mix_load_weighted_mean_equals_published_annual_factor(region, annual):
    m = load_mix(region)
    r = model_mix(m, 2024)
    s = modelled_intensity(m, 2024, annual, "MEE/NBS")
    vals = s.region(region)
    assert len(vals) == 8784  # 2024 is a leap year, local calendar
    assert weighted_mean(vals["average_kg_per_kwh"], r.load) == pytest.approx(annual, rel=1e-12)
    assert (vals["average_kg_per_kwh"] > 0).all()
    assert vals["marginal_kg_per_kwh"].notna().all()
    assert s.method == "modelled" and "scaled by k" in s.describe()


def test_modelled_mix_keeps_the_input_shares_and_balances_every_hour():
    m = load_mix("CN-North")
    r = model_mix(m, 2023)
    assert r.load.sum() == pytest.approx(1.0)
    # supply meets load in every hour (no curtailment floor is hit in this region)
    assert np.allclose(r.generation.sum(axis=1), r.load, rtol=1e-9)
    for tech, share in m.shares.items():
        assert r.shares()[tech] == pytest.approx(share, abs=1e-6), tech


def test_modelled_solar_is_zero_at_night_and_intensity_dips_at_noon():
    m = load_mix("CN-East")
    r = model_mix(m, 2024)
    local = r.generation.index.tz_convert(m.tz)
    solar = r.generation["solar"].groupby(local.hour).sum()
    assert solar.loc[[0, 1, 2, 3, 22, 23]].sum() == 0.0
    avg = r.average.groupby(local.hour).mean()
    assert avg.loc[12] < avg.loc[3]  # midday solar lowers the average
    marg = r.marginal.groupby(local.hour).max()
    assert marg.max() == pytest.approx(m.factors["coal"])  # coal sets the margin at night


def test_marginal_is_zero_when_renewables_are_curtailed(tmp_path):
    text = (Path(load_mix("SI").source)).read_text()
    text = text.replace("  solar: 0.07\n", "  solar: 0.27\n").replace("  lignite: 0.25\n", "  lignite: 0.05\n")
    p = _write(tmp_path, "SI-solar.yaml", text)
    r = model_mix(load_mix(str(p)), 2024)
    assert r.curtailed.sum() > 0
    assert (r.marginal[r.curtailed > 0] == 0.0).all()


def test_mix_model_errors_name_file_and_field(tmp_path):
    base = Path(load_mix("CN-South").source).read_text()
    bad = _write(tmp_path, "bad.yaml", base.replace("  coal: 0.41\n", "  coal: 0.51\n"))
    with pytest.raises(ConfigError, match=r"bad.yaml: shares: expected a sum of 1; found 1.1"):
        load_mix(str(bad))
    bad2 = _write(tmp_path, "bad2.yaml", base.replace("dispatch: [coal, gas]", "dispatch: [coal, oil]"))
    with pytest.raises(ConfigError, match=r"dispatch: expected technologies with a share; found \['oil'\]"):
        load_mix(str(bad2))
    with pytest.raises(ConfigError, match="no mix model for region 'CN-Mars'"):
        load_mix("CN-Mars")


def test_year_hours_follow_the_local_calendar():
    h = year_hours(2024, "Europe/Ljubljana")
    assert len(h) == 8784
    assert h[0] == pd.Timestamp("2023-12-31T23:00Z")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_then_read_keeps_values_and_provenance(tmp_path, suffix):
    s = read_intensity(DATA / "entsoe-web-generation.csv")
    p = write_intensity(s, tmp_path / f"si{suffix}")
    back = read_intensity(p)
    assert np.allclose(back.region("SI")["average_kg_per_kwh"], s.region("SI")["average_kg_per_kwh"], atol=1e-6)
    assert "ENTSO-E" in back.data_source
    summary = back.summary()
    assert summary.loc["SI", "hours"] == 4 and summary.loc["SI", "missing_hours"] == 0
    with pytest.raises(AccountingError, match=r"expected a \.csv or \.parquet path"):
        write_intensity(s, tmp_path / "si.txt")


def test_ems_intensity_command_checks_models_and_converts(tmp_path):
    from click.testing import CliRunner

    from ems.cli import cli

    r = CliRunner().invoke(cli, ["intensity", str(DATA / "entsoe-aggregated-generation.csv"), "--out", str(tmp_path / "e.csv")])
    assert r.exit_code == 0, r.output
    assert "Hourly carbon intensity (derived)" in r.output and "AT" in r.output
    assert read_intensity(tmp_path / "e.csv").region("SI")["average_kg_per_kwh"].iloc[0] == pytest.approx(
        400 * EF["lignite"] / 1300, abs=1e-6)
    assert "ENTSO-E" in (tmp_path / "e.csv.provenance.txt").read_text()
    m = CliRunner().invoke(cli, ["intensity", "--model", "CN-North", "--year", "2024", "--annual", "0.6191"])
    assert m.exit_code == 0, m.output
    assert "scaled by k =" in m.output
    bad = CliRunner().invoke(cli, ["intensity", "--model", "CN-North"])
    assert bad.exit_code != 0 and "expected --year and --annual" in str(bad.exception or bad.output)
