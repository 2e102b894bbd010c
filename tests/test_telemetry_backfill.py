"""Backfill: the ingestor asks for missing readings again, the publisher answers (ems.telemetry.backfill)."""

from __future__ import annotations

import json
import queue
import threading
import time

import brokers
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from builders import make_readingset
from paho.mqtt.enums import CallbackAPIVersion

from ems.errors import PayloadError
from ems.store import open_store
from ems.telemetry import backfill, codec, topics
from ems.telemetry.backfill import BackfillPolicy, BackfillRequest, GapPlanner
from ems.telemetry.connection import BrokerConfig
from ems.telemetry.ingestor import IngestOptions, Ingestor
from ems.telemetry.ledger import Ledger
from ems.telemetry.publisher import Publisher, PublishOptions, meter_series

mosquitto = brokers.mosquitto  # fixture

K = ("alpha", "grid")


# ---------------------------------------------------------------- codecs and topics


def test_request_and_hwm_round_trip():
    req = BackfillRequest("alpha", "grid", 5, 9)
    assert backfill.decode_request("alpha", backfill.encode_request(req)) == req
    assert req.count == 5
    t = codec.parse_ts("2026-01-05T10:00:00Z")
    raw = backfill.encode_hwm("alpha", {"pv1": 3, "grid": 672}, t)
    assert json.loads(raw) == {"v": 1, "site": "alpha", "sent": "2026-01-05T10:00:00Z",
                               "last_seq": {"grid": 672, "pv1": 3}}
    assert backfill.decode_hwm("alpha", raw) == backfill.HighWaterMark("alpha", {"grid": 672, "pv1": 3}, t)
    assert backfill.decode_hwm("alpha", b'{"v":1,"site":"alpha","last_seq":{}}').sent_ns == 0  # sent: optional
    assert topics.parse_topic(topics.hwm_topic("alpha")) == topics.Topic("hwm", "alpha")
    assert topics.parse_topic(topics.backfill_topic("alpha")) == topics.Topic("backfill", "alpha")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"v":1,"site":"alpha","meter":"grid","from_seq":9,"to_seq":5}', "bad_range"),
        (b'{"v":1,"site":"alpha","meter":"grid","from_seq":-1,"to_seq":5}', "bad_range"),
        (b'{"v":1,"site":"beta","meter":"grid","from_seq":1,"to_seq":5}', "bad_topic"),
        (b'{"v":1,"site":"alpha","meter":"../x","from_seq":1,"to_seq":5}', "bad_topic"),
        (b'{"v":1,"site":"alpha","meter":"grid","from_seq":"1","to_seq":5}', "wrong_type"),
        (b'{"v":2,"site":"alpha","meter":"grid","from_seq":1,"to_seq":5}', "wrong_version"),
        (b'{"v":1,"site":"alpha","meter":"grid","from_seq":1}', "missing_field"),
        (b"not json", "malformed_json"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(payload, reason):
    with pytest.raises(PayloadError, match=rf"^{reason}: .*(expected|says|must match)"):
        backfill.decode_request("alpha", payload)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"v":1,"site":"alpha","last_seq":{"grid":-3}}', "wrong_type"),
        (b'{"v":1,"site":"alpha","last_seq":{"grid":true}}', "wrong_type"),
        (b'{"v":1,"site":"alpha","last_seq":{"Grid":3}}', "bad_topic"),
        (b'{"v":1,"site":"alpha","last_seq":[3]}', "wrong_type"),
        (b'{"v":1,"site":"beta","last_seq":{}}', "bad_topic"),
        (b'{"v":1,"site":"alpha","sent":"yesterday","last_seq":{}}', "bad_timestamp"),
    ],
)
def test_bad_hwm_is_refused_with_a_reason(payload, reason):
    with pytest.raises(PayloadError, match=rf"^{reason}: "):
        backfill.decode_hwm("alpha", payload)


def test_ranges_and_answer_slices():
    assert backfill.ranges([]) == []
    assert backfill.ranges([5, 3, 4, 9, 10, 12]) == [(3, 5), (9, 10), (12, 12)]
    assert backfill.ranges(range(1, 8), max_len=3) == [(1, 3), (4, 6), (7, 7)]
    seq = np.arange(1, 21)
    assert backfill.answer_slices(seq, 11, 15, 2) == [(10, 12), (12, 14), (14, 15)]
    assert backfill.answer_slices(seq, 18, 99, 100) == [(17, 20)]
    assert backfill.answer_slices(seq, 30, 40, 10) == []


