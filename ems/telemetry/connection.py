"""Broker addresses, credentials, TLS and paho-mqtt 2.x clients.

A broker is named by URL: ``mqtt://host:1883`` or ``mqtts://host:8883`` (TLS).
The protocol is negotiated (:func:`negotiate`): MQTT 5 first, MQTT 3.1.1 when the
broker refuses MQTT 5 (amqtt, the embedded broker, does); ``?protocol=5`` or
``?protocol=3.1.1`` fixes it. The password never appears in a URL, an argument or
a log: it comes from ``EMS_MQTT_PASSWORD`` or from the file named by
``EMS_MQTT_PASSWORD_FILE``.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ems import redaction
from ems.errors import ConfigError, TelemetryError

__all__ = ["BrokerConfig", "connect_and_wait", "make_client", "negotiate", "password_from_env"]

log = logging.getLogger(__name__)

_PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311, "311": mqtt.MQTTv311}
AUTO = "auto"
"""Protocol of a config not yet negotiated: MQTT 5, else 3.1.1 (:func:`negotiate`)."""
_REFUSED_PROTOCOL = (1, 132)  # CONNACK "unacceptable protocol version" (3.1.1) / "unsupported" (5)


def password_from_env(environ: dict[str, str] | None = None) -> str | None:
    """Return the broker password from ``EMS_MQTT_PASSWORD`` or ``EMS_MQTT_PASSWORD_FILE``."""
    env = os.environ if environ is None else environ
    if env.get("EMS_MQTT_PASSWORD"):
        redaction.register(env["EMS_MQTT_PASSWORD"])
        return env["EMS_MQTT_PASSWORD"]
    path = env.get("EMS_MQTT_PASSWORD_FILE")
    if path:
        try:
            pw = Path(path).read_text().rstrip("\r\n")
            redaction.register(pw)
            return pw
        except OSError as exc:
            raise ConfigError(f"EMS_MQTT_PASSWORD_FILE={path}: expected a readable file; {exc.strerror}") from None
    return None


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect.

    Attributes
    ----------
    host : str
    port : int
    protocol : str
        ``5``, ``3.1.1``, or ``auto`` (negotiated on first use: :func:`negotiate`).
    tls : bool
        Use TLS (``mqtts://``, or a CA file given).
    ca_file, cert_file, key_file : str, optional
        PEM files for server verification and client certificates.
    username : str, optional
    password : str, optional
        Kept out of ``repr``.
    keepalive : int [s]
    """

    host: str = "127.0.0.1"
    port: int = 1883
    protocol: str = "5"
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive: int = 30

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> BrokerConfig:
        """Parse ``mqtt://host:port[?protocol=5|3.1.1]`` or ``mqtts://...``; ``overrides`` win when not None.

        Without ``?protocol=`` the protocol is ``auto``: negotiated on first use.
        """
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(f"broker URL: expected mqtt://host:port or mqtts://host:port, found {url!r}")
        if parts.password:
            raise ConfigError("broker URL: do not put a password in the URL; set EMS_MQTT_PASSWORD or EMS_MQTT_PASSWORD_FILE")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"broker URL: expected a numeric port, found {url!r}") from None
        q = parse_qs(parts.query)
        protocol = q.get("protocol", [AUTO])[0]
        if protocol not in _PROTOCOLS and protocol != AUTO:
            raise ConfigError(f"broker URL: protocol must be 5, 3.1.1 or auto, found {protocol!r}")
        cfg = cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            protocol="3.1.1" if protocol == "311" else protocol,
            tls=tls,
            username=parts.username,
        )
        kw = {k: v for k, v in overrides.items() if v is not None}
        if kw.get("ca_file"):
            kw.setdefault("tls", True)
        return replace(cfg, **kw)

    @property
    def v5(self) -> bool:
        """True for MQTT 5 (``auto`` counts as 5 until negotiated)."""
        return self.protocol in ("5", AUTO)

    def describe(self) -> str:
        """The address for messages (never the password)."""
        user = f"{self.username}@" if self.username else ""
        proto = "MQTT 5 or 3.1.1" if self.protocol == AUTO else f"MQTT {self.protocol}"
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port} ({proto})"


def make_client(
    cfg: BrokerConfig,
    client_id: str = "",
    *,
    persistent: bool = False,
    manual_ack: bool = False,
    will: tuple[str, bytes] | None = None,
    will_retain: bool = True,
) -> mqtt.Client:
    """Create a paho-mqtt 2.x client for ``cfg``.

    Parameters
    ----------
    persistent : bool
        A persistent session (MQTT 3.1.1 ``clean_session=False``; for MQTT 5 the
        clean start flag is given to :func:`connect_and_wait`).
    will : (topic, payload), optional
        Last will, QoS 1, retained unless ``will_retain`` is False (a Sparkplug NDEATH).

    A config with protocol ``auto`` is negotiated first (:func:`negotiate`, once per
    broker and process); pass the negotiated config on to :func:`connect_and_wait`.
    """
    cfg = negotiate(cfg)
    kw: dict[str, Any] = {}
    if not cfg.v5:
        kw["clean_session"] = not persistent
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=_PROTOCOLS[cfg.protocol],
        manual_ack=manual_ack,
        **kw,
    )
    if cfg.username:
        redaction.register(cfg.password)
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.tls:
        ctx = ssl.create_default_context(cafile=cfg.ca_file)
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        client.tls_set_context(ctx)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=will_retain)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def _connect_options(cfg: BrokerConfig, clean_start: bool, session_expiry_s: int, receive_maximum: int) -> dict[str, Any]:
    """``client.connect`` keywords: MQTT 5's clean start and CONNECT properties (none for 3.1.1)."""
    if not cfg.v5:
        return {}
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if session_expiry_s:
        props.SessionExpiryInterval = int(session_expiry_s)
    if receive_maximum:
        props.ReceiveMaximum = min(int(receive_maximum), 65535)
    return {"clean_start": clean_start, "properties": props}


