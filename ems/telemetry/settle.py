"""The ingestor's one invariant, kept in one place.

**Every message the ingestor receives ends either stored (durably) or dead-lettered
(durably, with its reason), and is acknowledged exactly then.**

The decoder thread turns each message into an outcome and adds it to a :class:`Job`
(:class:`JobBuilder`): readings or events to store, a registration (site or meter
metadata) to store, a dead letter with its reason, or nothing to keep (a status, a
high-water mark, our own requests) - every message has one. The store thread hands each
job to :meth:`Settler.settle`, which, in this order,

1. writes the registrations, readings and events durably (store, else spool:
   :class:`~ems.telemetry.writer.StoreWriter`);
2. writes the dead letters durably (:class:`~ems.telemetry.deadletter.DeadLetters`);
3. acknowledges every message of the job (a dead letter without a file: once the
   broker acknowledged its republication);
4. sends what waited for the job (backfill requests).

A step that fails for a reason that may pass (store down, disk full or read-only, spool
full) is tried again with a back-off that doubles up to ``retry_max_s``; the job is
never dropped, and nothing of it is acknowledged before it is durable. A step that
fails for any other reason (a message the store cannot take, a bug) is split: each
message of the job is written on its own, and one that still fails is dead-lettered
``internal_error`` with the exception, so no message can stop the others.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ems.readings import MeterInfo, SiteInfo, events_frame
from ems.telemetry.codec import DataMessage
from ems.telemetry.deadletter import DEFAULT_KEEP_BYTES, DeadLetter, DeadLetters
from ems.telemetry.session import Ack, Message
from ems.telemetry.writer import RETRY, StoreWriter

__all__ = ["Job", "JobBuilder", "Settler"]

log = logging.getLogger(__name__)


@dataclass
class _Span:
    """What one message put into a job: rows ``[r0, r1)`` of the readings, ``[e0, e1)`` of the events."""

    msg: Message
    r0: int
    r1: int
    e0: int
    e1: int


@dataclass
class Job:
    """Messages settled together (see module docs).

    ``acks`` holds every message's acknowledgement; a message whose content the job
    stores stays referenced (``spans``, ``registrations``) until the job is settled,
    a rejected one only as its dead-letter line. ``bytes`` counts what the job holds.
    """

    acks: list[Ack] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    site: list[str] = field(default_factory=list)
    meter: list[str] = field(default_factory=list)
    quantity: list[str] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    spans: list[_Span] = field(default_factory=list)
    registrations: list[tuple[Message, SiteInfo | MeterInfo]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)
    readings: int = 0
    max_ts: int = 0
    bytes: int = 0
    step: int = 0

    def frames(self, spans: list[_Span] | None = None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
        """The readings and events frames of the whole job, or of some of its messages."""
        if spans is None:
            rows: slice | np.ndarray = slice(None)
            ev = self.events
        else:
            rows = np.concatenate([np.arange(s.r0, s.r1) for s in spans] or [np.zeros(0, dtype=int)])
            ev = [e for s in spans for e in self.events[s.e0 : s.e1]]
        ts = np.asarray(self.ts, dtype="int64")[rows]
        df = None
        if len(ts):
            idx = pd.DatetimeIndex(ts.astype("datetime64[ns]"), name="ts").tz_localize("UTC")
            df = pd.DataFrame({
                "site": pd.Categorical(np.asarray(self.site, dtype=object)[rows]),
                "meter": pd.Categorical(np.asarray(self.meter, dtype=object)[rows]),
                "quantity": pd.Categorical(np.asarray(self.quantity, dtype=object)[rows]),
                "value": np.asarray(self.value, dtype="float64")[rows],
            }, index=idx)
        return df, (events_frame(ev) if ev else None)


class JobBuilder:
    """The job under construction on the decoder thread; every message goes into it with its outcome.

    Parameters
    ----------
    keep_bytes : int [B]
        Payload bytes a dead letter keeps.
    """

    def __init__(self, keep_bytes: int = DEFAULT_KEEP_BYTES) -> None:
        self.keep_bytes = keep_bytes
        self.job = Job()
        self.since: float | None = None
        self.pending_acks = 0

    def _note(self, msg: Message, held: int) -> None:
        self.job.acks.append(Ack.of(msg))
        self.job.bytes += held
        if msg.qos > 0:
            self.pending_acks += 1
        if self.since is None:
            self.since = time.monotonic()

    def add_data(self, msg: Message, dm: DataMessage, note: bool = True) -> None:
        """Readings to store (``note=False``: the message is in the job already, with its registrations)."""
        j = self.job
        r0 = len(j.ts)
        for r in dm.readings:
            k = len(r.values)
            j.ts.extend([r.ts_ns] * k)
            j.quantity.extend(r.values)
            j.value.extend(r.values.values())
        n = len(j.ts) - r0
        j.site.extend([dm.site] * n)
        j.meter.extend([dm.meter] * n)
        j.spans.append(_Span(msg, r0, len(j.ts), len(j.events), len(j.events)))
        j.readings += len(dm.readings)
        j.max_ts = max(j.max_ts, dm.readings[-1].ts_ns)
        if note:
            self._note(msg, msg.cost + 100 * n)
        else:
            j.bytes += 100 * n

    def add_events(self, msg: Message, rows: list[dict[str, Any]]) -> None:
        """Events to store."""
        j = self.job
        e0 = len(j.events)
        j.events.extend(rows)
        j.spans.append(_Span(msg, len(j.ts), len(j.ts), e0, len(j.events)))
        self._note(msg, 2 * msg.cost)

    def add_registrations(self, msg: Message, infos: list[SiteInfo | MeterInfo]) -> None:
        """Site or meter registrations to store (before the readings of the same job)."""
        self.job.registrations.extend((msg, info) for info in infos)
        self._note(msg, 2 * msg.cost)

    def reject(self, msg: Message, reason: str, text: str) -> None:
        """A dead letter (the job keeps its bounded record, not the payload)."""
        d = DeadLetter.of(msg, reason, text, self.keep_bytes)
        self.job.dead.append(d)
        self._note(msg, len(d.line) + 100)

    def consume(self, msg: Message) -> None:
        """Nothing to keep: acknowledged with the job."""
        self._note(msg, 100)

    def then(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the store thread once the job is settled."""
        self.job.after.append(action)
        if self.since is None:
            self.since = time.monotonic()

    def empty(self) -> bool:
        """True when nothing waits."""
        return not self.job.acks and not self.job.after

    def take(self) -> Job:
        """The job built so far; a new one starts."""
        job, self.job, self.since, self.pending_acks = self.job, Job(), None, 0
        return job


