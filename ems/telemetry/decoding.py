"""The decode step of ingestion: an MQTT message in, the contract's structures out, whatever the encoding.

A :class:`Decoder` knows one encoding on the wire. It says which topics to subscribe to,
routes a topic to what it carries (:class:`Route`: the kind, site and meter, from the
topic alone, before any payload is parsed) and decodes a payload into one of the
:data:`Decoded` structures, checked on its own (schema and bounds), or raises
:class:`~ems.errors.PayloadError` with a reason. Everything after this step (the
meter's metadata, registers, duplicates: :mod:`ems.telemetry.validate`; storing and
acknowledging: :mod:`ems.telemetry.settle`) is the same for every encoding.

:class:`JsonDecoder` is contract v1 (``docs/telemetry.md``: JSON on ``ems/v1/...``);
:class:`SparkplugDecoder` is Sparkplug B (:mod:`ems.telemetry.sparkplug`). Either produces
the same structures: :class:`Data` for readings, :class:`Meta` for a meter's metadata (a
metadata message, or a DBIRTH), :class:`Site`, :class:`Status`, and so on. Another encoding
plugs in as ``IngestOptions(decoder=...)`` with the same methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ems.errors import PayloadError
from ems.readings import MeterInfo, SiteInfo
from ems.telemetry import backfill, codec, topics
from ems.telemetry.codec import DataMessage

__all__ = [
    "Data",
    "Decoded",
    "Decoder",
    "Events",
    "Ignore",
    "JsonDecoder",
    "Mark",
    "Meta",
    "MeterRemoved",
    "MeterStatus",
    "Parts",
    "Route",
    "Site",
    "SparkplugDecoder",
    "Status",
]


@dataclass(frozen=True, slots=True)
class Route:
    """What a topic carries: ``kind`` (``data``, ``meta``, ``site``, ``status``, ``events``, ``hwm``, or
    anything else), and where applicable the site and meter. Only ``data`` is checked against the
    known meters before its payload is parsed."""

    kind: str
    site: str = ""
    meter: str = ""
    topic: str = ""


@dataclass(frozen=True, slots=True)
class Data:
    """Readings of one meter."""

    message: DataMessage


@dataclass(frozen=True, slots=True)
class Meta:
    """A meter's metadata."""

    info: MeterInfo


@dataclass(frozen=True, slots=True)
class MeterRemoved:
    """A meter's retained metadata was cleared."""

    site: str
    meter: str


@dataclass(frozen=True, slots=True)
class Site:
    """A site's registration."""

    info: SiteInfo


@dataclass(frozen=True, slots=True)
class Events:
    """Event ledger rows of a site (for :func:`ems.readings.events_frame`)."""

    site: str
    rows: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Mark:
    """A publisher's high-water mark (backfill)."""

    mark: backfill.HighWaterMark


@dataclass(frozen=True, slots=True)
class Status:
    """A site's or gateway's status text (``online``/``offline``)."""

    site: str
    text: str


