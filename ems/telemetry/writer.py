"""Durable writes for the ingestor: into the store, or, while it cannot take them, into the spool.

:meth:`StoreWriter.write` returns only when a batch (its registrations, readings and
events) is durable: written to the store (and flushed, for a store that only queues
writes) or appended to the spool and fsynced. While the spool holds anything, new
batches go behind it, so the order is kept; :meth:`StoreWriter.replay` takes the spool
back into the store, oldest first.

A failure that may pass (the store is down, the disk full or read-only, a lock held too
long: :class:`OSError`, :class:`~ems.errors.StoreError`) raises :class:`Unavailable`;
the caller keeps the batch and tries again later. Anything else is the batch's own
fault and propagates as it is (:mod:`ems.telemetry.settle` then finds the message).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pandas as pd

from ems.errors import EmsError, StoreError
from ems.readings import MeterInfo, SiteInfo
from ems.store.base import Store
from ems.telemetry.spool import Spool

__all__ = ["RETRY", "TRANSIENT", "StoreWriter", "Unavailable"]

log = logging.getLogger(__name__)

TRANSIENT: tuple[type[BaseException], ...] = (OSError, StoreError)
"""Failures that may pass: the batch is kept and written again later."""


class Unavailable(EmsError):
    """Neither the store nor the spool could take a batch durably; nothing of it was lost."""


RETRY: tuple[type[BaseException], ...] = (Unavailable, *TRANSIENT)
"""What a caller of :meth:`StoreWriter.write` tries again later."""


class StoreWriter:
    """Write batches durably (see module docs).

    Parameters
    ----------
    store : Store
    spool : Spool, optional
    lock : threading.Lock
        Held around every call into the store (the decoder thread reads it too).
    counters : Counter-like
        ``spooled``, ``replayed``, ``spool_full``, ``spool_alarms`` are counted here.
    """

    def __init__(self, store: Store, spool: Spool | None, lock: threading.Lock, counters: Any) -> None:
        self.store = store
        self.spool = spool
        self.lock = lock
        self.counters = counters
        self._alarmed = False
        self._next_replay = 0.0

    # ------------------------------------------------------------------ the store

    def _to_store(self, sites: list[SiteInfo], meters: list[MeterInfo], df: pd.DataFrame | None,
                  events: pd.DataFrame | None) -> None:
        with self.lock:
            if sites:
                self.store.register_sites(sites)
            if meters:
                self.store.register_meters(meters)
            if df is not None and len(df):
                self.store.write_readings(df)
            if events is not None and len(events):
                self.store.write_events(events)
            flush = getattr(self.store, "flush", None)
            if callable(flush):  # a batching client (InfluxDB): queued is not stored
                flush()

    def write(self, sites: list[SiteInfo], meters: list[MeterInfo], df: pd.DataFrame | None,
              events: pd.DataFrame | None) -> str:
        """Write one batch durably; return ``stored`` or ``spooled``.

        Raises
        ------
        Unavailable
            Neither the store nor the spool took it (the spool is full, or its disk refused).
        """
        if self.spool is None:
            try:
                self._to_store(sites, meters, df, events)
            except TRANSIENT as exc:
                raise Unavailable(f"the store refused the batch ({exc}); no spool; kept for a retry") from exc
            return "stored"
        if self.replay():
            try:
                self._to_store(sites, meters, df, events)
                return "stored"
            except TRANSIENT as exc:
                log.warning("store write failed (%s); spooling to %s", exc, self.spool.path)
                self._next_replay = time.monotonic() + 1.0
        self._spool(sites, meters, df, events)
        return "spooled"

    # ------------------------------------------------------------------ the spool

    def _spool(self, sites: list[SiteInfo], meters: list[MeterInfo], df: pd.DataFrame | None,
               events: pd.DataFrame | None) -> None:
        assert self.spool is not None
        regs = [(b"S", [s.to_dict() for s in sites]), (b"M", [m.to_dict() for m in meters])]
        try:
            ok = self.spool.append(df, events, regs)
        except OSError as exc:
            raise Unavailable(f"the store and the spool {self.spool.path} both refused the batch ({exc}); "
                              "kept for a retry") from exc
        if not ok:
            if not self._alarmed:
                log.warning("spool %s is full (%d of %d bytes): nothing more is acknowledged until the store is back",
                            self.spool.path, self.spool.used_bytes, self.spool.limit_bytes)
            self.counters["spool_full"] += 1
            self._alarmed = True
            raise Unavailable(f"the store is unavailable and the spool {self.spool.path} is full")
        self.counters["spooled"] += 0 if df is None else _distinct(df)
        if self.spool.alarm and not self._alarmed:
            self._alarmed = True
            self.counters["spool_alarms"] += 1
            log.warning("spool %s holds %d of %d bytes (alarm at %.0f %%): the store has been unavailable a while",
                        self.spool.path, self.spool.used_bytes, self.spool.limit_bytes, 100 * self.spool.alarm_fraction)

    def replay(self, force: bool = False) -> bool:
        """Take the spool back into the store; return True when the spool is empty."""
        if self.spool is None or self.spool.empty():
            return True
        if not force and time.monotonic() < self._next_replay:
            return False
        try:
            rows = self.spool.replay(self._replay_write, self._replay_register)
        except TRANSIENT as exc:
            self._next_replay = time.monotonic() + 1.0
            log.debug("store still unavailable (%s); %d bytes stay in the spool", exc, self.spool.used_bytes)
            return False
        self._alarmed = False
        log.warning("store is back: replayed %d spooled rows; spool empty", rows)
        return True

    def _replay_write(self, df: pd.DataFrame | None, events: pd.DataFrame | None) -> None:
        self._to_store([], [], df, events)
        if df is not None:
            n = _distinct(df)
            self.counters["replayed"] += n
            self.counters["written"] += n
        if events is not None:
            self.counters["events_written"] += len(events)

    def _replay_register(self, kind: bytes, objs: list[dict[str, Any]]) -> None:
        if kind == b"S":
            self._to_store([SiteInfo.from_dict(d) for d in objs], [], None, None)
        else:
            self._to_store([], [MeterInfo.from_dict(d) for d in objs], None, None)


def _distinct(df: pd.DataFrame) -> int:
    """Readings (distinct site, meter, ts) in a tidy frame."""
    keys = pd.DataFrame({"site": df["site"].to_numpy(), "meter": df["meter"].to_numpy(),
                         "ts": pd.DatetimeIndex(df.index).asi8})
    return len(keys.drop_duplicates())
