"""Issue 17's thirteen attacks, cases 1-11: each through a real mosquitto, with a good stream beside it.

Each test names its case. The good stream must end stored (``ems reconcile``'s figures: lost 0,
doubled 0) and every hostile message dead-lettered with its reason, whatever the attack:
one message, one stock broker setting, a full disk, a flood. Cases 12 (site and scenario
files) and 13 (the dashboard's HTTP server) are in ``tests/test_files_and_http_limits.py``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import brokers
import paho.mqtt.client as mqtt
import pytest
from builders import make_readingset
from disk_faults import DiskFaults
from paho.mqtt.enums import CallbackAPIVersion
from reliability_kit import EmsProc, IngestProc, figures, poll, reconciled  # noqa: F401 (fixture)

from ems.store import open_store
from ems.telemetry import codec, topics
from ems.telemetry.backfill import BackfillPolicy
from ems.telemetry.connection import BrokerConfig
from ems.telemetry.ingestor import IngestOptions, Ingestor
from ems.telemetry.publisher import Publisher, PublishOptions, meter_series

pytestmark = pytest.mark.service

mosquitto = brokers.mosquitto


# ---------------------------------------------------------------- helpers


class Raw:
    """A plain paho client (MQTT 5) that publishes QoS 1 and remembers each PUBACK's reason code."""

    def __init__(self, port: int, user: str | None = None, pw: str | None = None, ca: str | None = None) -> None:
        self.acks: dict[int, object] = {}
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"raw-{os.getpid()}-{id(self)}",
                             protocol=mqtt.MQTTv5)
        if user:
            self.c.username_pw_set(user, pw)
        if ca:
            self.c.tls_set(ca_certs=ca)
        self.c.max_inflight_messages_set(0)
        self.c.on_publish = lambda cl, ud, mid, rc, props: self.acks.__setitem__(mid, rc)
        up = threading.Event()
        self.c.on_connect = lambda *a: up.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert up.wait(10)

    def send(self, topic: str, payload: bytes, retain: bool = False) -> int:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(30)
        return info.mid

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def doc(site: str, meter: str, rows: list[dict], interval_s: int = 900) -> bytes:
    return json.dumps({"v": 1, "site": site, "meter": meter, "interval_s": interval_s, "readings": rows}).encode()


def start(cfg, store, **kw) -> Ingestor:
    kw.setdefault("batch_s", 0.2)
    kw.setdefault("client_id", "adversary")
    return Ingestor(cfg, store, IngestOptions(**kw)).start()


def good(days: float = 2, meters=("grid", "pv1"), sites=("alpha",)):
    rs = make_readingset(sites=sites, days=days, meters=meters)
    return rs, len(rs.readings.index.unique()) * len(meters) * len(sites)


