"""Telemetry through real brokers (mosquitto, embedded amqtt) into the real DuckDB store."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import brokers
import numpy as np
import pandas as pd
import pytest
from builders import make_readingset
from click.testing import CliRunner
from telemetry_cases import BAD_CASES, data

from ems.readings import MeterInfo, ReadingSet
from ems.store import open_store
from ems.telemetry.commands import reconcile as reconcile_cmd
from ems.telemetry.connection import BrokerConfig, negotiate
from ems.telemetry.ingestor import IngestOptions, Ingestor
from ems.telemetry.ledger import Ledger, reconcile
from ems.telemetry.publisher import Publisher, PublishOptions

pytestmark = pytest.mark.service

mosquitto = brokers.mosquitto  # fixtures
amqtt_broker = brokers.amqtt_broker

KEY = ["site", "meter", "quantity"]


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "ts": pd.DatetimeIndex(df.index).as_unit("ns").asi8,
            **{c: df[c].astype(str).to_numpy() for c in KEY},
            "value": df["value"].to_numpy(dtype="float64"),
        }
    )
    return out.sort_values([*KEY, "ts"], kind="stable").reset_index(drop=True)


def assert_same_readings(stored: pd.DataFrame, published: pd.DataFrame) -> None:
    a, b = tidy(stored), tidy(published)
    assert len(a) == len(b)
    assert not a.duplicated([*KEY, "ts"]).any()
    for c in ["ts", *KEY]:
        assert (a[c].to_numpy() == b[c].to_numpy()).all(), c
    # bit-equal values
    assert np.array_equal(a["value"].to_numpy().view("int64"), b["value"].to_numpy().view("int64"))


def ingest(cfg, store, **kw) -> Ingestor:
    kw.setdefault("client_id", "ing-test")
    kw.setdefault("batch_s", 0.2)
    return Ingestor(cfg, store, IngestOptions(**kw)).start()


def test_week_of_three_sites_through_mosquitto(mosquitto, tmp_path):
    rs = make_readingset(sites=("alpha", "beta", "gamma"), days=7)
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    ledger = tmp_path / "ledger.json"
    ing = ingest(cfg, store, deadletter=tmp_path / "dl.jsonl")
    try:
        stats = Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=50)).run()
        n = 3 * 5 * 672
        assert stats.readings == n
        assert ing.wait_for(lambda c: c["written"] >= n and c["events_written"] >= 3, 60), ing.stats()
    finally:
        ing.stop()
    s = ing.stats()
    assert (s["rejected"], s["duplicates"], s["gaps"]) == (0, 0, 0)
    back = store.read()
    assert_same_readings(back.readings, rs.readings)
    assert {m.meter for m in back.meters} == {m.meter for m in rs.meters}
    assert sorted(s.site for s in back.sites) == ["alpha", "beta", "gamma"]
    assert len(back.events) == 3
    report = reconcile(Ledger(ledger), store)
    assert len(report) == 15 and all(r.ok and r.published == 672 for r in report)
    store.close()
    res = CliRunner().invoke(reconcile_cmd, ["--ledger", str(ledger), "--store", str(tmp_path / "store")])
    assert res.exit_code == 0, res.output
    assert "lost 0, doubled 0, extra 0" in res.output
    assert not (tmp_path / "dl.jsonl").exists()


def test_reconcile_names_a_loss(mosquitto, tmp_path):
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid",))
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    Publisher(cfg, rs, PublishOptions(ledger=tmp_path / "l.json")).run()  # nobody ingests
    store.write_readings(rs.readings[rs.readings.index < rs.readings.index.max()])  # last one lost
    (row,) = reconcile(Ledger(tmp_path / "l.json"), store)
    store.close()
    assert (row.published, row.stored, row.lost, row.ok) == (96, 95, 1, False)
    res = CliRunner().invoke(reconcile_cmd, ["--ledger", str(tmp_path / "l.json"), "--store", str(tmp_path / "store")])
    assert res.exit_code == 1 and "alpha/grid" in res.output and "lost 1" in res.output


def test_deadletter_each_bad_message_from_mosquitto_pub(mosquitto, tmp_path):
    import shutil

    if not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")):
        pytest.skip("mosquitto-clients not installed (apt-get install mosquitto-clients)")
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    grid = MeterInfo("alpha", "grid", "grid", "electricity", ("power_kw", "import_kwh", "export_kwh"), 900)
    dl = tmp_path / "dl.jsonl"
    ing = ingest(cfg, store, meters=[grid], deadletter=dl, unknown_grace_s=0.0)
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(mosquitto.port), "-t", "ems/v1/_deadletter/#", "-q", "1", "-v",
         "-C", str(len(BAD_CASES)), "-W", "30"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        import time

        time.sleep(0.3)  # let mosquitto_sub subscribe
        for i, (_reason, topic, payload) in enumerate(BAD_CASES):
            f = tmp_path / f"bad{i}"
            f.write_bytes(payload)
            subprocess.run(["mosquitto_pub", "-p", str(mosquitto.port), "-q", "1", "-t", topic, "-f", str(f)],
                           check=True, timeout=10)
        good = data()
        subprocess.run(["mosquitto_pub", "-p", str(mosquitto.port), "-q", "1", "-t", "ems/v1/alpha/grid", "-m",
                        good.decode()], check=True, timeout=10)
        assert ing.wait_for(lambda c: c["rejected"] >= len(BAD_CASES) and c["written"] >= 1, 30), ing.stats()
        out, _ = sub.communicate(timeout=30)
    finally:
        sub.kill()
        ing.stop()
    records = [json.loads(line) for line in dl.read_text().splitlines()]
    assert Counter(r["reason"] for r in records) == Counter(c[0] for c in BAD_CASES)
    sent = Counter((c[0], c[1], c[2]) for c in BAD_CASES)
    got = Counter((r["reason"], r["topic"], r["payload_sha256"]) for r in records)
    assert got == Counter((c[0], c[1], hashlib.sha256(c[2]).hexdigest()) for c in BAD_CASES)
    for r in records:  # whole up to 16 KiB; beyond, the prefix (with the size and the hash)
        kept = base64.b64decode(r["payload_b64"])
        assert r["payload_truncated"] == (r["payload_bytes"] > len(kept)) and len(kept) <= 16384
    assert sum(r["payload_truncated"] for r in records) == 1
    assert sent
    assert all(r["message"].startswith(r["reason"] + ":") for r in records)
    topics_seen = [line.split(" ", 1)[0] for line in out.splitlines() if line.startswith("ems/")]
    assert Counter(t.rsplit("/", 1)[1] for t in topics_seen) == Counter(c[0] for c in BAD_CASES)
    back = store.read().readings
    assert len(back) == 2 and set(back["quantity"].astype(str)) == {"power_kw", "import_kwh"}
    assert ing.stats()["rejected_by_reason"]["bad_topic"] == 2
    store.close()


def test_two_ingestors_share_a_stream(mosquitto, tmp_path):
    rs = make_readingset(sites=("alpha", "beta"), days=2)
    cfg = BrokerConfig.from_url(mosquitto.url)
    stores = [open_store(tmp_path / f"store{i}") for i in range(2)]
    ings = [ingest(cfg, s, group="grp", client_id=f"ing{i}") for i, s in enumerate(stores)]
    try:
        stats = Publisher(cfg, rs, PublishOptions(batch=8)).run()
        assert ings[0].wait_for(lambda c: c["written"] + ings[1].counters["written"] >= stats.readings, 60)
    finally:
        for i in ings:
            i.stop()
    parts = [s.read().readings for s in stores]
    assert all(len(p) > 0 for p in parts)  # each got some
    union = pd.concat(parts)
    assert_same_readings(union, rs.readings)  # complete, nothing doubled
    for s in stores:
        s.close()


def test_resume_after_the_ledger_checkpoint(mosquitto, tmp_path):
    full = make_readingset(sites=("alpha",), days=2, meters=("grid", "pv1"))
    cut = full.readings.index[len(full.readings.index.unique()) // 3]
    first = ReadingSet(full.readings[full.readings.index <= cut], full.events, full.meters, full.sites)
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    ledger = tmp_path / "l.json"
    ing = ingest(cfg, store)
    try:
        s1 = Publisher(cfg, first, PublishOptions(ledger=ledger, batch=10)).run()
        s2 = Publisher(cfg, full, PublishOptions(ledger=ledger, batch=10)).run()
        assert s2.skipped == s1.readings and s1.readings + s2.readings == 2 * 192
        assert ing.wait_for(lambda c: c["written"] >= 2 * 192, 30)
    finally:
        ing.stop()
    assert ing.stats()["duplicates"] == 0 and ing.stats()["gaps"] == 0
    assert_same_readings(store.read().readings, full.readings)
    assert all(r.ok for r in reconcile(Ledger(ledger), store))
    store.close()


def test_persistent_session_keeps_messages_while_the_ingestor_is_down(mosquitto, tmp_path):
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid",))
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    ingest(cfg, store, client_id="durable").stop()  # session and subscriptions stay on the broker
    Publisher(cfg, rs, PublishOptions(batch=4)).run()
    ing = ingest(cfg, store, client_id="durable")
    try:
        assert ing.wait_for(lambda c: c["written"] >= 96, 30), ing.stats()
    finally:
        ing.stop()
    assert_same_readings(store.read().readings, rs.readings)
    store.close()


def test_realtime_pacing_and_metrics(mosquitto, tmp_path):
    import urllib.request

    rs = make_readingset(sites=("alpha",), days=2 / 24, meters=("grid", "weather"))
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    ing = ingest(cfg, store)
    try:
        port = ing.serve_metrics(0)
        stats = Publisher(cfg, rs, PublishOptions(speed=36_000.0)).run()  # 2 h of plant in 0.2 s
        assert stats.readings == 16 and stats.messages >= 16
        assert ing.wait_for(lambda c: c["written"] >= 16, 20)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        ing.stop()
    assert "ems_ingest_written_total 16" in text and "# TYPE ems_ingest_lag_s gauge" in text
    assert_same_readings(store.read().readings, rs.readings)
    store.close()


def test_embedded_amqtt_broker_short_run(amqtt_broker, tmp_path):
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid", "gas"))
    cfg = negotiate(BrokerConfig.from_url(amqtt_broker.url))
    assert cfg.protocol == "3.1.1"  # negotiated: amqtt refuses MQTT 5
    store = open_store(tmp_path / "store")
    ing = ingest(cfg, store)
    try:
        stats = Publisher(cfg, rs, PublishOptions(ledger=tmp_path / "l.json", batch=24)).run()
        assert stats.readings == 192
        assert ing.wait_for(lambda c: c["written"] >= 192, 30), ing.stats()
    finally:
        ing.stop()
    assert_same_readings(store.read().readings, rs.readings)
    assert all(r.ok for r in reconcile(Ledger(tmp_path / "l.json"), store))
    store.close()


def test_cli_stream_as_a_subprocess(mosquitto, tmp_path):
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid",))
    folder = rs.to_parquet(tmp_path / "readings")
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    ing = ingest(cfg, store)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "ems.cli", "stream", str(folder), "--broker", mosquitto.url,
             "--ledger", str(tmp_path / "l.json"), "--as-fast-as-possible"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "published 96 readings" in out.stdout
        assert ing.wait_for(lambda c: c["written"] >= 96, 30)
    finally:
        ing.stop()
    assert_same_readings(store.read().readings, rs.readings)
    store.close()


def test_cli_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ems.cli", "stream", str(tmp_path / "nope.yaml"),
                          "--broker", "mqtt://127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "a readings folder (ems run --out) or a scenario .yaml; found nothing" in out.stderr
    assert "Traceback" not in out.stderr


def test_broker_restart_mid_stream_loses_nothing(mosquitto, tmp_path):
    import threading

    rs = make_readingset(sites=("alpha", "beta"), days=20)
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    ledger = tmp_path / "l.json"
    ing = ingest(cfg, store, client_id="durable")

    def bounce():
        ing.wait_for(lambda c: c["received"] > 200, 30)
        mosquitto.restart()  # persistence keeps the sessions and their queued messages

    t = threading.Thread(target=bounce)
    t.start()
    try:
        stats = Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=5)).run()
        t.join(30)
        assert stats.readings == 2 * 5 * 1920
        assert ing.wait_for(lambda c: c["readings_received"] - c["duplicates"] >= stats.readings, 60)
    finally:
        ing.stop()
    assert ing.stats()["missing_seq"] == 0
    assert_same_readings(store.read().readings, rs.readings)
    assert all(r.ok for r in reconcile(Ledger(ledger), store))
    store.close()


class FailingStore:
    """Wraps a real store; every write fails (the disk is gone, the database is down)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def write_readings(self, df):
        from ems.errors import StoreError

        raise StoreError("disk full (test)")


