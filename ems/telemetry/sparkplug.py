"""Sparkplug B encoding of the readings contract: a pure codec and the host's session rules.

A site is a Sparkplug **edge node** and each meter a **device** of it, in a Sparkplug group
(``ems`` unless told otherwise)::

    spBv1.0/{group}/NBIRTH/{site}          bdSeq, Node Control/Rebirth, Properties/site (SiteInfo JSON)
    spBv1.0/{group}/DBIRTH/{site}/{meter}  one metric per quantity (Double, engUnit), Properties/kind,
                                           Properties/carrier, Properties/interval_s, Properties/attrs
    spBv1.0/{group}/DDATA/{site}/{meter}   readings: each quantity's value, timestamped with the reading's
                                           ts (interval end) [ms]; older readings of a batch are historical
    spBv1.0/{group}/NDATA/{site}           events: metric ``events``, the contract's events payload (JSON)
    spBv1.0/{group}/NDEATH/{site}          bdSeq (the MQTT last will)
    spBv1.0/{group}/NCMD/{site}            Node Control/Rebirth = true: publish the births again

Metric names are the contract's quantity names (``power_kw``, ``import_kwh``, ...). Every
message of a node but NDEATH carries ``seq``, 0 in NBIRTH and one more (mod 256) in each
message after it. Decoding gives the structures of the JSON decoder (:mod:`ems.telemetry.codec`):
:class:`~ems.readings.MeterInfo`, :class:`~ems.readings.SiteInfo`, :class:`~ems.telemetry.codec.DataMessage`,
checked the same way (quantities, finite values, registers that only grow, future timestamps).
A reading's ``seq`` is its interval's number since the epoch (``ts // interval_s``), so gaps show.

The protobuf classes are built from Eclipse Tahu's schema (``ems/data/sparkplug``) with the
protobuf runtime, imported lazily: ``pip install 'ems[plant]'``.

The host application's ``STATE`` (``spBv1.0/STATE/{host_id}``, JSON, retained):
:class:`HostState` for the ingestor, :class:`HostWatch` for an edge node that waits for its
primary host.

References
----------
Eclipse Foundation, "Sparkplug Specification" version 3.0.0, 2022: topic namespace (4.1),
host application STATE birth and death (4.2.3.1, 4.2.3.2: topic, QoS 1, retained, JSON payload
with ``online`` and ``timestamp``), payload and metrics (6.4), bdSeq and seq (6.4.2, 6.4.17),
host session establishment (5.3: subscribe, then publish STATE; republish on an
``online: false``), edge node session establishment with a primary host (5.4: wait for
its STATE online, check host id and timestamp; on its offline publish NDEATH, disconnect and
start over), births, deaths and rebirth requests (5.x).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ems.datafiles import data_path
from ems.errors import MissingExtraError, PayloadError
from ems.readings import QUANTITIES, MeterInfo, SiteInfo
from ems.telemetry import codec
from ems.telemetry.topics import validate_id

__all__ = [
    "NAMESPACE",
    "HostSession",
    "HostState",
    "HostWatch",
    "Outcome",
    "SpMessage",
    "SpTopic",
    "check_host_id",
    "dbirth",
    "ddata",
    "decode",
    "nbirth",
    "ndata_events",
    "ndeath",
    "parse_state",
    "parse_topic",
    "payload_class",
    "rebirth_request",
    "state_payload",
    "state_topic",
    "topic",
]

NAMESPACE = "spBv1.0"
"""Sparkplug B topic namespace."""

_UINT32, _UINT64, _DOUBLE, _BOOLEAN, _STRING = 7, 8, 10, 11, 12  # DataType of the schema
_REBIRTH = "Node Control/Rebirth"
_NODE_KINDS = ("NBIRTH", "NDEATH", "NDATA", "NCMD")
_DEVICE_KINDS = ("DBIRTH", "DDEATH", "DDATA", "DCMD")


@cache
def payload_class() -> Any:
    """The ``org.eclipse.tahu.protobuf.Payload`` message class (built once from the schema)."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError as exc:
        raise MissingExtraError("protobuf", "plant") from exc
    raw = data_path("sparkplug", "sparkplug_b.desc").read_bytes()
    pool = descriptor_pool.DescriptorPool()
    for f in descriptor_pb2.FileDescriptorSet.FromString(raw).file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload"))


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class SpTopic:
    """A parsed Sparkplug topic: group, message type, edge node (site), device (meter, or "")."""

    group: str
    kind: str
    edge: str
    device: str = ""


