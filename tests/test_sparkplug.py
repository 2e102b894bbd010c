"""Sparkplug B: the schema, the codec, a payload from an independent encoder, the round trip through mosquitto."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import brokers
import numpy as np
import pandas as pd
import pytest
from builders import make_readingset

from ems.errors import PayloadError
from ems.readings import MeterInfo
from ems.telemetry import sparkplug as sp

pytest.importorskip("google.protobuf")
DATA = Path(__file__).resolve().parents[1] / "ems" / "data" / "sparkplug"
mosquitto = brokers.mosquitto  # fixture
GRID = MeterInfo("alpha", "grid", "grid", "electricity", ("power_kw", "import_kwh", "export_kwh"), 900, {"a": 1})
T0 = 1_719_792_900_000_000_000  # 2024-07-01T00:15:00Z [ns]


def _protoc(tmp: Path) -> bytes:
    """Compile Tahu's sparkplug_b.proto with protoc (grpcio-tools) into a FileDescriptorSet."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp / "sp.desc"
    assert protoc.main(["protoc", f"-I{DATA}", f"--descriptor_set_out={out}", "sparkplug_b.proto"]) == 0
    return out.read_bytes()


def _independent_payload_class(tmp: Path):
    """Payload class built in this test from the .proto, in its own descriptor pool (not ems's)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    for f in descriptor_pb2.FileDescriptorSet.FromString(_protoc(tmp)).file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload"))


def test_committed_descriptor_matches_the_proto(tmp_path):
    from google.protobuf import descriptor_pb2

    fresh = descriptor_pb2.FileDescriptorSet.FromString(_protoc(tmp_path))
    committed = descriptor_pb2.FileDescriptorSet.FromString((DATA / "sparkplug_b.desc").read_bytes())
    assert fresh == committed, "regenerate: see ems/data/sparkplug/README.md"


def test_birth_and_data_round_trip_through_the_codec():
    host = sp.HostSession({})
    t = sp.topic("ems", "NBIRTH", "alpha")
    out = host.handle(t, sp.nbirth(7, 1000), now_ns=T0)
    assert out.status == {"alpha": "online"} and out.rebirth is None
    out = host.handle(sp.topic("ems", "DBIRTH", "alpha", "grid"), sp.dbirth(GRID, 1, 1000), now_ns=T0)
    (info,) = out.meters
    assert info == GRID
    host.meters = {("alpha", "grid"): info}
    rows = [(T0, {"power_kw": 812.5, "import_kwh": 1234567.25}), (T0 + 900 * 10**9, {"power_kw": 790.0, "import_kwh": 1234764.75})]
    out = host.handle(sp.topic("ems", "DDATA", "alpha", "grid"), sp.ddata(rows, 2, 1000), now_ns=T0 + 10**13)
    assert [(r.ts_ns, r.values) for r in out.data.readings] == rows
    assert [r.seq for r in out.data.readings] == [T0 // (900 * 10**9), T0 // (900 * 10**9) + 1]
    assert host.seq_gaps == 0


def test_seq_gap_asks_for_a_rebirth_and_ndeath_marks_offline():
    host = sp.HostSession({("alpha", "grid"): GRID})
    host.handle(sp.topic("ems", "NBIRTH", "alpha"), sp.nbirth(3, 1000), now_ns=T0)
    data = sp.ddata([(T0, {"power_kw": 1.0})], 5, 1000)  # seq 5 where 1 was due
    out = host.handle(sp.topic("ems", "DDATA", "alpha", "grid"), data, now_ns=T0 + 10**13)
    assert host.seq_gaps == 1 and out.rebirth is not None
    ncmd, payload = out.rebirth
    assert ncmd == "spBv1.0/ems/NCMD/alpha" and sp.is_rebirth_request(payload)
    assert out.data is not None  # the data itself is good: kept
    stale = host.handle(sp.topic("ems", "NDEATH", "alpha"), sp.ndeath(2, 1000), now_ns=T0)
    assert stale.status == {}  # an older session's will
    dead = host.handle(sp.topic("ems", "NDEATH", "alpha"), sp.ndeath(3, 1000), now_ns=T0)
    assert dead.status == {"alpha": "offline"}


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("spBv1.0/ems/DDATA/Alpha/grid", b"", "bad_topic"),
        ("spBv1.0/ems/XDATA/alpha", b"", "bad_topic"),
        ("spBv1.0/ems/DDATA/alpha/grid", b"\xff\xff\xff", "malformed_protobuf"),
        ("spBv1.0/ems/DDATA/alpha/grid", None, "unknown_quantity"),
        ("spBv1.0/ems/DDATA/alpha/grid", "nan", "non_finite"),
        ("spBv1.0/ems/DDATA/alpha/grid", "back", "register_backwards"),
        ("spBv1.0/ems/DDATA/alpha/pv", "ok", "unknown_meter"),
    ],
)
def test_bad_messages_name_their_reason(topic, payload, reason):
    host = sp.HostSession({("alpha", "grid"): GRID})
    if payload is None:
        payload = sp.ddata([(T0, {"power_w": 1.0})], 1, 0)
    elif payload == "nan":
        payload = sp.ddata([(T0, {"power_kw": 1.0})], 1, 0).replace(b"\x00\x00\x00\x00\x00\x00\xf0?", b"\x00\x00\x00\x00\x00\x00\xf8\x7f")
    elif payload == "back":
        payload = sp.ddata([(T0, {"import_kwh": 10.0}), (T0 + 9 * 10**11, {"import_kwh": 9.0})], 1, 0)
    elif payload == "ok":
        payload = sp.ddata([(T0, {"power_kw": 1.0})], 1, 0)
    with pytest.raises(PayloadError, match=reason):
        host.handle(topic, payload, now_ns=T0 + 10**13)


@pytest.mark.service
def test_payloads_from_an_independent_encoder_are_ingested(mosquitto, tmp_path):
    """An edge node built here from Tahu's schema (aliases, Int/Float types, no ems code) through mosquitto."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from ems.store import open_store
    from ems.telemetry.connection import BrokerConfig
    from ems.telemetry.ingestor import IngestOptions, Ingestor

    P = _independent_payload_class(tmp_path)
    now_ms = int(time.time() * 1000) // 900_000 * 900_000

    def payload(seq, metrics, ts=now_ms):
        p = P(timestamp=ts, seq=seq)
        for m in metrics:
            p.metrics.add(**m)
        return p.SerializeToString()

    nbirth = payload(0, [{"name": "bdSeq", "datatype": 8, "long_value": 0},
                         {"name": "Node Control/Rebirth", "datatype": 11, "boolean_value": False}])
    dbirth = payload(1, [{"name": "power_kw", "alias": 1, "datatype": 9, "float_value": 0.0},
                         {"name": "import_kwh", "alias": 2, "datatype": 10, "double_value": 0.0},
                         {"name": "Voltage L1", "alias": 3, "datatype": 9, "float_value": 230.0},
                         {"name": "Properties/kind", "datatype": 12, "string_value": "grid"},
                         {"name": "Properties/carrier", "datatype": 12, "string_value": "electricity"},
                         {"name": "Properties/interval_s", "datatype": 7, "int_value": 900}])
    ddata = [payload(2 + k, [{"alias": 1, "datatype": 9, "float_value": 100.5 + k, "timestamp": now_ms - (3 - k) * 900_000},
                             {"alias": 2, "datatype": 10, "double_value": 5000.25 + 10 * k, "timestamp": now_ms - (3 - k) * 900_000}])
             for k in range(3)]
    store = open_store(tmp_path / "store")
    ing = Ingestor(BrokerConfig.from_url(mosquitto.url), store,
                   IngestOptions(client_id="ing-sp", batch_s=0.2, encoding="sparkplug", sparkplug_group="plant1",
                                 deadletter=tmp_path / "dl.jsonl")).start()
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="tahu-edge")
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    try:
        for t, p in [("spBv1.0/plant1/NBIRTH/beta", nbirth), ("spBv1.0/plant1/DBIRTH/beta/main", dbirth),
                     *[("spBv1.0/plant1/DDATA/beta/main", d) for d in ddata]]:
            c.publish(t, p, qos=1).wait_for_publish(5)
        assert ing.wait_for(lambda k: k["written"] >= 3, 20), ing.stats()
        c.publish("spBv1.0/plant1/NDEATH/beta", payload(0, [{"name": "bdSeq", "datatype": 8, "long_value": 0}]), qos=1)
        deadline = time.monotonic() + 10
        while ing.status.get("beta") != "offline" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        c.loop_stop()
        c.disconnect()
        ing.stop()
    assert ing.status["beta"] == "offline" and ing.stats()["rejected"] == 0
    back = store.read()
    store.close()
    (info,) = back.meters
    assert (info.meter, info.kind, info.quantities, info.interval_s) == ("main", "grid", ("power_kw", "import_kwh"), 900)
    imp = back.readings[back.readings["quantity"] == "import_kwh"]["value"].tolist()
    assert imp == [5000.25, 5010.25, 5020.25]
    assert back.readings[back.readings["quantity"] == "power_kw"]["value"].tolist() == [100.5, 101.5, 102.5]


