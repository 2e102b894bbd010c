"""Site status from MQTT: the retained ``ems/v1/{site}/_status`` topics (``online``/``offline``).

A gateway publishes ``online`` (retained) when it connects and its last will says
``offline`` (``docs/telemetry.md``), so a subscriber learns every site's state at once
from the retained messages and follows the changes. ``ems dashboard --broker URL``
uses this; ``ems live`` takes the statuses its ingestor already follows.
"""

from __future__ import annotations

import logging
import os
import threading
from types import TracebackType
from typing import Any

__all__ = ["STATUS_FILTER", "StatusWatcher"]

log = logging.getLogger(__name__)

STATUS_FILTER = "ems/v1/+/_status"
"""Subscription for every site's status."""


class StatusWatcher:
    """Follow the site statuses on a broker (QoS 1, non-persistent session).

    Parameters
    ----------
    broker_url : str
        ``mqtt://host:port`` (see :class:`ems.telemetry.connection.BrokerConfig`);
        the password, if any, comes from ``EMS_MQTT_PASSWORD`` or ``EMS_MQTT_PASSWORD_FILE``.
    username : str, optional
    """

    def __init__(self, broker_url: str, username: str | None = None) -> None:
        from ems.telemetry import topics
        from ems.telemetry.connection import BrokerConfig, make_client, password_from_env

        self._topics = topics
        self.cfg = BrokerConfig.from_url(
            broker_url, username=username, password=password_from_env() if username else None
        )
        self._lock = threading.Lock()
        self._status: dict[str, str] = {}
        self.client = make_client(self.cfg, f"ems-dashboard-{os.getpid()}")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        if not getattr(rc, "is_failure", False):
            client.subscribe(STATUS_FILTER, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        from ems.errors import PayloadError

        try:
            t = self._topics.parse_topic(msg.topic)
        except PayloadError:  # not a topic of the contract: ignore
            return
        if t.kind != "status":
            return
        state = bytes(msg.payload).decode("utf-8", "replace").strip()[:32]
        with self._lock:
            self._status[t.site] = state
        log.info("site %s is %s", t.site, state)

    def start(self) -> StatusWatcher:
        """Connect and subscribe (raises :class:`~ems.errors.TelemetryError` if the broker is unreachable)."""
        from ems.telemetry.connection import connect_and_wait

        connect_and_wait(self.client, self.cfg)
        return self

    def stop(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()

    def __call__(self) -> dict[str, str]:
        """Current ``{site: state}``."""
        with self._lock:
            return dict(self._status)

    def __enter__(self) -> StatusWatcher:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