def reasons(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(json.loads(line)["reason"] for line in path.read_text().splitlines())


@pytest.fixture
def record(figures):  # noqa: F811
    """``record(fault, ledger, store, total, **figures)``: reconcile, write the figures (with the peak RSS of
    this process, or of ``rss_of`` if given a subprocess' figure), then assert lost 0, doubled 0."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()

    def write(fault: str, ledger: Path, store, total: int, **extra) -> dict:
        fig = reconciled(ledger, store)
        extra.setdefault("peak_rss_mib", round(peak[0] / 1024, 1))
        figures(fault=fault, published=total, **fig, **extra)
        assert fig["lost"] == 0 and fig["doubled"] == 0 and fig["stored"] == total, fig
        return fig

    yield write
    stop.set()
    t.join(2)


# ---------------------------------------------------------------- case 1


def test_case01_ancient_timestamps_are_dead_lettered_not_fatal(record, mosquitto, tmp_path):
    """A reading dated 1500, an event dated 1000 and a high-water mark stamped 1500 (retained)."""
    rs, total = good()
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    dl, ledger = tmp_path / "dl.jsonl", tmp_path / "ledger.json"
    ing = start(cfg, store, meters=rs.meters, sites=rs.sites, deadletter=dl)
    try:
        with Raw(mosquitto.port) as raw:
            raw.send("ems/v1/alpha/grid", doc("alpha", "grid", [
                {"seq": 999_999, "ts": "1500-07-01T00:15:00Z", "values": {"power_kw": 1.0, "import_kwh": 5.0}}]))
            raw.send("ems/v1/alpha/_events", json.dumps({"v": 1, "site": "alpha", "events": [
                {"ts": "1000-01-01T00:00:00Z", "kind": "fuel_delivery", "value": 1.0}]}).encode())
            raw.send("ems/v1/alpha/_hwm", json.dumps({"v": 1, "site": "alpha", "sent": "1500-01-01T00:00:00Z",
                                                      "last_seq": {"grid": 3}}).encode(), retain=True)
        Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=20)).run()
        assert ing.wait_for(lambda c: c["written"] >= total and c["rejected"] >= 3, 20), ing.stats()
        s = ing.stats()
    finally:
        ing.stop()
    assert s["rejected_by_reason"] == {"out_of_range": 3}, s
    assert reasons(dl) == {"out_of_range": 3}
    record("case 1: a reading dated 1500, an event dated 1000, a retained mark stamped 1500", ledger, store, total,
           dead_lettered=sum(reasons(dl).values()))
    store.close()


# ---------------------------------------------------------------- case 2


def test_case02_huge_integers_never_fill_stock_mosquittos_inflight_window(record, tmp_path):
    """25 values written as 401-digit integers through stock mosquitto (20 messages in flight)."""
    b = brokers.mosquitto_broker(tmp_path / "mq", limits="")
    rs, total = good()
    try:
        cfg = BrokerConfig.from_url(b.url)
        store = open_store(tmp_path / "store")
        dl, ledger = tmp_path / "dl.jsonl", tmp_path / "ledger.json"
        ing = start(cfg, store, meters=rs.meters, sites=rs.sites, deadletter=dl)
        try:
            with Raw(b.port) as raw:
                for i in range(25):
                    raw.send("ems/v1/alpha/grid", doc("alpha", "grid", [
                        {"seq": 10**6 + i, "ts": "2024-07-01T00:15:00Z", "values": {"power_kw": 1.0}}]
                    ).replace(b"1.0", b"9" * 401))
            Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=20)).run()
            assert ing.wait_for(lambda c: c["written"] >= total and c["rejected"] >= 25, 20), ing.stats()
            s = ing.stats()
        finally:
            ing.stop()
    finally:
        brokers.stop(b)
    assert s["rejected_by_reason"] == {"out_of_range": 25}, s
    record("case 2: 25 values as 401-digit integers, stock mosquitto (20 in flight)", ledger, store, total, dead_lettered=s["rejected"])
    store.close()


# ---------------------------------------------------------------- case 3


def _publish_first(cfg, rs, ledger, fraction: float):
    ts = rs.readings.index.unique().sort_values()
    cut = ts[int(len(ts) * fraction) - 1]
    first = type(rs)(rs.readings[rs.readings.index <= cut], rs.events, rs.meters, rs.sites)
    Publisher(cfg, first, PublishOptions(ledger=ledger, batch=10)).run()
    return int(len(ts) * fraction)


def test_case03_a_glitched_register_is_dead_lettered_and_poisons_nothing(record, mosquitto, tmp_path):
    """import_kwh jumps to 1e12 (beyond any rated power) and to 1e300; the meter's next readings are fine."""
    rs, total = good(meters=("grid",))
    s = meter_series(rs)[0]
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    dl, ledger = tmp_path / "dl.jsonl", tmp_path / "ledger.json"
    ing = start(cfg, store, meters=rs.meters, sites=rs.sites, deadletter=dl)
    try:
        n1 = _publish_first(cfg, rs, ledger, 0.5)
        assert ing.wait_for(lambda c: c["written"] >= n1, 20), ing.stats()
        nxt = {"seq": int(s.seq[n1]), "ts": codec.format_ts(int(s.ts[n1]))}
        with Raw(mosquitto.port) as raw:
            for glitch in (1e12, 1e300):
                raw.send("ems/v1/alpha/grid", doc("alpha", "grid", [{**nxt, "values": {"import_kwh": glitch}}]))
        Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=10)).run()
        assert ing.wait_for(lambda c: c["written"] >= total and c["rejected"] >= 2, 20), ing.stats()
        st = ing.stats()
    finally:
        ing.stop()
    assert st["rejected_by_reason"] == {"register_jump": 1, "out_of_range": 1}, st
    record("case 3: a glitched register (import_kwh 1e12, then 1e300)", ledger, store, total, dead_lettered=st["rejected"])
    back = store.read().readings
    assert back[back["quantity"] == "import_kwh"]["value"].max() == s.values[:, s.quantities.index("import_kwh")].max()
    store.close()