def topic(group: str, kind: str, site: str, meter: str = "") -> str:
    """The topic of a message type for a site (edge node) or one of its meters (device)."""
    return f"{NAMESPACE}/{group}/{kind}/{site}" + (f"/{meter}" if meter else "")


def parse_topic(text: str) -> SpTopic:
    """Parse ``spBv1.0/{group}/{type}/{site}[/{meter}]``.

    Raises
    ------
    PayloadError
        ``bad_topic``: another shape, an unknown message type or an identifier ems cannot use.
    """
    parts = text.split("/")
    ok = len(parts) in (4, 5) and parts[0] == NAMESPACE
    kinds = _NODE_KINDS if len(parts) == 4 else _DEVICE_KINDS
    if not ok or parts[2] not in kinds:
        raise PayloadError("bad_topic", f"expected {NAMESPACE}/{{group}}/{{NBIRTH|NDATA|NDEATH|NCMD}}/{{site}}"
                           f" or .../{{DBIRTH|DDATA|DDEATH|DCMD}}/{{site}}/{{meter}}; found {text!r}")
    validate_id(parts[3], f"edge node id (site) in {text!r}")
    if len(parts) == 5:
        validate_id(parts[4], f"device id (meter) in {text!r}")
    return SpTopic(parts[1], parts[2], parts[3], parts[4] if len(parts) == 5 else "")


# --------------------------------------------------------------------------- encoding (edge node)


def _new(seq: int | None, ts_ms: int) -> Any:
    p = payload_class()()
    p.timestamp = ts_ms
    if seq is not None:
        p.seq = seq % 256
    return p


def _metric(p: Any, name: str, datatype: int, value: Any, ts_ms: int | None = None) -> Any:
    m = p.metrics.add()
    m.name = name
    m.datatype = datatype
    if ts_ms is not None:
        m.timestamp = ts_ms
    if value is None:
        m.is_null = True
    elif datatype == _DOUBLE:
        m.double_value = float(value)
    elif datatype == _STRING:
        m.string_value = str(value)
    elif datatype == _BOOLEAN:
        m.boolean_value = bool(value)
    else:
        m.long_value = int(value)
    return m


def nbirth(bdseq: int, ts_ms: int, site: SiteInfo | None = None) -> bytes:
    """NBIRTH of a site: seq 0, its bdSeq, the rebirth control and its registration."""
    p = _new(0, ts_ms)
    _metric(p, "bdSeq", _UINT64, bdseq)
    _metric(p, _REBIRTH, _BOOLEAN, False)
    if site is not None:
        _metric(p, "Properties/site", _STRING, json.dumps(site.to_dict(), default=str))
    return bytes(p.SerializeToString())


def ndeath(bdseq: int, ts_ms: int) -> bytes:
    """NDEATH (the will): the bdSeq of the NBIRTH it ends; no seq."""
    p = _new(None, ts_ms)
    _metric(p, "bdSeq", _UINT64, bdseq)
    return bytes(p.SerializeToString())


def dbirth(info: MeterInfo, seq: int, ts_ms: int) -> bytes:
    """DBIRTH of a meter: a Double metric per quantity (null until data) with its engUnit, and its metadata."""
    p = _new(seq, ts_ms)
    for q in info.quantities:
        m = _metric(p, q, _DOUBLE, None, ts_ms)
        m.properties.keys.append("engUnit")
        pv = m.properties.values.add()
        pv.type = _STRING
        pv.string_value = QUANTITIES[q].unit
    _metric(p, "Properties/kind", _STRING, info.kind)
    _metric(p, "Properties/carrier", _STRING, info.carrier)
    _metric(p, "Properties/interval_s", _UINT32, info.interval_s)
    _metric(p, "Properties/attrs", _STRING, json.dumps(dict(info.attrs), default=str))
    return bytes(p.SerializeToString())


