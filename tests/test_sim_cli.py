"""``ems run`` through click's runner and once as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ems.cli import cli
from ems.readings import ReadingSet

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "scenarios" / "demo.yaml"

pytestmark = pytest.mark.skipif(not DEMO.exists(), reason="scenarios/demo.yaml not present")


def test_run_writes_readings_and_prints_summary(tmp_path):
    res = CliRunner().invoke(cli, ["run", str(DEMO), "--out", str(tmp_path), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "PV kWh/kWp" in res.output and "qingdao" in res.output
    rs = ReadingSet.from_parquet(tmp_path / "demo")
    assert {s.site for s in rs.sites} >= {"qingdao"}
    assert len(rs.readings) > 0 and len(rs.meters) > 10


def test_run_per_site_and_quiet(tmp_path):
    res = CliRunner().invoke(
        cli, ["run", str(DEMO), "--out", str(tmp_path), "--quiet", "--per-site"]
    )
    assert res.exit_code == 0, res.output
    assert res.output.strip() == ""
    assert (tmp_path / "demo" / "qingdao" / "readings.parquet").exists()


def test_run_missing_scenario_is_one_line_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ems.cli",
            "run",
            str(tmp_path / "nope.yaml"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr


def test_run_as_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ems.cli", "run", str(DEMO), "--out", str(tmp_path), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "demo" / "readings.parquet").exists()