class Settler:
    """Settle jobs on the store thread (see module docs).

    Parameters
    ----------
    writer : StoreWriter
    deadletters : DeadLetters
    ack : callable
        Acknowledges one message.
    counters : Counter
    stopping : threading.Event
        Set when the ingestor stops: a job that still cannot be written is left
        unacknowledged (the broker delivers it again next session).
    retry_max_s : float [s]
        Longest back-off between tries.
    """

    def __init__(self, writer: StoreWriter, deadletters: DeadLetters, ack: Callable[[Ack], None],
                 counters: Counter[str], stopping: threading.Event, retry_max_s: float = 5.0) -> None:
        self.writer = writer
        self.deadletters = deadletters
        self.ack = ack
        self.counters = counters
        self.rejected_by_reason: Counter[str] = Counter()
        self.stopping = stopping
        self.retry_max_s = retry_max_s
        self.lag_s = 0.0
        # receipt -> durable and acknowledged, per message [s] (the latest 50,000)
        self.latencies: collections.deque[float] = collections.deque(maxlen=50_000)

    def settle(self, job: Job) -> bool:
        """Make ``job`` durable and acknowledge it; False if the ingestor stopped first (nothing lost)."""
        delay, tries, first = 0.05, 0, time.monotonic()
        while True:
            try:
                self._try(job)
                if tries:
                    log.warning("a batch of %d messages was settled after %d tries in %.1f s",
                                len(job.acks), tries + 1, time.monotonic() - first)
                return True
            except RETRY as exc:
                tries += 1
                self.counters["retries"] += 1
                if tries == 1 or tries % 20 == 0:
                    log.error("%s; nothing of it is acknowledged; trying again (try %d)", exc, tries)
            except Exception:  # a bug past the store step: never drop, never acknowledge early
                tries += 1
                self.counters["errors"] += 1
                log.exception("settling a batch of %d messages failed; trying again", len(job.acks))
            if self.stopping.wait(delay):
                log.error("stopping with %d messages unacknowledged; the broker keeps them", len(job.acks))
                return False
            delay = min(delay * 2, self.retry_max_s)

    def _try(self, job: Job) -> None:
        try:
            self._advance(job)
        except RETRY:
            raise
        except Exception as exc:  # the job's own fault at the store step: find the message(s)
            if job.step != 0:
                raise
            self._isolate(job, exc)
            self._advance(job)

    def _advance(self, job: Job) -> None:
        if job.step == 0:
            self._store(job)
            job.step = 1
        if job.step == 1:
            now_ok = self.deadletters.write(job.dead)
            waiting = {id(d.ack) for d in job.dead} - {id(a) for a in now_ok}
            job.acks = [a for a in job.acks if id(a) not in waiting]
            self.counters["rejected"] += len(job.dead)
            self.rejected_by_reason.update(d.reason for d in job.dead)
            job.step = 2
        if job.step == 2:
            for a in job.acks:
                self.ack(a)
            now = time.time()
            self.latencies.extend(now - a.received for a in job.acks)
            self.counters["batches"] += 1
            job.step = 3
        if job.step == 3:
            for action in job.after:
                action()
            job.step = 4

    def _store(self, job: Job) -> None:
        sites = [i for _, i in job.registrations if isinstance(i, SiteInfo)]
        meters = [i for _, i in job.registrations if isinstance(i, MeterInfo)]
        df, events = job.frames()
        if not (sites or meters or df is not None or events is not None):
            return
        where = self.writer.write(sites, meters, df, events)
        if where == "stored":
            self.counters["written"] += job.readings
            self.counters["events_written"] += len(job.events)
            if job.max_ts:
                self.lag_s = time.time() - job.max_ts / 1e9

    def _isolate(self, job: Job, exc: Exception) -> None:
        """Write the job's messages one by one; dead-letter ``internal_error`` those that still fail."""
        log.error("a batch of %d messages could not be written (%s: %s); writing its messages one by one",
                  len(job.acks), type(exc).__name__, exc)
        for msg, info in job.registrations:
            sites = [info] if isinstance(info, SiteInfo) else []
            meters = [info] if isinstance(info, MeterInfo) else []
            self._one(job, msg, functools.partial(self.writer.write, sites, meters, None, None))
        for span in job.spans:
            df, ev = job.frames([span])
            self._one(job, span.msg, functools.partial(self.writer.write, [], [], df, ev))
        job.registrations, job.spans = [], []
        job.ts, job.site, job.meter, job.quantity, job.value, job.events = [], [], [], [], [], []
        job.step = 1

    def _one(self, job: Job, msg: Message, write: Callable[[], str]) -> None:
        try:
            write()
        except RETRY:
            raise
        except Exception as exc:
            self.counters["internal_errors"] += 1
            log.error("message on %s could not be written (%s: %s); dead-lettered internal_error",
                      msg.topic, type(exc).__name__, exc)
            text = f"internal_error: the store refused it: {type(exc).__name__}: {exc}"
            job.dead.append(DeadLetter.of(msg, "internal_error", text, DEFAULT_KEEP_BYTES))