def ddata(readings: Sequence[tuple[int, Mapping[str, float]]], seq: int, ts_ms: int) -> bytes:
    """DDATA with readings ``(ts_ns, values)``: each value a metric stamped with its reading's ts.

    All but the newest reading are flagged historical. NaN values are left out.
    """
    p = _new(seq, ts_ms)
    newest = max(t for t, _ in readings)
    for ts_ns, values in readings:
        t_ms = ts_ns // 1_000_000
        for q, v in values.items():
            if v == v:
                m = _metric(p, q, _DOUBLE, v, t_ms)
                if ts_ns != newest:
                    m.is_historical = True
    return bytes(p.SerializeToString())


def ndata_events(site: str, rows: Iterable[Mapping[str, Any]], seq: int, ts_ms: int) -> bytes:
    """NDATA carrying events as the contract's events payload (metric ``events``, String)."""
    p = _new(seq, ts_ms)
    _metric(p, "events", _STRING, codec.encode_events(site, rows).decode())
    return bytes(p.SerializeToString())


def rebirth_request(ts_ms: int) -> bytes:
    """NCMD asking an edge node to publish its births again."""
    p = _new(None, ts_ms)
    _metric(p, _REBIRTH, _BOOLEAN, True)
    return bytes(p.SerializeToString())


def is_rebirth_request(payload: bytes) -> bool:
    """True if an NCMD payload asks for a rebirth."""
    try:
        p = payload_class().FromString(payload)
    except Exception:
        return False
    return any(m.name == _REBIRTH and m.boolean_value for m in p.metrics)


# --------------------------------------------------------------------------- primary host STATE


_STATE_MAX_BYTES = 1024


def state_topic(host_id: str) -> str:
    """``spBv1.0/STATE/{host_id}``: a host application's birth and death (Sparkplug 3.0, 4.2.3)."""
    check_host_id(host_id)
    return f"{NAMESPACE}/STATE/{host_id}"


def check_host_id(host_id: str) -> str:
    """A Sparkplug host id: a non-empty UTF-8 string without ``+``, ``/`` or ``#``, at most 64 characters.

    Raises
    ------
    PayloadError
        ``bad_topic``, saying what was expected and found.
    """
    if not isinstance(host_id, str) or not 0 < len(host_id) <= 64 or any(c in host_id for c in "+/#\x00"):
        raise PayloadError("bad_topic", f"expected a Sparkplug host id (1-64 characters, none of + / #), "
                                        f"found {str(host_id)[:80]!r}")
    return host_id


def state_payload(online: bool, ts_ms: int) -> bytes:
    """A STATE payload: JSON ``{"online": true|false, "timestamp": ms}`` (Sparkplug 3.0, 4.2.3.1 and 4.2.3.2)."""
    return json.dumps({"online": bool(online), "timestamp": int(ts_ms)}, separators=(",", ":")).encode()


def parse_state(payload: bytes) -> tuple[bool, int]:
    """``(online, timestamp [ms])`` of a STATE payload.

    Raises
    ------
    PayloadError
        The codec's reasons for a payload that is not a small JSON object, ``missing_field``
        or ``wrong_type`` for ``online`` (a boolean) and ``timestamp`` (an integer >= 0).
    """
    obj = codec.load_object(payload, max_bytes=_STATE_MAX_BYTES)
    online, ts = obj.get("online"), obj.get("timestamp")
    if not isinstance(online, bool):
        raise PayloadError("wrong_type", f"STATE.online: expected true or false, found {str(online)[:40]!r}")
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= codec.MAX_SEQ:
        raise PayloadError("wrong_type", f"STATE.timestamp: expected milliseconds since the epoch, found {str(ts)[:40]!r}")
    return online, ts


