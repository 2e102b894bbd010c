"""What a new energy manager meets first (issue 15): errors that guide, nothing left behind.

Each test reproduces what a newcomer following the README ran into, through the
real command line (a subprocess, as a user types it) or click's CliRunner.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from brokers import amqtt_broker, mosquitto  # noqa: F401
from builders import plant

from ems.telemetry.connection import BrokerConfig

ROOT = Path(__file__).resolve().parents[1]


def ems(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``ems ARGS`` as a user would, in ``cwd``; return the finished process."""
    env = dict(os.environ, COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-m", "ems.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
    )


@pytest.fixture
def busy_port():
    """A loopback port something already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- 3. a busy port: one line, checked first, nothing left behind ---------------------------------

def test_broker_on_a_busy_port_says_so_in_one_line(busy_port):
    p = ems("broker", "--port", str(busy_port))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert f"port {busy_port} on 127.0.0.1 is already in use" in lines[0]
    assert "--port" in lines[0]


def test_live_on_a_busy_port_fails_before_loading_and_leaves_nothing(tmp_path, busy_port):
    scenario = str(ROOT / "scenarios" / "demo.yaml")
    p = ems("live", scenario, "--port", str(busy_port), cwd=tmp_path)
    assert p.returncode == 2
    assert "loaded" not in p.stderr  # the port is checked before the scenario is simulated
    assert "Traceback" not in p.stderr
    assert f"dashboard: port {busy_port} on 127.0.0.1 is already in use" in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_live_failing_after_opening_its_store_removes_it(tmp_path):
    src = plant({"alpha": "Alpha"}, n=8).to_parquet(tmp_path / "readings")
    work = tmp_path / "work"
    work.mkdir()
    p = ems("live", str(src), "--port", "0", "--broker", f"mqtt://127.0.0.1:{_closed_port()}", cwd=work)
    assert p.returncode == 2
    assert "cannot connect to broker" in p.stderr
    assert list(work.iterdir()) == []  # no ems-live-<time>/ with its .write.lock, no ledger


def test_live_keeps_a_store_that_existed(tmp_path):
    from ems.store import open_store

    src = plant({"alpha": "Alpha"}, n=8).to_parquet(tmp_path / "readings")
    open_store(tmp_path / "store").close()  # an empty store the user made: theirs to keep
    p = ems("live", str(src), "--port", "0", "--store", str(tmp_path / "store"), "--broker",
            f"mqtt://127.0.0.1:{_closed_port()}")
    assert p.returncode == 2
    assert (tmp_path / "store" / "ems-store.json").exists()


# -- 4. MQTT 5 first, 3.1.1 when refused, and say which --------------------------------------------

def test_stream_to_the_embedded_broker_needs_no_url_suffix(tmp_path, amqtt_broker):  # noqa: F811
    src = plant({"alpha": "Alpha"}, n=8).to_parquet(tmp_path / "readings")
    url = f"mqtt://127.0.0.1:{amqtt_broker.port}"
    t0 = time.monotonic()
    p = ems("stream", str(src), "--broker", url, "--linger", "0")
    assert p.returncode == 0, p.stderr
    assert time.monotonic() - t0 < 60  # not a CONNECT timeout (15 s) per site; no timing asserted finer
    assert "(MQTT 3.1.1): it refused MQTT 5" in p.stderr
    assert "published" in p.stdout


def test_negotiation_picks_mqtt5_on_mosquitto_and_311_on_amqtt(mosquitto, amqtt_broker):  # noqa: F811
    from ems.telemetry.connection import negotiate

    assert negotiate(BrokerConfig.from_url(mosquitto.url)).protocol == "5"
    assert negotiate(BrokerConfig.from_url(f"mqtt://127.0.0.1:{amqtt_broker.port}")).protocol == "3.1.1"
    fixed = BrokerConfig.from_url(f"mqtt://127.0.0.1:{amqtt_broker.port}?protocol=5")
    assert negotiate(fixed) is fixed  # an explicit protocol is not probed


def test_an_explicit_mqtt5_against_amqtt_is_refused_at_once_with_a_hint(amqtt_broker):  # noqa: F811
    from ems.errors import TelemetryError
    from ems.telemetry.connection import connect_and_wait, make_client

    cfg = BrokerConfig.from_url(f"mqtt://127.0.0.1:{amqtt_broker.port}?protocol=5")
    client = make_client(cfg, "ems-test-explicit-5")
    with pytest.raises(TelemetryError, match=r"speaks MQTT 3\.1\.1 only: leave out \?protocol=5"):
        connect_and_wait(client, cfg, timeout=10)


# -- 8. one definition of a reading; ingest stats for people -----------------------------------------

def test_run_stream_and_the_folder_count_readings_alike(tmp_path, amqtt_broker):  # noqa: F811
    """issue 15: ems stream counted 27,552 readings where ems run counted 61,152 for the same scenario."""
    from click.testing import CliRunner

    from ems.cli import cli
    from ems.readings import ReadingSet

    res = CliRunner().invoke(cli, ["run", str(ROOT / "scenarios" / "demo.yaml"), "--no-store", "--out",
                                   str(tmp_path)])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "demo"
    rs = ReadingSet.from_parquet(folder)
    assert f"{rs.n_readings():,} readings ({rs.n_values():,} values)" in res.output
    p = ems("stream", str(folder), "--broker", f"mqtt://127.0.0.1:{amqtt_broker.port}", "--linger", "0")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"published {rs.n_readings():,} readings in ")


def test_ingest_stats_line_reads_without_json():
    from ems.telemetry.commands import stats_line

    replayed = {"received": 341, "readings_received": 27552, "written": 27552, "rejected": 1, "duplicates": 0,
                "queue_depth": 0, "lag_s": 74398134.13, "spooled": 0, "write_latency_p50_s": 0.1521,
                "write_latency_p95_s": 0.5541}
    line = stats_line(replayed, {**replayed, "readings_received": 17552}, 5.0)
    assert line == ("2,000 readings/s; 27,552 readings stored; 1 message dead-lettered; "
                    "receipt to write p50 0.15 s, p95 0.55 s; queue 0")
    assert "lag" not in line and "{" not in line


# -- 9. the run summary adds up --------------------------------------------------------------------

def test_run_summary_has_chp_and_counts_in_words(tmp_path):
    from click.testing import CliRunner

    from ems.cli import cli

    res = CliRunner().invoke(cli, ["run", str(ROOT / "scenarios" / "demo.yaml"), "--store", str(tmp_path / "st")])
    assert res.exit_code == 0, res.output
    text = res.output
    assert "CHP" in text and "1 event written" in text and "1 events" not in text
    row = next(line for line in text.splitlines() if line.startswith("│ velenje"))
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    load, imp, exp, pv, chp = (float(c.replace(",", "")) for c in cells[1:6])
    assert chp > 100  # Velenje's CHP, 144 MWh in the demo week
    assert load == pytest.approx(imp - exp + pv + chp, rel=0.02)  # the row adds up (battery losses aside)


# -- 1. a reader never creates a store --------------------------------------------------------------

@pytest.mark.parametrize("url", ["does-not-exist", "duckdb:///{tmp}/nope.db"])
def test_report_on_a_missing_store_says_so_and_creates_nothing(tmp_path, url):
    url = url.format(tmp=tmp_path)
    p = ems("report", "--store", url, cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "no store at" in p.stderr and "(nothing there)" in p.stderr
    assert "ems run scenarios/demo.yaml --store" in p.stderr  # what to run first
    assert list(tmp_path.iterdir()) == []


def test_report_on_an_empty_store_says_it_is_empty(tmp_path):
    from click.testing import CliRunner

    from ems.cli import cli
    from ems.errors import StoreError
    from ems.store import open_store

    open_store(tmp_path / "st").close()  # a store with nothing in it
    before = sorted(p.name for p in (tmp_path / "st").iterdir())
    res = CliRunner().invoke(cli, ["report", "--store", str(tmp_path / "st")])
    assert isinstance(res.exception, StoreError)
    assert f"store {tmp_path / 'st'} is empty: no readings yet" in str(res.exception)
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == before  # read only: nothing written


# -- 2. validate refuses what run refuses, with file:line and the closest name ---------------------

_BAD = {
    "unknown measure": ("  - {measure: add_solar, site: qingdao, kwp: 20000}\n", 5, "measures.0.measure",
                        "found 'add_solar' (did you mean 'add_pv'?)"),
    "unknown site": ("  - {measure: add_pv, site: qingdoa, kwp: 20000}\n", 5, "measures.0.site",
                     "found 'qingdoa' (did you mean 'qingdao'?)"),
    "unknown parameter": ("  - {measure: add_pv, site: qingdao, kwp: 20000, tilt: 10}\n", 5, "measures.0.tilt",
                          "found 'tilt' (did you mean 'tilt_deg'?)"),
    "bad value": ("  - {measure: add_pv, kwp: 100}\n  - {measure: hvac_control, saving: 1.5}\n", 6, "measures.1",
                  "hvac_control.saving: expected a value in [0.0, 1.0], found 1.5"),
}


@pytest.mark.parametrize("case", list(_BAD))
def test_validate_refuses_what_run_refuses(tmp_path, case):
    from click.testing import CliRunner

    from ems.cli import cli
    from ems.errors import LocatedError

    measures, line, field, found = _BAD[case]
    f = tmp_path / "scenario.yaml"
    f.write_text(f"name: bad\nsites: [{ROOT / 'sites' / 'qingdao.yaml'}]\nperiod: {{year: 2024}}\nmeasures:\n"
                 + measures)
    v = CliRunner().invoke(cli, ["validate", str(f)])
    assert v.exit_code == 1
    assert v.output.startswith(f"{f}:{line}: {field}: ") and found in v.output, v.output
    r = CliRunner().invoke(cli, ["run", str(f), "--store", str(tmp_path / "st")])
    assert isinstance(r.exception, LocatedError)
    assert str(r.exception) == v.output.strip()  # the same words from both
    assert not (tmp_path / "st").exists()


def test_validate_suggests_the_site_file_meant(tmp_path):
    from click.testing import CliRunner

    from ems.cli import cli

    f = tmp_path / "scenario.yaml"
    f.write_text(f"name: x\nsites: [{ROOT / 'sites' / 'qingdoa.yaml'}]\nperiod: {{year: 2024}}\n")
    v = CliRunner().invoke(cli, ["validate", str(f)])
    assert v.exit_code == 1 and f"{f}:2: sites.0: " in v.output and "(did you mean 'qingdao.yaml'?)" in v.output


# -- 10. what the README's examples write is ignored by git ----------------------------------------

def _readme_outputs() -> list[str]:
    """Relative paths the README's commands write: their output options, and the commands' defaults."""
    import re

    text = (ROOT / "README.md").read_text()
    found = re.findall(r"--(?:out|ledger|html|csv|store|deadletter) (?!')([\w./-]+)", text)
    defaults = ["ems-data/", "sweep-results/", "deadletter.jsonl", "ems-live-20240101T000000Z/",
                "ems-live-20240101T000000Z.ledger.json", "gateway-history/", "gateway-deadletter.jsonl"]
    return sorted({p for p in found if not p.startswith(("/", "docs/")) and not p.isupper()} | set(defaults))


def test_readme_outputs_are_ignored_by_git():
    import shutil

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = _readme_outputs()
    assert "out/report" in paths and "out/sent.json" in paths  # the parser still finds the examples
    probes = [p.rstrip("/") + ("/x" if p.endswith("/") or "." not in Path(p).name else "") for p in paths]
    r = subprocess.run(["git", "check-ignore", "--no-index", "-v", *probes], cwd=ROOT, capture_output=True,
                       text=True, check=False)
    ignored = {line.split("\t")[1] for line in r.stdout.splitlines()}
    assert set(probes) <= ignored, f"not ignored: {sorted(set(probes) - ignored)}"


# -- 5. README command 1 installs what the README's examples use -----------------------------------

def test_readme_install_covers_the_examples():
    import re

    text = (ROOT / "README.md").read_text()
    first = next(line for line in text.splitlines() if "pip install -e" in line)
    extras = set(re.search(r"pip install -e '?\.(?:\[([\w,]+)\])?", first).group(1).split(","))
    needs = {"sweep": "ems sweep ", "plant": "ems modbus "}  # extra -> a README example that needs it
    assert "ems gateway " in text and "--encoding sparkplug" in text  # the plant extra's other uses
    for extra, example in needs.items():
        if example in text:
            assert extra in extras, f"README command 1 must install ems[{extra}] for `{example.strip()}`"


# -- 11. the README shows a picture, and what each command prints ----------------------------------

def test_readme_shows_the_dashboard_and_what_commands_print():
    import re

    text = (ROOT / "README.md").read_text()
    head = "\n".join(text.splitlines()[:8])
    pics = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", head)
    assert pics and (ROOT / pics[0]).is_file(), "a picture near the top"
    using = text.split("## Using it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = sorted({m.group(1) for m in re.finditer(r"^ems (\w+)", using, re.M)})
    printed = text.split("### What the commands print", 1)[1].split("\n## ", 1)[0]
    described = {c for c in commands if f"`ems {c}" in printed}
    quiet = {"validate", "schema", "broker"}  # their output is shown in the block's own comments
    assert set(commands) - described <= quiet, sorted(set(commands) - described - quiet)
