"""Subscribe to the telemetry topics, check every message, store it or dead-letter it, then acknowledge it.

The ingestor is three parts along three seams, with threads between them:

* the **MQTT session** (:mod:`ems.telemetry.session`, paho's network thread): a
  persistent session, QoS 1 with manual acknowledgements, an inbox bounded by bytes
  (backpressure to the broker when full), PUBACK reason codes checked;
* the **decode step** (the decode thread): a :class:`~ems.telemetry.decoding.Decoder`
  for the encoding on the wire (contract v1 JSON by default) turns each message into the
  contract's structures, checked on their own; a :class:`~ems.telemetry.validate.Validator`
  checks readings against their meter and what came before (registers, duplicates);
  every message leaves this step with an outcome in a job
  (:class:`~ems.telemetry.settle.JobBuilder`): store it, dead-letter it, or nothing to keep;
* the **store writer** (the store thread): :class:`~ems.telemetry.settle.Settler` makes
  each job durable (store, else spool; dead letters to their file) and only then
  acknowledges its messages. That is the one invariant, kept in that one place:
  **each message ends stored or dead-lettered, and is acknowledged exactly then.**

Any exception while decoding or validating a message dead-letters that message
(``internal_error``); a failed durable write is retried with back-off and never drops
anything. A crash at any point makes the broker deliver the unacknowledged messages
again; the store's idempotent writes and the conflict check make repeats harmless.

Backfill (:mod:`ems.telemetry.backfill`): gaps in a meter's sequence numbers, or a lost
tail against the publisher's retained high-water mark (fetched again every
``hwm_refresh_s``: a broker with a full queue drops new marks too), are asked for again
once they persist past a grace time, after the jobs before were settled.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ems.errors import ConfigError, PayloadError, TelemetryError
from ems.readings import MeterInfo, SiteInfo
from ems.store.base import Store
from ems.telemetry import backfill, decoding, topics
from ems.telemetry.connection import BrokerConfig
from ems.telemetry.deadletter import DEFAULT_KEEP_BYTES, DeadLetters
from ems.telemetry.session import Inbox, Message, MqttSession
from ems.telemetry.settle import Job, JobBuilder, Settler
from ems.telemetry.spool import Spool
from ems.telemetry.validate import ReadingIndex, SeqTracker, Validator
from ems.telemetry.writer import StoreWriter
from ems.webserver import GuardedHandler, GuardedHTTPServer

__all__ = ["IngestOptions", "Ingestor", "SeqTracker"]

log = logging.getLogger(__name__)


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
        Settle a job when this many readings wait ...
    batch_s : float [s]
        ... or when the oldest has waited this long (sooner when the broker waits for
        our acknowledgements: 20 or more unacknowledged messages and nothing arriving) ...
    batch_bytes : int [B]
        ... or when what it holds (payloads of readings to store, dead letters) passes this.
    queue_size : int
        Most messages between the network thread and the decoder.
    queue_bytes : int [B]
        Most payload bytes between the network thread and the decoder.
    receive_maximum : int
        Messages the broker may have in flight to us (MQTT 5 Receive Maximum).
    deadletter : path, optional
        JSONL file of dead letters (fsynced). None: a dead letter is durable once the
        broker acknowledged its republication on ``ems/v1/_deadletter/{reason}``.
    deadletter_keep_bytes : int [B]
        Payload bytes a dead letter keeps (beyond: the prefix, the size and the SHA-256).
    max_future_s : float [s]
        Tolerated source clock skew.
    unknown_grace_s : float [s]
        How long a reading of a meter without metadata waits for it ...
    parked_bytes : int [B]
        ... while the waiting messages hold at most this many bytes (then: ``unknown_site``/``unknown_meter``).
    index_readings : int
        Readings whose values are remembered (per meter and ts) to refuse conflicting repeats.
    meters, sites : lists
        Known beforehand (besides the retained metadata messages).
    spool : path, optional
        Directory of a disk spool: a batch the store cannot take is appended there
        (fsynced) and acknowledged, and replayed oldest first when the store is back
        (see :mod:`ems.telemetry.spool`). Without a spool the batch stays
        unacknowledged and is tried again with back-off.
    spool_limit_bytes : int [B]
        Most disk the spool may use; when it is full nothing more is acknowledged
        until the store takes the spool back (backpressure).
    spool_alarm_fraction : float
        Log a warning and count an alarm when the spool holds this fraction of its limit.
    retry_max_s : float [s]
        Longest back-off between tries of a batch that cannot be made durable.
    backfill : BackfillPolicy, optional
        When to ask publishers for missing readings again; None: never. Off with
        ``group``: an ingestor of a shared group sees only its share, so its gaps are
        not losses (see ``docs/telemetry.md``).
    encoding : str
        ``json`` (contract v1 topics) or ``sparkplug``: Sparkplug B of group ``sparkplug_group``
        (:class:`~ems.telemetry.decoding.SparkplugDecoder`; rebirth requests instead of backfill).
    sparkplug_group : str
        The Sparkplug group id to subscribe to.
    sparkplug_host_id : str, optional
        With ``sparkplug``: the Sparkplug host id whose ``STATE`` the ingestor publishes as a
        host application (edge nodes that name it as their primary host wait for it);
        default the client id.
    decoder : Decoder, optional
        Another encoding on the wire (overrides ``encoding``).
    """

    group: str | None = None
    client_id: str = "ems-ingest"
    session_expiry_s: int = 3600
    batch_readings: int = 20_000
    batch_s: float = 0.5
    batch_bytes: int = 8 << 20
    queue_size: int = 2000
    queue_bytes: int = 32 << 20
    receive_maximum: int = 1000
    deadletter: Path | None = None
    deadletter_keep_bytes: int = DEFAULT_KEEP_BYTES
    max_future_s: float = 300.0
    unknown_grace_s: float = 5.0
    parked_bytes: int = 8 << 20
    index_readings: int = 100_000
    meters: list[MeterInfo] = field(default_factory=list)
    sites: list[SiteInfo] = field(default_factory=list)
    spool: Path | None = None
    spool_limit_bytes: int = 1 << 30
    spool_alarm_fraction: float = 0.8
    retry_max_s: float = 5.0
    backfill: backfill.BackfillPolicy | None = field(default_factory=backfill.BackfillPolicy)
    encoding: str = "json"
    sparkplug_group: str = "ems"
    sparkplug_host_id: str | None = None
    decoder: decoding.Decoder | None = None


