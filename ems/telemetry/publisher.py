"""Publish a ReadingSet to an MQTT broker as a site's meters would (contract v1).

One MQTT connection per site (a site gateway), each with a retained last will
that marks the site ``offline``. Before any data a gateway publishes, retained,
the site registration and every meter's metadata, then ``online``.

Pacing: as fast as the broker acknowledges, with a bounded window of
unacknowledged messages per connection (paho reuses 16-bit message ids, so an
unbounded window silently loses QoS 1 messages past ~65,000 in flight), or in
real time scaled by ``speed`` with SimPy's :class:`simpy.rt.RealtimeEnvironment`.

Every acknowledgement goes into the :class:`~ems.telemetry.ledger.Ledger`; a
restarted publisher continues after each meter's checkpoint, so nothing is
skipped and nothing sent twice except messages in flight at the crash (which
idempotent stores absorb).

Backfill (:mod:`ems.telemetry.backfill`): each gateway publishes its site's
retained high-water mark (``_hwm``: per meter the ledger's ``last_seq``) every
``hwm_every_s``, after a reconnect and at the end, and answers backfill requests
(``_backfill``) by publishing the asked readings again (same seq, ts, values),
up to what the broker acknowledged. After the stream it stays ``linger_s`` for
late requests.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pandas as pd

from ems.errors import PayloadError, ReadingError, TelemetryError
from ems.readings import MeterInfo, ReadingSet, SiteInfo
from ems.telemetry import backfill, codec, sparkplug, topics
from ems.telemetry.connection import BrokerConfig, connect_and_wait, make_client
from ems.telemetry.ledger import Ledger
from ems.telemetry.pacing import run_paced

__all__ = ["MeterSeries", "PublishOptions", "PublishStats", "Publisher", "SiteConnection", "meter_series"]

log = logging.getLogger(__name__)


def _ms() -> int:
    """Now [ms since the epoch] (Sparkplug payload timestamps)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class MeterSeries:
    """One meter's readings as arrays: ``seq`` (1-based position), ``ts`` [ns], ``values`` (n x q)."""

    info: MeterInfo
    quantities: tuple[str, ...]
    seq: np.ndarray
    ts: np.ndarray
    values: np.ndarray

    def payload(self, i: int, j: int) -> bytes:
        """Encode readings ``[i, j)`` as one data message."""
        qs = self.quantities
        vals = self.values[i:j].tolist()
        rows = [
            {"seq": s, "ts": t, "values": {q: v for q, v in zip(qs, row, strict=True) if v == v}}
            for s, t, row in zip(self.seq[i:j].tolist(), self.iso[i:j], vals, strict=True)
        ]
        return codec.encode_rows(self.info.site, self.info.meter, self.info.interval_s, rows)

    def rows(self, i: int, j: int) -> list[tuple[int, dict[str, float]]]:
        """Readings ``[i, j)`` as ``(ts_ns, values)``, NaN left out."""
        qs = self.quantities
        return [(t, {q: v for q, v in zip(qs, row, strict=True) if v == v})
                for t, row in zip(self.ts[i:j].tolist(), self.values[i:j].tolist(), strict=True)]

    @property
    def iso(self) -> list[str]:
        """ISO 8601 UTC strings of ``ts`` (computed once)."""
        cached: list[str] | None = self.__dict__.get("_iso")
        if cached is None:
            cached = [codec.format_ts(t) for t in self.ts.tolist()]
            object.__setattr__(self, "_iso", cached)
        return cached


