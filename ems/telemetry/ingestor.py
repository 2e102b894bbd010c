"""Subscribe to the telemetry topics, check every message, write readings to a store.

Delivery is at least once and nothing is lost on a crash: QoS 1 on a persistent
session (fixed client id; MQTT 5 ``clean_start=False`` with a session expiry, or
MQTT 3.1.1 ``clean_session=False``) and *manual* acknowledgements: a message is
acknowledged only after :meth:`Store.write_readings` returned for its readings.
A crash in between makes the broker deliver it again; the store's idempotent
writes make the repeat harmless.

Threads: paho's network thread puts raw messages on a bounded queue (when the
queue is full it blocks, paho stops reading the socket and the broker holds the
messages: backpressure instead of unbounded memory); a decode thread checks and
batches them (by size and time); a store thread writes the batches (and the
metadata registrations) in order and then acknowledges them, so decoding goes on
while the store writes. At most three jobs wait for the store thread. Rejected
messages go to the dead-letter topic and a local JSONL file, and are acknowledged.

Backfill (:mod:`ems.telemetry.backfill`): readings the broker acknowledged to the
publisher and then lost (mosquitto SIGKILLed between snapshots) show as a gap in a
meter's sequence numbers, or, for a lost tail, against the publisher's retained
high-water mark (``_hwm``). When a gap persists past a grace time the ingestor
asks the publisher (``_backfill``) for the missing range, after the batches before
it were written, and asks again after a timeout while it is still missing.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import functools
import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pandas as pd

from ems.errors import EmsError, PayloadError, TelemetryError
from ems.readings import MeterInfo, SiteInfo, events_frame
from ems.store.base import Store
from ems.telemetry import backfill, codec, sparkplug, topics
from ems.telemetry.connection import BrokerConfig, connect_and_wait, make_client
from ems.telemetry.spool import Spool

__all__ = ["IngestOptions", "Ingestor", "SeqTracker"]

log = logging.getLogger(__name__)

_MAX_GAP_TRACKED = 100_000


@dataclass
class IngestOptions:
    """How to ingest.

    Attributes
    ----------
    group : str, optional
        Share the data subscription with other ingestors (``$share/GROUP/...``).
    client_id : str
        Fixed id: the broker keeps the session (and unacknowledged messages) under it.
    session_expiry_s : int [s]
        How long the broker keeps the session while disconnected (MQTT 5).
    batch_readings : int
        Write when this many readings are waiting ...
    batch_s : float [s]
        ... or when the oldest has waited this long.
    queue_size : int
        Messages between the network thread and the writer.
    deadletter : path, optional
        JSONL file of rejected messages.
    max_future_s : float [s]
        Tolerated source clock skew.
    unknown_grace_s : float [s]
        How long a reading of a meter without metadata waits for it.
    meters, sites : lists
        Known beforehand (besides the retained metadata messages).
    spool : path, optional
        Directory of a disk spool: a batch the store cannot take is appended
        there (fsynced) and acknowledged, and replayed oldest first when the
        store is back (see :mod:`ems.telemetry.spool`). Without a spool the
        batch stays unacknowledged and is retried every second.
    spool_limit_bytes : int [B]
        Most disk the spool may use; when it is full nothing more is
        acknowledged until the store takes the spool back (backpressure).
    spool_alarm_fraction : float
        Log a warning and count an alarm when the spool holds this fraction of its limit.
    backfill : BackfillPolicy, optional
        When to ask publishers for missing readings again; None: never. Off with
        ``group``: an ingestor of a shared group sees only its share, so its gaps are
        not losses (see ``docs/telemetry.md``).
    encoding : str
        ``json`` (contract v1 topics) or ``sparkplug``: Sparkplug B of group ``sparkplug_group``
        (:mod:`ems.telemetry.sparkplug`; rebirth requests instead of backfill).
    sparkplug_group : str
        The Sparkplug group id to subscribe to.
    """

    group: str | None = None
    client_id: str = "ems-ingest"
    session_expiry_s: int = 3600
    batch_readings: int = 20_000
    batch_s: float = 0.5
    queue_size: int = 2000
    deadletter: Path | None = None
    max_future_s: float = 300.0
    unknown_grace_s: float = 5.0
    meters: list[MeterInfo] = field(default_factory=list)
    sites: list[SiteInfo] = field(default_factory=list)
    spool: Path | None = None
    spool_limit_bytes: int = 1 << 30
    spool_alarm_fraction: float = 0.8
    backfill: backfill.BackfillPolicy | None = field(default_factory=backfill.BackfillPolicy)
    encoding: str = "json"
    sparkplug_group: str = "ems"


class SeqTracker:
    """Sequence numbers seen per meter: duplicates, gaps and late arrivals.

    Keeps only the highest and lowest seq and the set of missing ones (bounded).
    """

    def __init__(self) -> None:
        self.hi: dict[tuple[str, str], int] = {}
        self.lo: dict[tuple[str, str], int] = {}
        self.missing: dict[tuple[str, str], set[int]] = {}
        self.gaps = 0

    def see(self, key: tuple[str, str], seq: int) -> str:
        """Record ``seq``; return ``new``, ``duplicate``, ``late`` (fills a gap) or ``gap`` (new, after a gap)."""
        hi = self.hi.get(key)
        if hi is None:
            self.hi[key] = self.lo[key] = seq
            return "new"
        if seq > hi:
            self.hi[key] = seq
            if seq > hi + 1:
                self.gaps += 1
                if seq - hi - 1 <= _MAX_GAP_TRACKED:
                    self.missing.setdefault(key, set()).update(range(hi + 1, seq))
                return "gap"
            return "new"
        held = self.missing.get(key)
        if held and seq in held:
            held.discard(seq)
            return "late"
        if seq < self.lo[key]:
            self.lo[key] = seq
            return "new"
        return "duplicate"

    def missing_count(self) -> int:
        """Sequence numbers skipped and not (yet) received."""
        return sum(len(m) for m in self.missing.values())


@dataclass
class _Item:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received: float


class Ingestor:
    """Subscribe, validate, batch, write, acknowledge.

    Parameters
    ----------
    cfg : BrokerConfig
    store : Store
    options : IngestOptions
    """

    def __init__(self, cfg: BrokerConfig, store: Store, options: IngestOptions | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.opts = options or IngestOptions()
        if self.opts.group:
            topics.validate_id(self.opts.group, "group")
        self.meters: dict[tuple[str, str], MeterInfo] = {(m.site, m.meter): m for m in self.opts.meters}
        self.sites: set[str] = {s.site for s in self.opts.sites} | {m.site for m in self.opts.meters}
        self.status: dict[str, str] = {}
        self.meter_status: dict[tuple[str, str], dict[str, Any]] = {}
        self.counters: Counter[str] = Counter()
        self.rejected_by_reason: Counter[str] = Counter()
        self.seqs = SeqTracker()
        self.hwm: dict[tuple[str, str], int] = {}
        self._last_rx: dict[tuple[str, str], float] = {}
        self._hwm_sent: dict[str, int] = {}
        self.planner = backfill.GapPlanner(self.opts.backfill or backfill.BackfillPolicy())
        self._next_plan = 0.0
        self.lag_s = 0.0
        # receipt -> durable write and acknowledgement, per message [s] (the latest 50,000)
        self.latencies: collections.deque[float] = collections.deque(maxlen=50_000)
        self._q: queue.Queue[_Item] = queue.Queue(maxsize=self.opts.queue_size)
        self._receiving = threading.Event()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._storer: threading.Thread | None = None
        # store writes and registrations, in order, on one thread; bounded: backpressure
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=3)
        self._last: dict[tuple[str, str], codec.Reading] = {}
        self._parked: list[_Item] = []
        self._parked_at = 0.0
        self._connected_once = False
        self._dl_lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None
        self._batch_reset()
        self.spool: Spool | None = None
        if self.opts.spool is not None:
            self.spool = Spool(
                self.opts.spool, self.opts.spool_limit_bytes, alarm_fraction=self.opts.spool_alarm_fraction
            )
        self._spool_alarmed = False
        self._next_replay = 0.0
        self._host: sparkplug.HostSession | None = None
        if self.opts.encoding == "sparkplug":
            if self.opts.group:
                raise TelemetryError("Sparkplug sequence numbers need every message of a node: no --group with sparkplug")
            self._host = sparkplug.HostSession(self.meters)
            self.opts.backfill = None  # Sparkplug asks for a rebirth instead
        self.client = make_client(
            cfg, self.opts.client_id, persistent=True, manual_ack=True
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Ingestor:
        """Register known metadata, start the writer, connect and subscribe."""
        if self.opts.sites:
            self.store.register_sites(self.opts.sites)
        if self.opts.meters:
            self.store.register_meters(self.opts.meters)
        self._receiving.set()
        self._writer = threading.Thread(target=self._write_loop, name="ems-ingest-decode", daemon=True)
        self._writer.start()
        self._storer = threading.Thread(target=self._store_loop, name="ems-ingest-store", daemon=True)
        self._storer.start()
        connect_and_wait(
            self.client,
            self.cfg,
            clean_start=False,
            session_expiry_s=self.opts.session_expiry_s,
        )
        log.info("ingesting from %s as %s", self.cfg.describe(), self.opts.client_id)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop receiving, flush the batch, acknowledge it, disconnect."""
        self._receiving.clear()
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout)
        if self._storer is not None:
            self._jobs.put(None)
            self._storer.join(timeout)
        time.sleep(0.1)  # let paho's thread send the last PUBACKs
        self.client.disconnect()
        self.client.loop_stop()
        if self.spool is not None:
            if not self.spool.empty():
                log.warning("stopping with %d bytes in the spool %s; the next start replays them",
                            self.spool.used_bytes, self.spool.path)
            self.spool.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def __enter__(self) -> Ingestor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[Counter[str]], bool], timeout: float) -> bool:
        """Wait until ``predicate(counters)`` holds (for tests and scripts); return whether it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.counters):
                return True
            time.sleep(0.05)
        return predicate(self.counters)

    # ------------------------------------------------------------------ paho thread

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if getattr(rc, "is_failure", False):
            log.error("broker refused the connection: %s", rc)
            return
        subs = [(topics.META_FILTER, 1), (topics.shared(topics.DATA_FILTER, self.opts.group), 1),
                (topics.METER_STATUS_FILTER, 1)]
        if self._host is not None:
            subs = [(f"{sparkplug.NAMESPACE}/{self.opts.sparkplug_group}/#", 1)]
        if self.opts.group:  # the shared data filter gives _site and _hwm to one ingestor only
            subs.insert(1, (topics.SITE_FILTER, 1))
            subs.insert(2, (topics.HWM_FILTER, 1))
        present = getattr(flags, "session_present", None)
        if self._connected_once and present is False:
            log.warning(
                "the broker did not keep this ingestor's session (client id %s): messages published "
                "while it was disconnected may be lost; run ems reconcile",
                self.opts.client_id,
            )
        self._connected_once = True
        client.subscribe(subs)  # again on every reconnect
        log.info(
            "subscribed to %s (session present: %s)",
            [s for s, _ in subs],
            present,
        )

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc != 0 and self._receiving.is_set():
            log.warning("disconnected from %s (%s); paho reconnects", self.cfg.describe(), rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        item = _Item(msg.topic, bytes(msg.payload), msg.mid, msg.qos, time.time())
        while self._receiving.is_set():
            try:
                self._q.put(item, timeout=0.2)  # blocks when full: backpressure
                return
            except queue.Full:
                continue
        # stopping: not acknowledged, so the broker delivers it again next session

    # ------------------------------------------------------------------ writer thread

    def _batch_reset(self) -> None:
        self._b_ts: list[int] = []
        self._b_site: list[str] = []
        self._b_meter: list[str] = []
        self._b_q: list[str] = []
        self._b_v: list[float] = []
        self._b_events: list[dict[str, Any]] = []
        self._b_acks: list[tuple[int, int]] = []
        self._b_recv: list[float] = []
        self._b_readings = 0
        self._b_max_ts = 0
        self._b_since: float | None = None

    def _write_loop(self) -> None:
        while True:
            if self._b_since is not None:
                wait = max(self.opts.batch_s - (time.monotonic() - self._b_since), 0.0)
            else:
                wait = 0.2
            try:
                item = self._q.get(timeout=wait) if wait > 0 else self._q.get_nowait()
            except queue.Empty:
                item = None
            if item is not None:
                self.counters["received"] += 1
                try:
                    self._process(item)
                except Exception:  # a bug or a store failure: keep running, leave it unacknowledged
                    self.counters["errors"] += 1
                    log.exception("could not process a message on %s; it stays unacknowledged", item.topic)
            full = self._b_readings >= self.opts.batch_readings
            due = self._b_since is not None and time.monotonic() - self._b_since >= self.opts.batch_s
            if full or due or (item is None and self._b_acks):
                self._flush()
            if self.opts.backfill is not None and not self.opts.group and time.monotonic() >= self._next_plan:
                self._next_plan = time.monotonic() + 0.25
                self._plan_backfill()
            if self._parked and (item is None or time.monotonic() - self._parked_at > 1.0):
                self._parked_at = time.monotonic()
                self._retry_parked()
            if item is None and self._stop.is_set() and self._q.empty():
                self._flush()
                return

    def _ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    def _process(self, item: _Item) -> None:
        if self._host is not None:
            self._sparkplug(item)
            return
        try:
            t = topics.parse_topic(item.topic)
            if t.kind == "data":
                self._data(item, t.site, t.meter)
                return
            if t.kind == "meta" and not item.payload:  # retained metadata cleared: meter removed
                self.meters.pop((t.site, t.meter), None)
                log.info("meter %s/%s removed (empty metadata)", t.site, t.meter)
            elif t.kind == "meta":
                info = codec.decode_meta(t.site, t.meter, item.payload)
                self.meters[(info.site, info.meter)] = info
                self.sites.add(info.site)
                self.counters["meta"] += 1
                reg = functools.partial(self.store.register_meters, [info])
                self._jobs.put(functools.partial(self._register, reg, item.mid, item.qos))
                self._retry_parked()
                return
            elif t.kind == "site":
                site = codec.decode_site(t.site, item.payload)
                self.sites.add(site.site)
                reg = functools.partial(self.store.register_sites, [site])
                self._jobs.put(functools.partial(self._register, reg, item.mid, item.qos))
                return
            elif t.kind == "status":
                self.status[t.site] = item.payload.decode("utf-8", "replace")[:32]
                log.info("site %s is %s", t.site, self.status[t.site])
            elif t.kind == "meter_status":  # a gateway's word on one meter (e.g. offline: timeout)
                self.meter_status[(t.site, t.meter)] = codec.load_object(item.payload) if item.payload else {}
            elif t.kind == "hwm":
                mark = backfill.decode_hwm(t.site, item.payload)
                if mark.sent_ns >= self._hwm_sent.get(t.site, 0):  # not an older copy delivered late
                    self._hwm_sent[t.site] = mark.sent_ns
                    for meter, last in mark.last_seq.items():
                        self.hwm[(t.site, meter)] = last  # the publisher's latest word
                self.counters["hwm"] += 1
            elif t.kind == "events":
                rows = codec.decode_events(
                    t.site, item.payload, now_ns=time.time_ns(), max_future_s=self.opts.max_future_s
                )
                self._b_events.extend(rows)
                self._b_acks.append((item.mid, item.qos))
                self._b_recv.append(item.received)
                if self._b_since is None:
                    self._b_since = time.monotonic()
                return
            # deadletter: our own republished rejects; backfill: requests (ours); nothing to do
            self._ack(item.mid, item.qos)
        except PayloadError as exc:
            self._reject(item, exc)

    def _data(self, item: _Item, site: str, meter: str) -> None:
        try:
            msg = codec.decode_data(
                site,
                meter,
                item.payload,
                self.meters,
                now_ns=time.time_ns(),
                max_future_s=self.opts.max_future_s,
                known_sites=self.sites,
                previous=self._last.get((site, meter)),
            )
        except PayloadError as exc:
            if exc.reason in ("unknown_meter", "unknown_site") and (
                time.time() - item.received < self.opts.unknown_grace_s
            ):
                self._parked.append(item)  # metadata may still be on its way
                return
            self._reject(item, exc)
            return
        self._accept(item, msg)

    def _sparkplug(self, item: _Item) -> None:
        """Sparkplug B: births register meters and sites, deaths mark them offline, data goes the JSON way."""
        assert self._host is not None
        try:
            out = self._host.handle(item.topic, item.payload, max_future_s=self.opts.max_future_s, previous=self._last)
        except PayloadError as exc:
            asked: sparkplug.Outcome | None = getattr(exc, "outcome", None)
            if asked is not None and asked.rebirth is not None:
                self.client.publish(*asked.rebirth, qos=0)
            if exc.reason in ("unknown_meter", "unknown_site") and time.time() - item.received < self.opts.unknown_grace_s:
                self._parked.append(item)  # its birth may still come (a rebirth was asked for)
            else:
                self._reject(item, exc)
            return
        if out.rebirth is not None:
            log.warning("Sparkplug: asking %s for a rebirth (sequence gap or unknown node)", out.rebirth[0])
            self.client.publish(*out.rebirth, qos=0)
        self.status.update(out.status)
        self.meter_status.update({k: {"status": v} for k, v in out.meter_status.items()})
        if out.data is not None:
            self._accept(item, out.data)
            return
        if out.events:
            self._b_events.extend(out.events)
            self._b_acks.append((item.mid, item.qos))
            self._b_recv.append(item.received)
            if self._b_since is None:
                self._b_since = time.monotonic()
            return
        self._sparkplug_births(item, out)

    def _sparkplug_births(self, item: _Item, out: sparkplug.Outcome) -> None:
        """Register what a birth announced (store thread), acknowledging the message after."""
        regs: list[Callable[[], None]] = []
        if out.site is not None:
            self.sites.add(out.site.site)
            regs.append(functools.partial(self.store.register_sites, [out.site]))
        if out.meters:
            for info in out.meters:
                self.meters[(info.site, info.meter)] = info
                self.sites.add(info.site)
            self.counters["meta"] += len(out.meters)
            regs.append(functools.partial(self.store.register_meters, out.meters))
        if not regs:
            self._ack(item.mid, item.qos)
            return
        for reg in regs[:-1]:
            self._jobs.put(reg)
        self._jobs.put(functools.partial(self._register, regs[-1], item.mid, item.qos))
        self._retry_parked()

    def _accept(self, item: _Item, msg: codec.DataMessage) -> None:
        """Batch the readings of a checked data message (either encoding)."""
        site, meter = msg.site, msg.meter
        key = (site, meter)
        self._last_rx[key] = time.monotonic()
        last = msg.readings[-1]
        prev = self._last.get(key)
        if prev is None or last.ts_ns > prev.ts_ns:
            self._last[key] = last
        n = 0
        see = self.seqs.see
        b_ts, b_q, b_v = self._b_ts, self._b_q, self._b_v
        for r in msg.readings:
            state = see(key, r.seq)
            if state != "new":
                if state == "duplicate":
                    self.counters["duplicates"] += 1
                elif state == "late":
                    self.counters["late"] += 1
                elif state == "gap" and not self.opts.group:
                    log.warning("%s/%s: gap in sequence numbers before seq %d", site, meter, r.seq)
            vals = r.values
            k = len(vals)
            b_ts.extend([r.ts_ns] * k)
            b_q.extend(vals)
            b_v.extend(vals.values())
            n += k
        self._b_site.extend([site] * n)
        self._b_meter.extend([meter] * n)
        self._b_readings += len(msg.readings)
        self._b_max_ts = max(self._b_max_ts, last.ts_ns)
        self._b_acks.append((item.mid, item.qos))
        self._b_recv.append(item.received)
        self.counters["readings_received"] += len(msg.readings)
        if self._b_since is None:
            self._b_since = time.monotonic()

    def _plan_backfill(self) -> None:
        """Decode thread: queue the backfill requests due; the store thread sends them after the batches before."""
        reqs = self.planner.plan(time.monotonic(), self.seqs.missing, self.seqs.hi, self.hwm, self._last_rx)
        if reqs:
            self._flush()
        for req in reqs:
            self._jobs.put(functools.partial(self._request_backfill, req))

    def _request_backfill(self, req: backfill.BackfillRequest) -> None:
        """Store thread: publish one backfill request (QoS 1)."""
        self.counters["backfill_requests"] += 1
        self.counters["backfill_requested_seq"] += req.count
        log.warning("%s/%s: seq %d..%d missing; asking the publisher to send them again",
                    req.site, req.meter, req.from_seq, req.to_seq)
        self.client.publish(topics.backfill_topic(req.site), backfill.encode_request(req), qos=1)

    def _retry_parked(self) -> None:
        if not self._parked:
            return
        parked, self._parked = self._parked, []
        for item in parked:
            self._process(item)

    def _flush(self) -> None:
        """Hand the batch to the store thread (blocks while it is two batches behind)."""
        if not self._b_acks:
            self._batch_reset()
            return
        df = None
        if self._b_ts:
            idx = pd.DatetimeIndex(np.asarray(self._b_ts, dtype="datetime64[ns]"), name="ts").tz_localize("UTC")
            df = pd.DataFrame(
                {
                    "site": pd.Categorical(self._b_site),
                    "meter": pd.Categorical(self._b_meter),
                    "quantity": pd.Categorical(self._b_q),
                    "value": np.asarray(self._b_v, dtype="float64"),
                },
                index=idx,
            )
        events = events_frame(self._b_events) if self._b_events else None
        job = functools.partial(
            self._write_batch, df, events, self._b_acks, self._b_readings, self._b_max_ts, self._b_recv
        )
        self._batch_reset()
        self._jobs.put(job)

    def _store_write(self, df: pd.DataFrame | None, events: pd.DataFrame | None) -> None:
        """Write to the store and wait until it is durable there (``flush`` if the store has one)."""
        if df is not None:
            self.store.write_readings(df)
        if events is not None:
            self.store.write_events(events)
        flush = getattr(self.store, "flush", None)
        if callable(flush):  # a batching client (InfluxDB): queued is not stored
            flush()

    def _replay(self) -> bool:
        """Store thread: replay the spool into the store; return True when the spool is empty."""
        assert self.spool is not None
        if self.spool.empty():
            return True
        if time.monotonic() < self._next_replay:
            return False
        try:
            rows = self.spool.replay(self._replay_write)
        except (EmsError, OSError) as exc:
            self._next_replay = time.monotonic() + 1.0
            log.debug("store still unavailable (%s); %d bytes stay in the spool", exc, self.spool.used_bytes)
            return False
        self._spool_alarmed = False
        log.warning("store is back: replayed %d spooled rows; spool empty", rows)
        return True

    def _replay_write(self, df: pd.DataFrame | None, events: pd.DataFrame | None) -> None:
        self._store_write(df, events)
        if df is not None:
            keys = pd.DataFrame({"site": df["site"].to_numpy(), "meter": df["meter"].to_numpy(),
                                 "ts": pd.DatetimeIndex(df.index).asi8})
            n = len(keys.drop_duplicates())
            self.counters["replayed"] += n
            self.counters["written"] += n
        if events is not None:
            self.counters["events_written"] += len(events)

    def _spool_write(self, df: pd.DataFrame | None, events: pd.DataFrame | None, n_readings: int) -> bool:
        """Store thread: append a batch to the spool (durable); False if the spool is full."""
        assert self.spool is not None
        if not self.spool.append(df, events):
            if not self._spool_alarmed:
                log.warning("spool %s is full (%d of %d bytes): nothing more is acknowledged until the store is back",
                            self.spool.path, self.spool.used_bytes, self.spool.limit_bytes)
            self.counters["spool_full"] += 1
            self._spool_alarmed = True
            return False
        self.counters["spooled"] += n_readings
        if self.spool.alarm and not self._spool_alarmed:
            self._spool_alarmed = True
            self.counters["spool_alarms"] += 1
            log.warning("spool %s holds %d of %d bytes (alarm at %.0f %%): the store has been unavailable a while",
                        self.spool.path, self.spool.used_bytes, self.spool.limit_bytes, 100 * self.spool.alarm_fraction)
        return True

    def _write_batch(
        self,
        df: pd.DataFrame | None,
        events: pd.DataFrame | None,
        acks: list[tuple[int, int]],
        n_readings: int,
        max_ts: int,
        received: list[float] | None = None,
    ) -> None:
        """Store thread: write (to the store, or durably to the spool), then (only then) acknowledge."""
        spooled = False
        while True:
            if self.spool is not None and not self._replay():
                if self._spool_write(df, events, n_readings):  # keep the order: behind the spool
                    spooled = True
                    break
            else:
                try:
                    self._store_write(df, events)
                    break
                except (EmsError, OSError) as exc:
                    if self.spool is not None:
                        log.warning("store write failed (%s); spooling to %s", exc, self.spool.path)
                        self._next_replay = time.monotonic() + 1.0
                        if self._spool_write(df, events, n_readings):
                            spooled = True
                            break
                    else:
                        log.error("store write failed (%s); retrying in 1 s, nothing acknowledged", exc)
            if self._stop.wait(1.0) and not self._receiving.is_set():
                log.error("stopping with %d messages unacknowledged; the broker keeps them", len(acks))
                return
        for mid, qos in acks:  # only now: the readings are in the store or the spool, durably
            self._ack(mid, qos)
        if received:
            now = time.time()
            self.latencies.extend(now - r for r in received)
        if not spooled:
            self.counters["written"] += n_readings
            self.counters["events_written"] += 0 if events is None else len(events)
        self.counters["batches"] += 1
        if max_ts and not spooled:
            self.lag_s = time.time() - max_ts / 1e9

    def _register(self, fn: Callable[[], None], mid: int, qos: int) -> None:
        """Store thread: register metadata, then acknowledge."""
        fn()
        self._ack(mid, qos)

    def _store_loop(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=0.5)
            except queue.Empty:
                if self.spool is not None and not self.spool.empty():
                    try:
                        self._replay()
                    except Exception:  # a bug: keep running, the spool stays on disk
                        self.counters["errors"] += 1
                        log.exception("spool replay failed")
                continue
            if job is None:
                if self.spool is not None and not self.spool.empty():
                    self._next_replay = 0.0
                    self._replay()
                return
            try:
                job()
            except Exception:  # keep running; what the job held stays unacknowledged
                self.counters["errors"] += 1
                log.exception("store job failed; its messages stay unacknowledged")

    def _reject(self, item: _Item, exc: PayloadError) -> None:
        self.counters["rejected"] += 1
        self.rejected_by_reason[exc.reason] += 1
        log.warning("rejected %s: %s", item.topic, exc)
        record = {
            "received": dt.datetime.fromtimestamp(item.received, dt.UTC).isoformat().replace("+00:00", "Z"),
            "reason": exc.reason,
            "message": str(exc),
            "topic": item.topic,
            "payload_b64": base64.b64encode(item.payload).decode("ascii"),
        }
        line = json.dumps(record)
        if self.opts.deadletter is not None:
            with self._dl_lock, open(self.opts.deadletter, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
        self.client.publish(topics.deadletter_topic(exc.reason), line.encode(), qos=1)
        self._ack(item.mid, item.qos)

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """Live counters: received (messages), readings_received, written, rejected, duplicates, gaps, ..."""
        c = self.counters
        return {
            "received": c["received"],
            "readings_received": c["readings_received"],
            "written": c["written"],
            "rejected": c["rejected"],
            "duplicates": c["duplicates"],
            "gaps": self.seqs.gaps,
            "missing_seq": self.seqs.missing_count(),
            "late": c["late"],
            "backfill_requests": c["backfill_requests"],
            "backfill_requested_seq": c["backfill_requested_seq"],
            "events_written": c["events_written"],
            "queue_depth": self._q.qsize(),
            "lag_s": round(self.lag_s, 3),
            "meters_known": len(self.meters),
            "meters_offline": sum(m.get("status") == "offline" for m in self.meter_status.values()),
            "errors": c["errors"],
            "spooled": c["spooled"],
            "replayed": c["replayed"],
            "spool_bytes": 0 if self.spool is None else self.spool.used_bytes,
            "spool_limit_bytes": 0 if self.spool is None else self.spool.limit_bytes,
            "spool_alarms": c["spool_alarms"],
            "spool_full": c["spool_full"],
            **self._latency_percentiles(),
            "rejected_by_reason": dict(self.rejected_by_reason),
        }

    def _latency_percentiles(self) -> dict[str, float]:
        lat = np.fromiter(list(self.latencies), dtype="float64")
        if not len(lat):
            return {"write_latency_p50_s": 0.0, "write_latency_p95_s": 0.0, "write_latency_p99_s": 0.0}
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        return {"write_latency_p50_s": round(float(p50), 4), "write_latency_p95_s": round(float(p95), 4),
                "write_latency_p99_s": round(float(p99), 4)}

    def prometheus(self) -> str:
        """The counters in the Prometheus text exposition format."""
        s = self.stats()
        lines: list[str] = []
        for name, kind, help_ in (
            ("received", "counter", "messages received"),
            ("readings_received", "counter", "readings received in accepted messages"),
            ("written", "counter", "readings written to the store"),
            ("rejected", "counter", "messages rejected (dead-lettered)"),
            ("duplicates", "counter", "readings whose seq was seen before"),
            ("gaps", "counter", "jumps in a meter's sequence numbers"),
            ("missing_seq", "gauge", "sequence numbers skipped and not received yet"),
            ("late", "counter", "readings that filled a gap in the sequence numbers (e.g. backfilled)"),
            ("backfill_requests", "counter", "backfill requests sent to publishers"),
            ("backfill_requested_seq", "counter", "sequence numbers asked for in backfill requests"),
            ("queue_depth", "gauge", "messages waiting for the writer"),
            ("lag_s", "gauge", "now minus the newest reading's ts at the last write [s]"),
            ("write_latency_p50_s", "gauge", "median receipt-to-durable-write time of recent messages [s]"),
            ("write_latency_p95_s", "gauge", "95th percentile receipt-to-durable-write time [s]"),
            ("write_latency_p99_s", "gauge", "99th percentile receipt-to-durable-write time [s]"),
            ("spooled", "counter", "readings spooled to disk while the store was unavailable"),
            ("replayed", "counter", "spooled readings replayed into the store"),
            ("spool_bytes", "gauge", "disk used by the spool [B]"),
            ("spool_limit_bytes", "gauge", "most disk the spool may use [B]"),
            ("spool_alarms", "counter", "times the spool passed its alarm fraction"),
            ("spool_full", "counter", "batches refused by a full spool (left unacknowledged)"),
        ):
            metric = f"ems_ingest_{name}" + ("_total" if kind == "counter" else "")
            lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} {kind}", f"{metric} {s[name]}"]
        lines += ["# HELP ems_ingest_rejected_by_reason_total rejected messages by reason",
                  "# TYPE ems_ingest_rejected_by_reason_total counter"]
        for reason, n in sorted(s["rejected_by_reason"].items()):
            lines.append(f'ems_ingest_rejected_by_reason_total{{reason="{reason}"}} {n}')
        return "\n".join(lines) + "\n"

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve :meth:`prometheus` at ``http://host:port/metrics``; return the port."""
        ingestor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") not in ("/metrics", ""):
                    self.send_error(404)
                    return
                body = ingestor.prometheus().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: %s", format % args)

        self._http = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._http.serve_forever, name="ems-metrics", daemon=True).start()
        return int(self._http.server_address[1])


def known_from(meters: Iterable[MeterInfo]) -> dict[tuple[str, str], MeterInfo]:
    """Index meters by (site, meter)."""
    return {(m.site, m.meter): m for m in meters}