def test_nothing_is_acknowledged_before_it_is_stored(mosquitto, tmp_path):
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid", "pv1"))
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    broken = ingest(cfg, FailingStore(store), client_id="durable")
    try:
        Publisher(cfg, rs, PublishOptions(batch=8)).run()
        assert broken.wait_for(lambda c: c["readings_received"] >= 192, 30)
    finally:
        broken.stop(timeout=5)  # gives up: nothing written, nothing acknowledged
    assert broken.stats()["written"] == 0 and store.count() == 0
    ing = ingest(cfg, store, client_id="durable")  # the same session: the broker delivers again
    try:
        assert ing.wait_for(lambda c: c["written"] >= 192, 30), ing.stats()
    finally:
        ing.stop()
    assert_same_readings(store.read().readings, rs.readings)
    store.close()


def test_cli_ingest_with_stats(mosquitto, tmp_path):
    import threading

    from ems.telemetry.commands import ingest as ingest_cmd

    rs = make_readingset(sites=("alpha",), days=1, meters=("grid",))
    cfg = BrokerConfig.from_url(mosquitto.url)

    def later():
        import time

        time.sleep(1.0)
        Publisher(cfg, rs, PublishOptions(batch=8)).run()

    t = threading.Thread(target=later)
    t.start()
    folder = rs.to_parquet(tmp_path / "readings")
    res = CliRunner().invoke(ingest_cmd, ["--broker", mosquitto.url, "--store", str(tmp_path / "store"),
                                          "--meta", str(folder),
                                          "--deadletter", str(tmp_path / "dl.jsonl"), "--stats", "0.5",
                                          "--json", "--duration", "4", "--client-id", "cli"])
    t.join(30)
    assert res.exit_code == 0, res.output
    final = json.loads(res.stdout.strip().splitlines()[-1])
    assert final["written"] == 96 and final["rejected"] == 0 and final["meters_known"] == 1
    assert '"queue_depth"' in res.stderr
    store = open_store(tmp_path / "store")
    assert_same_readings(store.read().readings, rs.readings)
    store.close()


SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "demo.yaml"


def test_simulated_scenario_through_mosquitto_gives_the_same_kpis(mosquitto, tmp_path):
    """The demo scenario (3 parks, a week at 15 min) over MQTT: same readings, same KPIs."""
    import ems

    kpis_mod = pytest.importorskip("ems.accounting.kpis")
    if not SCENARIO.exists():
        pytest.skip(f"{SCENARIO} not there")
    rs = ems.simulate(ems.load_scenario(str(SCENARIO)))
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    ledger = tmp_path / "ledger.json"
    ing = ingest(cfg, store)
    try:
        stats = Publisher(cfg, rs, PublishOptions(ledger=ledger)).run()
        assert ing.wait_for(
            lambda c: c["written"] >= stats.readings and c["events_written"] >= len(rs.events), 60
        ), ing.stats()
    finally:
        ing.stop()
    assert ing.stats()["rejected"] == 0
    back = store.read()
    assert_same_readings(back.readings, rs.readings)
    assert all(r.ok for r in reconcile(Ledger(ledger), store))
    store.close()
    want = kpis_mod.kpis(rs).kpis
    got = kpis_mod.kpis(back).kpis
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=1e-9)


def test_stop_a_realtime_stream_and_resume(mosquitto, tmp_path):
    import threading

    rs = make_readingset(sites=("alpha",), days=1, meters=("grid",))
    cfg = BrokerConfig.from_url(mosquitto.url)
    ledger = tmp_path / "l.json"
    pub = Publisher(cfg, rs, PublishOptions(speed=900.0 * 4, ledger=ledger))  # 4 readings per second
    t = threading.Timer(0.6, pub.stop)
    t.start()
    first = pub.run()
    t.join()
    assert 0 < first.readings < 96 and first.readings == pub.published()
    second = Publisher(cfg, rs, PublishOptions(ledger=ledger)).run()
    assert second.skipped == first.readings and first.readings + second.readings == 96
    assert Ledger(ledger).total() == 96


