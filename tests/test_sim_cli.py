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
    store = tmp_path / "store"
    res = CliRunner().invoke(
        cli, ["run", str(DEMO), "--out", str(tmp_path), "--seed", "3", "--store", str(store)]
    )
    assert res.exit_code == 0, res.output
    assert "PV yield" in res.output and "[kWh/kWp]" in res.output and "qingdao" in res.output
    rs = ReadingSet.from_parquet(tmp_path / "demo")
    assert {s.site for s in rs.sites} >= {"qingdao"}
    assert len(rs.readings) > 0 and len(rs.meters) > 10
    # the store holds exactly what the Parquet folder holds
    from ems.store import open_store

    with open_store(str(store)) as st:
        assert st.count() == len(rs.readings)
        back = st.read()
    assert {m.meter for m in back.meters} == {m.meter for m in rs.meters}


def test_run_per_site_and_quiet(tmp_path):
    res = CliRunner().invoke(
        cli, ["run", str(DEMO), "--out", str(tmp_path), "--quiet", "--per-site", "--no-store"]
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
    """The README's main job: ``ems run`` with no options writes into ./ems-data."""
    proc = subprocess.run(
        [sys.executable, "-m", "ems.cli", "run", str(DEMO), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ems-data").is_dir()
    report = subprocess.run(
        [sys.executable, "-m", "ems.cli", "report", "--store", "ems-data", "--period", "year"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert report.returncode == 0, report.stderr
    assert "qingdao" in report.stdout


def test_no_store_needs_out(tmp_path):
    res = CliRunner().invoke(cli, ["run", str(DEMO), "--no-store"])
    assert res.exit_code != 0
    assert "--no-store needs --out" in str(res.exception) + res.output


def test_large_frames_go_to_the_store_in_time_slices(tmp_path, monkeypatch):
    import ems.sim.runner as runner
    from ems.store import open_store

    monkeypatch.setattr(runner, "STORE_SLICE_ROWS", 5_000)
    store = tmp_path / "store"
    res = CliRunner().invoke(
        cli, ["run", str(DEMO), "--quiet", "--store", str(store), "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    rs = ReadingSet.from_parquet(tmp_path / "demo")
    with open_store(str(store)) as st:
        assert st.count() == len(rs.readings)
        back = st.read().readings
    key = ["site", "meter", "quantity"]
    a = rs.readings.reset_index().astype({k: str for k in key}).sort_values([*key, "ts"])
    b = back.reset_index().astype({k: str for k in key}).sort_values([*key, "ts"])
    assert a["value"].to_numpy().tolist() == b["value"].to_numpy().tolist()
    segments = list((store / "readings").glob("site=*/*.parquet"))
    assert len(segments) >= len(rs.readings) // 5_000


def test_run_imports_neither_scipy_nor_pvlib(tmp_path):
    """``ems run`` starts fast: the simulation imports no SciPy and no pvlib (see docs/model.md)."""
    code = (
        "import sys; from ems.cli import main; "
        f"main(['run', {str(DEMO)!r}, '--store', {str(tmp_path / 's')!r}, '-q']); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'pvlib'}); "
        "print('heavy:', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout


def test_run_in_worker_processes_says_so(tmp_path):
    res = CliRunner().invoke(
        cli, ["run", str(DEMO), "--store", str(tmp_path / "s"), "--workers", "2"]
    )
    assert res.exit_code == 0, res.output
    assert "demo: simulating 3 site(s) in 2 processes (as asked)" in res.output
    res = CliRunner().invoke(
        cli, ["run", str(DEMO), "--store", str(tmp_path / "t"), "--workers", "0"]
    )
    assert res.exit_code == 2 and "--workers" in res.output


@pytest.mark.parametrize("after_s", [0.0, 0.5], ids=["as-the-workers-start", "while-they-work"])
def test_ctrl_c_ends_the_workers_quietly(tmp_path, after_s):
    """Ctrl-C (SIGINT to the process group) stops ems run and its worker processes: exit 130, no
    traceback, also when it comes as the workers are being forked."""
    import os
    import signal
    import time

    scenario = tmp_path / "long.yaml"
    text = DEMO.read_text().replace("../sites/", f"{ROOT}/sites/")
    text = text.replace("period: {start: 2024-07-15, end: 2024-07-22}", "period: {year: 2024}")
    scenario.write_text(text.replace("resolution: 15min", "resolution: 1min"))  # minutes of work
    # ems run as a terminal starts it: with Ctrl-C delivered. A program started with SIGINT ignored (as a
    # shell without job control starts a background job, and with it this test's children) keeps it
    # ignored, as Python and the shells do, and would simply run to the end.
    as_in_a_terminal = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from ems.cli import main; sys.argv[0] = 'ems'; sys.exit(main())"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            as_in_a_terminal,
            "run",
            str(scenario),
            "--store",
            str(tmp_path / "s"),
            "-q",
            "--workers",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    marker = tmp_path / "s" / "ems-store.json"  # written just before the workers start
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(after_s)
    os.killpg(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "aborted" in err
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no worker left in the group
