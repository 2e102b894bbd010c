"""``ems report`` through click's runner and once as a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from builders import TARIFF, const, from_power, index, meter, readingset, register, site
from click.testing import CliRunner

from ems.accounting.commands import report


def _folder(tmp_path: Path) -> Path:
    idx = index("2024-01-30", 96 * 3, tz="Asia/Shanghai")
    frames = [from_power("s1", "grid", "import_kwh", const(idx, 100.0)),
              from_power("s1", "grid", "export_kwh", const(idx, 5.0)),
              from_power("s1", "pv", "energy_kwh", const(idx, 20.0)),
              register("s1", "mes", "output_rmb", const(idx, 500.0))]
    ev = [{"ts": "2024-01-30T06:00Z", "site": "s1", "kind": "certificate", "subject": "GEC", "value": 1.0,
           "detail": {"vintage": 2020}}]
    rs = readingset(frames, [meter("s1", "grid", "grid"), meter("s1", "pv", "pv"), meter("s1", "mes", "production")],
                    [site("s1", tariff=TARIFF)], ev)
    return rs.to_parquet(tmp_path / "run")


def test_report_cli(tmp_path):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    r = CliRunner().invoke(report, [str(src), "--by", "group", "--period", "month", "--out", str(out),
                                    "--format", "csv,parquet,json,html", "--factor", "natural_gas_kgce_per_m3=1.2143"])
    assert r.exit_code == 0, r.output
    assert "KPIs by group and month" in r.output and "Factors used" in r.output
    k = pd.read_csv(out / "kpis.csv")
    assert list(k["period"]) == ["2024-01", "2024-02"]
    assert (out / "kpis.parquet").exists()
    certs = json.loads((out / "instruments.json").read_text())
    assert certs[0]["status"] == "refused" and "outside the RE100 window" in certs[0]["reason"]
    assert "Progress against targets" in r.output and "Grid factor per site" in r.output
    for name in ("kpis.csv", "targets.csv", "instruments.csv", "factors_used.csv", "report.html"):
        text = (out / name).read_text()
        assert not any(bad in text for bad in ("nan", "None", "<NA>")), name
    html = (out / "report.html").read_text()
    # energy, green share, typical day, and the matched-energy heatmap of its one site
    assert html.count("<svg") == 4 and "cn-2023" in html and "0.1229" in html


def test_report_custom_period(tmp_path):
    r = CliRunner().invoke(report, [str(_folder(tmp_path)), "--start", "2024-01-31", "--end", "2024-02-01",
                                    "--out", str(tmp_path / "o"), "--format", "csv"])
    assert r.exit_code == 0, r.output
    k = pd.read_csv(tmp_path / "o" / "kpis.csv")
    assert list(k["period"]) == ["2024-01-31..2024-02-01"] and k["grid_import_kwh"].iloc[0] == 100.0 * 48


def test_report_cli_errors(tmp_path):
    r = CliRunner().invoke(report, [])
    assert r.exit_code != 0
    r = CliRunner().invoke(report, [str(_folder(tmp_path)), "--format", "xls"])
    assert r.exit_code != 0 and "--format" in str(r.exception)
    r = CliRunner().invoke(report, [str(tmp_path / "run"), "--start", "2024-01-01"])
    assert r.exit_code != 0 and "go together" in str(r.exception)


def test_report_subprocess(tmp_path):
    src = _folder(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-m", "ems.cli", "report", str(src), "--period", "year"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "2024" in p.stdout
    p = subprocess.run([sys.executable, "-m", "ems.cli", "report", str(tmp_path / "missing")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error:")


def test_report_from_store(tmp_path):
    from ems.readings import ReadingSet
    from ems.store import open_store

    rs = ReadingSet.from_parquet(_folder(tmp_path))
    url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    st = open_store(url)
    try:
        st.register_sites(rs.sites)
        st.register_meters(rs.meters)
        st.write_readings(rs.readings)
        st.write_events(rs.events)
    finally:
        st.close()
    out = tmp_path / "out"
    r = CliRunner().invoke(report, ["--store", url, "--period", "day", "--out", str(out), "--format", "csv"])
    assert r.exit_code == 0, r.output
    k = pd.read_csv(out / "kpis.csv")
    assert k["grid_import_kwh"].sum() == 100.0 * 72


def test_report_from_scenario(tmp_path):
    """The scenario path: simulate the demo scenario, then account for it."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    r = CliRunner().invoke(report, [str(root / "scenarios" / "demo.yaml"), "--by", "park", "--period", "day",
                                    "--out", str(out), "--format", "csv"])
    assert r.exit_code == 0, r.output
    k = pd.read_csv(out / "kpis.csv")
    assert len(k) == 3 * 7 and (k["grid_import_kwh"] > 0).all()
    assert k["green_share"].between(0, 1).all()