_ACK_WINDOW = 20  # mosquitto's stock max_inflight_messages: beyond this many unacknowledged it waits for us
_IDLE_S = 0.02
_PRIME_BEFORE_NS = 86_400 * 10**9
_PRIME_AHEAD_MAX_NS = 7 * 86_400 * 10**9


class Ingestor:
    """Subscribe, decode, validate, store or dead-letter, acknowledge (see module docs).

    Parameters
    ----------
    cfg : BrokerConfig
    store : Store
    options : IngestOptions
    """

    def __init__(self, cfg: BrokerConfig, store: Store, options: IngestOptions | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.opts = o = options or IngestOptions()
        if o.group:
            topics.validate_id(o.group, "group")
        self.counters: Counter[str] = Counter()
        self.validator = Validator(o.meters, [s.site for s in o.sites],
                                   ReadingIndex(max_entries=o.index_readings))
        self.decoder: decoding.Decoder = o.decoder or self._decoder_for(o)
        self._backfill_on = o.backfill is not None and not o.group and o.encoding == "json"
        self.status: dict[str, str] = {}
        self.meter_status: dict[tuple[str, str], dict[str, Any]] = {}
        self.hwm: dict[tuple[str, str], int] = {}
        self._hwm_sent: dict[str, int] = {}
        self._last_rx: dict[tuple[str, str], float] = {}
        self.planner = backfill.GapPlanner(o.backfill or backfill.BackfillPolicy())
        self._stopping = threading.Event()
        self._store_lock = threading.Lock()
        self.inbox = Inbox(o.queue_bytes, o.queue_size)
        self.session = MqttSession(
            cfg, o.client_id, subscriptions=lambda: self.decoder.subscriptions(o.group), inbox=self.inbox,
            session_expiry_s=o.session_expiry_s, receive_maximum=o.receive_maximum,
            max_payload_bytes=self.decoder.max_payload_bytes, keep_bytes=o.deadletter_keep_bytes,
            counters=self.counters, state=self._host_state(o))
        self.client = self.session.client
        self.spool = Spool(o.spool, o.spool_limit_bytes, alarm_fraction=o.spool_alarm_fraction) if o.spool else None
        self.writer = StoreWriter(store, self.spool, self._store_lock, self.counters)
        self.deadletters = DeadLetters(o.deadletter, self.session)
        self.settler = Settler(self.writer, self.deadletters, lambda a: self.session.ack(a.mid, a.qos),
                               self.counters, self._stopping, o.retry_max_s)
        self.batch = JobBuilder(o.deadletter_keep_bytes)
        self._jobs: collections.deque[Job | None] = collections.deque()
        self._jobs_cond = threading.Condition()
        self._parked: collections.deque[Message] = collections.deque()
        self._parked_bytes = 0
        self._rejected_retained: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self._timers = {"plan": 0.0, "parked": 0.0, "refresh": time.monotonic()}
        self._threads: list[threading.Thread] = []
        self._http: GuardedHTTPServer | None = None

    @staticmethod
    def _host_state(o: IngestOptions) -> Any:
        """The Sparkplug host application's STATE, for the Sparkplug encoding (None otherwise)."""
        if o.encoding != "sparkplug" or o.decoder is not None:
            return None
        from ems.telemetry.sparkplug import HostState

        return HostState(o.sparkplug_host_id or o.client_id, time.time_ns() // 1_000_000)

    def _decoder_for(self, o: IngestOptions) -> decoding.Decoder:
        if o.encoding == "json":
            return decoding.JsonDecoder()
        if o.encoding != "sparkplug":
            raise ConfigError(f"ingest encoding: expected json or sparkplug, found {o.encoding!r}")
        if o.group:
            raise TelemetryError("Sparkplug sequence numbers need every message of a node: no --group with sparkplug")
        return decoding.SparkplugDecoder(o.sparkplug_group, self.validator.meters, self.validator.last)

    # ------------------------------------------------------------------ lifecycle

    @property
    def meters(self) -> dict[tuple[str, str], MeterInfo]:
        """Known meters by (site, meter)."""
        return self.validator.meters

    @property
    def sites(self) -> set[str]:
        """Known sites."""
        return self.validator.sites

    @property
    def seqs(self) -> SeqTracker:
        """Sequence numbers seen per meter."""
        return self.validator.seqs

    @property
    def rejected_by_reason(self) -> Counter[str]:
        """Dead letters by reason."""
        return self.settler.rejected_by_reason

    @property
    def latencies(self) -> collections.deque[float]:
        """Receipt to durable and acknowledged, per message [s] (the latest 50,000)."""
        return self.settler.latencies

    def start(self) -> Ingestor:
        """Register known metadata, learn what the store has registered, start the threads, connect, subscribe."""
        with self._store_lock:
            if self.opts.sites or self.opts.meters:
                self.store.register_sites(self.opts.sites)
                self.store.register_meters(self.opts.meters)
            self._learn_registered()
        for name, target in (("ems-ingest-decode", self._decode_loop), ("ems-ingest-store", self._store_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.session.start()
        log.info("ingesting from %s as %s", self.cfg.describe(), self.opts.client_id)
        return self

    def _learn_registered(self) -> None:
        """Meters and sites the store has registered (an earlier run) are known before their metadata arrives.

        After a restart the broker first sends what it queued for the session; the retained
        metadata follows only after the new SUBSCRIBE, behind those messages.
        """
        meters, sites = getattr(self.store, "meters", None), getattr(self.store, "sites", None)
        try:
            if callable(meters) and callable(sites):
                known_m, known_s = list(meters()), list(sites())
            else:
                rs = self.store.read(start=_utc(0), end=_utc(1))
                known_m, known_s = rs.meters, rs.sites
        except Exception as exc:  # the store is down: the metadata messages will tell
            log.warning("could not read the meters registered in the store (%s); waiting for their metadata", exc)
            return
        for m in known_m:
            self.validator.meters.setdefault((m.site, m.meter), m)
            self.validator.sites.add(m.site)
        for si in known_s:
            self.validator.site_infos.setdefault(si.site, si)
            self.validator.sites.add(si.site)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking messages, settle what was taken, disconnect."""
        self.session.stop_receiving()
        decode, store = self._threads if self._threads else (None, None)
        self._drain = True
        if decode is not None:
            decode.join(timeout)
        self._stopping.set()
        self._put_job(None)
        if store is not None:
            store.join(timeout)
        time.sleep(0.1)  # let paho's thread send the last PUBACKs
        self.session.close()
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

    # ------------------------------------------------------------------ decode thread

    _drain = False

    def _decode_loop(self) -> None:
        while True:
            item = self.inbox.get(self._wait_s())
            if item is not None:
                self._take(item)
            now = time.monotonic()
            if self._due(now, idle=item is None):
                self._flush()
            self._housekeeping(now, idle=item is None)
            if item is None and self._drain and self.inbox.count == 0:
                self._flush()
                return

    def _wait_s(self) -> float:
        if self.batch.since is None:
            return 0.2
        left = self.opts.batch_s - (time.monotonic() - self.batch.since)
        return max(min(left, _IDLE_S if self.batch.pending_acks >= _ACK_WINDOW else left), 0.0)

    def _due(self, now: float, idle: bool) -> bool:
        b = self.batch
        if b.empty():
            return False
        job = b.job
        return (job.readings >= self.opts.batch_readings or len(job.acks) >= self.opts.queue_size
                or job.bytes >= self.opts.batch_bytes
                or (b.since is not None and now - b.since >= self.opts.batch_s)
                or (idle and b.pending_acks >= _ACK_WINDOW) or (idle and self._drain))

    def _take(self, msg: Message) -> None:
        """Give ``msg`` its outcome in the current job: the invariant's entry point."""
        self.counters["received"] += 1
        try:
            self._route(msg)
        except PayloadError as exc:
            self._reject(msg, exc.reason, str(exc))
        except Exception as exc:  # a bug, or an input nobody thought of: dead-letter it, go on
            self.counters["internal_errors"] += 1
            log.exception("could not check a message on %.200s; dead-lettered internal_error", msg.topic)
            self._reject(msg, "internal_error", f"internal_error: {type(exc).__name__}: {exc}")

    def _reject(self, msg: Message, reason: str, text: str) -> None:
        if msg.retain:  # a retained message comes again on every subscribe: one dead letter is enough
            key = (msg.topic, hash(msg.payload))
            if key in self._rejected_retained:
                self.batch.consume(msg)
                return
            self._rejected_retained[key] = None
            if len(self._rejected_retained) > 10_000:
                self._rejected_retained.popitem(last=False)
        log.warning("rejected %.200s: %.500s", msg.topic, text)
        self.batch.reject(msg, reason, text)

    def _route(self, msg: Message) -> None:
        route = self.decoder.route(msg.topic)
        if msg.size > self.decoder.max_payload_bytes:
            raise PayloadError("oversized", f"{msg.topic}: expected at most {self.decoder.max_payload_bytes} "
                                            f"bytes, found {msg.size}")
        if route.kind == "data" and (reason := self.validator.unknown(route.site, route.meter)):
            self._park(msg, PayloadError(reason, f"{msg.topic}: no metadata for meter {route.meter!r} of site "
                                                 f"{route.site!r}"))  # not parsed before it is known
            return
        try:
            decoded = self.decoder.decode(route, msg.payload, now_ns=time.time_ns(),
                                          max_future_s=self.opts.max_future_s)
        except PayloadError as exc:
            if exc.reason not in ("unknown_site", "unknown_meter"):
                raise
            self._park(msg, exc)  # e.g. Sparkplug data before its birth (a rebirth was asked for)
            return
        finally:
            for topic, payload in self.decoder.requests():
                self.batch.then(functools.partial(self.session.publish, topic, payload, None, 0))
        self._apply(msg, decoded)

    def _park(self, msg: Message, exc: PayloadError) -> None:
        """A message of a meter without metadata waits for it, within the grace time and the parking space."""
        waited = time.time() - msg.received
        if waited < self.opts.unknown_grace_s and self._parked_bytes + msg.cost <= self.opts.parked_bytes:
            self._parked.append(msg)
            self._parked_bytes += msg.cost
            return
        why = "within" if waited >= self.opts.unknown_grace_s else "before the parking space was full, i.e. within"
        raise PayloadError(exc.reason, f"{str(exc).split(': ', 1)[-1]}; none arrived {why} "
                                       f"{self.opts.unknown_grace_s:g} s")

    def _apply(self, msg: Message, d: decoding.Decoded) -> None:
        """Give a decoded message its outcome: registrations, readings, events, or nothing to keep."""
        regs: list[SiteInfo | MeterInfo] = []
        primary: decoding.Data | decoding.Events | None = None
        parts = d.items if isinstance(d, decoding.Parts) else (d,)
        for part in parts:
            if isinstance(part, decoding.Data | decoding.Events):
                primary = part
            elif isinstance(part, decoding.Meta) and self.validator.add_meter(part.info):
                self.counters["meta"] += 1
                regs.append(part.info)
            elif isinstance(part, decoding.Site) and self.validator.add_site(part.info):
                regs.append(part.info)
            else:
                self._control(part)
        if regs:
            self.batch.add_registrations(msg, regs)
        if isinstance(primary, decoding.Data):
            self._data(msg, primary, note=not regs)
        elif isinstance(primary, decoding.Events):
            self.batch.add_events(msg, primary.rows)
        elif not regs:
            self.batch.consume(msg)
        if any(isinstance(p, decoding.Meta) for p in parts):
            self._retry_parked()

    def _control(self, d: Any) -> None:
        """What a control message changes (status, marks, removals); nothing of it is stored."""
        if isinstance(d, decoding.MeterRemoved):
            self.validator.remove_meter(d.site, d.meter)
            log.info("meter %s/%s removed (empty metadata)", d.site, d.meter)
        elif isinstance(d, decoding.Status):
            self.status[d.site] = d.text
            log.info("site %s is %s", d.site, d.text)
        elif isinstance(d, decoding.MeterStatus):  # a gateway's word on one meter (e.g. offline: timeout)
            self.meter_status[(d.site, d.meter)] = d.detail
        elif isinstance(d, decoding.Mark):
            m = d.mark
            if m.sent_ns >= self._hwm_sent.get(m.site, 0):  # not an older copy delivered late
                self._hwm_sent[m.site] = m.sent_ns
                for meter, last in m.last_seq.items():
                    self.hwm[(m.site, meter)] = last  # the publisher's latest word
            self.counters["hwm"] += 1

    def _data(self, msg: Message, d: decoding.Data, note: bool = True) -> None:
        dm = d.message
        key = (dm.site, dm.meter)
        if dm.site not in self.validator.primed:
            self._prime(dm.site, dm.readings[0].ts_ns)
        acc = self.validator.check(dm)
        self._last_rx[key] = time.monotonic()
        self.counters["readings_received"] += acc.readings
        self.counters["duplicates"] += acc.duplicates
        self.counters["late"] += acc.late
        if acc.gaps and not self.opts.group and self._backfill_on:
            log.warning("%s/%s: gap in sequence numbers before seq %d", dm.site, dm.meter, acc.gaps[0])
        self.batch.add_data(msg, dm, note=note)

    def _prime(self, site: str, first_ns: int) -> None:
        """Learn what the store already holds for ``site`` around its first reading (conflicts, registers)."""
        intervals = [m.interval_s for (s, _), m in self.validator.meters.items() if s == site] or [900]
        ahead = min(self.validator.index.per_meter * max(intervals) * 10**9, _PRIME_AHEAD_MAX_NS)
        lo, hi = first_ns - _PRIME_BEFORE_NS, first_ns + ahead
        try:
            with self._store_lock:
                rs = self.store.read(sites=[site], start=_utc(lo), end=_utc(hi))
        except Exception as exc:  # the store is down: go on without (checked against what comes)
            self.validator.primed.add(site)
            log.warning("could not read what the store holds for site %s (%s); conflicts with readings stored "
                        "before this ingestor started are not checked for it", site, exc)
            return
        n = self.validator.prime(site, rs.readings, first_ns)
        log.debug("site %s: %d stored readings around %s known before ingesting", site, n, _utc(first_ns))

    def _retry_parked(self) -> None:
        parked, self._parked, self._parked_bytes = self._parked, collections.deque(), 0
        for msg in parked:
            self._take_again(msg)

    def _take_again(self, msg: Message) -> None:
        try:
            self._route(msg)
        except PayloadError as exc:
            self._reject(msg, exc.reason, str(exc))
        except Exception as exc:
            self.counters["internal_errors"] += 1
            log.exception("could not check a message on %.200s; dead-lettered internal_error", msg.topic)
            self._reject(msg, "internal_error", f"internal_error: {type(exc).__name__}: {exc}")

    def _housekeeping(self, now: float, idle: bool) -> None:
        t = self._timers
        if self._parked and (idle or now - t["parked"] > 0.5):
            t["parked"] = now
            self._retry_parked()
        bf = self.opts.backfill
        if bf is None or not self._backfill_on:
            return
        if now >= t["plan"]:
            t["plan"] = now + 0.25
            self._plan_backfill()
        if now - t["refresh"] >= bf.hwm_refresh_s:
            t["refresh"] = now
            self.session.refresh(self.decoder.retained_control(self.opts.group))

    def _plan_backfill(self) -> None:
        """Queue the backfill requests due; they are sent after the jobs before them are settled."""
        reqs = self.planner.plan(time.monotonic(), self.seqs.missing, self.seqs.hi, self.hwm, self._last_rx)
        for req in reqs:
            self.batch.then(functools.partial(self._request_backfill, req))
        if reqs:
            self._flush()

    def _request_backfill(self, req: backfill.BackfillRequest) -> None:
        """Store thread: publish one backfill request (QoS 1; a refusal is logged by the session)."""
        self.counters["backfill_requests"] += 1
        self.counters["backfill_requested_seq"] += req.count
        log.warning("%s/%s: seq %d..%d missing; asking the publisher to send them again",
                    req.site, req.meter, req.from_seq, req.to_seq)
        self.session.publish(topics.backfill_topic(req.site), backfill.encode_request(req))

    def _flush(self) -> None:
        if not self.batch.empty():
            self._put_job(self.batch.take())

    def _put_job(self, job: Job | None) -> None:
        """Hand a job to the store thread; waits while three are queued (backpressure)."""
        with self._jobs_cond:
            while job is not None and len(self._jobs) >= 3:
                self._jobs_cond.wait(0.2)
            self._jobs.append(job)
            self._jobs_cond.notify_all()

    # ------------------------------------------------------------------ store thread

    def _next_job(self, timeout: float) -> Job | bool | None:
        with self._jobs_cond:
            if not self._jobs:
                self._jobs_cond.wait(timeout)
            if not self._jobs:
                return False
            job = self._jobs.popleft()
            self._jobs_cond.notify_all()
            return job

    def _store_loop(self) -> None:
        while True:
            job = self._next_job(0.2)
            self._background()
            if job is None:
                if self.spool is not None and not self.writer.replay(force=True):
                    log.warning("the store is still unavailable; the spool keeps %d bytes", self.spool.used_bytes)
                return
            if job is not False:
                assert isinstance(job, Job)
                self.settler.settle(job)
            elif self.spool is not None and not self.spool.empty():
                try:
                    self.writer.replay()
                except Exception:  # a bug: keep running, the spool stays on disk
                    self.counters["errors"] += 1
                    log.exception("spool replay failed")

    def _background(self) -> None:
        """PUBACKs of what we published; dead letters the broker acknowledged (no file) or refused."""
        self.session.poll_pubacks()
        for a in self.deadletters.settled():
            self.session.ack(a.mid, a.qos)
        self.deadletters.retry_refused(time.monotonic())

    # ------------------------------------------------------------------ stats

    @property
    def lag_s(self) -> float:
        """Now minus the newest reading's ts at the last write [s]."""
        return self.settler.lag_s

    def stats(self) -> dict[str, Any]:
        """Live counters: received (messages), readings_received, written, rejected, duplicates, gaps, ..."""
        c = self.counters
        s: dict[str, Any] = {k: c[k] for k in ("received", "readings_received", "written", "rejected", "duplicates")}
        s.update(gaps=self.seqs.gaps, missing_seq=self.seqs.missing_count())
        s.update({k: c[k] for k in ("late", "backfill_requests", "backfill_requested_seq", "events_written")})
        s.update(queue_depth=self.inbox.count, queue_bytes=self.inbox.bytes, parked=len(self._parked),
                 parked_bytes=self._parked_bytes, lag_s=round(self.lag_s, 3), meters_known=len(self.meters),
                 meters_offline=sum(m.get("status") == "offline" for m in self.meter_status.values()))
        s.update({k: c[k] for k in ("errors", "internal_errors", "retries", "publish_refused", "spooled", "replayed")})
        s.update(spool_bytes=0 if self.spool is None else self.spool.used_bytes,
                 spool_limit_bytes=0 if self.spool is None else self.spool.limit_bytes,
                 spool_alarms=c["spool_alarms"], spool_full=c["spool_full"])
        s.update(self._latency_percentiles())
        s["rejected_by_reason"] = dict(self.rejected_by_reason)
        return s

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
        for name, kind, help_ in _METRICS:
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

        class Handler(GuardedHandler):
            def do_GET(self) -> None:
                if not self.host_allowed():
                    return
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

        self._http = GuardedHTTPServer((host, port), Handler, max_connections=16)
        threading.Thread(target=self._http.serve_forever, name="ems-metrics", daemon=True).start()
        return int(self._http.server_address[1])


_METRICS = (
    ("received", "counter", "messages received"),
    ("readings_received", "counter", "readings received in accepted messages"),
    ("written", "counter", "readings written to the store"),
    ("rejected", "counter", "messages dead-lettered (durably)"),
    ("duplicates", "counter", "readings whose seq was seen before"),
    ("gaps", "counter", "jumps in a meter's sequence numbers"),
    ("missing_seq", "gauge", "sequence numbers skipped and not received yet"),
    ("late", "counter", "readings that filled a gap in the sequence numbers (e.g. backfilled)"),
    ("backfill_requests", "counter", "backfill requests sent to publishers"),
    ("backfill_requested_seq", "counter", "sequence numbers asked for in backfill requests"),
    ("queue_depth", "gauge", "messages waiting for the decoder"),
    ("queue_bytes", "gauge", "bytes of the messages waiting for the decoder [B]"),
    ("parked", "gauge", "messages waiting for their meter's metadata"),
    ("parked_bytes", "gauge", "bytes of the messages waiting for metadata [B]"),
    ("lag_s", "gauge", "now minus the newest reading's ts at the last write [s]"),
    ("write_latency_p50_s", "gauge", "median receipt-to-durable-write time of recent messages [s]"),
    ("write_latency_p95_s", "gauge", "95th percentile receipt-to-durable-write time [s]"),
    ("write_latency_p99_s", "gauge", "99th percentile receipt-to-durable-write time [s]"),
    ("errors", "counter", "unexpected failures (logged with a traceback)"),
    ("internal_errors", "counter", "messages dead-lettered internal_error"),
    ("retries", "counter", "tries of batches that could not be made durable yet"),
    ("publish_refused", "counter", "publishes the broker refused (PUBACK reason code; ACL)"),
    ("spooled", "counter", "readings spooled to disk while the store was unavailable"),
    ("replayed", "counter", "spooled readings replayed into the store"),
    ("spool_bytes", "gauge", "disk used by the spool [B]"),
    ("spool_limit_bytes", "gauge", "most disk the spool may use [B]"),
    ("spool_alarms", "counter", "times the spool passed its alarm fraction"),
    ("spool_full", "counter", "batches refused by a full spool (left unacknowledged)"),
)


def _utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)

