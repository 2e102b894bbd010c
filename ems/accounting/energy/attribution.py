"""Energy parts to hourly rows (stage 1, steps 4-6): local hour, day and tariff period; PV export.

Steps 4-6 of :mod:`ems.accounting.energy`: each part belongs to the local clock hour,
calendar day and tariff period of its start (:class:`Calendar`); the derived
``_site``/``pv_exported_kwh`` series takes, per interval start, the smaller of the grid
export and the PV energy; parts are summed per hour and period in time order
(:class:`Accumulator`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ems.accounting.energy.series import (
    SeriesTable,
    empty_anomalies,
    gap_frame,
    reset_frame,
    series_parts,
    step_timing,
)
from ems.errors import AccountingError, ReadingError
from ems.readings import SiteInfo, tou_periods

__all__ = ["NS_D", "NS_H", "Accumulator", "Calendar", "Rows"]


NS_H = 3_600_000_000_000
NS_D = 86_400_000_000_000
_RATE_Q = ("import_kwh", "export_kwh")
_DERIVED = ("_site", "pv_exported_kwh")


@dataclass
class Rows:
    """Output rows: series, hour [ns, UTC start of the local hour], day [days since the epoch,
    local], period code, value, max_rate, n; ``periods`` names the codes."""

    sid: np.ndarray
    hour: np.ndarray
    day: np.ndarray
    period: np.ndarray
    value: np.ndarray
    max_rate: np.ndarray
    n: np.ndarray
    periods: list[str]


class Calendar:
    """Local hour, day and tariff period of interval starts at one site, from cached tables.

    Offsets come from a table per UTC hour; periods from a table per slot of the
    epoch-aligned grid ``step`` [ns] (the site's grid meters' interval). Both tables
    grow to cover what is asked.
    """

    def __init__(self, site: SiteInfo, step: int, periods: dict[str, int],
                 shared: dict[tuple[str, ...], np.ndarray]) -> None:
        self.site = site
        self.step = step
        self.codes = periods  # shared: period name -> code over every site
        self.shared = shared  # period codes by (zone, tariff, grid): sites with the same tariff share them
        self._h0 = self._h1 = 0
        self._off = np.zeros(0, np.int64)
        self._phase: int | None = 0
        self._s0 = self._s1 = 0
        self._per = np.zeros(0, np.int64)

    def _cover(self, start: np.ndarray) -> None:
        """Extend the offset table to the UTC hours of ``start``."""
        lo, hi = int(start.min()) // NS_H - 1, int(start.max()) // NS_H + 1
        if len(self._off) and lo >= self._h0 and hi <= self._h1:
            return
        self._h0, self._h1 = (min(lo, self._h0), max(hi, self._h1)) if len(self._off) else (lo, hi)
        grid = pd.DatetimeIndex((np.arange(self._h0, self._h1 + 1, dtype=np.int64) * NS_H).view("M8[ns]"), tz="UTC")
        try:
            local = grid.tz_convert(self.site.tz).tz_localize(None)
        except Exception as exc:
            raise AccountingError(f"site {self.site.site}: expected an IANA time zone; found {self.site.tz!r}") from exc
        self._off = local.as_unit("ns").asi8 - grid.as_unit("ns").asi8
        phase = (-self._off) % NS_H
        self._phase = int(phase[0]) if (phase == phase[0]).all() else None

    def _offset(self, t: np.ndarray) -> np.ndarray | int:
        off = self._off
        return int(off[0]) if (off == off[0]).all() else off[t // NS_H - self._h0]

    def hours(self, start: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Local-hour bucket number of each start (non-decreasing with ``start``).

        Returns the numbers and, when the zone's hours are not all in one phase with UTC
        (a 30-minute daylight-saving shift), the bucket starts [ns] they index.
        """
        self._cover(start)
        if self._phase is not None:
            return (start - self._phase) // NS_H, None
        bucket = start - (start + self._offset(start)) % NS_H
        uniq, inv = np.unique(bucket, return_inverse=True)
        return inv.astype(np.int64), uniq

    def hour_start(self, number: np.ndarray, starts: np.ndarray | None) -> np.ndarray:
        """UTC start [ns] of the buckets numbered by :meth:`hours`."""
        return number * NS_H + self._phase if starts is None else starts[number]

    def day(self, t: np.ndarray) -> np.ndarray:
        """Local calendar day [days since the epoch] of each time [ns] (in the covered range)."""
        out: np.ndarray = (t + self._offset(t)) // NS_D
        return out

    def period(self, start: np.ndarray) -> np.ndarray:
        """Tariff period code of each start (the period of its slot on the grid ``step``)."""
        slot = start // self.step
        lo, hi = int(slot.min()), int(slot.max())
        if lo < self._s0 or hi > self._s1 or not len(self._per):
            self._s0, self._s1 = min(lo, self._s0) if len(self._per) else lo, max(hi, self._s1)
            key = (self.site.tz, json.dumps(self.site.attrs.get("tariff"), sort_keys=True, default=str),
                   str(self.step), str(self._s0), str(self._s1))
            if key not in self.shared:
                self.shared[key] = self._tou(np.arange(self._s0, self._s1 + 1, dtype=np.int64) * self.step)
            self._per = self.shared[key]
        out: np.ndarray = self._per[slot - self._s0]
        return out

    def _tou(self, t: np.ndarray) -> np.ndarray:
        """Period code at each time [ns, UTC]: :func:`ems.readings.tou_periods` of one time per
        distinct local month and time of day (the only inputs of a tariff's periods)."""
        tariff = self.site.attrs.get("tariff")
        utc = pd.DatetimeIndex(t.view("M8[ns]"), tz="UTC")
        try:
            if not isinstance(tariff, Mapping):
                raise ReadingError(f"expected a mapping; found {json.dumps(tariff, default=str)[:80]}")
            wall = utc.tz_convert(self.site.tz).tz_localize(None).asi8
            key = (wall.view("M8[ns]").astype("M8[M]").astype(np.int64) % 12) * NS_D + wall % NS_D
            inv, uniq = pd.factorize(key)
            rep = np.empty(len(uniq), dtype=np.int64)
            rep[inv] = np.arange(len(inv))  # any time of each (month, time of day) stands for all
            names = tou_periods(utc[rep].tz_convert(self.site.tz), tariff).astype(str)
            unpriced = sorted(set(names.tolist()) - set(tariff.get("prices") or {}))
            if unpriced:
                raise ReadingError(f"expected a price for every period; found none for {unpriced}")
        except ReadingError as exc:
            raise AccountingError(
                f"site {self.site.site}: SiteInfo.attrs['tariff'] is not a valid tariff description "
                f"(the site file's grid.tariff as JSON data): {exc}"
            ) from None
        for u in sorted(set(names.tolist())):
            self.codes.setdefault(u, len(self.codes))
        out: np.ndarray = np.asarray([self.codes[u] for u in names.tolist()], dtype=np.int64)[inv]
        return out