def test_report_machine_formats_print_only_where_the_files_went(tmp_path):
    """--format names the files written into --out; asked for machine formats only, the terminal gets one line."""
    src = _folder(tmp_path)
    out = tmp_path / "o"
    r = CliRunner().invoke(report, [str(src), "--out", str(out), "--format", "json"])
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in out.iterdir())
    assert r.output == f"wrote {len(files)} files to {out}: {', '.join(files)}\n", r.output
    assert "KPIs by" not in r.output and "┃" not in r.output and len(r.output.splitlines()) == 1
    assert json.loads((out / "kpis.json").read_text())
    r = CliRunner().invoke(report, [str(src), "--out", str(out), "--format", "csv,json", "--tables"])
    assert "KPIs by site and month" in r.output and "wrote" in r.output  # asked for: the tables too
    r = CliRunner().invoke(report, [str(src), "--out", str(out), "--format", "html"])
    assert "KPIs by site and month" in r.output and "report.html" in r.output  # a file for people: tables as well
    r = CliRunner().invoke(report, [str(src), "--out", str(out), "--no-tables"])
    assert "KPIs by" not in r.output and "report.html" in r.output


def test_report_json_or_csv_without_out_goes_to_standard_output(tmp_path):
    """``ems report ... --format json`` (issue 13's command) is a document for a pipe: every table in one
    JSON object, or the KPI table as CSV; nothing else on standard output, equal to the files."""
    src = _folder(tmp_path)
    r = CliRunner().invoke(report, [str(src), "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["by"] == "site" and doc["period"] == "month" and "tce_method" in json.dumps(doc["options"])
    out = tmp_path / "o"
    CliRunner().invoke(report, [str(src), "--out", str(out), "--format", "json"])
    for name in ("kpis", "factors_used", "instruments", "anomalies"):
        assert doc[name] == json.loads((out / f"{name}.json").read_text()), name
    r = CliRunner().invoke(report, [str(src), "--format", "csv"])
    assert r.exit_code == 0, r.output
    CliRunner().invoke(report, [str(src), "--out", str(out), "--format", "csv"])
    assert r.stdout == (out / "kpis.csv").read_text()


def test_report_format_without_out_says_what_format_means(tmp_path):
    src = _folder(tmp_path)
    r = CliRunner().invoke(report, [str(src), "--format", "json,html"])
    assert r.exit_code == 2 and "without --out: expected one of json, csv" in r.output, r.output
    r = CliRunner().invoke(report, [str(src), "--format", "parquet"])
    assert r.exit_code == 2 and "add --out DIR" in r.output, r.output
    r = CliRunner().invoke(report, [str(src), "--format", "json", "--tables"])
    assert r.exit_code == 2 and "both would go to standard output" in r.output, r.output
    r = CliRunner().invoke(report, [str(src), "--no-tables"])
    assert r.exit_code == 2 and "would output nothing" in r.output
    r = CliRunner().invoke(report, ["--help"])
    assert "With --out, the files written" in r.output and "standard output" in r.output and "--no-tables" in r.output