# ---------------------------------------------------------------- the ingestor's planning


def test_a_gap_is_requested_after_the_grace_time_then_retried_then_given_up():
    p = GapPlanner(BackfillPolicy(grace_s=2.0, retry_s=5.0, max_tries=2))
    missing = {K: {11, 12, 13}}
    hi = {K: 20}
    assert p.plan(0.0, missing, hi, {}, {K: 0.0}) == []  # first seen
    assert p.plan(1.9, missing, hi, {}, {K: 1.9}) == []  # within the grace time: may still come
    assert p.plan(2.0, missing, hi, {}, {K: 2.0}) == [BackfillRequest("alpha", "grid", 11, 13)]
    assert p.plan(4.0, missing, hi, {}, {K: 4.0}) == []  # asked: wait for the answer
    assert p.plan(7.0, missing, hi, {}, {K: 7.0}) == [BackfillRequest("alpha", "grid", 11, 13)]
    assert p.plan(20.0, missing, hi, {}, {K: 20.0}) == []  # max_tries without progress
    assert p.gave_up == 1
    missing[K].discard(11)  # progress: tries start again
    assert p.plan(21.0, missing, hi, {}, {}) == [BackfillRequest("alpha", "grid", 12, 13)]
    missing[K].clear()
    assert p.plan(40.0, missing, hi, {}, {}) == [] and K not in p.state


def test_a_tail_behind_the_hwm_is_requested_only_once_the_meter_is_quiet():
    p = GapPlanner(BackfillPolicy(grace_s=1.0, retry_s=3.0))
    hi, hwm = {K: 15}, {K: 20}
    assert p.plan(0.0, {}, hi, hwm, {K: 0.0}) == []  # data still flowing: the tail may be on its way
    assert p.plan(0.5, {}, hi, hwm, {K: 0.5}) == []
    assert p.plan(1.5, {}, hi, hwm, {K: 0.5}) == []  # quiet now: first seen
    assert p.plan(2.5, {}, hi, hwm, {K: 0.5}) == [BackfillRequest("alpha", "grid", 16, 20)]
    assert p.plan(10.0, {}, {K: 20}, hwm, {K: 0.5}) == [] and not p.state  # filled
    assert p.plan(20.0, {}, {}, {K: 20}, {}) == []  # a meter never seen: nothing to compare with


def test_requests_are_split_and_bounded():
    p = GapPlanner(BackfillPolicy(grace_s=0.0, retry_s=1.0, max_range=10, max_requests=3))
    missing = {K: set(range(1, 100))}
    p.plan(0.0, missing, {K: 200}, {}, {})
    got = p.plan(0.0, missing, {K: 200}, {}, {})
    assert got == [BackfillRequest("alpha", "grid", a, a + 9) for a in (1, 11, 21)]


# ---------------------------------------------------------------- the publisher's answer


class FakeGateway:
    def __init__(self, site: str) -> None:
        self.site = site
        self.requests: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.sent: list[tuple[str, dict, int]] = []

    def publish(self, topic: str, payload: bytes, *, backfill: int = 0, **kw) -> None:
        self.sent.append((topic, json.loads(payload), backfill))


def test_the_publisher_answers_with_the_same_readings_up_to_what_was_acknowledged():
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid",))
    pub = Publisher(BrokerConfig(), rs, PublishOptions(batch=4))
    tok = pub.ledger.sent("alpha", "grid", 30)
    pub.ledger.acked("alpha", "grid", tok, 30, 0, 1)  # the broker acknowledged seq 1..30
    gw = FakeGateway("alpha")
    for req in [BackfillRequest("alpha", "grid", 11, 15), BackfillRequest("alpha", "grid", 29, 90)]:
        gw.requests.put(backfill.encode_request(req))
    gw.requests.put(b'{"v":1,"site":"alpha","meter":"nope","from_seq":1,"to_seq":2}')  # unknown: ignored
    gw.requests.put(b"garbage")  # ignored
    assert pub._answer(gw) == 4  # type: ignore[arg-type]
    assert pub.backfill_requests == 4
    seqs = [r["seq"] for _, msg, _ in gw.sent for r in msg["readings"]]
    assert seqs == [11, 12, 13, 14, 15, 29, 30]  # 31.. are not acknowledged yet: the stream sends them
    assert [n for *_, n in gw.sent] == [4, 1, 2] and {t for t, *_ in gw.sent} == {topics.data_topic(*K)}
    s = meter_series(rs)[0]
    first = gw.sent[0][1]["readings"][0]
    assert first["ts"] == codec.format_ts(int(s.ts[10]))
    assert first["values"] == {q: float(v) for q, v in zip(s.quantities, s.values[10], strict=True)}


