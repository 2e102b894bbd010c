"""The shipped mosquitto ACL (deploy/mosquitto/acl) on a real mosquitto with a password file.

Each role may do what the contract and its Sparkplug B encoding need, and nothing else:
a site's gateway (user = site id) publishes its own births, data and deaths and reads the
commands sent to it and the hosts' STATE; the ingestor (the Sparkplug host application)
reads everything, sends rebirth requests and writes its STATE; the multi-site ``stream``
user publishes any site but never dead letters; the dashboard only reads status. Then
ems's own Sparkplug and JSON paths run through the ACL end to end.
"""

from __future__ import annotations

import threading
import time

import brokers
import paho.mqtt.client as mqtt
import pytest
from builders import make_readingset
from paho.mqtt.enums import CallbackAPIVersion
from reliability_kit import poll

from ems.store import open_store
from ems.telemetry.connection import BrokerConfig
from ems.telemetry.ingestor import IngestOptions, Ingestor
from ems.telemetry.ledger import Ledger, reconcile
from ems.telemetry.publisher import Publisher, PublishOptions

pytestmark = pytest.mark.service

PW = {"ingest": "ingest-Pw-41x", "alpha": "alpha-Pw-93k", "beta": "beta-Pw-27q", "stream": "stream-Pw-55z",
      "dashboard": "dash-Pw-18c"}
NOT_AUTHORIZED = 135
OK = 0


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """mosquitto with a password file for every role and the shipped ACL (no TLS: the ACL is under test)."""
    b = brokers.secure_mosquitto(tmp_path_factory.mktemp("acl"), PW, acl=brokers.SHIPPED_ACL.read_text(), tls=False)
    try:
        yield b
    finally:
        brokers.stop(b)


