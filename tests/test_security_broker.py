"""Security: broker authentication, TLS and ACLs; secrets never leak; dashboard and YAML loading are safe."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import brokers
import paho.mqtt.client as mqtt
import pytest
from builders import make_readingset
from paho.mqtt.enums import CallbackAPIVersion
from reliability_kit import EmsProc, figures, poll  # noqa: F401

from ems.errors import LocatedError
from ems.store import open_store
from ems.telemetry.broker import free_port
from ems.telemetry.connection import BrokerConfig
from ems.telemetry.ingestor import IngestOptions, Ingestor
from ems.telemetry.publisher import Publisher, PublishOptions

pytestmark = pytest.mark.service

PW_ALPHA = "alpha-Secret-9f3k2"
PW_INGEST = "ingest-Secret-7q1z8"
TOKEN = "influx-Token-0b7e55d1"


@pytest.fixture
def secure_broker(tmp_path):
    """mosquitto with TLS (a CA made here with openssl), a password file and a per-site ACL."""
    b = brokers.secure_mosquitto(
        tmp_path / "tls",
        {"alpha": PW_ALPHA, "ingest": PW_INGEST},
        # a site's gateway writes only below its own site; the ingestor reads everything and writes dead letters
        acl="user ingest\ntopic read ems/v1/#\ntopic write ems/v1/_deadletter/#\n\n"
        "pattern write ems/v1/%u/#\npattern read ems/v1/%u/#\n",
    )
    try:
        yield {"url": b.url, "port": b.port, "ca": str(tmp_path / "tls" / "ca.pem")}
    finally:
        brokers.stop(b)


def _raw_client(port: int, ca: str, user: str, pw: str) -> tuple[mqtt.Client, list]:
    acks: list = []
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"raw-{user}",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set(user, pw)
    c.tls_set(ca_certs=ca)
    c.on_publish = lambda cl, ud, mid, rc, props: acks.append((mid, rc))
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert connected.wait(10)
    return c, acks


def test_acl_tls_and_passwords(secure_broker, tmp_path, figures):  # noqa: F811
    b = secure_broker
    ca = b["ca"]
    ing_cfg = BrokerConfig.from_url(b["url"], username="ingest", password=PW_INGEST, ca_file=ca)
    store = open_store(tmp_path / "store")
    ing = Ingestor(ing_cfg, store, IngestOptions(client_id="sec-ingest", batch_s=0.2, unknown_grace_s=0.5)).start()
    try:
        rs = make_readingset(sites=("alpha",), days=1, meters=("grid",))
        alpha = BrokerConfig.from_url(b["url"], username="alpha", password=PW_ALPHA, ca_file=ca)
        st = Publisher(alpha, rs, PublishOptions()).run()
        assert st.readings == 96
        assert ing.wait_for(lambda c: c["written"] >= 96, 30), ing.stats()
        # alpha's gateway tries to write as beta: the broker refuses (MQTT 5 PUBACK reason 135)
        c, acks = _raw_client(b["port"], ca, "alpha", PW_ALPHA)
        beta = make_readingset(sites=("beta",), days=1, meters=("grid",))
        from ems.telemetry import codec

        info = c.publish("ems/v1/beta/grid/meta", codec.encode_meta(beta.meters[0]), qos=1, retain=True)
        payload = codec.encode_rows("beta", "grid", 900, [{"seq": 1, "ts": "2024-07-01T00:15:00Z",
                                                           "values": {"power_kw": 1.0, "import_kwh": 2.0}}])
        info2 = c.publish("ems/v1/beta/grid", payload, qos=1)
        info.wait_for_publish(10)
        info2.wait_for_publish(10)
        time.sleep(1.0)
        c.disconnect()
        c.loop_stop()
        codes = {mid: rc for mid, rc in acks}
        refused = [codes[info.mid], codes[info2.mid]]
        assert all(getattr(rc, "is_failure", False) for rc in refused), refused
        # wrong password and no TLS are refused
        bad = BrokerConfig.from_url(b["url"], username="alpha", password="wrong", ca_file=ca)
        from ems.errors import TelemetryError

        with pytest.raises(TelemetryError, match="refused the connection"):
            Publisher(bad, rs, PublishOptions()).run()
    finally:
        ing.stop()
    back = store.read()
    sites_stored = sorted(set(back.readings["site"].astype(str)))
    figures(fault="ACL: site alpha's gateway publishes as beta (TLS + passwords)", published=96 + 1,
            acknowledged=96, stored=len(back.readings.index.unique()), dead_lettered=ing.stats()["rejected"],
            lost=0, doubled=0, refused_reason_codes=[str(r) for r in refused])
    store.close()
    assert sites_stored == ["alpha"] and "beta" not in {m.site for m in back.meters}


def test_secrets_never_reach_logs_or_outputs(secure_broker, tmp_path):
    """stream + ingest + report at -vv with the password and an InfluxDB token set: zero hits anywhere."""
    b = secure_broker
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid", "gas"))
    folder = rs.to_parquet(tmp_path / "readings")
    (tmp_path / "pw-ingest").write_text(PW_INGEST + "\n")
    logs = tmp_path / "logs"
    store_dir = str(tmp_path / "store")
    env_i = {"EMS_MQTT_PASSWORD_FILE": str(tmp_path / "pw-ingest"), "EMS_INFLUX_TOKEN": TOKEN}
    ing = EmsProc(["-vv", "ingest", "--broker", b["url"], "--store", store_dir, "--username", "ingest",
                   "--tls-ca", b["ca"], "--client-id", "sec-cli", "--stats", "0.5", "--json", "--metrics-port", "0",
                   "--deadletter", str(tmp_path / "dl.jsonl")], logs, "ingest", env_i)
    try:
        ing.wait_log("metrics at")
        pub = EmsProc(["-vv", "stream", str(folder), "--broker", b["url"], "--username", "alpha", "--tls-ca", b["ca"],
                       "--ledger", str(tmp_path / "ledger.json"), "--linger", "0"], logs, "stream",
                      {"EMS_MQTT_PASSWORD": PW_ALPHA, "EMS_INFLUX_TOKEN": TOKEN})
        assert pub.wait(60) == 0, pub.err.read_text()[-2000:]
        assert poll(lambda: '"written": 192' in ing.err.read_text(), 30)
    finally:
        ing.stop()
    rep = EmsProc(["-vv", "report", "--store", store_dir, "--out", str(tmp_path / "report"), "--period", "day"],
                  logs, "report", {"EMS_MQTT_PASSWORD": PW_ALPHA, "EMS_INFLUX_TOKEN": TOKEN})
    rep.wait(120)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "tls" not in p.parts]
    assert any(p.name == "ingest.err" and p.stat().st_size > 1000 for p in files)  # -vv logged plenty
    hits = [str(p) for p in files for s in (PW_ALPHA, PW_INGEST, TOKEN) if s.encode() in p.read_bytes()
            and p.name != "pw-ingest"]
    assert hits == []


def test_dashboard_binds_loopback_and_is_read_only(tmp_path):
    store = open_store(tmp_path / "store")
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid",))
    store.register_sites(rs.sites)
    store.register_meters(rs.meters)
    store.write_readings(rs.readings)
    store.close()
    port = free_port()
    dash = EmsProc(["dashboard", "--store", str(tmp_path / "store"), "--port", str(port)], tmp_path / "logs", "dash")
    try:
        line = dash.wait_log("dashboard at")
        assert "127.0.0.1" in line
        import socket

        for fam, addr in ((socket.AF_INET, "127.0.0.1"),):
            with socket.socket(fam) as s:
                assert s.connect_ex((addr, port)) == 0
        import ems.dashboard.commands as dc

        host_opt = next(p for p in dc.dashboard.params if p.name == "host")
        assert host_opt.default == "127.0.0.1"
        base = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(base + "/", timeout=10).status == 200
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            req = urllib.request.Request(base + "/", data=b"x=1", method=method)
            with pytest.raises(urllib.error.HTTPError) as ei:
                urllib.request.urlopen(req, timeout=10)
            ei.value.close()
            assert ei.value.code in (405, 501), (method, ei.value.code)
    finally:
        dash.stop()
    # escaping is covered in the browser: tests/test_dashboard_browser.py::test_hostile_site_name_is_text


def test_yaml_python_tags_never_run(tmp_path):
    from ems.model.loader import load_site_data

    marker = tmp_path / "pwned"
    text = (Path(__file__).resolve().parents[1] / "sites" / "qingdao.yaml").read_text()
    evil = f"evil: !!python/object/apply:os.system ['touch {marker}']\n" + text
    with pytest.raises(LocatedError, match=r"fuzz\.yaml|evil|python"):
        load_site_data(evil, "fuzz.yaml")
    f = tmp_path / "evil.yaml"
    f.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    from ems.model.loader import load_site

    with pytest.raises(LocatedError):
        load_site(f)
    assert not marker.exists()
