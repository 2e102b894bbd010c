"""Faults while a stream runs: what the pipeline accepted is never lost, nothing doubled.

Each test kills or breaks one part mid-stream (broker SIGKILL, ingestor SIGKILL,
store down, store unwritable, publisher SIGKILL, SIGTERM to publisher and
ingestor), lets it recover, reconciles the publisher's ledger against the store
(``ems reconcile``'s function) and appends its figures to the reliability file
(see ``reliability_kit.figures``; ``bench/reliability_report.py`` renders them).
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time

import brokers
import numpy as np
import pandas as pd
import pytest
from builders import make_readingset
from reliability_kit import (
    EmsProc,
    IngestProc,
    Mosquitto,
    Victoria,
    figures,  # noqa: F401  (fixture)
    mosquitto_conf,
    poll,
    reconciled,
)

from ems.store import open_store
from ems.store.influx import InfluxStore
from ems.telemetry.backfill import BackfillPolicy
from ems.telemetry.connection import BrokerConfig
from ems.telemetry.ingestor import IngestOptions, Ingestor
from ems.telemetry.ledger import Ledger
from ems.telemetry.publisher import Publisher, PublishOptions

pytestmark = pytest.mark.service

mosquitto = brokers.mosquitto


def n_readings(rs) -> int:
    """Distinct (site, meter, ts) of a ReadingSet: the readings a publisher sends."""
    r = rs.readings
    return len(pd.DataFrame({"s": r["site"].astype(str).to_numpy(), "m": r["meter"].astype(str).to_numpy(),
                             "t": r.index.asi8}).drop_duplicates())


def ingestor(cfg, store, **kw) -> Ingestor:
    kw.setdefault("batch_s", 0.2)
    return Ingestor(cfg, store, IngestOptions(**kw)).start()


def test_broker_sigkill_mid_stream_and_restart(tmp_path, figures):  # noqa: F811
    """mosquitto SIGKILLed mid-stream loses what it acknowledged since its last snapshot; backfill restores it.

    No operator step: the ingestor sees the gaps (and the lost tail against the publisher's
    high-water mark) and asks the publisher, which lingers to answer, for those readings again.
    """
    conf, port = mosquitto_conf(tmp_path / "mq", "autosave_interval 1\nautosave_on_changes false\n")
    mq = Mosquitto(conf, port)
    rs = make_readingset(sites=("alpha", "beta"), days=10)
    total = n_readings(rs)
    cfg = BrokerConfig.from_url(mq.url)
    store = open_store(tmp_path / "store")
    ledger = tmp_path / "ledger.json"
    ing = ingestor(cfg, store, client_id="rel-broker-kill", backfill=BackfillPolicy(grace_s=1.0, retry_s=3.0))
    time.sleep(1.5)  # the session and its subscriptions are in a persistence snapshot

    def crash() -> None:
        ing.wait_for(lambda c: c["received"] > 150, 30)
        mq.kill9()
        time.sleep(0.3)
        mq.start()

    t = threading.Thread(target=crash)
    t.start()
    try:
        stats = Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=5, linger_s=5.0)).run()
        t.join(30)
        poll(lambda: reconciled(ledger, store)["lost"] == 0 and ing.stats()["queue_depth"] == 0, 30, every=0.5)
        time.sleep(0.5)
    finally:
        ing.stop()
        mq.stop()
    fig = reconciled(ledger, store)
    s = ing.stats()
    figures(fault="mosquitto SIGKILL mid-stream, restarted (persistence, autosave 1 s); healed by backfill",
            published=total, dead_lettered=s["rejected"], broker_acks=stats.readings,
            backfill_requests=s["backfill_requests"], backfilled=stats.backfilled, late=s["late"], **fig)
    store.close()
    assert stats.readings >= total
    assert fig["lost"] == 0 and fig["doubled"] == 0 and fig["stored"] == total, fig


def test_ingestor_sigkill_mid_batch_and_restart(mosquitto, tmp_path, figures):  # noqa: F811
    rs = make_readingset(sites=("alpha", "beta"), days=10)
    total = n_readings(rs)
    cfg = BrokerConfig.from_url(mosquitto.url)
    ledger = tmp_path / "ledger.json"
    store_dir = str(tmp_path / "store")
    spool = ["--spool", str(tmp_path / "spool"), "--spool-limit-mb", "64"]  # the CLI path; the store stays up
    ing = IngestProc(mosquitto.url, store_dir, tmp_path / "logs", "rel-ingest-kill", *spool, name="ingest1")
    paced = PublishOptions(ledger=ledger, speed=900 * 400)  # ~2.4 s: the kill falls mid-stream
    pub = threading.Thread(target=lambda: Publisher(cfg, rs, paced).run())
    ing2 = None
    try:
        pub.start()
        assert poll(lambda: ing.written() > 1500, 30), ing.err.read_text()[-2000:]
        written_before = ing.written()
        ing.signal(signal.SIGKILL)
        ing.wait(10)
        pub.join(60)
        ing2 = IngestProc(mosquitto.url, store_dir, tmp_path / "logs", "rel-ingest-kill", *spool, name="ingest2")
        store = open_store(store_dir, read_only=True)
        poll(lambda: reconciled(ledger, store)["lost"] == 0, 60, every=0.5)
        after = ing2.metrics()
        ing2.signal(signal.SIGTERM)
        assert ing2.wait(30) == 0
    finally:
        ing.stop()
        if ing2 is not None:
            ing2.stop()
    fig = reconciled(ledger, store)
    figures(fault="ems ingest SIGKILL mid-batch, restarted (same persistent session)", published=total,
            dead_lettered=int(after.get("ems_ingest_rejected_total", 0)),
            written_before_kill=written_before,
            received_after_restart=int(after.get("ems_ingest_readings_received_total", 0)), **fig)
    store.close()
    assert after.get("ems_ingest_spool_limit_bytes") == 64 << 20 and after.get("ems_ingest_spool_bytes") == 0
    assert fig["lost"] == 0 and fig["doubled"] == 0 and fig["stored"] == total, fig


def _publish_in_two_parts(cfg, rs, ledger, cut_days: float):
    """Publish up to ``cut_days`` of the set, then (after the caller broke something) the rest."""
    ts = rs.readings.index.unique().sort_values()
    cut = ts[int(len(ts) * cut_days)]
    first = type(rs)(rs.readings[rs.readings.index <= cut], rs.events, rs.meters, rs.sites)
    s1 = Publisher(cfg, first, PublishOptions(ledger=ledger, batch=10)).run()
    return s1, lambda: Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=10)).run()


def test_influx_server_down_spools_and_replays(mosquitto, tmp_path, figures, monkeypatch):  # noqa: F811
    """VictoriaMetrics (InfluxDB v2 write API) stopped mid-stream: the ingestor spools, replays when it is back."""
    vm = Victoria(tmp_path / "vm")
    monkeypatch.setenv("EMS_INFLUX_TOKEN", "rel-test-token")
    rs = make_readingset(sites=("alpha",), days=4, meters=("grid", "pv1"))
    total = n_readings(rs)
    cfg = BrokerConfig.from_url(mosquitto.url)
    ledger = tmp_path / "ledger.json"
    store = InfluxStore(vm.base, org="o", bucket="b", max_retries=1, retry_interval_ms=100,
                        max_retry_time_ms=1500, timeout_ms=1500, flush_interval_ms=100)
    ing = ingestor(cfg, store, client_id="rel-influx", spool=tmp_path / "spool")
    try:
        s1, rest = _publish_in_two_parts(cfg, rs, ledger, 0.5)
        assert ing.wait_for(lambda c: c["written"] >= s1.readings, 30), ing.stats()
        vm.stop()
        s2 = rest()
        assert ing.wait_for(lambda c: c["spooled"] + c["written"] >= total, 60), ing.stats()
        peak = ing.stats()["spool_bytes"]
        vm.start()
        assert ing.wait_for(lambda c: c["written"] >= total and ing.stats()["spool_bytes"] == 0, 60), ing.stats()
        s = ing.stats()
    finally:
        ing.stop()
        store.close()
    samples = vm.samples('{__name__=~"(grid|pv)_.+"}')
    vm.stop()
    rows = [(m["metric"]["meter"], t, v) for m in samples for v, t in zip(m["values"], m["timestamps"], strict=True)
            for _ in [0] if m["metric"]["__name__"].endswith(("import_kwh", "energy_kwh"))]
    got = pd.DataFrame(rows, columns=["meter", "ts", "value"])
    stored = got.drop_duplicates(["meter", "ts"]).shape[0]
    conflicts = int((got.groupby(["meter", "ts"])["value"].nunique() > 1).sum())
    acked = Ledger(ledger).total()
    fig = {"acknowledged": acked, "stored": stored, "lost": max(acked - stored, 0), "doubled": conflicts}
    figures(fault="InfluxDB-protocol server (VictoriaMetrics) stopped, restarted", published=total,
            dead_lettered=s["rejected"], spooled=s["spooled"], replayed=s["replayed"], spool_peak_bytes=peak,
            **fig)
    assert s2.readings + s1.readings == total
    assert s["spooled"] > 0 and s["replayed"] == s["spooled"] and s["spool_bytes"] == 0
    assert fig["lost"] == 0 and fig["doubled"] == 0 and stored == total, fig


def test_embedded_store_unwritable_spools_bounded_then_replays(mosquitto, tmp_path, figures, caplog):  # noqa: F811
    """The store's readings directory becomes unwritable (as root chmod does not bite: it is replaced by a file)."""
    rs = make_readingset(sites=("alpha", "beta"), days=6)
    total = n_readings(rs)
    cfg = BrokerConfig.from_url(mosquitto.url)
    ledger = tmp_path / "ledger.json"
    root = tmp_path / "store"
    store = open_store(root)
    limit = 256 * 1024
    ing = ingestor(cfg, store, client_id="rel-unwritable", spool=tmp_path / "spool", spool_limit_bytes=limit,
                   spool_alarm_fraction=0.5, batch_readings=500)
    peak = 0
    try:
        s1, rest = _publish_in_two_parts(cfg, rs, ledger, 0.3)
        assert ing.wait_for(lambda c: c["written"] >= s1.readings, 30), ing.stats()
        (root / "readings").rename(root / "readings.away")
        (root / "readings").write_text("not a directory: the disk refuses writes\n")
        with caplog.at_level(logging.WARNING, logger="ems.telemetry.ingestor"):
            rest()
            assert ing.wait_for(lambda c: c["spool_full"] > 0, 30), ing.stats()
            peak = ing.stats()["spool_bytes"]
            time.sleep(0.5)
            assert ing.stats()["spool_bytes"] <= limit
            (root / "readings").unlink()
            (root / "readings.away").rename(root / "readings")
            assert ing.wait_for(lambda c: c["readings_received"] - c["duplicates"] >= total
                                and ing.stats()["spool_bytes"] == 0 and ing.stats()["queue_depth"] == 0, 60)
            assert ing.wait_for(lambda c: c["written"] >= total, 30), ing.stats()
        s = ing.stats()
    finally:
        ing.stop()
    fig = reconciled(ledger, store)
    figures(fault="embedded store unwritable (readings dir replaced by a file), restored", published=total,
            dead_lettered=s["rejected"], spooled=s["spooled"], replayed=s["replayed"], spool_peak_bytes=peak,
            spool_limit_bytes=limit, spool_full_refusals=s["spool_full"], spool_alarms=s["spool_alarms"], **fig)
    store.close()
    assert s["spool_alarms"] >= 1 and any("spool" in r.getMessage() and r.levelno == logging.WARNING
                                          for r in caplog.records)
    assert peak <= limit
    assert fig["lost"] == 0 and fig["doubled"] == 0 and fig["stored"] == total, fig