def meter_series(rs: ReadingSet) -> list[MeterSeries]:
    """Split a ReadingSet into per-meter arrays (NaN where a quantity is missing at a ts)."""
    r = rs.readings
    infos = {(m.site, m.meter): m for m in rs.meters}
    out: list[MeterSeries] = []
    if r.empty:
        return out
    frame = pd.DataFrame(
        {
            "ts": pd.DatetimeIndex(r.index).as_unit("ns").asi8,
            "site": r["site"].astype(str).to_numpy(),
            "meter": r["meter"].astype(str).to_numpy(),
            "quantity": r["quantity"].astype(str).to_numpy(),
            "value": r["value"].to_numpy(dtype="float64"),
        }
    )
    for (site, meter), g in frame.groupby(["site", "meter"], sort=True):
        info = infos.get((str(site), str(meter)))
        if info is None:
            raise ReadingError(f"readings of {site}/{meter} have no MeterInfo; every meter needs metadata")
        w = g.pivot_table(index="ts", columns="quantity", values="value", aggfunc="last")
        qs = tuple(q for q in info.quantities if q in w.columns) + tuple(
            q for q in w.columns if q not in info.quantities
        )
        w = w[list(qs)].sort_index()
        ts = w.index.to_numpy(dtype="int64")
        out.append(
            MeterSeries(info, qs, np.arange(1, len(ts) + 1, dtype="int64"), ts, w.to_numpy(dtype="float64"))
        )
    return out


@dataclass
class PublishOptions:
    """How to publish.

    Attributes
    ----------
    qos : int
        0 or 1 (default 1).
    speed : float, optional
        Plant seconds per real second (3600: an hour per second); None: as fast as
        the broker takes it.
    batch : int
        Readings per message (as fast as possible); in real time, readings due at
        one step go in one message per meter.
    window : int
        Unacknowledged messages allowed per connection.
    ledger : path, optional
        Ledger and checkpoint file.
    client_id_prefix : str
        Client ids are ``{prefix}-{site}``.
    events : bool
        Publish the event ledger too.
    ack_timeout_s : float [s]
        How long to wait at the end for the last acknowledgements.
    hwm_every_s : float [s]
        How often to publish the sites' high-water marks while streaming (and once at the end).
    linger_s : float [s]
        After the stream, keep answering backfill requests until none came for this long
        (at most ten times as long in all); 0: end at once. ``ems stream --linger``.
    backfill_max : int
        Most readings answered for one request (a bigger request is cut).
    encoding : str
        ``json`` (contract v1 topics) or ``sparkplug`` (Sparkplug B: each site an edge node,
        each meter a device, :mod:`ems.telemetry.sparkplug`; no backfill, a rebirth instead).
    sparkplug_group : str
        The Sparkplug group id.
    sparkplug_primary_host : str, optional
        Sparkplug: the host id of the primary host application. Each edge node (site) then
        publishes its births only once that host's ``STATE`` says online, and when it says
        offline publishes NDEATH, disconnects and starts over (readings wait meanwhile and
        follow the rebirth). None: publish at once.
    """

    qos: int = 1
    speed: float | None = None
    batch: int = 100
    window: int = 1000
    ledger: Path | None = None
    client_id_prefix: str = "ems-pub"
    events: bool = True
    ack_timeout_s: float = 60.0
    hwm_every_s: float = 1.0
    linger_s: float = 0.0
    backfill_max: int = 100_000
    encoding: str = "json"
    sparkplug_group: str = "ems"
    sparkplug_primary_host: str | None = None


