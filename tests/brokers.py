"""Real MQTT brokers for tests: mosquitto (Debian) and the embedded amqtt broker.

Import the fixtures into a test module::

    from brokers import amqtt_broker, mosquitto  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from ems.telemetry.broker import EmbeddedBroker, free_port, wait_for_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass
class Broker:
    host: str
    port: int
    url: str
    proc: subprocess.Popen | None = None
    conf: Path | None = None

    def restart(self) -> None:
        """Stop and start mosquitto on the same port (persistence keeps sessions)."""
        assert self.proc is not None and self.conf is not None
        self.proc.terminate()
        self.proc.wait(10)
        self.proc = _start_mosquitto(self.conf, self.port)


def _start_mosquitto(conf: Path, port: int) -> subprocess.Popen:
    with open(conf.parent / "mosquitto.log", "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", port, 10.0, proc)
    return proc


ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
SHIPPED_ACL = ROOT / "deploy" / "mosquitto" / "acl"
_LIMIT_KEYS = ("max_inflight_messages", "max_queued_messages", "max_queued_bytes", "message_size_limit",
               "max_inflight_bytes", "max_packet_size")


def shipped_limits() -> str:
    """The queue, in-flight and size lines of ``deploy/mosquitto/mosquitto.conf``: tests run with them."""
    lines = [ln.strip() for ln in SHIPPED_CONF.read_text().splitlines()]
    return "".join(ln + "\n" for ln in lines if ln.split(" ", 1)[0] in _LIMIT_KEYS)


def mosquitto_broker(tmp: Path, limits: str | None = None) -> Broker:
    """Start mosquitto on a free loopback port with persistence in ``tmp``.

    ``limits``: queue and in-flight lines; default the shipped ones, ``""`` for mosquitto's stock defaults.
    """
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {tmp}/\n"
        + (shipped_limits() if limits is None else limits)
        + ("user root\n" if os.geteuid() == 0 else "")  # else mosquitto drops to a user that cannot write tmp
        + "log_dest stdout\n"
        "log_type error\n"
        "log_type warning\n"
    )
    proc = _start_mosquitto(conf, port)
    return Broker("127.0.0.1", port, f"mqtt://127.0.0.1:{port}", proc, conf)


def secure_mosquitto(d: Path, users: dict[str, str], acl: str | None = None, tls: bool = True) -> Broker:
    """Start mosquitto with TLS (a CA made here with openssl), a password file and an optional ACL.

    The broker's URL is ``mqtts://127.0.0.1:PORT``; the CA is ``d / "ca.pem"``. ``tls=False``: the
    password file and the ACL only, on ``mqtt://127.0.0.1:PORT``.
    """
    if not ((shutil.which("openssl") or not tls) and shutil.which("mosquitto_passwd") and Path(MOSQUITTO).exists()):
        pytest.skip("needs openssl, mosquitto and mosquitto_passwd")
    d.mkdir(parents=True, exist_ok=True)

    def run(*a: str) -> None:
        subprocess.run(a, check=True, capture_output=True, timeout=60)

    if tls:
        _make_certificates(d, run)
    for i, (user, pw) in enumerate(users.items()):
        run("mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(d / "passwd"), user, pw)
    acl_line = ""
    if acl is not None:
        (d / "acl").write_text(acl)
        acl_line = f"acl_file {d / 'acl'}\n"
    port = free_port()
    conf = d / "mosquitto.conf"
    certs = f"cafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\nkeyfile {d / 'server.key'}\n" if tls else ""
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {d / 'passwd'}\n{acl_line}{certs}"
        + shipped_limits() + ("user root\n" if os.geteuid() == 0 else "") + "log_dest none\n"
    )
    scheme = "mqtts" if tls else "mqtt"
    return Broker("127.0.0.1", port, f"{scheme}://127.0.0.1:{port}", _start_mosquitto(conf, port), conf)


def _make_certificates(d: Path, run) -> None:
    """A CA (``ca.pem``) and a server certificate for localhost and 127.0.0.1 signed by it, in ``d``."""
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ems-test-ca",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
        str(d / "ca.key"), "-CAcreateserial", "-days", "1", "-extfile", str(d / "ext.cnf"), "-out",
        str(d / "server.pem"))


def terminate(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    """SIGTERM a child process, SIGKILL it after ``grace_s`` [s]; nothing if it has ended."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def stop(b: Broker) -> None:
    """Stop a broker started here."""
    terminate(b.proc)


@pytest.fixture
def mosquitto(tmp_path):
    """A mosquitto broker (MQTT 5 and 3.1.1) for one test."""
    b = mosquitto_broker(tmp_path / "mosquitto")
    try:
        yield b
    finally:
        stop(b)


@pytest.fixture
def amqtt_broker():
    """The embedded amqtt broker (MQTT 3.1.1 only) for one test."""
    with EmbeddedBroker() as b:
        yield Broker(b.host, b.port, b.url)