# ---------------------------------------------------------------- case 4


def test_case04_conflicting_duplicates_are_dead_lettered_and_the_stored_value_kept(record, mosquitto, tmp_path):
    rs, total = good(meters=("grid",))
    s = meter_series(rs)[0]
    q = s.quantities.index("power_kw")
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    dl, ledger = tmp_path / "dl.jsonl", tmp_path / "ledger.json"

    def row(i: int, **over) -> dict:
        r = {"seq": int(s.seq[i]), "ts": codec.format_ts(int(s.ts[i])),
             "values": {k: float(v) for k, v in zip(s.quantities, s.values[i], strict=True)}}
        r.update(over)
        return r

    ing = start(cfg, store, meters=rs.meters, sites=rs.sites, deadletter=dl)
    try:
        Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=10)).run()
        assert ing.wait_for(lambda c: c["written"] >= total, 20), ing.stats()
        with Raw(mosquitto.port) as raw:
            raw.send("ems/v1/alpha/grid", doc("alpha", "grid", [row(10, values={"power_kw": -999999.0})]))
            raw.send("ems/v1/alpha/grid", doc("alpha", "grid", [row(11, ts=codec.format_ts(int(s.ts[12])))]))
            raw.send("ems/v1/alpha/grid", doc("alpha", "grid", [row(13, seq=10**6, values={"power_kw": 1.0})]))
            raw.send("ems/v1/alpha/grid", s.payload(20, 22))  # an honest repeat: a duplicate, not a conflict
        assert ing.wait_for(lambda c: c["rejected"] >= 3 and c["duplicates"] >= 2, 10), ing.stats()
    finally:
        ing.stop()
    ing2 = start(cfg, store, meters=rs.meters, sites=rs.sites, deadletter=dl)  # a restart knows the store
    try:
        with Raw(mosquitto.port) as raw:
            raw.send("ems/v1/alpha/grid", doc("alpha", "grid", [row(30, values={"power_kw": -5.0})]))
        assert ing2.wait_for(lambda c: c["rejected"] >= 1, 10), ing2.stats()
    finally:
        ing2.stop()
    assert reasons(dl) == {"conflicting_duplicate": 4}
    back = store.read().readings
    power = back[back["quantity"] == "power_kw"]["value"]
    for i in (10, 13, 30):
        assert power.loc[power.index.asi8 == s.ts[i]].tolist() == [s.values[i, q]]
    record("case 4: same seq/ts with other values, other seq same ts, same seq other ts; after a restart too", ledger, store, total, dead_lettered=sum(reasons(dl).values()))
    store.close()


# ---------------------------------------------------------------- case 5


def test_case05_stock_mosquitto_drops_a_stopped_ingestors_tail_and_backfill_heals_it(record, tmp_path):
    """Stock mosquitto (1,000 queued): the ingestor is SIGSTOPped while 3,168 messages arrive (1,000 in
    flight to it, 1,000 queued); the tail and every high-water mark published meanwhile are dropped by
    the broker. The retained mark, fetched again by the ingestor, reveals the tail; the lingering
    publisher sends it again."""
    b = brokers.mosquitto_broker(tmp_path / "mq", limits="")
    rs, total = good(days=11, meters=("grid", "pv1", "gas"))
    ledger = tmp_path / "ledger.json"
    ing = IngestProc(b.url, str(tmp_path / "store"), tmp_path / "logs", "case05", name="ingest")
    cfg = BrokerConfig.from_url(b.url)
    pub = Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=1, linger_s=20.0))
    t = threading.Thread(target=pub.run)
    try:
        time.sleep(0.5)
        ing.signal(signal.SIGSTOP)
        t.start()
        assert poll(lambda: pub.published() >= total, 30), pub.published()
        time.sleep(1.0)
        ing.signal(signal.SIGCONT)
        poll(lambda: ing.written() >= total and ing.metrics().get("ems_ingest_missing_seq", 1) == 0, 40, every=0.5)
        m = ing.metrics()
        rss = ing.rss_kb()
    finally:
        ing.signal(signal.SIGCONT)
        pub.stop()  # ends the linger; the ledger is saved
        t.join(30)
        ing.stop()
        brokers.stop(b)
    store = open_store(tmp_path / "store", read_only=True)
    assert m.get("ems_ingest_backfill_requests_total", 0) >= 1, m
    record("case 5: stock mosquitto (1,000 queued), ems ingest SIGSTOPped while 3,168 messages arrive", ledger, store, total, dead_lettered=int(m.get("ems_ingest_rejected_total", 0)), backfill_requests=int(m.get("ems_ingest_backfill_requests_total", 0)), rss_end_mib=round(rss / 1024, 1),
           peak_rss_mib="")
    store.close()