# ---------------------------------------------------------------- end to end through mosquitto


def test_readings_skipped_at_the_broker_are_backfilled_by_the_publisher(mosquitto, tmp_path):
    """A raw client publishes a meter's seq 1..10 and 16..17 (11..15 and the tail 18..20 never reach the
    broker); the ems publisher, restarted with a ledger saying 1..20 were acknowledged, answers the requests."""
    rs = make_readingset(sites=("alpha",), days=20 * 900 / 86400, meters=("grid",))
    s = meter_series(rs)[0]
    assert len(s.seq) == 20
    cfg = BrokerConfig.from_url(mosquitto.url)
    ledger = tmp_path / "ledger.json"
    ledger.write_text(json.dumps({"v": 1, "meters": {"alpha/grid": {
        "readings": 20, "messages": 4, "last_seq": 20, "first_ts": codec.format_ts(int(s.ts[0])),
        "last_ts": codec.format_ts(int(s.ts[-1]))}}}))
    store = open_store(tmp_path / "store")
    ing = Ingestor(cfg, store, IngestOptions(client_id="bf-e2e", batch_s=0.1, meters=list(rs.meters),
                                             sites=list(rs.sites),
                                             backfill=BackfillPolicy(grace_s=0.5, retry_s=1.0))).start()
    raw = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bf-raw")
    raw.connect("127.0.0.1", mosquitto.port)
    raw.loop_start()
    try:
        for i, j in [(0, 5), (5, 10), (15, 17)]:
            raw.publish(topics.data_topic(*K), s.payload(i, j), qos=1).wait_for_publish(5)
        assert ing.wait_for(lambda c: c["readings_received"] >= 12, 10), ing.stats()
        stats: dict[str, object] = {}
        t = threading.Thread(target=lambda: stats.update(
            r=Publisher(cfg, rs, PublishOptions(ledger=ledger, linger_s=3.0)).run()))
        t.start()
        t.join(30)
        assert ing.wait_for(lambda c: c["written"] >= 20, 10), ing.stats()
        time.sleep(0.3)
        st = ing.stats()
    finally:
        raw.loop_stop()
        raw.disconnect()
        ing.stop()
    run = stats["r"]
    assert run.skipped == 20 and run.readings == 0  # nothing new to stream
    assert run.backfilled >= 8 and run.backfill_requests >= 2
    assert st["late"] == 5 and st["missing_seq"] == 0 and st["backfill_requests"] >= 2 and st["rejected"] == 0
    back = store.read().readings
    assert len(np.unique(back.index.asi8)) == 20 and not back.duplicated().any()
    got = np.sort(back[back["quantity"] == s.quantities[0]]["value"].to_numpy())
    assert np.array_equal(got, np.sort(s.values[:, 0]))
    assert Ledger(ledger).last_seq(*K) == 20
    store.close()


def test_the_ingestor_keeps_the_newest_hwm_and_ignores_its_own_requests(tmp_path):
    from ems.telemetry.session import Message

    ing = Ingestor(BrokerConfig(), open_store(tmp_path / "store"), IngestOptions(client_id="bf-unit"))
    new = backfill.encode_hwm("alpha", {"grid": 20}, 2_000_000_000)
    old = backfill.encode_hwm("alpha", {"grid": 12}, 1_000_000_000)  # a stale retained copy, delivered late
    req = backfill.encode_request(BackfillRequest("alpha", "grid", 1, 2))
    for topic, payload in [(topics.hwm_topic("alpha"), new), (topics.hwm_topic("alpha"), old),
                           (topics.backfill_topic("alpha"), req)]:
        ing._take(Message(topic, payload, len(payload), "", 0, 0, False, time.time()))
    assert ing.hwm == {K: 20} and ing.counters["hwm"] == 2
    job = ing.batch.take()  # all three acknowledged with the job, none dead-lettered
    assert len(job.acks) == 3 and not job.dead
    ing.store.close()


def test_stream_has_a_bounded_linger_option():
    from click.testing import CliRunner

    from ems.telemetry.commands import stream

    out = CliRunner().invoke(stream, ["--help"])
    assert out.exit_code == 0 and "--linger" in out.output
    bad = CliRunner().invoke(stream, ["x", "--linger", "-1"])
    assert bad.exit_code == 2 and "--linger" in bad.output