def connect_and_wait(
    client: mqtt.Client,
    cfg: BrokerConfig,
    *,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    timeout: float = 15.0,
    receive_maximum: int = 0,
    closed: threading.Event | None = None,
) -> None:
    """Connect, start paho's network thread and wait for the CONNACK.

    ``client.on_connect`` set before the call is still called (wrapped). With MQTT 5,
    ``receive_maximum`` (if > 0) tells the broker how many QoS 1 messages it may have
    in flight to this client.

    Parameters
    ----------
    closed : threading.Event, optional
        Set by the caller's ``on_disconnect``: a connection closed before any
        CONNACK counts as the protocol refused (what a broker without MQTT 5 may do).

    Raises
    ------
    TelemetryError
        If the broker cannot be reached or refuses, naming the broker and reason.
    """
    cfg = negotiate(cfg)
    done = threading.Event()
    result: dict[str, Any] = {}
    user_cb: Any = client.on_connect

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        result.setdefault("rc", rc)
        done.set()
        if user_cb is not None:
            user_cb(c, userdata, flags, rc, props)

    client.on_connect = on_connect
    kw = _connect_options(cfg, clean_start, session_expiry_s, receive_maximum)
    try:
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive, **kw)
    except (OSError, ssl.SSLError) as exc:
        raise TelemetryError(f"cannot connect to broker {cfg.describe()}: {exc}") from None
    client.loop_start()
    _wait_connack(client, cfg, done, closed, timeout)
    rc = result["rc"]
    if getattr(rc, "is_failure", False):
        client.loop_stop()
        client.disconnect()
        if cfg.v5 and _refused_protocol(rc):
            raise _ProtocolRefused(
                f"broker {cfg.describe()} refused the connection: {rc}; it speaks MQTT 3.1.1 "
                "only: leave out ?protocol=5 (or --mqtt-version 5) to negotiate"
            )
        raise TelemetryError(f"broker {cfg.describe()} refused the connection: {rc}")


def _wait_connack(
    client: mqtt.Client, cfg: BrokerConfig, done: threading.Event, closed: threading.Event | None,
    timeout: float,
) -> None:
    """Wait for ``done`` (a CONNACK); raise if it does not come, or the broker hung up first."""
    deadline = time.monotonic() + timeout
    while not done.wait(0.02):
        if closed is not None and closed.is_set():
            client.loop_stop()
            raise _ProtocolRefused(f"broker {cfg.describe()} closed the connection without a CONNACK")
        if time.monotonic() >= deadline:
            client.loop_stop()
            raise TelemetryError(f"broker {cfg.describe()} did not answer CONNECT within {timeout:g} s")


def _refused_protocol(rc: Any) -> bool:
    return getattr(rc, "value", rc) in _REFUSED_PROTOCOL


_NEGOTIATED: dict[tuple[str, int, bool, str | None], str] = {}
_NEGOTIATED_LOCK = threading.Lock()


def negotiate(cfg: BrokerConfig, timeout: float = 10.0) -> BrokerConfig:
    """Return ``cfg`` with a concrete protocol: MQTT 5 if the broker accepts it, else 3.1.1.

    A config whose protocol is already ``5`` or ``3.1.1`` is returned as is. For
    ``auto`` a probe connects once with MQTT 5 (a fresh client id, clean start, no
    will, no session kept); if the broker answers CONNACK "unsupported protocol
    version", or closes the connection without a CONNACK, as MQTT 3.1.1 brokers do
    (MQTT 3.1.1 section 3.2.2.3), it is 3.1.1. The answer is remembered per broker
    for the process, so the clients made after the probe do not probe again.

    Parameters
    ----------
    cfg : BrokerConfig
    timeout : float [s]
        Longest wait for the probe's CONNACK.

    Raises
    ------
    TelemetryError
        The broker cannot be reached, refuses for another reason (credentials), or
        answers neither protocol.
    """
    if cfg.protocol != AUTO:
        return cfg
    key = (cfg.host, cfg.port, cfg.tls, cfg.username)
    with _NEGOTIATED_LOCK:
        known = _NEGOTIATED.get(key)
        if known is None:
            known = "5" if _probe(replace(cfg, protocol="5"), timeout) else "3.1.1"
            _NEGOTIATED[key] = known
            log.info("broker %s: MQTT %s", replace(cfg, protocol=known).describe(), known)
    return replace(cfg, protocol=known)


def _probe(cfg: BrokerConfig, timeout: float) -> bool:
    """Connect once with ``cfg``; True if accepted, False if the protocol was refused."""
    client = make_client(cfg, f"ems-probe-{os.getpid()}-{threading.get_ident() % 100000}")
    closed = threading.Event()
    client.on_disconnect = lambda *a: closed.set()
    try:
        connect_and_wait(client, cfg, timeout=timeout, closed=closed)
    except _ProtocolRefused:
        return False
    client.disconnect()
    client.loop_stop()
    return True


class _ProtocolRefused(TelemetryError):
    """The broker refused the protocol version (internal to :func:`negotiate`)."""