# ---------------------------------------------------------------- case 6

PW = {"alpha": "alpha-Secret-3k", "ingest": "ingest-Secret-9q"}


def test_case06_the_shipped_acl_lets_backfill_requests_through_and_refusals_are_logged(record, tmp_path, caplog):
    """The ACL of deploy/mosquitto/acl (the one docs/reliability.md shows). Readings 11..15 and the tail
    18..20 never reach the broker; the ingestor's backfill requests must reach the publisher."""
    b = brokers.secure_mosquitto(tmp_path / "tls", PW, acl=brokers.SHIPPED_ACL.read_text())
    ca = str(tmp_path / "tls" / "ca.pem")
    rs, _ = good(days=20 * 900 / 86400, meters=("grid",))
    s = meter_series(rs)[0]
    ledger = tmp_path / "ledger.json"
    ledger.write_text(json.dumps({"v": 1, "meters": {"alpha/grid": {
        "readings": 20, "messages": 4, "last_seq": 20, "first_ts": codec.format_ts(int(s.ts[0])),
        "last_ts": codec.format_ts(int(s.ts[-1]))}}}))
    store = open_store(tmp_path / "store")
    ing_cfg = BrokerConfig.from_url(b.url, username="ingest", password=PW["ingest"], ca_file=ca)
    alpha = BrokerConfig.from_url(b.url, username="alpha", password=PW["alpha"], ca_file=ca)
    ing = start(ing_cfg, store, meters=rs.meters, sites=rs.sites, batch_s=0.1,
                backfill=BackfillPolicy(grace_s=0.5, retry_s=1.0))
    # a second ingestor logged in with a gateway's credentials may not write dead letters: refused, and said so
    wrong = start(alpha, open_store(tmp_path / "store2"), client_id="wrong-user", meters=rs.meters,
                  deadletter=tmp_path / "dl2.jsonl", backfill=None)
    try:
        with caplog.at_level(logging.WARNING, logger="ems.telemetry"):
            with Raw(b.port, "alpha", PW["alpha"], ca) as raw:
                for i, j in [(0, 5), (5, 10), (15, 17)]:
                    raw.send(topics.data_topic("alpha", "grid"), s.payload(i, j))
                raw.send(topics.data_topic("alpha", "grid"), b"not json")
            assert ing.wait_for(lambda c: c["readings_received"] >= 12, 10), ing.stats()
            run = Publisher(alpha, rs, PublishOptions(ledger=ledger, linger_s=1.5)).run()
            assert ing.wait_for(lambda c: c["written"] >= 20, 10), ing.stats()
            assert wrong.wait_for(lambda c: c["publish_refused"] >= 1, 10), wrong.stats()
            beta, _ = good(days=900 / 86400, meters=("grid",), sites=("beta",))  # alpha may not publish as beta
            spoof = Publisher(alpha, beta, PublishOptions(ledger=tmp_path / "spoof.json")).run()
    finally:
        ing.stop()
        wrong.stop()
        brokers.stop(b)
    assert run.backfilled >= 8 and ing.stats()["publish_refused"] == 0
    assert spoof.readings == 0  # refused PUBACKs are not counted as delivered
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage() and "Not authorized" in r.getMessage()]
    assert any(r.name.startswith("ems.telemetry.session") for r in caplog.records if r.getMessage() in refusals)
    assert any("site beta" in m for m in refusals), refusals
    record("case 6: the shipped ACL; readings 11-15 and 18-20 never reach the broker; backfill asked for", ledger,
           store, 20, dead_lettered=ing.stats()["rejected"], backfilled=run.backfilled,
           refused_for_the_wrong_user=wrong.stats()["publish_refused"])
    store.close()