class HostState:
    """A Sparkplug host application's own STATE: its will, its birth, its death (Sparkplug 3.0, 5.3).

    The will registered with each MQTT CONNECT is ``{"online": false, "timestamp": T}`` with
    T the time of that CONNECT (:meth:`renew` before each one); once subscribed (to the
    namespace and to its own STATE topic) the host publishes ``{"online": true,
    "timestamp": T}`` with the same T, retained, QoS 1 (:meth:`birth`), and again whenever
    it is delivered an ``online: false`` on its own topic (:meth:`answers`), e.g. its
    previous will arriving late. A clean stop publishes the death with the current time.

    Parameters
    ----------
    host_id : str
        The Sparkplug host id (edge nodes name it as their primary host).
    now_ms : int [ms since the epoch]
        Time of the first CONNECT.
    """

    def __init__(self, host_id: str, now_ms: int) -> None:
        self.topic = state_topic(host_id)
        self.host_id = host_id
        self.ts_ms = int(now_ms)

    def renew(self, now_ms: int) -> None:
        """A new CONNECT is about to be sent: its will and the next birth carry ``now_ms``."""
        self.ts_ms = max(int(now_ms), self.ts_ms)

    def will(self) -> tuple[str, bytes]:
        """Topic and payload of the will (retained, QoS 1)."""
        return self.topic, state_payload(False, self.ts_ms)

    def birth(self) -> bytes:
        """The birth: online, with the timestamp of the CONNECT's will."""
        return state_payload(True, self.ts_ms)

    def death(self, now_ms: int) -> bytes:
        """The death published before a clean DISCONNECT."""
        return state_payload(False, max(int(now_ms), self.ts_ms))

    def answers(self, topic_text: str, payload: bytes) -> bool:
        """True if a message delivered to the host calls for its birth again (its own topic, ``online: false``)."""
        if topic_text != self.topic:
            return False
        try:
            online, _ = parse_state(payload)
        except PayloadError:
            return True  # garbage retained on our topic: put the truth back
        return not online


class HostWatch:
    """An edge node's view of its primary host application's STATE (Sparkplug 3.0, 5.4 "primary host").

    :meth:`see` applies a STATE message: only the configured host's topic counts, and only
    a timestamp at least the previous one's (an older message delivered late is ignored);
    the same state again (a retained copy delivered after a resubscribe) changes nothing.
    """

    def __init__(self, host_id: str) -> None:
        self.topic = state_topic(host_id)
        self.host_id = host_id
        self.ts_ms: int | None = None
        self.online = False

    def see(self, topic_text: str, payload: bytes) -> bool | None:
        """The host's new state (True online, False offline) from a STATE message, or None if it does not count.

        Raises
        ------
        PayloadError
            A STATE payload that is not ``{"online": bool, "timestamp": ms}``.
        """
        if topic_text != self.topic:
            return None
        online, ts = parse_state(payload)
        if self.ts_ms is not None and (ts < self.ts_ms or (ts == self.ts_ms and online == self.online)):
            return None
        self.ts_ms, self.online = ts, online
        return online


# --------------------------------------------------------------------------- decoding (host)


@dataclass(frozen=True)
class SpMetric:
    """One metric of a payload: name (or alias), timestamp [ms], value (None if null)."""

    name: str
    alias: int | None
    ts_ms: int | None
    value: float | str | bool | None
    historical: bool = False
    unit: str | None = None


@dataclass(frozen=True)
class SpMessage:
    """A decoded Sparkplug message."""

    topic: SpTopic
    seq: int | None
    ts_ms: int | None
    metrics: list[SpMetric]

    def get(self, name: str) -> Any:
        """The value of the first metric named ``name`` (None if absent)."""
        return next((m.value for m in self.metrics if m.name == name), None)


def _value(m: Any) -> float | str | bool | None:
    if m.is_null:
        return None
    which = m.WhichOneof("value")
    if which in (None, "bytes_value", "dataset_value", "template_value", "extension_value"):
        return None
    v = getattr(m, which)
    if which == "int_value" and m.datatype in (1, 2, 3):  # Int8/16/32 are sent as two's complement uint32
        v = v - (1 << 32) if v >= 1 << 31 else v
    elif which == "long_value" and m.datatype == 4:
        v = v - (1 << 64) if v >= 1 << 63 else v
    return v  # type: ignore[no-any-return]


def _eng_unit(m: Any) -> str | None:
    """A metric's ``engUnit`` property (a String), if it has one."""
    if not m.HasField("properties"):
        return None
    for key, value in zip(m.properties.keys, m.properties.values, strict=False):
        if key == "engUnit" and value.WhichOneof("value") == "string_value":
            return str(value.string_value)
    return None