class Accumulator:
    """Stage 1 series by series (steps 1-6); the derived PV export per site at the end."""

    def __init__(self, series: SeriesTable, sites: Mapping[str, SiteInfo], lo: int | None, hi: int | None) -> None:
        self.series = self.base = series
        self.sites = sites
        self.lo, self.hi = lo, hi
        self.codes: dict[str, int] = {"": 0}
        self.cal: dict[str, Calendar] = {}
        self.tou: dict[tuple[str, ...], np.ndarray] = {}
        self.timing: dict[tuple[int, int], tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.rows: list[tuple[np.ndarray, ...]] = []
        self.resets: list[tuple[int, tuple[np.ndarray, ...]]] = []
        self.gaps: list[tuple[int, tuple[np.ndarray, ...]]] = []
        self.pv_parts: dict[str, dict[str, list[tuple[int, np.ndarray, np.ndarray]]]] = {}
        self.slots: dict[tuple[str, bool], tuple[np.ndarray, tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray,
                                                                  np.ndarray, int]]] = {}
        for s in sorted(set(series.site)):
            if s not in sites:
                raise AccountingError(f"readings name site {s!r} but the ReadingSet has no SiteInfo for it")

    def _calendar(self, site: str) -> Calendar:
        if site not in self.cal:
            grid = [int(self.series.iv_ns[i]) for i in range(len(self.series))
                    if self.series.site[i] == site and self.series.kind[i] == "grid"]
            self.cal[site] = Calendar(self.sites[site], int(np.gcd.reduce(grid)) if grid else 900_000_000_000, self.codes, self.tou)
        return self.cal[site]

    def _priced(self, j: int) -> bool:
        s = self.series
        if not self.sites[s.site[j]].attrs.get("tariff"):
            return False
        return s.kind[j] == "_site" or (s.kind[j] == "grid" and s.quantity[j] in _RATE_Q)

    def add(self, j: int, t: np.ndarray, x: np.ndarray) -> None:
        """Add one register series (its ts [ns] and values in time order)."""
        s = self.series
        iv = int(s.iv_ns[j])
        key = (id(t), iv)
        if key not in self.timing:  # series of one ts-major block share their ts array
            self.timing[key] = (t, step_timing(t, iv))
        start, val, resets, gaps = series_parts(t, x, iv, float(s.roll[j]), self.timing[key][1])
        if resets is not None:
            self.resets.append((j, resets))
        if gaps is not None:
            self.gaps.append((j, gaps))
        if self.lo is not None or self.hi is not None:
            keep = np.ones(len(start), dtype=bool)
            if self.lo is not None:
                keep &= start >= self.lo
            if self.hi is not None:
                keep &= start < self.hi
            start, val = start[keep], val[keep]
        role = "e" if (s.kind[j], s.quantity[j]) == ("grid", "export_kwh") else "p" if (s.kind[j], s.quantity[j]) == ("pv", "energy_kwh") else ""
        if role:
            self.pv_parts.setdefault(s.site[j], {"e": [], "p": []})[role].append((iv, start, val))
        self._sum(j, start, val, iv)

    def _sum(self, j: int, start: np.ndarray, val: np.ndarray, iv: int) -> None:
        """Attribute one series' parts (step 4) and sum them per hour and period (step 6)."""
        if not len(start):
            return
        slots = self._slots(j, start)
        key, size, cnt, keys, hour, day, npd = slots
        sums = np.bincount(key, weights=val, minlength=size)
        if self.series.quantity[j] in _RATE_Q:
            top = np.full(size, -np.inf)
            np.maximum.at(top, key, val * (NS_H / iv))
            rate = top[keys]
        else:
            rate = np.full(len(keys), np.nan)
        self.rows.append((np.full(len(keys), j, np.int64), hour, day, keys % npd, sums[keys], rate, cnt[keys]))

    def _slots(self, j: int, start: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """The hour (and period) slot of each part start, and what the slots are: worked out once
        for the series of a site that share one array of starts (a ts-major block without gaps)."""
        site = self.series.site[j]
        priced = self._priced(j)
        hit = self.slots.get((site, priced))
        if hit is not None and hit[0] is start:
            return hit[1]
        cal = self._calendar(site)
        number, starts = cal.hours(start)
        h0 = int(number[0])
        if priced:
            pcode = cal.period(start)
            npd = int(pcode.max()) + 1
            key = (number - h0) * npd + pcode
        else:
            npd = 1
            key = number - h0
        size = int(key[-1]) // npd * npd + npd
        cnt = np.bincount(key, minlength=size)
        keys = np.flatnonzero(cnt)
        hour = cal.hour_start(keys // npd + h0, starts)
        out = (key, size, cnt, keys, hour, cal.day(hour), npd)
        self.slots[(site, priced)] = (start, out)
        return out

    def finish(self) -> tuple[Rows, SeriesTable]:
        """The hourly rows of every series, the derived ones included, and the series table."""
        s = self.series
        added: list[str] = []
        for site in sorted(self.pv_parts):
            got = _pv_export(self.pv_parts[site])
            if got is None:
                continue
            j = len(s.site)
            s = SeriesTable([*s.site, site], [*s.meter, _DERIVED[0]], [*s.quantity, _DERIVED[1]], [*s.kind, "_site"],
                        np.r_[s.iv_ns, got[2]], np.r_[s.roll, np.nan])
            self.series = s
            self._sum(j, got[0], got[1], got[2])
            added.append(site)
        periods = ["", *sorted(p for p in self.codes if p)]
        relabel = np.zeros(len(self.codes), dtype=np.int64)
        for name, code in self.codes.items():
            relabel[code] = periods.index(name)
        rank = _rank(s)
        rows = sorted(self.rows, key=lambda r: int(rank[r[0][0]]))
        self.series = s = SeriesTable(
            _permute(s.site, rank), _permute(s.meter, rank), _permute(s.quantity, rank), _permute(s.kind, rank),
            _permute_array(s.iv_ns, rank), _permute_array(s.roll, rank),
        )
        if not rows:
            empty = np.zeros(0, np.int64)
            return Rows(empty, empty, empty, empty, np.zeros(0), np.zeros(0), empty, periods), s
        cols = [np.concatenate(c) for c in zip(*rows, strict=True)]
        return Rows(rank[cols[0]], cols[1], cols[2], relabel[cols[3]], cols[4], cols[5], cols[6], periods), s

    def anomalies(self) -> pd.DataFrame:
        """Resets and rollovers, then gaps, each by series then ts; in the window only."""
        frames = [reset_frame(self.resets, self.base), gap_frame(self.gaps, self.base)]
        frames = [f for f in frames if len(f)]
        if not frames:
            return empty_anomalies()
        out = pd.concat(frames, ignore_index=True)
        start = pd.DatetimeIndex(out["ts"]).as_unit("ns").asi8 - out.pop("_iv").to_numpy(np.int64)
        keep = np.ones(len(out), dtype=bool)
        if self.lo is not None:
            keep &= start >= self.lo
        if self.hi is not None:
            keep &= start < self.hi
        return out if keep.all() else out[keep].reset_index(drop=True)


def _rank(s: SeriesTable) -> np.ndarray:
    """Position of each series in canonical order (sorted by site, meter, quantity)."""
    order = sorted(range(len(s.site)), key=lambda i: (s.site[i], s.meter[i], s.quantity[i]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _permute_array(values: np.ndarray, rank: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[rank] = values
    return out


def _permute(values: list[str], rank: np.ndarray) -> list[str]:
    res = [""] * len(values)
    for i, v in enumerate(values):
        res[int(rank[i])] = v
    return res


def _pv_export(parts: Mapping[str, list[tuple[int, np.ndarray, np.ndarray]]]) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Step 5 for one site: per interval start, min(export parts, PV parts); None if no start has both."""
    if not parts["e"] or not parts["p"]:
        return None
    g = int(np.gcd.reduce([iv for iv, _, _ in parts["e"] + parts["p"]]))
    starts = [st for _, st, _ in parts["e"] + parts["p"] if len(st)]
    if not starts:
        return None
    lo = min(int(st.min()) for st in starts) // g
    span = max(int(st.max()) for st in starts) // g - lo + 1
    sums, seen = {}, {}
    for role in ("e", "p"):
        sums[role] = np.zeros(span)
        seen[role] = np.zeros(span, dtype=bool)
        for _, st, val in parts[role]:
            slot = st // g - lo
            sums[role] += np.bincount(slot, weights=val, minlength=span)
            seen[role][slot] = True
    both = np.flatnonzero(seen["e"] & seen["p"])
    if not len(both):
        return None
    return (both + lo) * g, np.minimum(sums["e"][both], sums["p"][both]), g