# ---------------------------------------------------------------- cases 7, 8, 9: disk full


def test_case07_disk_full_with_the_spool_on_the_same_disk(record, mosquitto, tmp_path):
    """The store and the spool share a disk that fills up: nothing is dropped; it all lands when space is back."""
    rs, total = good(days=3)
    disk = tmp_path / "disk"
    disk.mkdir()
    cfg = BrokerConfig.from_url(mosquitto.url)
    ledger = tmp_path / "ledger.json"
    with DiskFaults(disk) as faults:
        store = open_store(disk / "store")
        ing = start(cfg, store, meters=rs.meters, sites=rs.sites, spool=disk / "spool",
                    deadletter=disk / "dl.jsonl")
        try:
            n1 = _publish_first(cfg, rs, ledger, 0.3) * 2
            assert ing.wait_for(lambda c: c["written"] >= n1, 20), ing.stats()
            faults.mode = "full"
            Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=10)).run()
            assert ing.wait_for(lambda c: c["readings_received"] >= total, 20), ing.stats()
            time.sleep(1.0)
            stuck = ing.stats()
            faults.mode = None
            assert ing.wait_for(lambda c: c["written"] >= total, 20), ing.stats()
        finally:
            faults.mode = None
            ing.stop()
    assert stuck["written"] < total and faults.injected > 0
    s = ing.stats()
    record("case 7: disk full (injected ENOSPC) with the store and the spool on it", ledger, store, total,
           dead_lettered=s["rejected"], retries=s["retries"], injected_errors=faults.injected)
    store.close()


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a small tmpfs, which only root can mount; "
                    "the injected ENOSPC tests cover the same paths unprivileged")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


def _fill(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 65536):
                pass
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def test_case07_real_disk_full_on_a_tmpfs(record, mosquitto, tmp_path):
    """The same on a real 8 MiB tmpfs filled to the last byte (ENOSPC from the kernel, partial writes)."""
    disk = tmp_path / "disk"
    _tmpfs(disk, "8m")
    rs, total = good(days=3)
    cfg = BrokerConfig.from_url(mosquitto.url)
    ledger = tmp_path / "ledger.json"
    try:
        store = open_store(disk / "store")
        ing = start(cfg, store, meters=rs.meters, sites=rs.sites, spool=disk / "spool",
                    deadletter=disk / "dl.jsonl")
        try:
            n1 = _publish_first(cfg, rs, ledger, 0.3) * 2
            assert ing.wait_for(lambda c: c["written"] >= n1, 20), ing.stats()
            filler = _fill(disk)
            Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=10)).run()
            assert ing.wait_for(lambda c: c["readings_received"] >= total, 20), ing.stats()
            time.sleep(1.0)
            stuck = ing.stats()
            filler.unlink()
            assert ing.wait_for(lambda c: c["written"] >= total, 20), ing.stats()
        finally:
            ing.stop()
        assert stuck["written"] < total
        s = ing.stats()
        record("case 7: disk full for real (an 8 MiB tmpfs filled to the last byte)", ledger, store, total,
               dead_lettered=s["rejected"], retries=s["retries"])
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_case08_disk_full_for_a_while_never_stalls_registrations(record, tmp_path):
    """The deploy broker settings before this issue (20 in flight): 20 meters' metadata arrive while the
    disk is full; once it is free again everything is registered and stored."""
    b = brokers.mosquitto_broker(tmp_path / "mq", limits="max_queued_messages 100000\n")
    rs, total = good(sites=("alpha", "beta", "gamma", "delta"), meters=("grid", "pv1", "gas", "weather", "load-production"),
                     days=1)
    disk = tmp_path / "disk"
    disk.mkdir()
    ledger = tmp_path / "ledger.json"
    try:
        cfg = BrokerConfig.from_url(b.url)
        with DiskFaults(disk) as faults:
            store = open_store(disk / "store")
            faults.mode = "full"
            ing = start(cfg, store, deadletter=disk / "dl.jsonl")
            try:
                Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=50)).run()
                time.sleep(2.0)
                faults.mode = None
                assert ing.wait_for(lambda c: c["written"] >= total, 30), ing.stats()
            finally:
                faults.mode = None
                ing.stop()
    finally:
        brokers.stop(b)
    assert len(store.meters()) == 20 and len(store.sites()) == 4
    s = ing.stats()
    record("case 8: disk full for 2 s while 20 meters' metadata arrive, 20 in flight", ledger, store, total,
           dead_lettered=s["rejected"], retries=s["retries"], meters_registered=len(store.meters()))
    store.close()