def decode(topic_text: str, payload: bytes, *, max_bytes: int = codec.MAX_PAYLOAD_BYTES) -> SpMessage:
    """Decode a Sparkplug B message.

    Raises
    ------
    PayloadError
        ``bad_topic``, ``oversized`` or ``malformed_protobuf``.
    """
    t = parse_topic(topic_text)
    if len(payload) > max_bytes:
        raise PayloadError("oversized", f"{topic_text}: expected at most {max_bytes} bytes, found {len(payload)}")
    try:
        p = payload_class().FromString(payload)
    except Exception as exc:
        raise PayloadError("malformed_protobuf", f"{topic_text}: expected a Sparkplug B payload; {exc}") from None
    metrics = [
        SpMetric(m.name, m.alias if m.HasField("alias") else None, m.timestamp if m.HasField("timestamp") else None,
                 _value(m), m.is_historical, _eng_unit(m))
        for m in p.metrics
    ]
    return SpMessage(t, p.seq if p.HasField("seq") else None, p.timestamp if p.HasField("timestamp") else None, metrics)


def _props(msg: SpMessage, where: str) -> dict[str, Any]:
    """The ``Properties/*`` metrics of a birth; ``attrs`` and ``site`` parsed as bounded JSON objects."""
    out: dict[str, Any] = {m.name[len("Properties/"):]: m.value for m in msg.metrics if m.name.startswith("Properties/")}
    for k in ("attrs", "site"):
        text = out.get(k)
        if isinstance(text, str):
            try:
                out[k] = codec.load_object(text.encode(), max_depth=codec.MAX_DEPTH_META)
            except PayloadError as exc:
                raise PayloadError(exc.reason, f"{where}.Properties/{k}: {str(exc).split(': ', 1)[-1]}") from None
    return out


def meter_from_birth(msg: SpMessage, known: MeterInfo | None) -> tuple[MeterInfo, dict[int, str]]:
    """The meter a DBIRTH announces (and its aliases); metadata it lacks comes from ``known``.

    Checked and bounded by the JSON contract's own function, :func:`ems.telemetry.codec.meter_from_fields`
    (kind, carrier, quantities and their ``engUnit``, interval, ``attrs``).

    Raises
    ------
    PayloadError
        ``unknown_quantity`` (no contract quantity among its metrics, or a wrong ``engUnit``),
        ``missing_field`` (kind, carrier or interval unknown), ``wrong_type``, ``out_of_range``,
        ``too_deep``, ...
    """
    site, meter = msg.topic.edge, msg.topic.device
    where = topic(msg.topic.group, "DBIRTH", site, meter)
    named = [m for m in msg.metrics if m.name in QUANTITIES]
    if not named:
        raise PayloadError("unknown_quantity", f"{where}: expected metrics named like the contract's quantities "
                           f"(power_kw, import_kwh, ...); found {[m.name[:40] for m in msg.metrics][:10]}")
    props = _props(msg, where)
    fields: dict[str, Any] = {
        "kind": props.get("kind", known.kind if known else None),
        "carrier": props.get("carrier", known.carrier if known else None),
        "interval_s": props.get("interval_s", known.interval_s if known else None),
        "attrs": props["attrs"] if "attrs" in props else (dict(known.attrs) if known else {}),
        "quantities": list(dict.fromkeys(m.name for m in named)),
        "units": {m.name: m.unit for m in named if m.unit is not None},
    }
    for name in ("kind", "carrier", "interval_s"):
        if fields[name] is None:
            raise PayloadError("missing_field", f"{where}: expected metric Properties/{name} (or the meter in --meta)")
    info = codec.meter_from_fields(site, meter, fields, where)
    aliases = {m.alias: m.name for m in msg.metrics if m.alias is not None}
    return info, aliases


def site_from_birth(msg: SpMessage) -> SiteInfo | None:
    """The site registration an NBIRTH carries (``Properties/site``), if any.

    Checked and bounded by :func:`ems.telemetry.codec.site_from_fields`, as a JSON registration is.
    """
    where = topic(msg.topic.group, "NBIRTH", msg.topic.edge)
    d = _props(msg, where).get("site")
    if d is None:
        return None
    if not isinstance(d, dict):
        raise PayloadError("wrong_type", f"{where}.Properties/site: expected a JSON object, found {str(d)[:80]!r}")
    return codec.site_from_fields(msg.topic.edge, d, f"{where}.Properties/site")