@dataclass
class PublishStats:
    """What a run published (acknowledged by the broker for QoS 1)."""

    readings: int = 0
    messages: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    backfilled: int = 0
    backfill_requests: int = 0
    per_meter: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Readings per second [1/s]."""
        return self.readings / self.elapsed_s if self.elapsed_s > 0 else 0.0


class SiteConnection:
    """One site's MQTT connection, as a site gateway has it: ``ems stream``'s and ``ems gateway``'s.

    Its last will marks the site ``offline`` (a Sparkplug edge node's: NDEATH); at most
    ``window`` messages wait for their PUBACK (a full window waits, or, for a caller that
    must not block, check :attr:`pending` first); every acknowledgement goes into the
    ledger, a refused one (PUBACK reason code) is logged and not counted; backfill
    requests for the site (``_backfill``) and Sparkplug commands wait in :attr:`requests`
    and :attr:`commands`; :attr:`reconnected` is set after a reconnect (the broker may
    have lost the retained high-water mark).
    """

    def __init__(self, site: str, cfg: BrokerConfig, opts: PublishOptions, ledger: Ledger) -> None:
        self.site = site
        self.opts = opts
        self.ledger = ledger
        self.acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.refusals: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
        self.refused = 0
        self._refusal_reasons: dict[int, str] = {}
        self.pending: dict[int, tuple[str, list[Any], int, int, int]] = {}
        self.readings = 0
        self.messages = 0
        self.per_meter: dict[str, int] = {}
        self.requests: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.backfill_mids: dict[int, int] = {}
        self.backfilled = 0
        self.reconnected = threading.Event()
        self._connected_once = False
        cid = f"{opts.client_id_prefix}-{site}"[:64]
        self.sparkplug = opts.encoding == "sparkplug"
        self.bdseq = time.time_ns() // 1_000_000 % 256  # a new session's birth/death sequence number
        self.sp_seq = 0
        self.commands: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        primary = opts.sparkplug_primary_host if self.sparkplug else None
        self.host = sparkplug.HostWatch(primary) if primary else None
        self.host_online = threading.Event()
        self.host_lost = threading.Event()
        self.cfg, self.client_id = cfg, cid
        self.client = self._new_client()

    def _new_client(self) -> mqtt.Client:
        """A paho client for a new MQTT session, its will the site's ``offline`` (Sparkplug: NDEATH with its bdSeq)."""
        if self.sparkplug:
            will = (sparkplug.topic(self.opts.sparkplug_group, "NDEATH", self.site), sparkplug.ndeath(self.bdseq, _ms()))
            client = make_client(self.cfg, self.client_id, will=will, will_retain=False)
        else:
            client = make_client(self.cfg, self.client_id, will=(topics.status_topic(self.site), b"offline"))
        client.max_inflight_messages_set(max(self.opts.window, 20))
        client.max_queued_messages_set(0)
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        return client

    # paho's network thread: never take a lock here that the publishing thread
    # holds while calling into paho (paho calls this under its own mutex)
    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        if getattr(rc, "is_failure", False):  # a negative PUBACK (MQTT 5): the broker did not take it
            self.refusals.put((mid, str(rc)))
        self.acks.put(mid)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if getattr(rc, "is_failure", False):
            return
        client.subscribe(topics.backfill_topic(self.site), qos=1)  # again after every reconnect
        if self.sparkplug:
            client.subscribe(sparkplug.topic(self.opts.sparkplug_group, "NCMD", self.site), qos=1)
        if self.host is not None:  # the primary host's STATE (retained: delivered at once)
            client.subscribe(self.host.topic, qos=1)
        if self._connected_once:
            self.reconnected.set()  # the broker may have lost the retained high-water mark
        self._connected_once = True

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.host is not None and msg.topic == self.host.topic:
            self._on_state(bytes(msg.payload))
        elif msg.topic.startswith(sparkplug.NAMESPACE):
            self.commands.put(bytes(msg.payload))
        else:
            self.requests.put(bytes(msg.payload))

    def _on_state(self, payload: bytes) -> None:
        """The primary host's STATE: online lets births go; offline (not older than the last) ends the session."""
        assert self.host is not None
        try:
            online = self.host.see(self.host.topic, payload)
        except PayloadError as exc:
            log.warning("site %s: ignored a STATE of primary host %s: %s", self.site, self.host.host_id, exc)
            return
        if online is True:
            self.host_online.set()
        elif online is False:
            self.host_online.clear()
            self.host_lost.set()

    def wait_for_host(self, stop: threading.Event) -> bool:
        """Wait until the primary host is online (at once without one); False if ``stop`` came first."""
        if self.host is None or self.host_online.is_set():
            return True
        log.info("site %s: waiting for primary host application %s to be online (%s)", self.site,
                 self.host.host_id, self.host.topic)
        while not self.host_online.wait(0.2):
            self.drain()
            if stop.is_set():
                return False
        log.info("site %s: primary host %s is online", self.site, self.host.host_id)
        return True

    def new_session(self) -> None:
        """Sparkplug, the primary host went offline: NDEATH, DISCONNECT, CONNECT again with the next bdSeq.

        What was published is acknowledged first (it is in the ledger); the births follow
        once the host is back (:meth:`wait_for_host`).
        """
        self.finish(10.0)
        self.pending.clear()  # (what is still unacknowledged now is not in the ledger: reconcile names it)
        group = self.opts.sparkplug_group
        log.warning("site %s: primary host %s went offline; NDEATH, disconnect, and start over", self.site,
                    self.host.host_id if self.host else "")
        with contextlib.suppress(RuntimeError, ValueError):  # not connected: the broker sent the will
            self.client.publish(sparkplug.topic(group, "NDEATH", self.site), sparkplug.ndeath(self.bdseq, _ms()),
                                qos=1).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()
        self.bdseq = (self.bdseq + 1) % 256
        self.client = self._new_client()  # (paho's network thread cannot be started twice without a leak)
        self.host_lost.clear()
        self.host_online.clear()
        connect_and_wait(self.client, self.cfg)
        self.reconnected.clear()

    def next_seq(self) -> int:
        """The Sparkplug seq of the next message of this edge node (0-255)."""
        self.sp_seq = (self.sp_seq + 1) % 256
        return self.sp_seq

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc != 0:
            log.warning("site %s: disconnected from %s (%s); paho reconnects", self.site, self.cfg.describe(), rc)

    def connect(self) -> None:
        connect_and_wait(self.client, self.cfg)

    def drain(self, block_s: float = 0.0) -> None:
        """Process acknowledgements; wait up to ``block_s`` [s] for the first."""
        try:
            mid = self.acks.get(timeout=block_s) if block_s > 0 else self.acks.get_nowait()
        except queue.Empty:
            return
        while True:
            entry = self.pending.pop(mid, None)
            if self._refused(mid, entry):
                entry = None
            bf = self.backfill_mids.pop(mid, 0)
            self.backfilled += bf
            if entry is not None:
                meter, token, n, t0, t1 = entry
                if n:
                    self.ledger.acked(self.site, meter, token, n, t0, t1)
                    self.readings += n
                    self.per_meter[meter] = self.per_meter.get(meter, 0) + n
                self.messages += 1
            try:
                mid = self.acks.get_nowait()
            except queue.Empty:
                return

    def _refused(self, mid: int, entry: tuple[str, list[Any], int, int, int] | None) -> bool:
        """True if the broker refused ``mid`` (logged, counted, kept out of the ledger)."""
        try:
            while True:
                rmid, why = self.refusals.get_nowait()
                self._refusal_reasons[rmid] = why
        except queue.Empty:
            pass
        why = self._refusal_reasons.pop(mid, "")
        if not why:
            return False
        self.refused += 1
        meter = entry[0] if entry else ""
        log.warning("site %s: the broker refused a publish%s: %s (its ACL for this user?); not counted as delivered",
                    self.site, f" of meter {meter}" if meter else "", why)
        return True

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        meter: str = "",
        last_seq: int = 0,
        n: int = 0,
        t0: int = 0,
        t1: int = 0,
        backfill: int = 0,
    ) -> None:
        """Publish one message, waiting while the window is full (``backfill``: readings answering a request)."""
        qos = self.opts.qos
        while True:
            self.drain()
            while len(self.pending) >= self.opts.window:
                self.drain(block_s=1.0)
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                break  # NO_CONN: queued by paho, sent after the reconnect
            log.debug("site %s: publish rc=%s; waiting for the window", self.site, info.rc)
            self.drain(block_s=0.2)
        token = self.ledger.sent(self.site, meter, last_seq) if n else []
        if qos == 0:
            self.backfilled += backfill
            if n:
                self.ledger.acked(self.site, meter, token, n, t0, t1)
                self.readings += n
                self.per_meter[meter] = self.per_meter.get(meter, 0) + n
            self.messages += 1
            return
        if backfill:
            self.backfill_mids[info.mid] = backfill
        self.pending[info.mid] = (meter, token, n, t0, t1)

    def publish_hwm(self, meters: Iterable[str]) -> None:
        """Publish the site's high-water mark (retained): per meter the ledger's ``last_seq``, if any."""
        marks = {m: self.ledger.last_seq(self.site, m) for m in meters}
        if any(marks.values()):
            self.publish(topics.hwm_topic(self.site), backfill.encode_hwm(self.site, marks, time.time_ns()), retain=True)

    def finish(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self.drain(block_s=0.5)
        if self.pending:
            log.warning("site %s: %d messages still unacknowledged at the end", self.site, len(self.pending))

    def close(self) -> None:
        try:
            if self.sparkplug:  # the death a will would have sent
                death = sparkplug.ndeath(self.bdseq, _ms())
                info = self.client.publish(sparkplug.topic(self.opts.sparkplug_group, "NDEATH", self.site), death, qos=1)
            else:
                info = self.client.publish(topics.status_topic(self.site), b"offline", qos=1, retain=True)
            info.wait_for_publish(5)
        except (RuntimeError, ValueError):  # not connected any more
            pass
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """Publish a :class:`~ems.readings.ReadingSet` over MQTT.

    Parameters
    ----------
    cfg : BrokerConfig
    readings : ReadingSet
    options : PublishOptions
    """

    def __init__(self, cfg: BrokerConfig, readings: ReadingSet, options: PublishOptions | None = None) -> None:
        self.cfg = cfg
        self.rs = readings
        self.opts = options or PublishOptions()
        if self.opts.qos not in (0, 1):
            raise TelemetryError(f"qos must be 0 or 1, found {self.opts.qos}")
        self.ledger = Ledger(self.opts.ledger)
        self.series = meter_series(readings)
        for s in self.series:
            topics.data_topic(s.info.site, s.info.meter)  # identifiers are safe
        self._gw: dict[str, SiteConnection] = {}
        self._last_save = 0.0
        self._last_hwm = 0.0
        self._stop = threading.Event()
        self._by_key = {(s.info.site, s.info.meter): s for s in self.series}
        self.backfill_requests = 0

    def stop(self) -> None:
        """Ask a running :meth:`run` (in another thread) to stop after the current message.

        What was published is still acknowledged, saved in the ledger, and the
        sites marked ``offline``; a later run with the same ledger continues.
        """
        self._stop.set()

    def published(self) -> int:
        """Readings acknowledged so far in this run (safe to call from another thread)."""
        return sum(gw.readings for gw in list(self._gw.values()))

    def _sites(self) -> list[SiteInfo]:
        known = {s.site: s for s in self.rs.sites}
        names = sorted({s.info.site for s in self.series} | set(known))
        return [known[n] for n in names if n in known]

    def _start(self) -> None:
        sites = sorted({s.info.site for s in self.series} | {s.site for s in self.rs.sites})
        for site in sites:
            gw = SiteConnection(site, self.cfg, self.opts, self.ledger)
            gw.connect()
            self._gw[site] = gw
        if self.opts.encoding == "sparkplug":
            for gw in self._gw.values():
                self._rebirth(gw)
            return
        for info in self._sites():
            self._gw[info.site].publish(topics.site_topic(info.site), codec.encode_site(info), retain=True)
        for m in self.rs.meters:
            if m.site in self._gw:
                self._gw[m.site].publish(topics.meta_topic(m.site, m.meter), codec.encode_meta(m), retain=True)
        for site, gw in self._gw.items():
            gw.publish(topics.status_topic(site), b"online", retain=True)

    def _rebirth(self, gw: SiteConnection) -> bool:
        """Sparkplug: the births, once the primary host (if any) is online; False if stopped while waiting."""
        if not gw.wait_for_host(self._stop):
            return False
        self._births(gw)
        return True

    def _ready(self, gw: SiteConnection) -> bool:
        """Sparkplug: a new session if the primary host went offline, births again if asked; False if stopped."""
        if gw.host_lost.is_set():
            gw.new_session()
            return self._rebirth(gw)
        self._sparkplug_commands(gw)
        return gw.host_online.is_set() or gw.host is None or self._rebirth(gw)

    def _births(self, gw: SiteConnection) -> None:
        """Sparkplug: NBIRTH (seq 0) then a DBIRTH per meter of the site; again on a rebirth request."""
        group = self.opts.sparkplug_group
        gw.sp_seq = 0
        site = next((s for s in self.rs.sites if s.site == gw.site), None)
        gw.publish(sparkplug.topic(group, "NBIRTH", gw.site), sparkplug.nbirth(gw.bdseq, _ms(), site))
        for m in self.rs.meters:
            if m.site == gw.site:
                gw.publish(sparkplug.topic(group, "DBIRTH", m.site, m.meter), sparkplug.dbirth(m, gw.next_seq(), _ms()))

    def _events(self, until_ns: int | None = None, since_ns: int | None = None) -> None:
        ev = self.rs.events
        if not self.opts.events or ev is None or ev.empty:
            return
        ts = pd.DatetimeIndex(ev.index).as_unit("ns").asi8
        keep = np.ones(len(ev), dtype=bool)
        if until_ns is not None:
            keep &= ts <= until_ns
        if since_ns is not None:
            keep &= ts > since_ns
        sub = ev[keep]
        for site, g in sub.groupby(sub["site"].astype(str), sort=True):
            gw = self._gw.get(str(site))
            if gw is None:
                continue
            rows = [
                {"ts": int(t), **{c: row[c] for c in ("kind", "subject", "value", "unit", "detail")}}
                for t, (_, row) in zip(pd.DatetimeIndex(g.index).as_unit("ns").asi8, g.iterrows(), strict=True)
            ]
            for i in range(0, len(rows), 500):
                if gw.sparkplug and not self._ready(gw):
                    return
                if gw.sparkplug:
                    gw.publish(sparkplug.topic(self.opts.sparkplug_group, "NDATA", gw.site),
                               sparkplug.ndata_events(gw.site, rows[i : i + 500], gw.next_seq(), _ms()))
                else:
                    gw.publish(topics.events_topic(str(site)), codec.encode_events(str(site), rows[i : i + 500]))

    def _send(self, s: MeterSeries, i: int, j: int) -> None:
        gw = self._gw[s.info.site]
        if gw.sparkplug and not self._ready(gw):
            return  # stopped while the primary host was offline: not sent, not in the ledger
        if gw.sparkplug:
            t = sparkplug.topic(self.opts.sparkplug_group, "DDATA", s.info.site, s.info.meter)
            payload = sparkplug.ddata(s.rows(i, j), gw.next_seq(), _ms())
        else:
            t, payload = topics.data_topic(s.info.site, s.info.meter), s.payload(i, j)
        gw.publish(
            t,
            payload,
            meter=s.info.meter,
            last_seq=int(s.seq[j - 1]),
            n=j - i,
            t0=int(s.ts[i]),
            t1=int(s.ts[j - 1]),
        )
        now = time.monotonic()
        if now - self._last_save > 1.0:
            self.ledger.save()
            self._last_save = now
        self._housekeeping(now)

    # ------------------------------------------------------------------ backfill

    def _housekeeping(self, now: float) -> None:
        """Answer backfill requests; publish the high-water marks when due or after a reconnect."""
        due = now - self._last_hwm >= self.opts.hwm_every_s
        if self.opts.encoding == "sparkplug":
            for gw in list(self._gw.values()):
                if gw.host_lost.is_set():
                    self._ready(gw)
                else:
                    self._sparkplug_commands(gw)
            return
        for gw in list(self._gw.values()):
            if not gw.requests.empty():
                self._answer(gw)
            if due or gw.reconnected.is_set():
                gw.reconnected.clear()
                self._publish_hwm(gw)
        if due:
            self._last_hwm = now

    def _sparkplug_commands(self, gw: SiteConnection) -> None:
        """Sparkplug: publish the births again after a reconnect or when a host asks (NCMD rebirth)."""
        rebirth = gw.reconnected.is_set()
        gw.reconnected.clear()
        while not gw.commands.empty():
            rebirth = sparkplug.is_rebirth_request(gw.commands.get_nowait()) or rebirth
        if rebirth:
            log.info("site %s: publishing NBIRTH and DBIRTHs again", gw.site)
            self._rebirth(gw)

    def _publish_hwm(self, gw: SiteConnection) -> None:
        gw.publish_hwm(s.info.meter for s in self.series if s.info.site == gw.site)

    def _answer(self, gw: SiteConnection) -> int:
        """Publish again the readings the queued backfill requests of ``gw`` ask for; return how many requests."""
        served = 0

        def acked(meter: str) -> int | None:
            return self.ledger.last_seq(gw.site, meter) if (gw.site, meter) in self._by_key else None

        while True:
            try:
                raw = gw.requests.get_nowait()
            except queue.Empty:
                return served
            served += 1
            self.backfill_requests += 1
            req = backfill.answerable(gw.site, raw, acked, self.opts.backfill_max)
            if req is None:
                continue
            s, n = self._by_key[(req.site, req.meter)], 0
            for i, j in backfill.answer_slices(s.seq, req.from_seq, req.to_seq, self.opts.batch):
                gw.publish(topics.data_topic(req.site, req.meter), s.payload(i, j), backfill=j - i)
                n += j - i
            log.info("site %s: backfill of %s seq %d..%d: published %d readings again",
                     gw.site, req.meter, req.from_seq, req.to_seq, n)

    def _linger(self) -> None:
        """Answer backfill requests until none came for ``linger_s`` (at most ten times that in all)."""
        linger = float(self.opts.linger_s)
        if linger <= 0 or self._stop.is_set():
            return
        start = last = time.monotonic()
        log.info("streamed; answering backfill requests until none came for %g s", linger)
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last >= linger or now - start >= 10 * linger:
                return
            for gw in list(self._gw.values()):
                gw.drain()
                if not gw.requests.empty() and self._answer(gw):
                    last = time.monotonic()
                if gw.reconnected.is_set():
                    gw.reconnected.clear()
                    self._publish_hwm(gw)
            time.sleep(0.05)

    def _starts(self) -> list[int]:
        """First index to send per series: after the ledger's checkpoint."""
        return [int(np.searchsorted(s.seq, self.ledger.last_seq(s.info.site, s.info.meter), side="right")) for s in self.series]

    def _fast(self, starts: list[int]) -> None:
        b = max(int(self.opts.batch), 1)
        pos = list(starts)
        active = True
        while active and not self._stop.is_set():
            active = False
            for k, s in enumerate(self.series):
                i = pos[k]
                if i >= len(s.seq):
                    continue
                j = min(i + b, len(s.seq))
                self._send(s, i, j)
                pos[k] = j
                active = True

    def _realtime(self, starts: list[int]) -> None:
        parts = [s.ts[i:] for s, i in zip(self.series, starts, strict=True)]
        all_ts = np.unique(np.concatenate(parts)) if parts else np.array([], dtype="int64")
        if len(all_ts) == 0:
            return
        pos = list(starts)
        prev = [int(all_ts[0])]

        def step(t: int) -> None:
            self._events(until_ns=t, since_ns=prev[0] if t != int(all_ts[0]) else None)
            prev[0] = t
            for k, s in enumerate(self.series):
                i = pos[k]
                j = i
                while j < len(s.ts) and s.ts[j] <= t:
                    j += 1
                if j > i:
                    self._send(s, i, j)
                    pos[k] = j
            for gw in self._gw.values():
                gw.drain()

        run_paced(all_ts, float(self.opts.speed or 1.0), step, stop=self._stop,
                  idle=lambda: self._housekeeping(time.monotonic()))  # answer backfill requests between steps

    def run(self) -> PublishStats:
        """Connect, publish everything not yet acknowledged, wait for the acks, disconnect."""
        t_start = time.monotonic()
        starts = self._starts()
        skipped = sum(starts)
        if skipped:
            log.info("resuming after the ledger's checkpoint: %d readings already acknowledged", skipped)
        try:
            self._start()
            if self.opts.speed is None:
                self._events()
                self._fast(starts)
            else:
                self._realtime(starts)
            for gw in self._gw.values():
                gw.finish(self.opts.ack_timeout_s)
            for gw in self._gw.values():  # the final marks: a lost tail shows against them
                if not gw.sparkplug:
                    self._publish_hwm(gw)
            self._linger()
            for gw in self._gw.values():
                gw.finish(self.opts.ack_timeout_s)
        finally:
            for gw in self._gw.values():
                gw.close()
            self.ledger.save()
        stats = PublishStats(skipped=skipped, elapsed_s=time.monotonic() - t_start,
                             backfill_requests=self.backfill_requests)
        for site, gw in self._gw.items():
            stats.backfilled += gw.backfilled
            stats.readings += gw.readings
            stats.messages += gw.messages
            for m, n in gw.per_meter.items():
                stats.per_meter[f"{site}/{m}"] = n
        return stats