def test_embedded_store_locked_by_another_process_spools_then_replays(mosquitto, tmp_path, figures):  # noqa: F811
    """Another writer holds the store's write lock for a while: with a lock timeout the ingestor spools."""
    from ems.store.duckdb_store import DuckDBStore
    from ems.store.segments import FileLock

    rs = make_readingset(sites=("alpha",), days=4, meters=("grid", "pv1"))
    total = n_readings(rs)
    cfg = BrokerConfig.from_url(mosquitto.url)
    ledger = tmp_path / "ledger.json"
    root = tmp_path / "store"
    store = DuckDBStore(root, lock_timeout_s=0.3)
    ing = ingestor(cfg, store, client_id="rel-locked", spool=tmp_path / "spool")
    release = threading.Event()
    held = threading.Event()

    def other_writer() -> None:  # flock is per open file: this conflicts with the store's own
        with FileLock(root / ".write.lock").hold():
            held.set()
            release.wait(30)

    t = threading.Thread(target=other_writer)
    try:
        s1, rest = _publish_in_two_parts(cfg, rs, ledger, 0.4)
        assert ing.wait_for(lambda c: c["written"] >= s1.readings, 30), ing.stats()
        t.start()
        assert held.wait(10)
        rest()
        assert ing.wait_for(lambda c: c["spooled"] + c["written"] >= total, 30), ing.stats()
        peak = ing.stats()["spool_bytes"]
        release.set()
        t.join(10)
        assert ing.wait_for(lambda c: c["written"] >= total and ing.stats()["spool_bytes"] == 0, 30), ing.stats()
        s = ing.stats()
    finally:
        release.set()
        ing.stop()
    fig = reconciled(ledger, store)
    figures(fault="embedded store's write lock held by another process (lock timeout 0.3 s), released",
            published=total, dead_lettered=s["rejected"], spooled=s["spooled"], replayed=s["replayed"],
            spool_peak_bytes=peak, **fig)
    store.close()
    assert s["spooled"] > 0 and s["replayed"] == s["spooled"]
    assert fig["lost"] == 0 and fig["doubled"] == 0 and fig["stored"] == total, fig