def readings_from_data(msg: SpMessage, info: MeterInfo, aliases: Mapping[int, str], *, now_ns: int,
                       max_future_s: float = 300.0, previous: codec.Reading | None = None) -> codec.DataMessage:
    """The readings of a DDATA, checked like :func:`ems.telemetry.codec.decode_data` checks JSON.

    Metrics are grouped into readings by timestamp (the payload's when a metric has none).

    Raises
    ------
    PayloadError
        ``unknown_quantity``, ``wrong_type``, ``non_finite``, ``future_timestamp``,
        ``missing_field`` or ``register_backwards``.
    """
    where = topic(msg.topic.group, "DDATA", info.site, info.meter)
    allowed = frozenset(info.quantities)
    by_ts: dict[int, dict[str, float]] = {}
    for i, m in enumerate(msg.metrics):
        name = m.name or aliases.get(m.alias or -1, "")
        if name not in allowed:
            raise PayloadError("unknown_quantity", f"{where}.metrics[{i}]: {name or m.alias!r} is not a metric of "
                               f"the meter's DBIRTH; it reports {sorted(allowed)}")
        v = m.value
        if v is None:
            continue  # null: no value, nothing invented
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise PayloadError("wrong_type", f"{where}.metrics[{i}] {name}: expected a number, found {v!r}")
        if not math.isfinite(v):
            raise PayloadError("non_finite", f"{where}.metrics[{i}] {name}: expected a finite number, found {v!r}")
        ts_ms = m.ts_ms if m.ts_ms is not None else msg.ts_ms
        if ts_ms is None:
            raise PayloadError("missing_field", f"{where}.metrics[{i}]: expected a timestamp (metric or payload)")
        by_ts.setdefault(ts_ms * 1_000_000, {})[name] = float(v)
    if not by_ts:
        raise PayloadError("missing_field", f"{where}: expected at least one value")
    step = info.interval_s * 1_000_000_000
    out = [codec.Reading(ts // step, ts, vals) for ts, vals in sorted(by_ts.items())]
    if out[-1].ts_ns > now_ns + int(max_future_s * 1e9):
        raise PayloadError("future_timestamp", f"{where}: {codec.format_ts(out[-1].ts_ns)} is more than "
                           f"{max_future_s:g} s after now ({codec.format_ts(now_ns)})")
    if previous is not None and out[0].ts_ns <= previous.ts_ns:
        previous = None
    codec.check_registers(out, where, previous)
    return codec.DataMessage(info.site, info.meter, info.interval_s, out)


# --------------------------------------------------------------------------- host session


@dataclass
class _Node:
    bdseq: int | None = None
    next_seq: int | None = None
    online: bool = False
    aliases: dict[str, dict[int, str]] = field(default_factory=dict)
    asked_at: float = -1e9


@dataclass
class Outcome:
    """What one message means for the ingestor."""

    meters: list[MeterInfo] = field(default_factory=list)
    site: SiteInfo | None = None
    data: codec.DataMessage | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    meter_status: dict[tuple[str, str], str] = field(default_factory=dict)
    rebirth: tuple[str, bytes] | None = None


class HostSession:
    """A Sparkplug host application's view of its edge nodes: births, deaths, sequence numbers.

    Pure logic (no network, the clock passed in): :meth:`handle` turns one message into an
    :class:`Outcome`. A sequence gap, data from a node or device not born, or a DBIRTH
    without a known NBIRTH asks for a rebirth (at most once every ``rebirth_every_s`` per node).

    Parameters
    ----------
    meters : mapping of (site, meter) to MeterInfo
        Meters known so far (updated by the caller with each DBIRTH's).
    """

    def __init__(self, meters: Mapping[tuple[str, str], MeterInfo], rebirth_every_s: float = 5.0) -> None:
        self.meters = meters
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.rebirth_every_s = rebirth_every_s
        self.seq_gaps = 0
        self.rebirths_asked = 0
        self._waiting: set[tuple[str, int]] = set()

    def _ask(self, node: _Node, t: SpTopic, out: Outcome, now_s: float) -> None:
        if now_s - node.asked_at >= self.rebirth_every_s:
            node.asked_at = now_s
            self.rebirths_asked += 1
            out.rebirth = (topic(t.group, "NCMD", t.edge), rebirth_request(int(now_s * 1000)))

    def _seq(self, node: _Node, msg: SpMessage, out: Outcome, now_s: float) -> None:
        if msg.topic.kind == "NBIRTH":
            node.next_seq = 1
            return
        if node.next_seq is None or msg.seq is None:
            self._ask(node, msg.topic, out, now_s)  # never saw this node born
            return
        if msg.seq != node.next_seq:
            self.seq_gaps += 1
            self._ask(node, msg.topic, out, now_s)
        node.next_seq = (msg.seq + 1) % 256

    def handle(self, topic_text: str, payload: bytes, *, now_ns: int | None = None,
               max_future_s: float = 300.0, previous: Mapping[tuple[str, str], codec.Reading] | None = None) -> Outcome:
        """Decode and apply one message.

        Raises
        ------
        PayloadError
            For a message to dead-letter; the rebirth request it warrants (if any) is on
            the exception as ``outcome``.
        """
        now_ns = time.time_ns() if now_ns is None else now_ns
        msg = decode(topic_text, payload)
        t = msg.topic
        node = self.nodes.setdefault((t.group, t.edge), _Node())
        out = Outcome()
        if t.kind in ("NCMD", "DCMD"):
            return out
        if t.kind == "NDEATH":
            return self._death(node, msg, out)
        again = (topic_text, hash(payload))  # a message retried after waiting for its birth: seq seen
        if again not in self._waiting:
            self._seq(node, msg, out, now_ns / 1e9)
        try:
            self._apply(node, msg, out, now_ns, max_future_s, previous or {})
        except PayloadError as exc:
            if exc.reason in ("unknown_meter", "unknown_site"):
                if len(self._waiting) > 100_000:
                    self._waiting.clear()
                self._waiting.add(again)
            exc.outcome = out  # type: ignore[attr-defined]
            raise
        self._waiting.discard(again)
        return out

    def _death(self, node: _Node, msg: SpMessage, out: Outcome) -> Outcome:
        bd = msg.get("bdSeq")
        if node.bdseq is not None and bd is not None and bd != node.bdseq:
            return out  # the will of an older session: this one lives
        node.online = False
        node.next_seq = None
        out.status[msg.topic.edge] = "offline"
        for meter in node.aliases:
            out.meter_status[(msg.topic.edge, meter)] = "offline"
        return out

    def _apply(self, node: _Node, msg: SpMessage, out: Outcome, now_ns: int, max_future_s: float,
               previous: Mapping[tuple[str, str], codec.Reading]) -> None:
        t = msg.topic
        key = (t.edge, t.device)
        if t.kind == "NBIRTH":
            bd = msg.get("bdSeq")
            node.bdseq = int(bd) if isinstance(bd, int) else None
            node.online = True
            out.status[t.edge] = "online"
            out.site = site_from_birth(msg)
        elif t.kind == "DBIRTH":
            info, aliases = meter_from_birth(msg, self.meters.get(key))
            node.aliases[t.device] = aliases
            out.meters.append(info)
            out.meter_status[key] = "online"
        elif t.kind == "DDEATH":
            out.meter_status[key] = "offline"
        elif t.kind == "NDATA":
            text = msg.get("events")
            if isinstance(text, str):
                out.events = codec.decode_events(t.edge, text.encode(), now_ns=now_ns, max_future_s=max_future_s)
        elif t.kind == "DDATA":
            meter = self.meters.get(key)
            if meter is None:
                self._ask(node, t, out, now_ns / 1e9)
                known = any(s == t.edge for s, _ in self.meters)
                raise PayloadError("unknown_meter" if known else "unknown_site",
                                   f"{topic_text_of(t)}: no DBIRTH (or --meta) for meter {t.device!r} of site {t.edge!r}")
            out.data = readings_from_data(msg, meter, node.aliases.get(t.device, {}), now_ns=now_ns,
                                          max_future_s=max_future_s, previous=previous.get(key))


def topic_text_of(t: SpTopic) -> str:
    """The topic of a parsed Sparkplug topic."""
    return topic(t.group, t.kind, t.edge, t.device)
