"""Malformed and hostile messages from a client other than ems, and a flood, beside a good stream.

The ingestor (``ems ingest`` as a subprocess) rejects each bad message with a reason,
keeps its memory bounded (VmRSS before/after) and stores every good reading.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter

import brokers
import paho.mqtt.client as mqtt
import pytest
from builders import make_readingset
from paho.mqtt.enums import CallbackAPIVersion
from reliability_kit import IngestProc, figures, poll, reconciled  # noqa: F401

from ems.store import open_store
from ems.telemetry.connection import BrokerConfig
from ems.telemetry.publisher import Publisher, PublishOptions

pytestmark = pytest.mark.service

mosquitto = brokers.mosquitto

GOOD = {"v": 1, "site": "alpha", "meter": "grid", "interval_s": 900,
        "readings": [{"seq": 1, "ts": "2024-07-01T00:15:00Z", "values": {"power_kw": 1.0}}]}


def hostile_cases() -> list[tuple[str, bytes, str | None]]:
    """(topic, payload, expected reason or None when the broker or client refuses it)."""
    def doc(**over) -> bytes:
        return json.dumps({**GOOD, **over}).encode()

    return [
        ("ems/v1/alpha/grid", b'{"v": 1, "site": "\xc3\x28"}', "invalid_utf8"),
        ("ems/v1/alpha/grid", b"\xff" * 100, "invalid_utf8"),
        ("ems/v1/alpha/grid", b'{"v":1,"pad":"' + b"A" * (2 << 20) + b'"}', "oversized"),
        ("ems/v1/alpha/grid", b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        ("ems/v1/alpha/grid", b'{"a":' * 5000 + b"1" + b"}" * 5000, "too_deep"),
        ("ems/v1/alpha/grid", doc(readings="all of them"), "wrong_type"),
        ("ems/v1/alpha/grid", doc(interval_s=[900]), "wrong_type"),
        ("ems/v1/alpha/grid", doc(v="1"), "wrong_version"),
        ("ems/v1/alpha/grid", b"null", "not_an_object"),
        ("ems/v1/../x", doc(), "bad_topic"),
        ("ems/v1/alpha/../grid", doc(), None),  # 5 levels: matches no subscription, never delivered
        ("ems/v1/\u0430lpha/grid", doc(), "bad_topic"),  # Cyrillic a
        ("ems/v1/alpha/gr\u0456d", doc(), "bad_topic"),  # Ukrainian i
        ("ems/v1/" + "a" * 5000 + "/grid", doc(), "bad_topic"),
        ("ems/v1/alpha/+", doc(), None),  # wildcards: refused by the client/broker, never delivered
        ("ems/v1/#", doc(), None),
    ]


def test_hostile_messages_and_a_flood_beside_a_good_stream(mosquitto, tmp_path, figures):  # noqa: F811
    rs = make_readingset(sites=("alpha",), days=6, meters=("grid", "pv1"))
    total = len(rs.readings.index.unique()) * 2
    folder = rs.to_parquet(tmp_path / "readings")
    ledger = tmp_path / "ledger.json"
    ing = IngestProc(mosquitto.url, str(tmp_path / "store"), tmp_path / "logs", "ing-hostile",
                     "--meta", str(folder), name="ingest")
    rss_before = ing.rss_kb()
    cfg = BrokerConfig.from_url(mosquitto.url)
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="hostile", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(0)
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    refused_by_client = 0
    expected: Counter[str] = Counter()
    good = threading.Thread(target=lambda: Publisher(cfg, rs, PublishOptions(ledger=ledger, batch=4)).run())
    try:
        good.start()
        for topic, payload, reason in hostile_cases():
            try:
                c.publish(topic, payload, qos=1).wait_for_publish(10)
            except ValueError:  # paho refuses wildcards in a topic it publishes to
                refused_by_client += 1
                continue
            if reason:
                expected[reason] += 1
        # a flood from one client: 20,000 junk messages, bounded to 10 s
        flood = 20_000
        t0 = time.monotonic()
        sent = 0
        for i in range(flood):
            if time.monotonic() - t0 > 10:
                break
            info = c.publish("ems/v1/alpha/grid", b'{"v": 1, "site": ' + str(i).encode(), qos=0)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                sent += 1
        flood_s = time.monotonic() - t0
        expected["malformed_json"] += sent
        good.join(60)
        want = sum(expected.values())
        assert poll(lambda: ing.metrics().get("ems_ingest_rejected_total", 0) >= want * 0.99
                    and ing.written() >= total, 60, every=0.3), (ing.metrics(), want)
        m = ing.metrics()
        rss_after = ing.rss_kb()
        ing.signal(signal.SIGTERM)
        assert ing.wait(30) == 0
    finally:
        c.disconnect()
        c.loop_stop()
        ing.stop()
    store = open_store(tmp_path / "store", read_only=True)
    fig = reconciled(ledger, store)
    store.close()
    rejected = {k.split('"')[1]: int(v) for k, v in m.items() if k.startswith("ems_ingest_rejected_by_reason_total")}
    figures(fault=f"hostile messages ({sum(1 for _ in hostile_cases())} kinds) + flood of {sent} junk messages "
                  f"in {flood_s:.1f} s, beside a good stream",
            published=total, dead_lettered=int(m["ems_ingest_rejected_total"]),
            rss_before_mib=round(rss_before / 1024, 1), rss_after_mib=round(rss_after / 1024, 1),
            refused_by_client=refused_by_client, rejected_by_reason=rejected, **fig)
    assert fig["lost"] == 0 and fig["doubled"] == 0 and fig["stored"] == total, fig
    for reason, n in expected.items():
        if reason != "malformed_json":
            assert rejected.get(reason, 0) >= n, (reason, rejected)
    assert refused_by_client == 2
    assert rss_after - rss_before < 300 * 1024, (rss_before, rss_after)  # bounded, not per message
    dl = [json.loads(line) for line in (tmp_path / "logs" / "deadletter.jsonl").read_text().splitlines()]
    assert all(r["reason"] and r["message"].startswith(r["reason"] + ":") for r in dl)
