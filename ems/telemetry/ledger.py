"""The publisher's ledger and checkpoint, and reconciliation against a store.

The ledger is one JSON file per stream. For every meter it keeps what the broker
ACKNOWLEDGED (QoS 1 PUBACK): how many readings, in how many messages, the
timestamps covered, and ``last_seq``: the highest sequence number up to which
every reading was acknowledged (the checkpoint a restarted publisher continues
after)::

    {"v": 1, "meters": {"qingdao/grid": {"readings": 672, "messages": 7,
      "last_seq": 672, "first_ts": "2024-07-01T00:15:00Z", "last_ts": "2024-07-08T00:00:00Z"}}}

:func:`reconcile` compares it with what a store holds, per meter.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ems.durable import atomic_write_bytes
from ems.errors import ConfigError
from ems.store.base import Store
from ems.telemetry.codec import format_ts, parse_ts

__all__ = ["Ledger", "MeterReconciliation", "reconcile"]


class Ledger:
    """Counts of acknowledged readings per meter, saved atomically to ``path``.

    Parameters
    ----------
    path : path, optional
        JSON file; loaded if it exists (resume), written by :meth:`save`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.meters: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, deque[list[Any]]] = {}
        self._range: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            try:
                doc = json.loads(self.path.read_text())
                self.meters = {str(k): dict(v) for k, v in doc["meters"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{self.path}: expected an ems ledger (JSON with 'meters'); {exc}") from None

    @staticmethod
    def key(site: str, meter: str) -> str:
        """Key of a meter: ``site/meter``."""
        return f"{site}/{meter}"

    def last_seq(self, site: str, meter: str) -> int:
        """Checkpoint of a meter: every reading up to this seq was acknowledged (0: none)."""
        e = self.meters.get(self.key(site, meter))
        return int(e["last_seq"]) if e else 0

    def sent(self, site: str, meter: str, last_seq: int) -> list[Any]:
        """Record a message in flight, in publish order; return its token for :meth:`acked`."""
        item: list[Any] = [last_seq, False]
        with self._lock:
            self._pending.setdefault(self.key(site, meter), deque()).append(item)
        return item

    def acked(
        self, site: str, meter: str, token: list[Any], n: int, first_ts: int, last_ts: int
    ) -> None:
        """Record the acknowledgement of message ``token`` with ``n`` readings over ``[first_ts, last_ts]`` [ns]."""
        k = self.key(site, meter)
        with self._lock:
            e = self.meters.get(k)
            if e is None:
                e = self.meters[k] = {
                    "readings": 0, "messages": 0, "last_seq": 0, "first_ts": None, "last_ts": None
                }
            e["readings"] += n
            e["messages"] += 1
            lo, hi = self._range.get(k) or (
                parse_ts(e["first_ts"]) if e["first_ts"] else first_ts,
                parse_ts(e["last_ts"]) if e["last_ts"] else last_ts,
            )
            self._range[k] = (min(lo, first_ts), max(hi, last_ts))
            token[1] = True
            dq = self._pending.get(k)
            while dq and dq[0][1]:
                e["last_seq"] = max(int(e["last_seq"]), int(dq.popleft()[0]))

    def total(self) -> int:
        """Readings acknowledged over all meters."""
        return sum(int(e["readings"]) for e in self.meters.values())

    def unacked(self) -> int:
        """Messages sent and not yet acknowledged."""
        with self._lock:
            return sum(len(d) for d in self._pending.values())

    def to_dict(self) -> dict[str, Any]:
        """The ledger document."""
        with self._lock:
            for k, (lo, hi) in self._range.items():
                self.meters[k]["first_ts"] = format_ts(lo)
                self.meters[k]["last_ts"] = format_ts(hi)
            return {"v": 1, "meters": {k: dict(v) for k, v in sorted(self.meters.items())}}

    def save(self) -> None:
        """Write the ledger atomically and durably (:func:`ems.durable.atomic_write_bytes`)."""
        if self.path is None:
            return
        atomic_write_bytes(self.path, json.dumps(self.to_dict(), indent=1).encode())


@dataclass(frozen=True)
class MeterReconciliation:
    """What the ledger says was sent and what the store holds, for one meter.

    Attributes
    ----------
    published : int
        Readings acknowledged by the broker (ledger).
    stored : int
        Distinct timestamps held for the meter within the ledger's time range.
    doubled : int
        Rows held more than once for the same (quantity, ts).
    """

    site: str
    meter: str
    published: int
    stored: int
    doubled: int

    @property
    def lost(self) -> int:
        """Readings published but not stored."""
        return max(self.published - self.stored, 0)

    @property
    def extra(self) -> int:
        """Readings stored beyond those published (e.g. from an earlier stream)."""
        return max(self.stored - self.published, 0)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing doubled."""
        return self.lost == 0 and self.doubled == 0 and self.extra == 0


def reconcile(ledger: Ledger, store: Store) -> list[MeterReconciliation]:
    """Compare a publisher's ledger with a store, meter by meter.

    Readings are matched by timestamp within each meter's ``[first_ts, last_ts]``
    from the ledger (a store may hold other periods).
    """
    out: list[MeterReconciliation] = []
    by_site: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, e in ledger.to_dict()["meters"].items():
        site, meter = key.split("/", 1)
        by_site.setdefault(site, []).append((meter, e))
    for site, entries in sorted(by_site.items()):
        starts = [parse_ts(e["first_ts"]) for _, e in entries if e.get("first_ts")]
        ends = [parse_ts(e["last_ts"]) for _, e in entries if e.get("last_ts")]
        if starts:
            rs = store.read(
                sites=[site],
                start=pd.Timestamp(min(starts), tz="UTC").to_pydatetime(),
                end=pd.Timestamp(max(ends), tz="UTC").to_pydatetime(),
            )
            df = rs.readings
        else:
            df = pd.DataFrame(columns=["site", "meter", "quantity", "value"])
        df = df[df["site"].astype(str) == site] if len(df) else df
        for meter, e in sorted(entries, key=lambda x: x[0]):
            sub = df[df["meter"].astype(str) == meter] if len(df) else df
            if len(sub) and e.get("first_ts"):
                ts = sub.index.as_unit("ns").asi8
                keep = (ts >= parse_ts(e["first_ts"])) & (ts <= parse_ts(e["last_ts"]))
                sub = sub[keep]
            ts_arr = sub.index.as_unit("ns").asi8 if len(sub) else np.array([], dtype="int64")
            stored = len(np.unique(ts_arr))
            if len(sub):
                dup = pd.DataFrame({"ts": ts_arr, "q": sub["quantity"].astype(str).to_numpy()}).duplicated()
                doubled = int(dup.sum())
            else:
                doubled = 0
            out.append(MeterReconciliation(site, meter, int(e["readings"]), stored, doubled))
    return out