def test_lock_timeout_names_the_lock(tmp_path):
    from ems.errors import StoreError
    from ems.store.segments import FileLock

    a, b = FileLock(tmp_path / "l"), FileLock(tmp_path / "l", timeout_s=0.2)
    msg = r"cannot lock .*l: another process held it for more than 0.2 s"
    with a.hold(), pytest.raises(StoreError, match=msg), b.hold():
        pass


def test_publisher_sigkill_resumes_from_its_ledger(mosquitto, tmp_path, figures):  # noqa: F811
    rs = make_readingset(sites=("alpha",), days=2, meters=("grid", "pv1"))
    total = n_readings(rs)
    folder = rs.to_parquet(tmp_path / "readings")
    cfg = BrokerConfig.from_url(mosquitto.url)
    ledger = tmp_path / "ledger.json"
    store = open_store(tmp_path / "store")
    ing = ingestor(cfg, store, client_id="rel-pub-kill")
    try:
        p1 = EmsProc(["stream", str(folder), "--broker", mosquitto.url, "--ledger", str(ledger),
                      "--speed", str(900 * 60)], tmp_path / "logs", "stream1")
        try:
            assert poll(lambda: ledger.exists() and Ledger(ledger).total() > 30, 30)
            p1.signal(signal.SIGKILL)
            p1.wait(10)
        finally:
            p1.stop()
        at_crash = Ledger(ledger).total()
        p2 = EmsProc(["stream", str(folder), "--broker", mosquitto.url, "--ledger", str(ledger),
                      "--as-fast-as-possible"], tmp_path / "logs", "stream2")
        assert p2.wait(60) == 0, p2.err.read_text()
        assert ing.wait_for(lambda c: c["readings_received"] - c["duplicates"] >= total, 30), ing.stats()
        time.sleep(0.5)
    finally:
        ing.stop()
    s = ing.stats()
    fig = reconciled(ledger, store)
    figures(fault="ems stream SIGKILL mid-stream, restarted with its ledger", published=total,
            dead_lettered=s["rejected"], ledger_at_crash=at_crash, resent_in_flight=s["duplicates"],
            gaps=s["gaps"], **fig)
    store.close()
    assert 0 < at_crash < total
    assert s["missing_seq"] == 0
    assert fig["lost"] == 0 and fig["doubled"] == 0 and fig["stored"] == total and fig["acknowledged"] == total, fig


