"""The ingestor's MQTT session: a persistent session, manual acknowledgements, an inbox bounded by bytes.

* **Session**: a fixed client id, ``clean_start=False`` and a session expiry (MQTT 5;
  ``clean_session=False`` on 3.1.1), so the broker keeps unacknowledged messages while the
  ingestor is away. QoS 1 with *manual* acknowledgements: :meth:`MqttSession.ack` is called
  only when a message is settled (:mod:`ems.telemetry.settle`). On MQTT 5 the CONNECT carries
  a Receive Maximum, so the broker never has more than that many messages in flight to us.
* **Inbox**: paho's network thread puts each message on an :class:`Inbox` bounded by bytes
  and count. When it is full the network thread waits, paho stops reading the socket, and the
  broker holds the messages (backpressure). A payload larger than ``max_payload_bytes`` is
  never held whole: only its first ``keep_bytes``, its size and its SHA-256 are (the decoder
  rejects it as ``oversized``; the dead letter keeps that prefix).
* **Publishing** (dead letters, backfill requests): QoS 1; every PUBACK's reason code is
  checked. paho calls ``on_publish`` holding its own lock, so the callback only queues the
  result; :meth:`MqttSession.poll_pubacks` (another thread) logs each refusal (an ACL that
  forbids the topic: "Not authorized"), counts it, and tells the publisher's callback.
* **Retained control messages again**: :meth:`MqttSession.refresh` subscribes again to the
  given filters, so the broker sends their retained messages again (a high-water mark the
  broker dropped from a full queue is still retained).
* **Sparkplug host STATE** (optional, :class:`~ems.telemetry.sparkplug.HostState`): the
  CONNECT's will is the host's ``offline`` STATE (retained, QoS 1); after every (re)connect
  the session subscribes to the data topics and to its own STATE topic, and once the broker
  acknowledged that SUBSCRIBE it publishes ``online`` with the will's timestamp; an
  ``offline`` delivered on its own topic is answered with ``online`` again; a clean stop
  publishes ``offline`` before the DISCONNECT (Sparkplug 3.0, sections 4.2.3.1, 4.2.3.2, 5.3).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from ems.telemetry.connection import BrokerConfig, connect_and_wait, make_client
from ems.telemetry.sparkplug import HostState

__all__ = ["Ack", "Inbox", "Message", "MqttSession"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """A message as received: topic, payload (or the first bytes of an oversized one), and how to acknowledge it.

    Attributes
    ----------
    topic : str
    payload : bytes
        The payload, or its first ``keep_bytes`` when it was larger than the limit.
    size : int [B]
        The payload's real size.
    sha256 : str
        Hex SHA-256 of the whole payload, for an oversized one ("" otherwise).
    mid, qos : int
        For the acknowledgement (QoS 0 needs none).
    retain : bool
        Delivered as a retained message.
    received : float [s since the epoch]
    """

    topic: str
    payload: bytes
    size: int
    sha256: str
    mid: int
    qos: int
    retain: bool
    received: float

    @property
    def cost(self) -> int:
        """Bytes it holds in memory (payload and topic)."""
        return len(self.payload) + len(self.topic) + 200


@dataclass(frozen=True, slots=True)
class Ack:
    """What acknowledging a message needs (kept instead of the message once its payload is not needed)."""

    mid: int
    qos: int
    received: float

    @classmethod
    def of(cls, msg: Message) -> Ack:
        """The acknowledgement of ``msg``."""
        return cls(msg.mid, msg.qos, msg.received)


class Inbox:
    """A FIFO bounded by bytes and by count; :meth:`put` waits for room while ``open``."""

    def __init__(self, max_bytes: int, max_items: int) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self.bytes = 0
        self.count = 0
        self.open = True

    def put(self, msg: Message) -> bool:
        """Add ``msg`` once there is room; False if the inbox was closed while waiting."""
        with self._cond:
            while self.open and self.count and (
                self.bytes + msg.cost > self.max_bytes or self.count >= self.max_items
            ):
                self._cond.wait(0.2)
            if not self.open:
                return False
            self.bytes += msg.cost
            self.count += 1
            self._items.put(msg)
            return True

    def get(self, timeout: float) -> Message | None:
        """The oldest message, waiting up to ``timeout`` [s]; None if none came."""
        try:
            msg = self._items.get(timeout=timeout) if timeout > 0 else self._items.get_nowait()
        except queue.Empty:
            return None
        with self._cond:
            self.bytes -= msg.cost
            self.count -= 1
            self._cond.notify_all()
        return msg

    def close(self) -> None:
        """Stop accepting (a waiting :meth:`put` returns False)."""
        with self._cond:
            self.open = False
            self._cond.notify_all()


class MqttSession:
    """The ingestor's connection (see module docs).

    Parameters
    ----------
    cfg : BrokerConfig
    client_id : str
        Fixed: the broker keeps the session under it.
    subscriptions : callable
        Returns the ``(filter, qos)`` list to subscribe to (on every connect).
    inbox : Inbox
    session_expiry_s : int [s]
    receive_maximum : int
        Messages the broker may have in flight to us (MQTT 5).
    max_payload_bytes, keep_bytes : int [B]
        A larger payload is held as its first ``keep_bytes`` plus size and hash.
    counters : Counter
        Where ``publish_refused`` and ``publish_failed`` are counted.
    state : HostState, optional
        Act as a Sparkplug host application with this STATE (see module docs).
    """

    def __init__(self, cfg: BrokerConfig, client_id: str, *, subscriptions: Callable[[], list[tuple[str, int]]],
                 inbox: Inbox, session_expiry_s: int, receive_maximum: int, max_payload_bytes: int,
                 keep_bytes: int, counters: Counter[str], state: HostState | None = None) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.subscriptions = subscriptions
        self.inbox = inbox
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.max_payload_bytes = max_payload_bytes
        self.keep_bytes = keep_bytes
        self.counters = counters
        self._pubacks: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._pending: dict[int, tuple[str, Callable[[bool], None] | None]] = {}
        self._connected_once = False
        self.state = state
        self._state_sub = -1
        self._state_mids: set[int] = set()
        self._closing = False
        will = state.will() if state is not None else None
        self.client = make_client(cfg, client_id, persistent=True, manual_ack=True, will=will)
        self.client.max_inflight_messages_set(max(receive_maximum, 20))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect (persistent session), subscribe, start paho's network thread."""
        connect_and_wait(self.client, self.cfg, clean_start=False, session_expiry_s=self.session_expiry_s,
                         receive_maximum=self.receive_maximum)

    def stop_receiving(self) -> None:
        """Take no more messages: those not taken stay with the broker, unacknowledged."""
        self.inbox.close()

    def close(self) -> None:
        """Disconnect (a host first publishes its ``offline`` STATE) and stop paho's thread."""
        self._closing = True  # our own death comes back to us: not a reason for a birth
        if self.state is not None and self.client.is_connected():
            try:
                info = self.client.publish(self.state.topic, self.state.death(time.time_ns() // 1_000_000), qos=1,
                                           retain=True)
                info.wait_for_publish(5)
            except (RuntimeError, ValueError) as exc:  # lost the connection meanwhile: the will says it
                log.warning("could not publish the offline STATE: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------------ paho's thread

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if getattr(rc, "is_failure", False):
            log.error("broker refused the connection: %s", rc)
            return
        present = getattr(flags, "session_present", None)
        if self._connected_once and present is False:
            log.warning(
                "the broker did not keep this ingestor's session (client id %s): messages published "
                "while it was disconnected may be lost; run ems reconcile", self.client_id)
        self._connected_once = True
        subs = self.subscriptions()
        if self.state is not None:  # the namespace and our own STATE first; the birth when they are acknowledged
            subs = [*subs, (self.state.topic, 1)]
        _, mid = client.subscribe(subs)  # again on every reconnect
        self._state_sub = -1 if mid is None else mid
        log.info("subscribed to %s (session present: %s)", [s for s, _ in subs], present)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        if self.state is not None and mid == self._state_sub:
            self._publish_birth(client, "subscribed")

    def _publish_birth(self, client: mqtt.Client, why: str) -> None:
        assert self.state is not None
        info = client.publish(self.state.topic, self.state.birth(), qos=1, retain=True)
        self._state_mids.add(info.mid)
        log.info("Sparkplug host %s online (%s): STATE published", self.state.host_id, why)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self.state is not None:  # the next CONNECT's will (and the birth after it) carry its own time
            self.state.renew(time.time_ns() // 1_000_000)
            topic, payload = self.state.will()
            client.will_set(topic, payload, qos=1, retain=True)
        if rc != 0 and self.inbox.open:
            log.warning("disconnected from %s (%s); paho reconnects", self.cfg.describe(), rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.state is not None and not self._closing and self.state.answers(msg.topic, bytes(msg.payload[:1024])):
            self._publish_birth(client, "an offline STATE was delivered on its topic")
        raw = msg.payload
        size = len(raw)
        if size > self.max_payload_bytes:  # never hold it whole: a prefix, its size and its hash
            item = Message(msg.topic, bytes(raw[: self.keep_bytes]), size, hashlib.sha256(raw).hexdigest(),
                           msg.mid, msg.qos, bool(msg.retain), time.time())
        else:
            item = Message(msg.topic, bytes(raw), size, "", msg.mid, msg.qos, bool(msg.retain), time.time())
        del raw
        self.inbox.put(item)  # waits while full: backpressure. Closed: not acknowledged, delivered again later

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        if mid in self._state_mids:  # our STATE: nobody waits for it; a refusal is worth a word
            self._state_mids.discard(mid)
            if getattr(rc, "is_failure", False):
                log.warning("the broker refused the Sparkplug STATE on %s: %s (check its ACL)",
                            self.state.topic if self.state else "", rc)
            return
        self._pubacks.put((mid, rc))  # paho holds its lock here: only queue the result

    # ------------------------------------------------------------------ other threads

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a message (QoS 0 needs nothing)."""
        if qos > 0:
            self.client.ack(mid, qos)

    def publish(self, topic: str, payload: bytes, on_done: Callable[[bool], None] | None = None, qos: int = 1) -> None:
        """Publish (QoS 1 by default); ``on_done(accepted)`` is called from :meth:`poll_pubacks` when the PUBACK came.

        Call this and :meth:`poll_pubacks` from one thread (the ingestor's store thread).
        """
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.counters["publish_failed"] += 1
            log.warning("could not publish to %s: %s", topic, mqtt.error_string(info.rc))
            if on_done is not None:
                on_done(False)
            return
        if qos == 0:  # no PUBACK comes
            if on_done is not None:
                on_done(True)
            return
        self._pending[info.mid] = (topic, on_done)

    def poll_pubacks(self) -> None:
        """Handle the PUBACKs received: log and count refusals, call the publishers' callbacks."""
        while True:
            try:
                mid, rc = self._pubacks.get_nowait()
            except queue.Empty:
                return
            if mid in self._pending:
                self._settle_puback(mid, rc)

    def _settle_puback(self, mid: int, rc: Any) -> None:
        topic, on_done = self._pending.pop(mid)
        ok = not getattr(rc, "is_failure", False)
        if not ok:
            self.counters["publish_refused"] += 1
            log.warning("the broker refused a publish to %s: %s (check its ACL for this user)", topic, rc)
        if on_done is not None:
            on_done(ok)

    def refresh(self, filters: list[str]) -> None:
        """Subscribe again to ``filters``: the broker sends their retained messages again."""
        if filters and self.client.is_connected():
            self.client.subscribe([(f, 1) for f in filters])