@dataclass(frozen=True, slots=True)
class MeterStatus:
    """A gateway's word on one meter (``{"status": "offline", "reason": ...}``; empty: cleared)."""

    site: str
    meter: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing to keep (our own dead letters and backfill requests, commands)."""

    why: str


@dataclass(frozen=True, slots=True)
class Parts:
    """Several of the above from one message (a Sparkplug birth: a registration and a status)."""

    items: tuple[Any, ...]


Decoded = Data | Meta | MeterRemoved | Site | Events | Mark | Status | MeterStatus | Ignore | Parts
"""What a decoder turns a message into."""


class Decoder(Protocol):
    """One encoding on the wire (see module docs)."""

    max_payload_bytes: int
    """Largest payload accepted [B]; a larger one is ``oversized`` and never held whole."""

    def subscriptions(self, group: str | None) -> list[tuple[str, int]]:
        """Topic filters and QoS to subscribe to (``group``: a shared subscription for data)."""
        ...

    def retained_control(self, group: str | None) -> list[str]:
        """Filters of retained control messages worth fetching again now and then (high-water marks)."""
        ...

    def route(self, topic: str) -> Route:
        """What ``topic`` carries, from the topic alone; raises PayloadError (``bad_topic``, ...)."""
        ...

    def decode(self, route: Route, payload: bytes, *, now_ns: int, max_future_s: float) -> Decoded:
        """Decode and check ``payload`` on its own; raises PayloadError with a reason."""
        ...

    def requests(self) -> list[tuple[str, bytes]]:
        """Messages the decoder asks to publish (e.g. a Sparkplug rebirth request), since the last call."""
        ...


class JsonDecoder:
    """Contract v1: JSON payloads on ``ems/v1/...`` topics (:mod:`ems.telemetry.codec`)."""

    max_payload_bytes = codec.MAX_PAYLOAD_BYTES

    def subscriptions(self, group: str | None) -> list[tuple[str, int]]:
        """Metadata, then data (shared in a group); in a group also site registrations and marks."""
        subs = [(topics.META_FILTER, 1), (topics.shared(topics.DATA_FILTER, group), 1), (topics.METER_STATUS_FILTER, 1)]
        if group:  # the shared data filter would give _site and _hwm to one member only
            subs[1:1] = [(topics.SITE_FILTER, 1), (topics.HWM_FILTER, 1)]
        return subs

    def retained_control(self, group: str | None) -> list[str]:
        """The high-water marks (a broker's full queue may have dropped the latest)."""
        return [topics.HWM_FILTER]

    def route(self, topic: str) -> Route:
        """Parse ``topic`` (``bad_topic``, ``wrong_version`` when it is not the contract's)."""
        t = topics.parse_topic(topic)
        return Route(t.kind, t.site, t.meter, topic)

    def decode(self, route: Route, payload: bytes, *, now_ns: int, max_future_s: float) -> Decoded:
        """Decode a payload of ``route`` (see :mod:`ems.telemetry.codec` for the reasons)."""
        kind, site, meter = route.kind, route.site, route.meter
        if kind == "data":
            return Data(codec.parse_data(site, meter, payload, now_ns=now_ns, max_future_s=max_future_s))
        if kind == "meta":
            return MeterRemoved(site, meter) if not payload else Meta(codec.decode_meta(site, meter, payload))
        if kind == "site":
            return Site(codec.decode_site(site, payload))
        if kind == "events":
            return Events(site, codec.decode_events(site, payload, now_ns=now_ns, max_future_s=max_future_s))
        if kind == "hwm":
            return Mark(backfill.decode_hwm(site, payload, now_ns=now_ns, max_future_s=max_future_s))
        if kind == "status":
            return Status(site, payload[:32].decode("utf-8", "replace"))
        if kind == "meter_status":
            return MeterStatus(site, route.meter, codec.load_object(payload) if payload else {})
        return Ignore(kind)

    def requests(self) -> list[tuple[str, bytes]]:
        """Nothing: contract v1's requests (backfill) come from the ingestor's gap planner."""
        return []


class SparkplugDecoder:
    """Sparkplug B (:mod:`ems.telemetry.sparkplug`): births register, deaths mark offline, DDATA are readings.

    The host session keeps each node's sequence numbers, so every message of the group
    goes through it (none is parked before it is decoded); a gap or data of a node not
    born asks for a rebirth (:meth:`requests`).

    Parameters
    ----------
    group : str
        The Sparkplug group id.
    meters : mapping of (site, meter) to MeterInfo
        The known meters (the ingestor's, updated with each DBIRTH).
    previous : mapping of (site, meter) to Reading
        Each meter's latest reading accepted (registers are checked against it).
    """

    max_payload_bytes = codec.MAX_PAYLOAD_BYTES

    def __init__(self, group: str, meters: Mapping[tuple[str, str], MeterInfo],
                 previous: Mapping[tuple[str, str], codec.Reading]) -> None:
        from ems.telemetry import sparkplug

        self.group = group
        self.host = sparkplug.HostSession(meters)
        self.previous = previous
        self._requests: list[tuple[str, bytes]] = []

    def subscriptions(self, group: str | None) -> list[tuple[str, int]]:
        """Everything of the Sparkplug group."""
        from ems.telemetry.sparkplug import NAMESPACE

        return [(f"{NAMESPACE}/{self.group}/#", 1)]

    def retained_control(self, group: str | None) -> list[str]:
        """None: Sparkplug asks for a rebirth instead."""
        return []

    def route(self, topic: str) -> Route:
        """The edge node (site) and device (meter) of a Sparkplug topic; ``state`` for a host's STATE."""
        from ems.telemetry import sparkplug

        if topic.startswith(f"{sparkplug.NAMESPACE}/STATE/"):
            return Route("state", topic=topic)  # a host application's (ours: the session answers it)
        t = sparkplug.parse_topic(topic)
        return Route("sparkplug", t.edge, t.device, topic)

    def decode(self, route: Route, payload: bytes, *, now_ns: int, max_future_s: float) -> Decoded:
        """Apply one message to the host session; its outcome as the contract's structures."""
        if route.kind == "state":
            return Ignore("state")
        try:
            out = self.host.handle(route.topic, payload, now_ns=now_ns, max_future_s=max_future_s,
                                   previous=self.previous)
        except PayloadError as exc:
            asked = getattr(exc, "outcome", None)
            if asked is not None and asked.rebirth is not None:
                self._requests.append(asked.rebirth)
            raise
        if out.rebirth is not None:
            self._requests.append(out.rebirth)
        parts: list[Any] = [Status(site, text) for site, text in out.status.items()]
        parts += [MeterStatus(s, m, {"status": v}) for (s, m), v in out.meter_status.items()]
        parts += [Site(out.site)] if out.site is not None else []
        parts += [Meta(info) for info in out.meters]
        parts += [Data(out.data)] if out.data is not None else []
        parts += [Events(route.site, out.events)] if out.events else []
        if not parts:
            return Ignore("sparkplug")
        return parts[0] if len(parts) == 1 else Parts(tuple(parts))

    def requests(self) -> list[tuple[str, bytes]]:
        """Rebirth requests (NCMD) the session asked for since the last call."""
        out, self._requests = self._requests, []
        return out
