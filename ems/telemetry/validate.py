"""What a decoded reading is checked against: the meter's metadata and what came before it.

The codec (:mod:`ems.telemetry.codec`) checks a message on its own; this module keeps
the state the ingestor checks each message against, whatever its encoding:

* the known meters and sites (from metadata messages and ``--meta``);
* per meter, the latest reading accepted (registers never fall, nor jump beyond the
  meter's rating: :func:`ems.telemetry.codec.check_data`);
* :class:`SeqTracker`: sequence numbers seen, gaps, late arrivals, duplicates;
* :class:`ReadingIndex`: the values accepted per (meter, ts), bounded, so that a
  second reading at the same timestamp with different values is refused
  (``conflicting_duplicate``) instead of overwriting the stored one (the store keeps
  one value per meter, quantity and ts; the last write would win).

:class:`Validator` ties them together; :meth:`Validator.check` either accepts a
message (and only then updates the state) or raises
:class:`~ems.errors.PayloadError`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ems.errors import PayloadError
from ems.readings import MeterInfo, SiteInfo
from ems.telemetry.codec import DataMessage, Reading, check_data, format_ts

__all__ = ["Accepted", "ReadingIndex", "SeqTracker", "Validator"]

Key = tuple[str, str]

_MAX_GAP_TRACKED = 100_000


class SeqTracker:
    """Sequence numbers seen per meter: duplicates, gaps and late arrivals.

    Keeps only the highest and lowest seq and the set of missing ones (bounded).
    """

    def __init__(self) -> None:
        self.hi: dict[Key, int] = {}
        self.lo: dict[Key, int] = {}
        self.missing: dict[Key, set[int]] = {}
        self.gaps = 0

    def see(self, key: Key, seq: int) -> str:
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


class ReadingIndex:
    """The values accepted per (meter, ts), the latest ``per_meter`` of each meter, ``max_entries`` in all.

    Values are kept as a tuple aligned to the meter's quantities (None where a
    reading has none). Memory: about 150 bytes per entry (15 MB for the default
    100,000). When full, the meter used least recently is forgotten first.

    Parameters
    ----------
    max_entries : int
        Most readings held over all meters.
    per_meter : int
        Most readings held per meter (the latest ones).
    """

    def __init__(self, max_entries: int = 100_000, per_meter: int = 2048) -> None:
        self.max_entries = max_entries
        self.per_meter = per_meter
        self._vals: collections.OrderedDict[Key, dict[int, tuple[float | None, ...]]] = collections.OrderedDict()
        self._order: dict[Key, collections.deque[int]] = {}
        self._counted: dict[Key, int] = {}
        self.entries = 0

    def __contains__(self, key: Key) -> bool:
        return key in self._vals

    def held(self, key: Key, ts: int) -> tuple[float | None, ...] | None:
        """The values held for ``key`` at ``ts``, or None."""
        return self._vals.get(key, {}).get(ts)

    def values_of(self, key: Key) -> dict[int, tuple[float | None, ...]] | None:
        """Every ``ts -> values`` held for ``key`` (read only), or None."""
        return self._vals.get(key)

    def add(self, key: Key, items: Iterable[tuple[int, tuple[float | None, ...]]]) -> None:
        """Hold each ``(ts, values)`` for ``key`` (merging with what is held at that ts)."""
        vals = self._vals.get(key)
        if vals is None:
            vals = self._vals[key] = {}
            self._order[key] = collections.deque()
        self._vals.move_to_end(key)
        order = self._order[key]
        for ts, values in items:
            held = vals.get(ts)
            if held is not None:
                vals[ts] = tuple(b if b is not None else a for a, b in zip(held, values, strict=False))
                continue
            vals[ts] = values
            order.append(ts)
        self.entries += len(order) - self._counted.get(key, 0)
        while len(order) > self.per_meter:
            vals.pop(order.popleft(), None)
            self.entries -= 1
        self._counted[key] = len(order)
        while self.entries > self.max_entries and len(self._vals) > 1:
            old, gone = self._vals.popitem(last=False)
            self._order.pop(old, None)
            self._counted.pop(old, None)
            self.entries -= len(gone)


@dataclass
class Accepted:
    """What accepting a message changed: readings, and per reading what its seq was (new, duplicate, ...)."""

    readings: int
    duplicates: int = 0
    late: int = 0
    gaps: list[int] | None = None


class Validator:
    """The ingestor's checks of decoded messages (see module docs).

    Parameters
    ----------
    meters : iterable of MeterInfo
        Known beforehand.
    sites : iterable of str
        Sites known beforehand (besides those of ``meters``).
    index : ReadingIndex, optional
        Values accepted per (meter, ts); default a new one of the default size.
    """

    def __init__(self, meters: Iterable[MeterInfo] = (), sites: Iterable[str] = (),
                 index: ReadingIndex | None = None) -> None:
        self.meters: dict[Key, MeterInfo] = {(m.site, m.meter): m for m in meters}
        self.sites: set[str] = set(sites) | {m.site for m in self.meters.values()}
        self.site_infos: dict[str, SiteInfo] = {}
        self.last: dict[Key, Reading] = {}
        self.seqs = SeqTracker()
        self.index = index or ReadingIndex()
        self.primed: set[str] = set()

    # ------------------------------------------------------------------ metadata

    def unknown(self, site: str, meter: str) -> str | None:
        """``unknown_site`` or ``unknown_meter`` when ``site/meter`` has no metadata yet, else None."""
        if (site, meter) in self.meters:
            return None
        return "unknown_meter" if site in self.sites else "unknown_site"

    def add_meter(self, info: MeterInfo) -> bool:
        """Learn a meter's metadata; return whether it is new or changed."""
        key = (info.site, info.meter)
        changed = self.meters.get(key) != info
        self.meters[key] = info
        self.sites.add(info.site)
        return changed

    def add_site(self, info: SiteInfo) -> bool:
        """Learn a site's registration; return whether it is new or changed."""
        changed = self.site_infos.get(info.site) != info
        self.site_infos[info.site] = info
        self.sites.add(info.site)
        return changed

    def remove_meter(self, site: str, meter: str) -> None:
        """Forget a meter (its retained metadata was cleared)."""
        self.meters.pop((site, meter), None)

    # ------------------------------------------------------------------ data

    def check(self, msg: DataMessage) -> Accepted:
        """Check ``msg`` against its meter and what came before; on success record it.

        Raises
        ------
        PayloadError
            ``unknown_site``/``unknown_meter``, the reasons of
            :func:`ems.telemetry.codec.check_data`, or ``conflicting_duplicate``.
        """
        key = (msg.site, msg.meter)
        info = self.meters.get(key)
        if info is None:
            reason = self.unknown(msg.site, msg.meter) or "unknown_meter"
            raise PayloadError(reason, f"ems/v1/{msg.site}/{msg.meter}: no metadata for this meter")
        check_data(msg, info, self.last.get(key))
        rows = [_aligned(r.values, info.quantities) for r in msg.readings]
        self._check_conflicts(msg, info, rows)
        return self._record(key, msg, rows)

    def _check_conflicts(self, msg: DataMessage, info: MeterInfo, rows: list[tuple[float | None, ...]]) -> None:
        held_all = self.index.values_of((msg.site, msg.meter))
        mine: dict[int, tuple[float | None, ...]] = {}
        repeats = len({r.ts_ns for r in msg.readings}) != len(msg.readings)  # the same ts twice in one message
        for r, vals in zip(msg.readings, rows, strict=True):
            for held in (held_all.get(r.ts_ns) if held_all else None, mine.get(r.ts_ns) if repeats else None):
                if held is None:
                    continue
                i = _differs(held, vals)
                if i is not None:
                    raise PayloadError(
                        "conflicting_duplicate",
                        f"ems/v1/{msg.site}/{msg.meter}: a reading at {format_ts(r.ts_ns)} (seq {r.seq}) is "
                        f"already held with {info.quantities[i]} = {held[i]!r}; this one says {vals[i]!r}. "
                        "The stored value is kept",
                    )
            if repeats:
                mine[r.ts_ns] = vals

    def _record(self, key: Key, msg: DataMessage, rows: list[tuple[float | None, ...]]) -> Accepted:
        out = Accepted(len(msg.readings))
        see = self.seqs.see
        for r in msg.readings:
            state = see(key, r.seq)
            if state == "new":
                continue
            if state == "duplicate":
                out.duplicates += 1
            elif state == "late":
                out.late += 1
            elif state == "gap":
                out.gaps = [*(out.gaps or []), r.seq]
        self.index.add(key, zip([r.ts_ns for r in msg.readings], rows, strict=True))
        newest = msg.readings[-1]
        prev = self.last.get(key)
        if prev is None or newest.ts_ns > prev.ts_ns:
            self.last[key] = newest
        return out

    # ------------------------------------------------------------------ priming from the store

    def prime(self, site: str, stored: pd.DataFrame, before_ns: int) -> int:
        """Learn what the store holds for ``site`` (a contract readings frame); return the readings learnt.

        Every stored reading goes into the index (so a conflicting repeat after a restart
        is caught), and the latest one before ``before_ns`` of each meter becomes its
        previous reading when the ingestor has none yet (so registers are checked against it).
        """
        self.primed.add(site)
        if stored is None or stored.empty:
            return 0
        n = 0
        ts_all = pd.DatetimeIndex(stored.index).as_unit("ns").asi8
        meters = stored["meter"].astype(str).to_numpy()
        for meter in np.unique(meters):
            info = self.meters.get((site, str(meter)))
            if info is None:
                continue
            sel = meters == meter
            wide = _wide(stored[sel], ts_all[sel], info.quantities)
            n += self._prime_meter((site, str(meter)), wide, before_ns)
        return n

    def _prime_meter(self, key: Key, wide: Mapping[int, tuple[float | None, ...]], before_ns: int) -> int:
        info = self.meters[key]
        self.index.add(key, ((ts, wide[ts]) for ts in sorted(wide)))
        earlier = [ts for ts in wide if ts < before_ns]
        if earlier and key not in self.last:
            ts = max(earlier)
            vals = {q: v for q, v in zip(info.quantities, wide[ts], strict=True) if v is not None}
            self.last[key] = Reading(-1, ts, vals)
        return len(wide)


def _differs(held: tuple[float | None, ...] | None, values: tuple[float | None, ...]) -> int | None:
    """Index of the first quantity present in both with different values; None if none."""
    if held is None:
        return None
    for i, (a, b) in enumerate(zip(held, values, strict=False)):
        if a is not None and b is not None and a != b:  # both present and different
            return i
    return None


def _aligned(values: Mapping[str, float], quantities: tuple[str, ...]) -> tuple[float | None, ...]:
    """Values in the order of the meter's quantities, None where the reading has none."""
    return tuple(map(values.get, quantities))


def _wide(frame: pd.DataFrame, ts: np.ndarray, quantities: tuple[str, ...]) -> dict[int, tuple[float | None, ...]]:
    """One meter's tidy rows as ``ts -> values aligned to quantities``."""
    pos = {q: i for i, q in enumerate(quantities)}
    out: dict[int, list[float | None]] = {}
    qs = frame["quantity"].astype(str).to_numpy()
    vs = frame["value"].to_numpy(dtype="float64")
    for t, q, v in zip(ts.tolist(), qs, vs.tolist(), strict=True):
        i = pos.get(q)
        if i is not None:
            out.setdefault(t, [None] * len(quantities))[i] = v
    return {t: tuple(v) for t, v in out.items()}