@pytest.mark.service
def test_sparkplug_round_trip_equals_the_json_contract(mosquitto, tmp_path):
    """The same readings streamed as JSON and as Sparkplug B end in identical stores."""
    sys.path.insert(0, str(Path(__file__).parent))
    from ems.store import open_store
    from ems.telemetry.connection import BrokerConfig
    from ems.telemetry.ingestor import IngestOptions, Ingestor
    from ems.telemetry.ledger import Ledger, reconcile
    from ems.telemetry.publisher import Publisher, PublishOptions

    rs = make_readingset(sites=("alpha", "beta"), days=2)
    cfg = BrokerConfig.from_url(mosquitto.url)
    results = {}
    for enc in ("json", "sparkplug"):
        store = open_store(tmp_path / enc)
        ing = Ingestor(cfg, store, IngestOptions(client_id=f"ing-{enc}", batch_s=0.2, encoding=enc)).start()
        try:
            stats = Publisher(cfg, rs, PublishOptions(ledger=tmp_path / f"{enc}.json", batch=50, encoding=enc,
                                                      client_id_prefix=f"pub-{enc}")).run()
            assert ing.wait_for(lambda c, n=stats.readings: c["written"] >= n and c["events_written"] >= 2, 60), ing.stats()
        finally:
            ing.stop()
        assert ing.stats()["rejected"] == 0 and ing.stats()["duplicates"] == 0
        assert all(r.ok for r in reconcile(Ledger(tmp_path / f"{enc}.json"), store))
        results[enc] = store.read()
        store.close()
    a, b = results["json"], results["sparkplug"]

    def tidy(df):
        out = df.reset_index()
        for c in ("site", "meter", "quantity"):
            out[c] = out[c].astype(str)
        return out.sort_values(["site", "meter", "quantity", "ts"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(tidy(a.readings), tidy(b.readings))
    assert np.array_equal(tidy(a.readings)["value"].to_numpy(), tidy(rs.readings)["value"].to_numpy())
    assert sorted(a.meters, key=lambda m: m.meter + m.site) == sorted(b.meters, key=lambda m: m.meter + m.site)
    assert sorted(s.site for s in b.sites) == ["alpha", "beta"] and len(b.events) == len(a.events) == 2


# ---------------------------------------------------------------- hostile births: the JSON contract's bounds


def _with_eng_unit(payload: bytes, metric: str, unit: str) -> bytes:
    p = sp.payload_class().FromString(payload)
    for m in p.metrics:
        if m.name == metric:
            m.properties.values[0].string_value = unit
    return p.SerializeToString()


def _deep(n: int) -> dict:
    d: dict = {"x": 1}
    for _ in range(n):
        d = {"a": d}
    return d


def _hostile_births() -> list[tuple[str, str, bytes]]:
    """(reason, topic, payload) of births that the JSON contract's checks refuse."""
    from dataclasses import replace

    from builders import site_info

    good = site_info("hostile")
    g = GRID
    return [
        ("out_of_range", sp.topic("ems", "NBIRTH", "hostile"), sp.nbirth(1, 1000, replace(good, lat=1000.0))),
        ("wrong_type", sp.topic("ems", "NBIRTH", "hostile"), sp.nbirth(1, 1000, replace(good, tz="Mars/Olympus_Mons"))),
        ("bad_topic", sp.topic("ems", "NBIRTH", "hostile"), sp.nbirth(1, 1000, replace(good, site="other"))),
        ("out_of_range", sp.topic("ems", "DBIRTH", "hostile", "grid"),
         sp.dbirth(replace(g, site="hostile", interval_s=10**9), 1, 1000)),
        ("unknown_quantity", sp.topic("ems", "DBIRTH", "hostile", "grid"),
         _with_eng_unit(sp.dbirth(replace(g, site="hostile"), 2, 1000), "power_kw", "W")),
        ("too_deep", sp.topic("ems", "DBIRTH", "hostile", "grid"),
         sp.dbirth(replace(g, site="hostile", attrs={"tariff": _deep(40)}), 3, 1000)),
        ("wrong_type", sp.topic("ems", "DBIRTH", "hostile", "grid"), sp.dbirth(replace(g, site="hostile", kind="reactor"), 4, 1000)),
    ]


@pytest.mark.parametrize("case", range(7))
def test_hostile_births_are_refused_by_the_contracts_own_checks(case):
    reason, topic, payload = _hostile_births()[case]
    host = sp.HostSession({})
    with pytest.raises(PayloadError, match=reason):
        host.handle(topic, payload, now_ns=T0)


@pytest.mark.service
def test_hostile_births_through_mosquitto_are_dead_lettered_and_ingestion_goes_on(mosquitto, tmp_path):
    import json

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from ems.store import open_store
    from ems.telemetry.connection import BrokerConfig
    from ems.telemetry.ingestor import IngestOptions, Ingestor

    store = open_store(tmp_path / "store")
    ing = Ingestor(BrokerConfig.from_url(mosquitto.url), store,
                   IngestOptions(client_id="ing-hostile", batch_s=0.2, encoding="sparkplug",
                                 deadletter=tmp_path / "dl.jsonl")).start()
    now_ms = int(time.time() * 1000) // 900_000 * 900_000
    good = [(sp.topic("ems", "NBIRTH", "alpha"), sp.nbirth(5, now_ms)),
            (sp.topic("ems", "DBIRTH", "alpha", "grid"), sp.dbirth(GRID, 1, now_ms))]
    good += [(sp.topic("ems", "DDATA", "alpha", "grid"),
              sp.ddata([(now_ms * 10**6 - (3 - k) * 900 * 10**9, {"power_kw": 10.0 + k, "import_kwh": 100.0 + k})],
                       2 + k, now_ms)) for k in range(3)]
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="hostile-edge")
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    try:
        hostile = _hostile_births()
        for topic, payload in [(t, p) for _, t, p in hostile[:3]] + good[:2] + [(t, p) for _, t, p in hostile[3:]] + good[2:]:
            c.publish(topic, payload, qos=1).wait_for_publish(5)
        assert ing.wait_for(lambda k: k["written"] >= 3 and k["rejected"] >= len(hostile), 20), ing.stats()
    finally:
        c.loop_stop()
        c.disconnect()
        ing.stop()
    letters = [json.loads(x) for x in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert sorted((x["reason"], x["topic"]) for x in letters) == sorted((r, t) for r, t, _ in hostile)
    assert all(x["reason"] in x["message"] for x in letters)
    back = store.read()
    store.close()
    assert [m.site for m in back.meters] == ["alpha"] and len(back.readings) == 6  # the good node, whole


# ---------------------------------------------------------------- primary host STATE


@pytest.mark.service
def test_primary_host_state_edge_waits_dies_and_rebirths(mosquitto, tmp_path):
    """ems ingest publishes its STATE (Sparkplug 3.0, 4.2.2/4.2.3/5.3); ems stream waits for it (5.4).

    The edge node publishes no birth before the host's STATE says online; the host's SIGKILL
    makes its will (offline, the birth's timestamp) arrive, the edge publishes NDEATH and
    waits; the restarted host's STATE brings a new session (next bdSeq) and the readings that
    waited. Nothing lost, nothing doubled; a clean stop publishes offline with a later timestamp.
    """
    import json
    import signal
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.subscribeoptions import SubscribeOptions
    from reliability_kit import IngestProc, poll

    from ems.telemetry.connection import BrokerConfig
    from ems.telemetry.publisher import Publisher, PublishOptions

    seen: list[tuple[str, bool, int, bytes]] = []
    obs = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="observer", protocol=mqtt.MQTTv5)
    obs.on_message = lambda c, u, m: seen.append((m.topic, bool(m.retain), m.qos, bytes(m.payload)))
    obs.connect("127.0.0.1", mosquitto.port)
    obs.subscribe("spBv1.0/#", options=SubscribeOptions(qos=1, retainAsPublished=True))
    obs.loop_start()

    def kinds() -> list[str]:
        return [t.split("/")[2] if t.split("/")[1] != "STATE" else "STATE" for t, *_ in list(seen)]

    def states() -> list[tuple[bool, int, bool, int]]:
        return [(json.loads(p)["online"], json.loads(p)["timestamp"], r, q) for t, r, q, p in list(seen)
                if t == "spBv1.0/STATE/ems-host"]

    rs = make_readingset(sites=("alpha",), days=2, meters=("grid", "gas"))
    cfg = BrokerConfig.from_url(mosquitto.url)
    ledger, store_dir, logs = tmp_path / "ledger.json", str(tmp_path / "store"), tmp_path / "logs"
    pub = Publisher(cfg, rs, PublishOptions(ledger=ledger, speed=900 * 30, encoding="sparkplug", client_id_prefix="sp",
                                            sparkplug_primary_host="ems-host"))
    th = threading.Thread(target=pub.run)
    args = ("--encoding", "sparkplug", "--sparkplug-host-id", "ems-host")
    ing = ing2 = None
    try:
        th.start()
        time.sleep(1.0)
        assert "NBIRTH" not in kinds() and pub.published() == 0  # the edge waits for its primary host
        ing = IngestProc(mosquitto.url, store_dir, logs, "ing-host", *args, name="ing1")
        assert poll(lambda: "NBIRTH" in kinds(), 15), kinds()
        k = kinds()
        assert k.index("STATE") < k.index("NBIRTH") and states()[0][0] is True  # online first, then the births
        assert poll(lambda: ing.written() > 40, 20)
        ing.signal(signal.SIGKILL)  # the broker publishes the host's will
        ing.wait(10)
        assert poll(lambda: "NDEATH" in kinds(), 10), kinds()
        online, will = states()[0], states()[-1]
        assert will[0] is False and will[1] == online[1] and will[2:] == (True, 1) == online[2:]  # retained, QoS 1
        time.sleep(0.5)
        k = kinds()
        assert "DDATA" not in k[k.index("NDEATH"):]  # nothing published while the host is away
        ing2 = IngestProc(mosquitto.url, store_dir, logs, "ing-host", *args, name="ing2")
        th.join(60)
        assert not th.is_alive()
        births = list(dict.fromkeys(sp.decode(t, p).get("bdSeq") for t, _, _, p in seen if "/NBIRTH/" in t))
        assert len(births) == 2 and births[1] == (births[0] + 1) % 256, births  # (a rebirth request repeats one)
        assert poll(lambda: _reconciled(ledger, store_dir)["lost"] == 0, 30), _reconciled(ledger, store_dir)
        ing2.stop()
        ing2 = None
        assert poll(lambda: states()[-1][0] is False and states()[-1][1] > online[1], 10), states()  # clean death
    finally:
        th.join(5)
        for p in (ing, ing2):
            if p is not None:
                p.stop()
        obs.loop_stop()
        obs.disconnect()
    fig = _reconciled(ledger, store_dir)
    assert fig["lost"] == 0 and fig["doubled"] == 0 and fig["acknowledged"] == 2 * 192, fig


def _reconciled(ledger: Path, store_dir: str) -> dict[str, int]:
    from reliability_kit import reconciled

    from ems.store import open_store

    store = open_store(store_dir, read_only=True)
    try:
        return reconciled(ledger, store)
    finally:
        store.close()


class _RecordingClient:
    """Stands in for paho in a unit test of the session's own logic (the integration test uses mosquitto)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def subscribe(self, subs, *a, **kw):
        self.calls.append(("subscribe", subs))
        return 0, 7

    def publish(self, topic, payload, qos=0, retain=False):
        self.calls.append(("publish", topic, payload, qos, retain))
        return type("Info", (), {"mid": 99})()

    def will_set(self, topic, payload, qos=0, retain=False):
        self.calls.append(("will", topic, payload, qos, retain))


def test_host_subscribes_then_publishes_its_birth_with_the_wills_timestamp():
    from collections import Counter

    from ems.telemetry.connection import BrokerConfig
    from ems.telemetry.session import Inbox, MqttSession

    state = sp.HostState("ems-host", 1000)
    assert state.will() == ("spBv1.0/STATE/ems-host", b'{"online":false,"timestamp":1000}')
    s = MqttSession(BrokerConfig(), "ing", subscriptions=lambda: [("spBv1.0/ems/#", 1)], inbox=Inbox(1 << 20, 10),
                    session_expiry_s=0, receive_maximum=10, max_payload_bytes=1 << 20, keep_bytes=64,
                    counters=Counter(), state=state)
    fake = _RecordingClient()
    s._on_connect(fake, None, None, 0, None)
    assert fake.calls == [("subscribe", [("spBv1.0/ems/#", 1), ("spBv1.0/STATE/ems-host", 1)])]  # no birth yet
    s._on_subscribe(fake, None, 7, [], None)  # the SUBACK of that subscription
    assert fake.calls[-1] == ("publish", "spBv1.0/STATE/ems-host", b'{"online":true,"timestamp":1000}', 1, True)
    msg = type("M", (), {"topic": "spBv1.0/STATE/ems-host", "payload": state.will()[1], "mid": 1, "qos": 1,
                         "retain": True})()
    s._on_message(fake, None, msg)  # our will (an old one, or a stale retained copy): online again
    assert fake.calls[-1][:2] == ("publish", "spBv1.0/STATE/ems-host") and b'"online":true' in fake.calls[-1][2]
    s._on_disconnect(fake, None, None, 1, None)  # the next CONNECT's will, and birth, carry a later time
    assert fake.calls[-1][0] == "will" and json_ts(fake.calls[-1][2]) >= 1000 and state.birth() != b""
    assert json_ts(state.birth()) == json_ts(fake.calls[-1][2])


def json_ts(payload: bytes) -> int:
    import json

    return int(json.loads(payload)["timestamp"])


def test_an_edge_node_counts_only_its_hosts_newer_state():
    w = sp.HostWatch("ems-host")
    t = "spBv1.0/STATE/ems-host"
    assert w.see("spBv1.0/STATE/other", sp.state_payload(True, 5)) is None  # another host
    assert w.see(t, sp.state_payload(True, 5)) is True
    assert w.see(t, sp.state_payload(False, 4)) is None  # older: delivered late
    assert w.see(t, sp.state_payload(True, 5)) is None  # the same again (a retained copy)
    assert w.see(t, sp.state_payload(False, 5)) is False  # its will: same timestamp as its birth
    with pytest.raises(PayloadError, match="online"):
        w.see(t, b'{"online": "yes", "timestamp": 6}')
    with pytest.raises(PayloadError, match="host id"):
        sp.HostWatch("plant/1")
