"""MQTT topics of the telemetry contract, version 1 (``docs/telemetry.md``).

Every topic starts with ``ems/v1``; identifiers are safe (``[a-z0-9][a-z0-9_-]{0,62}``:
no wildcards, no slashes, no leading underscore), so a level starting with ``_``
is always one of the contract's own sub-topics::

    ems/v1/{site}/{meter}          readings of one meter (JSON, several per message)
    ems/v1/{site}/{meter}/meta     the meter's metadata (retained)
    ems/v1/{site}/{meter}/_status  the meter's ``online``/``offline`` status (retained; gateways)
    ems/v1/{site}/_site            the site's registration (retained)
    ems/v1/{site}/_status          ``online`` / ``offline`` (retained; last will)
    ems/v1/{site}/_events          the site's event ledger entries
    ems/v1/{site}/_hwm             the publisher's high-water mark per meter (retained)
    ems/v1/{site}/_backfill        ingestors' requests to publish readings again
    ems/v1/_deadletter/{reason}    messages an ingestor rejected
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ems.errors import PayloadError

__all__ = [
    "DATA_FILTER",
    "DEADLETTER_PREFIX",
    "HWM_FILTER",
    "ID_RE",
    "META_FILTER",
    "METER_STATUS_FILTER",
    "PREFIX",
    "SITE_FILTER",
    "Topic",
    "backfill_topic",
    "data_topic",
    "deadletter_topic",
    "events_topic",
    "hwm_topic",
    "meta_topic",
    "meter_status_topic",
    "parse_topic",
    "shared",
    "site_topic",
    "status_topic",
    "validate_id",
]

PREFIX = "ems/v1"
"""Root and contract version of every topic."""

ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""Identifiers of sites and meters (the same pattern as site files)."""

DATA_FILTER = f"{PREFIX}/+/+"
"""Subscription for readings; also matches ``_site``, ``_status`` and ``_events``."""
META_FILTER = f"{PREFIX}/+/+/meta"
"""Subscription for the retained meter metadata."""
METER_STATUS_FILTER = f"{PREFIX}/+/+/_status"
"""Subscription for the retained status of each meter a gateway polls."""
SITE_FILTER = f"{PREFIX}/+/_site"
"""Subscription for the retained site registrations."""
HWM_FILTER = f"{PREFIX}/+/_hwm"
"""Subscription for the retained high-water marks (also matched by ``DATA_FILTER``)."""
DEADLETTER_PREFIX = f"{PREFIX}/_deadletter"
"""Where rejected messages are republished, one sub-topic per reason."""

TopicKind = Literal[
    "data", "meta", "site", "status", "events", "hwm", "backfill", "deadletter", "meter_status"
]
_SPECIAL: dict[str, TopicKind] = {
    "_site": "site", "_status": "status", "_events": "events", "_hwm": "hwm", "_backfill": "backfill"
}


def validate_id(value: object, what: str = "identifier") -> str:
    """Return ``value`` if it is a safe identifier.

    Raises
    ------
    PayloadError
        ``bad_topic`` naming the pattern and what was found.
    """
    if not isinstance(value, str) or not ID_RE.match(value):
        raise PayloadError(
            "bad_topic",
            f"{what} must match {ID_RE.pattern} (a-z, 0-9, _ and -; no wildcards or slashes); "
            f"found {value!r}",
        )
    return value


def data_topic(site: str, meter: str) -> str:
    """Return the topic of a meter's readings."""
    return f"{PREFIX}/{validate_id(site, 'site')}/{validate_id(meter, 'meter')}"


def meta_topic(site: str, meter: str) -> str:
    """Return the topic of a meter's retained metadata."""
    return f"{data_topic(site, meter)}/meta"


def meter_status_topic(site: str, meter: str) -> str:
    """Return the topic of a meter's retained status (``online``/``offline`` and why)."""
    return f"{data_topic(site, meter)}/_status"


def site_topic(site: str) -> str:
    """Return the topic of a site's retained registration."""
    return f"{PREFIX}/{validate_id(site, 'site')}/_site"


def status_topic(site: str) -> str:
    """Return the topic of a site's retained ``online``/``offline`` status."""
    return f"{PREFIX}/{validate_id(site, 'site')}/_status"


def events_topic(site: str) -> str:
    """Return the topic of a site's events."""
    return f"{PREFIX}/{validate_id(site, 'site')}/_events"


def hwm_topic(site: str) -> str:
    """Return the topic of a site's retained high-water mark."""
    return f"{PREFIX}/{validate_id(site, 'site')}/_hwm"


def backfill_topic(site: str) -> str:
    """Return the topic of backfill requests to a site's gateway."""
    return f"{PREFIX}/{validate_id(site, 'site')}/_backfill"


def deadletter_topic(reason: str) -> str:
    """Return the dead-letter topic for a rejection ``reason``."""
    return f"{DEADLETTER_PREFIX}/{reason}"


def shared(topic_filter: str, group: str | None) -> str:
    """Return ``topic_filter`` as an MQTT 5 shared subscription of ``group`` (or as is)."""
    if not group:
        return topic_filter
    validate_id(group, "shared subscription group")
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic: its kind and, where it has them, site and meter."""

    kind: TopicKind
    site: str = ""
    meter: str = ""


def parse_topic(topic: str) -> Topic:
    """Parse a topic of the contract.

    Raises
    ------
    PayloadError
        ``bad_topic`` if it is not one of the contract's topics, or ``wrong_version``
        if it is an ``ems`` topic of another version.
    """
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != "ems":
        raise PayloadError("bad_topic", f"expected ems/v1/{{site}}/{{meter}}[/meta]; found {topic!r}")
    if parts[1] != "v1":
        raise PayloadError("wrong_version", f"expected topic version v1; found {parts[1]!r} in {topic!r}")
    if parts[2] == "_deadletter":
        return Topic("deadletter")
    if len(parts) == 4:
        site, last = parts[2], parts[3]
        validate_id(site, f"site in topic {topic!r}")
        if last in _SPECIAL:
            return Topic(_SPECIAL[last], site)
        validate_id(last, f"meter in topic {topic!r}")
        return Topic("data", site, last)
    if len(parts) == 5 and parts[4] in ("meta", "_status"):
        validate_id(parts[2], f"site in topic {topic!r}")
        validate_id(parts[3], f"meter in topic {topic!r}")
        return Topic("meta" if parts[4] == "meta" else "meter_status", parts[2], parts[3])
    raise PayloadError(
        "bad_topic",
        f"expected ems/v1/{{site}}/{{meter}}, .../meta, .../{{meter}}/_status, .../_site, .../_status, .../_events, .../_hwm "
        f"or .../_backfill; "
        f"found {topic!r}",
    )