def test_sigterm_to_publisher_and_ingestor_mid_stream(mosquitto, tmp_path, figures):  # noqa: F811
    rs = make_readingset(sites=("alpha", "beta"), days=2, meters=("grid", "gas"))
    total = n_readings(rs)
    folder = rs.to_parquet(tmp_path / "readings")
    ledger = tmp_path / "ledger.json"
    store_dir = str(tmp_path / "store")
    logs = tmp_path / "logs"
    procs: list[EmsProc] = []
    try:
        ing1 = IngestProc(mosquitto.url, store_dir, logs, "rel-term", name="ingest1")
        procs.append(ing1)
        pub1 = EmsProc(["stream", str(folder), "--broker", mosquitto.url, "--ledger", str(ledger),
                        "--speed", str(900 * 40)], logs, "stream1")
        procs.append(pub1)
        assert poll(lambda: ing1.written() > 40, 30)
        ing1.signal(signal.SIGTERM)  # mid-stream: flush, acknowledge, disconnect
        assert ing1.wait(30) == 0, ing1.err.read_text()[-2000:]
        ing2 = IngestProc(mosquitto.url, store_dir, logs, "rel-term", name="ingest2")
        procs.append(ing2)
        assert poll(lambda: ledger.exists() and Ledger(ledger).total() > total // 2, 30)
        pub1.signal(signal.SIGTERM)  # stops after the current message, saves its ledger
        assert pub1.wait(30) == 0, pub1.err.read_text()[-2000:]
        at_term = Ledger(ledger).total()
        pub2 = EmsProc(["stream", str(folder), "--broker", mosquitto.url, "--ledger", str(ledger),
                        "--as-fast-as-possible"], logs, "stream2")
        procs.append(pub2)
        assert pub2.wait(60) == 0, pub2.err.read_text()
        store = open_store(store_dir, read_only=True)
        poll(lambda: reconciled(ledger, store)["stored"] >= total, 30, every=0.3)
        ing2.signal(signal.SIGTERM)
        assert ing2.wait(30) == 0
    finally:
        for p in procs:
            p.stop()
    fig = reconciled(ledger, store)
    figures(fault="SIGTERM to ems ingest and to ems stream mid-stream, both restarted", published=total,
            dead_lettered=0, ledger_at_sigterm=at_term, **fig)
    store.close()
    assert 0 < at_term < total
    assert fig["lost"] == 0 and fig["doubled"] == 0 and fig["stored"] == total, fig
    assert "Traceback" not in (logs / "stream1.err").read_text()


def test_spool_survives_an_ingestor_restart(tmp_path):
    """Batches spooled and acknowledged by a process that then died are replayed by the next one."""
    from ems.telemetry.spool import Spool

    rs = make_readingset(sites=("alpha",), days=1, meters=("grid",))
    sp = Spool(tmp_path / "spool", limit_bytes=1 << 20, segment_bytes=2000)
    half = len(rs.readings) // 2
    assert sp.append(rs.readings.iloc[:half], rs.events) and sp.append(rs.readings.iloc[half:])
    with open(sorted((tmp_path / "spool").iterdir())[-1], "ab") as f:
        f.write(b"EMSP\x52partial")  # a record cut by a crash before its ack
    sp.close()
    again = Spool(tmp_path / "spool", limit_bytes=1 << 20)
    got: list[pd.DataFrame] = []
    evs: list[pd.DataFrame] = []
    again.replay(lambda r, e: got.append(r) if r is not None else evs.append(e))
    back = pd.concat(got)
    assert again.empty() and not list((tmp_path / "spool").iterdir())
    assert np.array_equal(back["value"].to_numpy(), rs.readings["value"].to_numpy())
    assert (back.index == rs.readings.index).all() and len(evs) == 1 and len(evs[0]) == len(rs.events)
    assert not Spool(tmp_path / "s2", limit_bytes=100).append(rs.readings)  # over the bound: refused


def test_spool_rejects_bad_settings(tmp_path):
    from ems.errors import ConfigError
    from ems.telemetry.spool import Spool

    with pytest.raises(ConfigError, match="spool limit must be > 0"):
        Spool(tmp_path / "s", limit_bytes=0)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="expected a writable directory"):
        Spool(tmp_path / "f" / "s")
    assert shutil.which  # keep the import used
