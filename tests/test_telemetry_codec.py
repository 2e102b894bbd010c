"""Unit tests of the telemetry contract: topics, codec, sequence tracking, ledger, config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from telemetry_cases import BAD_CASES, T, data, reading

from ems.errors import ConfigError, PayloadError, TelemetryError
from ems.readings import MeterInfo, SiteInfo
from ems.telemetry import codec, topics
from ems.telemetry.connection import BrokerConfig, password_from_env
from ems.telemetry.ledger import Ledger
from ems.telemetry.validate import SeqTracker

DATA = Path(__file__).parent / "data" / "telemetry"
NOW = pd.Timestamp("2024-07-02", tz="UTC").value
GRID = MeterInfo("alpha", "grid", "grid", "electricity", ("power_kw", "import_kwh", "export_kwh"), 900)
METERS = {("alpha", "grid"): GRID}


def decode(topic: str, payload: bytes):
    t = topics.parse_topic(topic)
    return codec.decode_data(t.site, t.meter, payload, METERS, now_ns=NOW)


# ---------------------------------------------------------------- topics


def test_topics_build_and_parse():
    assert topics.data_topic("alpha", "grid") == "ems/v1/alpha/grid"
    assert topics.parse_topic("ems/v1/alpha/grid") == topics.Topic("data", "alpha", "grid")
    assert topics.parse_topic("ems/v1/alpha/grid/meta") == topics.Topic("meta", "alpha", "grid")
    assert topics.parse_topic(topics.site_topic("alpha")).kind == "site"
    assert topics.parse_topic(topics.status_topic("alpha")).kind == "status"
    assert topics.parse_topic(topics.events_topic("alpha")).kind == "events"
    assert topics.parse_topic(topics.deadletter_topic("malformed_json")).kind == "deadletter"
    assert topics.shared(topics.DATA_FILTER, "g1") == "$share/g1/ems/v1/+/+"
    assert topics.shared(topics.DATA_FILTER, None) == topics.DATA_FILTER


@pytest.mark.parametrize("bad", ["Alpha", "a/b", "+", "#", "_x", "", "a" * 64, "a b"])
def test_unsafe_identifiers_rejected(bad):
    with pytest.raises(PayloadError, match=r"bad_topic: .*must match"):
        topics.data_topic(bad, "grid")


@pytest.mark.parametrize(
    ("topic", "reason"),
    [("other/v1/a/b", "bad_topic"), ("ems/v2/a/b", "wrong_version"), ("ems/v1/a", "bad_topic"),
     ("ems/v1/a/b/c", "bad_topic"), ("ems/v1/a/_nope", "bad_topic")],
)
def test_parse_topic_errors(topic, reason):
    with pytest.raises(PayloadError) as exc:
        topics.parse_topic(topic)
    assert exc.value.reason == reason


# ---------------------------------------------------------------- codec


def test_example_payloads_decode():
    meta = codec.decode_meta("alpha", "grid", (DATA / "meta_example.json").read_bytes())
    assert meta == GRID
    msg = decode(T, (DATA / "data_example.json").read_bytes())
    assert [r.seq for r in msg.readings] == [17, 18]
    assert msg.readings[0].ts_ns == pd.Timestamp("2024-07-01T04:15Z").value
    assert msg.readings[1].values["import_kwh"] == 1234764.75
    site = codec.decode_site("alpha", (DATA / "site_example.json").read_bytes())
    assert site.tz == "Asia/Shanghai" and site.attrs["contract_kw"] == 5000
    ev = codec.decode_events("alpha", (DATA / "events_example.json").read_bytes(), now_ns=NOW)
    assert ev[0]["kind"] == "fuel_delivery" and ev[0]["detail"] == {"fuel": "diesel"}


@pytest.mark.parametrize(("reason", "topic", "payload"), BAD_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CASES)])
def test_bad_payloads_rejected_with_reason(reason, topic, payload):
    with pytest.raises(PayloadError) as exc:
        decode(topic, payload)
    assert exc.value.reason == reason
    assert str(exc.value).startswith(reason + ":")


def test_unknown_quantity_message_names_the_contract():
    with pytest.raises(PayloadError, match=r"unknown quantity 'power_w'.*QUANTITIES"):
        decode(T, data(readings=[reading(values={"power_w": 1.0})]))


def test_meta_with_wrong_unit_rejected():
    d = json.loads((DATA / "meta_example.json").read_text())
    d["units"]["power_kw"] = "W"
    with pytest.raises(PayloadError, match=r"unknown_quantity: .*expected 'kW', found 'W'"):
        codec.decode_meta("alpha", "grid", json.dumps(d).encode())


def test_meta_roundtrip_and_site_roundtrip():
    assert codec.decode_meta("alpha", "grid", codec.encode_meta(GRID)) == GRID
    s = SiteInfo("alpha", "A", "g", "c", "p", "UTC", 1.0, 2.0, "CN", "CN-East", "cn-2023", {"x": 1})
    assert codec.decode_site("alpha", codec.encode_site(s)) == s


def test_register_backwards_across_messages():
    prev = codec.Reading(1, pd.Timestamp("2024-07-01T00:15Z").value, {"import_kwh": 10.0})
    later = [codec.Reading(2, pd.Timestamp("2024-07-01T00:30Z").value, {"import_kwh": 9.5})]
    with pytest.raises(PayloadError, match=r"register_backwards: .*import_kwh went from 10.0"):
        codec.check_registers(later, "x", previous=prev)
    # an older reading arriving late is not "backwards"
    older = [codec.Reading(0, pd.Timestamp("2024-07-01T00:00Z").value, {"import_kwh": 9.0})]
    codec.check_registers(older, "x", previous=prev)


def test_out_of_order_readings_in_a_message_are_sorted():
    msg = decode(T, data(readings=[reading(seq=2, ts="2024-07-01T00:30:00Z", values={"import_kwh": 11.0}),
                                   reading()]))
    assert [r.seq for r in msg.readings] == [1, 2]


def test_offsets_are_converted_to_utc():
    msg = decode(T, data(readings=[reading(ts="2024-07-01T08:15:00+08:00")]))
    assert msg.readings[0].ts_ns == pd.Timestamp("2024-07-01T00:15Z").value


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-codec.MAX_ABS_VALUE, max_value=codec.MAX_ABS_VALUE)


@given(
    values=st.lists(st.tuples(finite, finite), min_size=1, max_size=20),
    start=st.integers(0, 4_000_000_000) .map(lambda s: s * 1_000_000_000),
)
def test_data_roundtrip_is_bit_exact(values, start):
    meter = MeterInfo("alpha", "load", "load", "electricity", ("power_kw", "soc_pct"), 60)
    rows = [(i + 1, start + i * 60_000_000_000, {"power_kw": a, "soc_pct": b}) for i, (a, b) in enumerate(values)]
    payload = codec.encode_data("alpha", "load", 60, rows)
    msg = codec.decode_data("alpha", "load", payload, {("alpha", "load"): meter}, now_ns=start + 10**18)
    assert [(r.seq, r.ts_ns, r.values) for r in msg.readings] == rows
    for r, (_, _, v) in zip(msg.readings, rows, strict=True):
        assert all(math.copysign(1, r.values[k]) == math.copysign(1, v[k]) for k in v)  # -0.0 kept


@given(st.integers(0, 2**62))
def test_format_parse_ts_roundtrip(ns):
    assert codec.parse_ts(codec.format_ts(ns)) == ns


def test_encode_refuses_non_finite():
    with pytest.raises(ValueError, match="Out of range float"):
        codec.encode_data("alpha", "grid", 900, [(1, 0, {"power_kw": math.nan})])


# ---------------------------------------------------------------- seq tracking


def test_seq_tracker_counts_duplicates_gaps_and_late_fills():
    t = SeqTracker()
    k = ("alpha", "grid")
    assert [t.see(k, s) for s in (5, 6, 6, 9)] == ["new", "new", "duplicate", "gap"]
    assert t.gaps == 1 and t.missing_count() == 2
    assert t.see(k, 7) == "late" and t.missing_count() == 1
    assert t.see(k, 7) == "duplicate"
    assert t.see(k, 1) == "new"  # older than anything seen: backfill


# ---------------------------------------------------------------- ledger


def test_ledger_checkpoint_is_contiguous_and_survives_restart(tmp_path):
    path = tmp_path / "ledger.json"
    led = Ledger(path)
    a = led.sent("alpha", "grid", 100)
    b = led.sent("alpha", "grid", 200)
    led.acked("alpha", "grid", b, 100, 10, 20)
    assert led.last_seq("alpha", "grid") == 0  # message a still unacknowledged
    led.acked("alpha", "grid", a, 100, 0, 9)
    assert led.last_seq("alpha", "grid") == 200
    led.save()
    again = Ledger(path)
    assert again.last_seq("alpha", "grid") == 200
    assert again.total() == 200
    assert again.to_dict()["meters"]["alpha/grid"]["first_ts"] == codec.format_ts(0)


def test_ledger_bad_file(tmp_path):
    p = tmp_path / "l.json"
    p.write_text("[]")
    with pytest.raises(ConfigError, match="expected an ems ledger"):
        Ledger(p)


# ---------------------------------------------------------------- broker config


def test_broker_url_parsing_and_secrets(tmp_path, monkeypatch):
    c = BrokerConfig.from_url("mqtt://127.0.0.1:1884?protocol=3.1.1")
    assert (c.host, c.port, c.protocol, c.tls) == ("127.0.0.1", 1884, "3.1.1", False)
    assert BrokerConfig.from_url("mqtts://broker.example").port == 8883
    assert BrokerConfig.from_url("mqtt://h:1").protocol == "auto"  # negotiated on first use
    secret = BrokerConfig.from_url("mqtt://u@h:1", password="s3cret")
    assert "s3cret" not in repr(secret) and "s3cret" not in secret.describe()
    with pytest.raises(ConfigError, match="do not put a password in the URL"):
        BrokerConfig.from_url("mqtt://u:pw@h:1")
    with pytest.raises(ConfigError, match="expected mqtt://"):
        BrokerConfig.from_url("http://h:1")
    with pytest.raises(ConfigError, match=r"protocol must be 5, 3.1.1 or auto"):
        BrokerConfig.from_url("mqtt://h:1?protocol=4")
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    assert password_from_env({"EMS_MQTT_PASSWORD_FILE": str(f)}) == "from-file"
    assert password_from_env({"EMS_MQTT_PASSWORD": "env", "EMS_MQTT_PASSWORD_FILE": str(f)}) == "env"
    assert password_from_env({}) is None
    with pytest.raises(ConfigError, match="EMS_MQTT_PASSWORD_FILE"):
        password_from_env({"EMS_MQTT_PASSWORD_FILE": str(tmp_path / "missing")})


def test_connect_to_nothing_fails_clearly():
    from ems.telemetry.broker import free_port
    from ems.telemetry.connection import connect_and_wait, make_client

    cfg = BrokerConfig.from_url(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(TelemetryError, match=r"cannot connect to broker mqtt://127.0.0.1"):
        connect_and_wait(make_client(cfg), cfg, timeout=2)