class Client:
    """A raw MQTT 5 client logged in as ``user``: the PUBACK and SUBACK reason codes, the messages delivered."""

    def __init__(self, b: brokers.Broker, user: str) -> None:
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.got: list[tuple[str, bytes]] = []
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"acl-{user}-{time.monotonic_ns()}",
                        protocol=mqtt.MQTTv5)
        c.username_pw_set(user, PW[user])
        c.on_publish = lambda cl, u, mid, rc, props: self.acks.__setitem__(mid, rc.value)
        c.on_subscribe = lambda cl, u, mid, rcs, props: self.subacks.__setitem__(mid, [r.value for r in rcs])
        c.on_message = lambda cl, u, m: self.got.append((m.topic, bytes(m.payload)))
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        self.c = c

    def publish(self, topic: str, payload: bytes = b"x", retain: bool = False) -> int:
        """The broker's PUBACK reason code for a QoS 1 publish: OK (0, or 16 "no matching subscribers") or 135."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        assert poll(lambda: info.mid in self.acks, 5), topic
        return OK if self.acks[info.mid] in (0, 16) else self.acks[info.mid]

    def subscribe(self, topic_filter: str) -> int:
        _, mid = self.c.subscribe(topic_filter, qos=1)
        assert poll(lambda: mid in self.subacks, 5), topic_filter
        return self.subacks[mid][0]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def client(broker):
    made: list[Client] = []

    def make(user: str) -> Client:
        made.append(Client(broker, user))
        return made[-1]

    yield make
    for c in made:
        c.close()


SP = "spBv1.0/ems"
EDGE_MAY = [f"{SP}/NBIRTH/alpha", f"{SP}/NDATA/alpha", f"{SP}/NDEATH/alpha", f"{SP}/DBIRTH/alpha/grid",
            f"{SP}/DDATA/alpha/grid", f"{SP}/DDEATH/alpha/grid", "spBv1.0/plant7/NBIRTH/alpha",
            "ems/v1/alpha/grid", "ems/v1/alpha/grid/meta", "ems/v1/alpha/_status", "ems/v1/alpha/_hwm"]
EDGE_MAY_NOT = [f"{SP}/NBIRTH/beta", f"{SP}/DDATA/beta/grid", f"{SP}/NCMD/alpha", f"{SP}/DCMD/alpha/grid",
                f"{SP}/NCMD/beta", "spBv1.0/STATE/ems-host", f"{SP}/NDATA/alpha/grid/x", "ems/v1/beta/grid",
                "ems/v1/_deadletter/bad_json", "elsewhere/alpha"]


@pytest.mark.parametrize("topic", EDGE_MAY)
def test_a_sites_gateway_publishes_its_own_births_data_and_deaths(client, topic):
    assert client("alpha").publish(topic) == OK


@pytest.mark.parametrize("topic", EDGE_MAY_NOT)
def test_a_sites_gateway_cannot_publish_elsewhere(client, topic):
    assert client("alpha").publish(topic) == NOT_AUTHORIZED


def test_the_host_reads_the_namespace_writes_state_and_commands_and_nothing_else(client):
    host, alpha, beta = client("ingest"), client("alpha"), client("beta")
    assert host.subscribe("spBv1.0/#") == 1 and host.subscribe("ems/v1/#") == 1
    assert alpha.subscribe(f"{SP}/NCMD/alpha") == 1 and alpha.subscribe("spBv1.0/STATE/+") == 1
    assert beta.subscribe(f"{SP}/NCMD/+") == 1  # granted, but only its own commands are delivered
    assert alpha.publish(f"{SP}/NBIRTH/alpha", b"birth") == OK
    assert host.publish("spBv1.0/STATE/ems-host", b'{"online": true, "timestamp": 1}', retain=True) == OK
    assert host.publish(f"{SP}/NCMD/alpha", b"rebirth") == OK and host.publish(f"{SP}/DCMD/alpha/grid", b"c") == OK
    assert poll(lambda: (f"{SP}/NBIRTH/alpha", b"birth") in host.got, 5), host.got
    assert poll(lambda: ("spBv1.0/STATE/ems-host", b'{"online": true, "timestamp": 1}') in alpha.got, 5), alpha.got
    assert poll(lambda: (f"{SP}/NCMD/alpha", b"rebirth") in alpha.got, 5), alpha.got
    time.sleep(0.3)
    assert not any("NCMD/alpha" in t for t, _ in beta.got), beta.got  # another site never sees alpha's commands
    for topic in (f"{SP}/NBIRTH/alpha", f"{SP}/DDATA/alpha/grid", "ems/v1/alpha/grid", "spBv1.0/other"):
        assert host.publish(topic) == NOT_AUTHORIZED, topic
    assert host.publish("ems/v1/_deadletter/bad_json") == OK and host.publish("ems/v1/alpha/_backfill") == OK


def test_stream_publishes_every_site_but_no_dead_letters_and_the_dashboard_only_reads_status(client):
    stream, dash = client("stream"), client("dashboard")
    for topic in ("ems/v1/alpha/grid", "ems/v1/beta/gas/meta", "ems/v1/beta/_hwm", f"{SP}/NBIRTH/beta",
                  f"{SP}/DDATA/alpha/grid"):
        assert stream.publish(topic) == OK, topic
    for topic in ("ems/v1/_deadletter/x", f"{SP}/NCMD/alpha", "spBv1.0/STATE/ems-host", "ems/v1/alpha/grid/a/b"):
        assert stream.publish(topic) == NOT_AUTHORIZED, topic
    assert dash.subscribe("ems/v1/+/_status") == 1
    assert stream.publish("ems/v1/alpha/_status", b"online") == OK
    assert poll(lambda: ("ems/v1/alpha/_status", b"online") in dash.got, 5), dash.got
    assert dash.publish("ems/v1/alpha/_status", b"offline") == NOT_AUTHORIZED


@pytest.mark.parametrize("encoding", ["sparkplug", "json"])
def test_ems_stream_and_ingest_through_the_acl_lose_nothing(broker, tmp_path, encoding):
    """ems stream (user alpha; Sparkplug: waiting for its primary host's STATE) -> ems ingest (user ingest)."""
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid", "gas"))
    ingest = BrokerConfig.from_url(f"mqtt://ingest@127.0.0.1:{broker.port}", password=PW["ingest"])
    alpha = BrokerConfig.from_url(f"mqtt://alpha@127.0.0.1:{broker.port}", password=PW["alpha"])
    store = open_store(tmp_path / "store")
    ing = Ingestor(ingest, store, IngestOptions(client_id=f"acl-ing-{encoding}", batch_s=0.2, encoding=encoding,
                                                sparkplug_host_id="ems-host" if encoding == "sparkplug" else None,
                                                deadletter=tmp_path / "dl.jsonl")).start()
    ledger = tmp_path / "ledger.json"
    opts = PublishOptions(ledger=ledger, encoding=encoding, client_id_prefix=f"acl-{encoding}",
                          sparkplug_primary_host="ems-host" if encoding == "sparkplug" else None)
    try:
        result: dict = {}
        th = threading.Thread(target=lambda: result.setdefault("run", Publisher(alpha, rs, opts).run()))
        th.start()
        th.join(60)
        stats = result["run"]
        assert stats.readings == 2 * 96, stats
        assert ing.wait_for(lambda c: c["written"] >= stats.readings, 20), ing.stats()
    finally:
        ing.stop()
    assert ing.stats()["rejected"] == 0 and ing.stats()["publish_refused"] == 0, ing.stats()
    assert all(r.ok for r in reconcile(Ledger(ledger), store))
    store.close()


def test_the_compose_auth_job_and_mosquitto_conf_on_a_real_mosquitto(tmp_path):
    """deploy/mosquitto/make-auth.sh with .env.example's passwords, then mosquitto with the shipped mosquitto.conf:
    no anonymous client, each role logs in, the compose health check passes, a wrong password is refused."""
    import os
    import re
    import shutil
    import subprocess

    from ems.telemetry.broker import free_port

    if not (shutil.which("mosquitto_passwd") and shutil.which("mosquitto_sub")):
        pytest.skip("needs mosquitto_passwd and mosquitto_sub (apt-get install mosquitto-clients)")
    env_file = (brokers.ROOT / ".env.example").read_text()
    pw = dict(re.findall(r"^(EMS_MQTT_\w+_PASSWORD)=(\S+)$", env_file, re.M))
    auth = tmp_path / "auth"
    job = subprocess.run(["sh", str(brokers.ROOT / "deploy/mosquitto/make-auth.sh")], capture_output=True, text=True,
                         timeout=60, env={**os.environ, **pw, "MOSQUITTO_AUTH_DIR": str(auth),
                                          "MOSQUITTO_ACL": str(brokers.SHIPPED_ACL), "MOSQUITTO_UID": str(os.getuid())})
    assert job.returncode == 0, job.stderr
    assert oct((auth / "passwd").stat().st_mode)[-3:] == "600" and "change-me" not in (auth / "passwd").read_text()
    port = free_port()
    conf = brokers.SHIPPED_CONF.read_text().replace("listener 1883", f"listener {port} 127.0.0.1")
    conf = conf.replace("/mosquitto/auth", str(auth)).replace("/mosquitto/data/", f"{tmp_path}/")
    (tmp_path / "mosquitto.conf").write_text(conf + ("user root\n" if os.geteuid() == 0 else ""))
    proc = brokers._start_mosquitto(tmp_path / "mosquitto.conf", port)
    try:
        def sub(*login: str) -> subprocess.CompletedProcess:
            return subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), *login, "-t", "ems/v1/+/_status",
                                   "-E", "-W", "5"], capture_output=True, text=True, timeout=20)

        assert sub("-u", "dashboard", "-P", pw["EMS_MQTT_DASHBOARD_PASSWORD"]).returncode == 0  # the health check
        assert sub().returncode != 0  # anonymous
        assert sub("-u", "dashboard", "-P", "wrong").returncode != 0
        for role in ("ingest", "stream"):
            assert sub("-u", role, "-P", pw[f"EMS_MQTT_{role.upper()}_PASSWORD"]).returncode == 0, role
    finally:
        brokers.terminate(proc)