def test_case09_disk_full_without_meta_still_registers_every_meter(record, mosquitto, tmp_path):
    """No --meta: the meters are known only from their retained metadata, which arrives while the disk
    is full. ems report needs the registrations: they are written before the data are acknowledged."""
    rs, total = good(days=1)
    disk = tmp_path / "disk"
    disk.mkdir()
    ledger = tmp_path / "ledger.json"
    cfg = BrokerConfig.from_url(mosquitto.url)
    with DiskFaults(disk) as faults:
        store = open_store(disk / "store")
        faults.mode = "full"
        ing = start(cfg, store, deadletter=disk / "dl.jsonl")
        try:
            Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=10)).run()
            time.sleep(1.5)
            faults.mode = None
            assert ing.wait_for(lambda c: c["written"] >= total, 20), ing.stats()
        finally:
            faults.mode = None
            ing.stop()
    s = ing.stats()
    record("case 9: disk full without --meta; then ems report", ledger, store, total, dead_lettered=s["rejected"],
           retries=s["retries"], meters_registered=len(store.meters()))
    store.close()
    from click.testing import CliRunner

    from ems.cli import cli

    res = CliRunner().invoke(cli, ["report", "--store", str(disk / "store"), "--period", "day"])
    assert res.exit_code == 0, res.output[-2000:]


# ---------------------------------------------------------------- case 10


N_GHOSTS = int(os.environ.get("EMS_TEST_GHOSTS", "200"))  # the long run: bench/results/chaos.md, docs


def test_case10_floods_keep_memory_and_dead_letters_bounded_by_bytes(record, tmp_path):
    """Stock mosquitto (no size limit): 200 valid ~1 MB messages for unknown sites and 10 messages of
    10 MiB, beside a good stream, into ``ems ingest``: memory and the dead-letter file stay bounded."""
    b = brokers.mosquitto_broker(tmp_path / "mq", limits="max_queued_messages 100000\nmax_inflight_messages 0\n")
    rs, total = good()
    folder = rs.to_parquet(tmp_path / "readings")
    ledger = tmp_path / "ledger.json"
    ing = IngestProc(b.url, str(tmp_path / "store"), tmp_path / "logs", "case10", "--meta", str(folder))
    cfg = BrokerConfig.from_url(b.url)
    rows = [{"seq": i, "ts": codec.format_ts(1_719_792_900_000_000_000 + i * 900_000_000_000),
             "values": {"power_kw": 1000.123456789 + i, "import_kwh": 5e5 + i / 7}} for i in range(10_000)]
    big_valid = [doc(f"ghost{k}", "grid", rows[: 8_000 + k]) for k in range(7)]
    assert all(900_000 < len(p) <= codec.MAX_PAYLOAD_BYTES for p in big_valid)
    huge = b'{"v":1,"pad":"' + b"A" * (10 << 20) + b'"}'
    try:
        rss0 = ing.rss_kb()
        peak = [rss0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], ing.rss_kb())
                time.sleep(0.05)

        w = threading.Thread(target=watch)
        w.start()
        with Raw(b.port) as raw:
            for k in range(N_GHOSTS):
                raw.c.publish(f"ems/v1/ghost{k % 7}/grid", big_valid[k % 7], qos=1)  # valid, of sites nobody registered
            for _ in range(10):
                raw.c.publish("ems/v1/alpha/grid", huge, qos=1)
            Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=20)).run()
            raw.send("ems/v1/alpha/_status", b"online")
        assert poll(lambda: ing.metrics().get("ems_ingest_rejected_total", 0) >= N_GHOSTS + 10 and ing.written() >= total,
                    60, every=0.3), ing.metrics()
        stop.set()
        w.join()
        m = ing.metrics()
        ing.signal(signal.SIGTERM)
        assert ing.wait(30) == 0
    finally:
        ing.stop()
        brokers.stop(b)
    dl = tmp_path / "logs" / "deadletter.jsonl"
    got = reasons(dl)
    assert got["unknown_site"] == N_GHOSTS and got["oversized"] == 10, got
    assert dl.stat().st_size < (N_GHOSTS + 10) * 24_000, dl.stat().st_size  # 16 KiB of payload as base64, and a few lines
    rec = next(json.loads(line) for line in dl.read_text().splitlines() if '"oversized"' in line)
    assert rec["payload_bytes"] == len(huge) and len(rec["payload_sha256"]) == 64
    growth_mib = (peak[0] - rss0) / 1024
    print(f"RSS {rss0 / 1024:.0f} -> peak {peak[0] / 1024:.0f} MiB")
    assert growth_mib < 160, (rss0, peak[0], m)
    store = open_store(tmp_path / "store", read_only=True)
    record(f"case 10: {N_GHOSTS} valid 1 MB messages for unknown sites + 10 of 10 MiB, stock mosquitto", ledger,
           store, total, dead_lettered=sum(got.values()), rss_before_mib=round(rss0 / 1024, 1),
           peak_rss_mib=round(peak[0] / 1024, 1), deadletter_file_mib=round(dl.stat().st_size / 2**20, 1))
    store.close()


