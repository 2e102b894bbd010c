"""Broker addresses, credentials, TLS and paho-mqtt 2.x clients.

A broker is named by URL: ``mqtt://host:1883`` or ``mqtts://host:8883`` (TLS),
optionally ``?protocol=3.1.1`` for brokers without MQTT 5 (amqtt). The password
never appears in a URL, an argument or a log: it comes from ``EMS_MQTT_PASSWORD``
or from the file named by ``EMS_MQTT_PASSWORD_FILE``.
"""

from __future__ import annotations

import os
import ssl
import threading
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

__all__ = ["BrokerConfig", "connect_and_wait", "make_client", "password_from_env"]

_PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311, "311": mqtt.MQTTv311}


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
        ``5`` or ``3.1.1``.
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
        """Parse ``mqtt://host:port[?protocol=3.1.1]`` or ``mqtts://...``; ``overrides`` win when not None."""
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
        protocol = q.get("protocol", ["5"])[0]
        if protocol not in _PROTOCOLS:
            raise ConfigError(f"broker URL: protocol must be 5 or 3.1.1, found {protocol!r}")
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
        """True for MQTT 5."""
        return self.protocol == "5"

    def describe(self) -> str:
        """The address for messages (never the password)."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port} (MQTT {self.protocol})"


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
    """
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


def connect_and_wait(
    client: mqtt.Client,
    cfg: BrokerConfig,
    *,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    timeout: float = 15.0,
    receive_maximum: int = 0,
) -> None:
    """Connect, start paho's network thread and wait for the CONNACK.

    ``client.on_connect`` set before the call is still called (wrapped). With MQTT 5,
    ``receive_maximum`` (if > 0) tells the broker how many QoS 1 messages it may have
    in flight to this client.

    Raises
    ------
    TelemetryError
        If the broker cannot be reached or refuses, naming the broker and reason.
    """
    done = threading.Event()
    result: dict[str, Any] = {}
    user_cb: Any = client.on_connect

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        result.setdefault("rc", rc)
        done.set()
        if user_cb is not None:
            user_cb(c, userdata, flags, rc, props)

    client.on_connect = on_connect
    kw: dict[str, Any] = {}
    if cfg.v5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if session_expiry_s:
            props.SessionExpiryInterval = int(session_expiry_s)
        if receive_maximum:
            props.ReceiveMaximum = min(int(receive_maximum), 65535)
        kw = {"clean_start": clean_start, "properties": props}
    try:
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive, **kw)
    except (OSError, ssl.SSLError) as exc:
        raise TelemetryError(f"cannot connect to broker {cfg.describe()}: {exc}") from None
    client.loop_start()
    if not done.wait(timeout):
        client.loop_stop()
        raise TelemetryError(f"broker {cfg.describe()} did not answer CONNECT within {timeout:g} s")
    rc = result["rc"]
    if getattr(rc, "is_failure", False):
        client.loop_stop()
        client.disconnect()
        hint = ""
        if cfg.v5 and "protocol" in str(rc).lower():
            hint = "; the broker may speak MQTT 3.1.1 only (amqtt): add ?protocol=3.1.1 to the URL"
        raise TelemetryError(f"broker {cfg.describe()} refused the connection: {rc}{hint}")
