"""The decode step of ingestion: an MQTT message in, the contract's structures out, whatever the encoding.

A :class:`Decoder` knows one encoding on the wire. It says which topics to subscribe to,
routes a topic to what it carries (:class:`Route`: the kind, site and meter, from the
topic alone, before any payload is parsed) and decodes a payload into one of the
:data:`Decoded` structures, checked on its own (schema and bounds), or raises
:class:`~ems.errors.PayloadError` with a reason. Everything after this step (the
meter's metadata, registers, duplicates: :mod:`ems.telemetry.validate`; storing and
acknowledging: :mod:`ems.telemetry.settle`) is the same for every encoding.

:class:`JsonDecoder` is contract v1 (``docs/telemetry.md``: JSON on ``ems/v1/...``).
Another encoding (Sparkplug B, say) plugs in as ``IngestOptions(decoder=...)`` with the
same three methods, producing the same structures: :class:`Data` for readings,
:class:`Meta` for a meter's metadata (e.g. from a birth certificate), and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

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
    "Route",
    "Site",
    "Status",
]


@dataclass(frozen=True, slots=True)
class Route:
    """What a topic carries: ``kind`` (``data``, ``meta``, ``site``, ``status``, ``events``, ``hwm``, or
    anything else the ingestor only acknowledges), and where applicable the site and meter."""

    kind: str
    site: str = ""
    meter: str = ""


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
class Ignore:
    """Nothing to keep (our own dead letters and backfill requests)."""

    why: str


Decoded = Data | Meta | MeterRemoved | Site | Events | Mark | Status | Ignore
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


class JsonDecoder:
    """Contract v1: JSON payloads on ``ems/v1/...`` topics (:mod:`ems.telemetry.codec`)."""

    max_payload_bytes = codec.MAX_PAYLOAD_BYTES

    def subscriptions(self, group: str | None) -> list[tuple[str, int]]:
        """Metadata, then data (shared in a group); in a group also site registrations and marks."""
        subs = [(topics.META_FILTER, 1), (topics.shared(topics.DATA_FILTER, group), 1)]
        if group:  # the shared data filter would give _site and _hwm to one member only
            subs[1:1] = [(topics.SITE_FILTER, 1), (topics.HWM_FILTER, 1)]
        return subs

    def retained_control(self, group: str | None) -> list[str]:
        """The high-water marks (a broker's full queue may have dropped the latest)."""
        return [topics.HWM_FILTER]

    def route(self, topic: str) -> Route:
        """Parse ``topic`` (``bad_topic``, ``wrong_version`` when it is not the contract's)."""
        t = topics.parse_topic(topic)
        return Route(t.kind, t.site, t.meter)

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
        return Ignore(kind)
