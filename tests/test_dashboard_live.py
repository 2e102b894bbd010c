"""``ems live`` as a real process: embedded broker, replay, ingest, store, dashboard, Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from brokers import mosquitto  # noqa: F401
from builders import plant

from ems.readings import ReadingSet
from ems.store import open_store
from ems.telemetry.ledger import Ledger, reconcile

pytestmark = pytest.mark.service


def _overview(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/overview", timeout=10) as r:
        return json.loads(r.read())


def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ems.cli", "live", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(20):
        line = proc.stderr.readline()
        m = re.search(r"dashboard at (http://127\.0\.0\.1:\d+)/", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    _out, err = proc.communicate()
    raise AssertionError(f"ems live did not start: {err}")


def test_live_sigint_stops_cleanly_and_loses_nothing(tmp_path):
    rs = plant({"alpha": "Alpha", "beta": "Beta"}, n=2 * 96)
    src = rs.to_parquet(tmp_path / "readings")
    store_dir = tmp_path / "store"
    # 2 days at 15 min: ~35 s of replay at this speed, interrupted part-way
    proc, url = _start([str(src), "--speed", "5000", "--port", "0", "--store", str(store_dir)])
    with proc:
        try:
            deadline = time.monotonic() + 30
            tiles = []
            while time.monotonic() < deadline:
                tiles = _overview(url)["sites"]
                if len(tiles) == 2 and all(t["flows"].get("load") for t in tiles):
                    break
                time.sleep(0.2)
            assert [t["site"] for t in tiles] == ["alpha", "beta"]
            assert tiles[0]["flows"]["load"] == pytest.approx(1000.0)
            assert tiles[0]["status"]["state"] == "online"  # from the MQTT site status
            with urllib.request.urlopen(url + "/api/site/alpha?range=day", timeout=10) as r:
                assert json.loads(r.read())["power"]["series"]["load"]
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "lost 0" in out, out
    ledger = Ledger(tmp_path / "store.ledger.json")
    published = ledger.total()
    assert 0 < published < len(rs.meters) * 2 * 96, "interrupted part-way"
    store = open_store(store_dir, read_only=True)
    try:
        rows = reconcile(ledger, store)
        assert all(r.ok for r in rows), [r for r in rows if not r.ok]
        assert sum(r.stored for r in rows) == published
    finally:
        store.close()


def test_live_exit_when_done_stores_everything(tmp_path):
    rs = plant({"alpha": "Alpha"}, n=48)
    src = rs.to_parquet(tmp_path / "readings")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ems.cli",
            "live",
            str(src),
            "--speed",
            "200000",
            "--port",
            "0",
            "--store",
            str(tmp_path / "store"),
            "--exit-when-done",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    assert "lost 0" in r.stdout
    store = open_store(tmp_path / "store", read_only=True)
    try:
        back = store.read()
        assert store.count() == len(rs.readings)
        assert len(back.events) == len(rs.events)
        assert isinstance(back, ReadingSet)
    finally:
        store.close()


def test_live_with_an_external_broker(tmp_path, mosquitto):  # noqa: F811
    rs = plant({"alpha": "Alpha"}, n=24)
    src = rs.to_parquet(tmp_path / "readings")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ems.cli",
            "live",
            str(src),
            "--speed",
            "200000",
            "--port",
            "0",
            "--broker",
            mosquitto.url,
            "--store",
            str(tmp_path / "store"),
            "--exit-when-done",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    assert "embedded broker" not in r.stderr
    assert "lost 0" in r.stdout
    store = open_store(tmp_path / "store", read_only=True)
    try:
        assert store.count() == len(rs.readings)
    finally:
        store.close()


def test_live_rejects_a_missing_scenario(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "ems.cli", "live", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "a readings folder (ems run --out) or a scenario .yaml; found nothing" in r.stderr


def test_live_offers_the_dashboards_options_under_the_same_names():
    """Every option of ``ems dashboard`` that is about the dashboard (not where its store or status come from)."""
    from ems.dashboard.commands import dashboard, live

    def opts(cmd) -> set[str]:
        return {o for p in cmd.params for o in getattr(p, "opts", [])}

    assert opts(dashboard) - {"--store", "--broker"} <= opts(live)
    assert {"--tls-ca", "--mqtt-version"} <= opts(live)  # and the broker options of ems stream / ingest


def test_live_with_a_password_broker_allowed_hosts_and_poll(tmp_path):
    """--username (password from the environment) on a mosquitto that takes logins only; --allow-host; --poll."""
    import http.client
    import os

    import brokers

    b = brokers.secure_mosquitto(tmp_path / "mq", {"live": "live-Pw-61t"}, tls=False)
    rs = plant({"alpha": "Alpha"}, n=2 * 96)
    src = rs.to_parquet(tmp_path / "readings")
    env = {**os.environ, "EMS_MQTT_PASSWORD": "live-Pw-61t"}
    proc = subprocess.Popen([sys.executable, "-m", "ems.cli", "live", str(src), "--speed", "5000", "--port", "0",
                             "--store", str(tmp_path / "store"), "--broker", b.url, "--username", "live",
                             "--allow-host", "ems.example.test", "--poll", "0.2", "--max-connections", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        for _ in range(20):
            m = re.search(r"dashboard at (http://127\.0\.0\.1:(\d+))/", proc.stderr.readline())
            if m:
                url, port = m.group(1), int(m.group(2))
                break
        assert url, proc.stderr.read() if proc.poll() is not None else "no dashboard line"

        def status(host: str) -> int:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/api/overview", headers={"Host": host})
            code = c.getresponse().status
            c.close()
            return code

        assert status("ems.example.test") == 200 and status("evil.example") == 421
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(t["flows"].get("load") for t in _overview(url)["sites"]):
            time.sleep(0.2)
        assert _overview(url)["sites"][0]["status"]["state"] == "online"  # readings came through the login
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        brokers.stop(b)
    assert proc.returncode == 0 and "lost 0" in out, err