def test_ems_ingest_subprocess_stops_gracefully_on_sigterm(mosquitto, tmp_path):
    import signal
    import time
    import urllib.request

    rs = make_readingset(sites=("alpha",), days=1, meters=("grid", "gas"))
    cfg = BrokerConfig.from_url(mosquitto.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ems.cli", "ingest", "--broker", mosquitto.url, "--store", str(tmp_path / "store"),
         "--deadletter", str(tmp_path / "dl.jsonl"), "--client-id", "sub", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # "broker mqtt://... (MQTT 5)": the protocol negotiated
        assert "(MQTT 5)" in first, first
        line = proc.stderr.readline()  # "metrics at ...": connected and subscribed
        assert "metrics at http://127.0.0.1:" in line, line
        Publisher(cfg, rs, PublishOptions(batch=6)).run()
        url = line.split("metrics at ", 1)[1].strip()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            if "ems_ingest_written_total 192" in text:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    final = out.strip().splitlines()[-1]  # readable by default (issue 15); --json for machines
    assert final.startswith("ingest stopped: ") and "; 192 readings stored; 0 messages dead-lettered;" in final
    store = open_store(tmp_path / "store")
    assert_same_readings(store.read().readings, rs.readings)
    store.close()


def test_tls_and_password_from_the_environment(tmp_path, monkeypatch):
    """mosquitto with TLS and a password file; the password comes from EMS_MQTT_PASSWORD_FILE."""
    from ems.telemetry.commands import stream as stream_cmd

    d = tmp_path / "tls"
    broker = brokers.secure_mosquitto(d, {"meter": "s3cret-pw"})
    port = broker.port
    try:
        (d / "pw").write_text("s3cret-pw\n")
        monkeypatch.delenv("EMS_MQTT_PASSWORD", raising=False)
        monkeypatch.setenv("EMS_MQTT_PASSWORD_FILE", str(d / "pw"))
        url = f"mqtts://127.0.0.1:{port}"
        rs = make_readingset(sites=("alpha",), days=1, meters=("grid",))
        folder = rs.to_parquet(tmp_path / "readings")
        from ems.telemetry.connection import password_from_env

        cfg = BrokerConfig.from_url(url, username="meter", password=password_from_env(), ca_file=str(d / "ca.pem"))
        store = open_store(tmp_path / "store")
        ing = ingest(cfg, store)
        try:
            res = CliRunner().invoke(stream_cmd, [str(folder), "--broker", url, "--username", "meter",
                                                  "--tls-ca", str(d / "ca.pem")])
            assert res.exit_code == 0, res.output
            assert "s3cret" not in res.output
            assert ing.wait_for(lambda c: c["written"] >= 96, 30)
        finally:
            ing.stop()
        assert_same_readings(store.read().readings, rs.readings)
        store.close()
        # a wrong password is refused with a clear error
        monkeypatch.setenv("EMS_MQTT_PASSWORD", "wrong")
        res = CliRunner().invoke(stream_cmd, [str(folder), "--broker", url, "--username", "meter",
                                              "--tls-ca", str(d / "ca.pem")])
        assert res.exit_code != 0
        assert "refused the connection" in str(res.exception) and "wrong" not in str(res.exception)
    finally:
        brokers.stop(broker)