# ---------------------------------------------------------------- case 11

TOKEN = "influx-Token-5c1d9e77"


class _Reflect(BaseHTTPRequestHandler):
    """An InfluxDB look-alike that answers every write with an error quoting the request's headers."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"code": "invalid", "message": f"bad request; your headers were: {dict(self.headers)}"})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Echo-Authorization", self.headers.get("Authorization", ""))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST

    def log_message(self, *a) -> None:
        pass


def test_case11_secrets_never_reach_a_log(figures, mosquitto, tmp_path):  # noqa: F811
    """A server that reflects request headers: the InfluxDB token must not appear in any log line, at
    default verbosity or -vv; a password in a store URL is refused without being echoed."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Reflect)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}?org=o&bucket=b"
    rs, _ = good(days=1, meters=("grid",))
    cfg = BrokerConfig.from_url(mosquitto.url)
    logs = tmp_path / "logs"
    try:
        ing = EmsProc(["ingest", "--broker", mosquitto.url, "--store", url, "--client-id", "case11", "--metrics-port",
                       "0", "--deadletter", str(tmp_path / "dl.jsonl")], logs, "ingest0", {"EMS_INFLUX_TOKEN": TOKEN})
        try:  # default verbosity: influxdb_client logs each failed write at ERROR, with the server's answer
            ing.wait_log("metrics at")
            Publisher(cfg, rs, PublishOptions(batch=48)).run()
            poll(lambda: (logs / "ingest0.err").read_text().count("influxdb_client") >= 2, 20)
        finally:
            ing.stop()
        bad = EmsProc(["ingest", "--broker", mosquitto.url, "--store", "http://me:Pw-7781x@127.0.0.1:1/?org=o&bucket=b"],
                      logs, "userinfo")
        assert bad.wait(30) != 0
    finally:
        srv.shutdown()
        srv.server_close()
    text = "".join(p.read_text(errors="replace") for p in logs.iterdir())
    assert text.count("influxdb_client") >= 2 and "***" in text  # the errors were logged, the token redacted
    figures(fault="case 11: an InfluxDB look-alike echoing request headers (token in its errors); a password "
                  "in a store URL", log_lines=text.count("\n"), token_hits=text.count(TOKEN),
            password_hits=text.count("Pw-7781x"), redacted=text.count("***"))
    assert TOKEN not in text and "Pw-7781x" not in text
    assert "credentials in the URL" in (logs / "userinfo.err").read_text()
    assert shutil.which  # keep the import used
