"""Stage 1 of the rollup: register readings to energy per hour, local day and tariff period.

Definition (the one contract the in-memory path and every store push-down follow)
----------------------------------------------------------------------------------
Input: the tidy readings frame; only *register* quantities
(``QUANTITIES[q].kind == "register"``) take part. For every series
(site, meter, quantity), ordered by ``ts``:

1. ``delta_i = value_i - value_{i-1}``; the first reading of a series is its
   baseline (the interval ending at it is not counted).
2. **Reset / rollover**: if ``delta_i < 0`` the register went down. If the meter's
   ``attrs["rollover_at"]`` [register unit] is set, ``delta_i += rollover_at``
   (rollover); otherwise the post-reset value is energy since the reset
   (``delta_i = value_i``). Either way the event is listed in the anomalies table,
   never turned into negative energy.
3. **Gaps**: ``n_i = max(1, round((ts_i - ts_{i-1}) / interval_s))``. A delta
   spanning ``n_i`` intervals (lost messages) is split pro rata in time into
   ``n_i`` equal *parts* whose intervals start at ``ts_i - (n_i - k) * interval_s``,
   ``k = 0 .. n_i - 1``, so energy crossing a day or tariff-period boundary is
   shared by time. A lost message therefore loses no energy.
4. **Attribution**: each part belongs to the local clock hour, local calendar day
   (site ``tz``) and tariff period containing its *start*. Tariff periods
   (:func:`ems.readings.tou_periods` on ``SiteInfo.attrs["tariff"]``) are resolved
   for the grid meter's ``import_kwh``/``export_kwh`` only (other rows have
   ``period == ""``), at the start of the part's interval on the epoch-aligned grid
   of the grid meters' interval (exact for interval-aligned readings).
5. **Derived series** ``meter == "_site"``, ``quantity == "pv_exported_kwh"``: per
   interval start (epoch-aligned grid of the export and PV meters' interval),
   ``min(sum of grid export parts, sum of PV energy parts)`` of the site (the PV
   share of the export: PV is taken as exported first), attributed like a part.
6. **Hourly rows** per (site, meter, quantity, hour, period): ``value`` = sum of the
   parts in time order [register unit], ``n`` = number of parts, ``max_rate`` = max of
   ``part * 3600 / interval_s`` [kW] for ``import_kwh``/``export_kwh`` (NaN otherwise).
   ``hour`` is the UTC start of the local clock hour.
7. **Daily rows** per (site, meter, quantity, date, period): sums of the hourly rows
   in hour order (``n`` summed, ``max_rate`` the maximum).

Because every sum is taken over the parts of one hour in time order, and every daily
sum over the hours of one day in hour order, stage 1 of any set of whole local days
gives the same numbers, bit for bit, whatever the row order of the readings and
whatever else is computed beside them. This is what lets a store keep the rows of
finished days (:mod:`ems.store.rollups`) and compute only the rest from raw readings:
the result equals :func:`stage1` of everything.

In SQL terms, steps 1-3 are ``LAG(value) OVER (PARTITION BY site, meter, quantity
ORDER BY ts)`` with ``generate_series`` for gaps, step 4 a ``date_trunc`` of ``ts -
interval`` in the site's zone and a tariff join, steps 6-7 two ``GROUP BY``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ems.errors import AccountingError, ReadingError
from ems.readings import QUANTITIES, MeterInfo, ReadingSet, SiteInfo, tou_periods

__all__ = [
    "ANOMALY_COLUMNS",
    "HOURLY_COLUMNS",
    "STAGE1_COLUMNS",
    "Stage1",
    "Stage1Source",
    "daily_from_hourly",
    "empty_anomalies",
    "register_series",
    "stage1",
    "stage1_series",
]

log = logging.getLogger(__name__)

STAGE1_COLUMNS = ("site", "meter", "quantity", "date", "period", "value", "max_rate", "n")
HOURLY_COLUMNS = ("site", "meter", "quantity", "hour", "date", "period", "value", "max_rate", "n")
ANOMALY_COLUMNS = ("site", "meter", "quantity", "ts", "kind", "prev_value", "value", "energy", "detail")
_NS_H = 3_600_000_000_000
_NS_D = 86_400_000_000_000
_RATE_Q = ("import_kwh", "export_kwh")
_DERIVED = ("_site", "pv_exported_kwh")

View = tuple[np.ndarray, np.ndarray]
"""One register series: ts [ns since the epoch, UTC] and values, in time order."""
SeriesKey = tuple[str, str, str]
"""(site, meter, quantity)"""
Codes = tuple[np.ndarray, list[str]]
"""A column as integer codes and the names they index."""
Where = list[tuple[int, slice | np.ndarray]]


class Stage1:
    """Result of stage 1.

    Attributes
    ----------
    energy : DataFrame
        Daily rows, columns :data:`STAGE1_COLUMNS`; ``date`` is the local calendar day
        (naive ``datetime64[ns]`` at midnight). Ordered by site, meter, quantity, date, period.
    anomalies : DataFrame
        Resets, rollovers and gaps: columns :data:`ANOMALY_COLUMNS`.
    hourly : DataFrame
        Hourly rows, columns :data:`HOURLY_COLUMNS` (``site``, ``meter``, ``quantity``,
        ``period`` categorical; ``hour`` the UTC start of the local clock hour), built
        on first access.
    """

    def __init__(self, energy: pd.DataFrame, anomalies: pd.DataFrame,
                 hourly: pd.DataFrame | Callable[[], pd.DataFrame]) -> None:
        self.energy = energy
        self.anomalies = anomalies
        self._hourly = hourly

    @property
    def hourly(self) -> pd.DataFrame:
        if callable(self._hourly):
            self._hourly = self._hourly()
        return self._hourly


@runtime_checkable
class Stage1Source(Protocol):
    """Readings that give their own stage 1: a store pushes it down to its register aggregates
    (:class:`ems.store.base.StoredReadings`); :func:`stage1` then asks them instead of
    computing it from the readings frame."""

    def stage1(self) -> Stage1:
        """Stage 1 of every reading of the set, equal to computing it from them."""
        ...


@dataclass
class _Series:
    """The register series, in canonical order (sorted by site, meter, quantity)."""

    site: list[str]
    meter: list[str]
    quantity: list[str]
    kind: list[str]
    iv_ns: np.ndarray
    roll: np.ndarray

    def __len__(self) -> int:
        return len(self.site)

    def names(self) -> tuple[list[str], list[str], list[str]]:
        return self.site, self.meter, self.quantity


@dataclass
class _Rows:
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


def stage1(
    rs: ReadingSet,
    *,
    start: pd.Timestamp | int | None = None,
    end: pd.Timestamp | int | None = None,
) -> Stage1:
    """Turn readings into energy per hour, local day and tariff period (see the module docs).

    Parameters
    ----------
    rs : ReadingSet
        Readings with their meters and sites, in any row order.
    start, end : Timestamp or int [ns since the epoch, UTC], optional
        Keep only the parts whose interval starts in ``[start, end)``; readings
        outside serve as baselines (the first reading of a window's interval, the
        reading that closes a gap). Anomalies are kept when the interval ending at
        their reading starts in the window. Give local midnights to get whole days.

    Returns
    -------
    Stage1
        Daily and hourly energy rows and the anomalies.

    Raises
    ------
    AccountingError
        Readings without a DatetimeIndex, a meter without MeterInfo or a site without
        SiteInfo, or a tariff that is not a valid description.

    Notes
    -----
    A set that gives its own stage 1 (:class:`Stage1Source`, e.g. the readings of a
    store) is asked for it when no window is given.
    """
    if start is None and end is None and isinstance(rs, Stage1Source):
        return rs.stage1()
    r = rs.readings
    if not isinstance(r.index, pd.DatetimeIndex):
        raise AccountingError(f"readings: expected a DatetimeIndex named 'ts'; found {type(r.index).__name__}")
    ts = (r.index if r.index.unit == "ns" else r.index.as_unit("ns")).asi8
    series = register_series(ts, _codes(r["site"]), _codes(r["meter"]), _codes(r["quantity"]),
                             r["value"].to_numpy(dtype=np.float64))
    return stage1_series(series, rs.meters, rs.sites, start=start, end=end)


def stage1_series(
    series: Mapping[SeriesKey, View],
    meters: Iterable[MeterInfo],
    sites: Iterable[SiteInfo],
    *,
    start: pd.Timestamp | int | None = None,
    end: pd.Timestamp | int | None = None,
) -> Stage1:
    """:func:`stage1` of register series given as arrays (what a store has in hand as it writes).

    Parameters
    ----------
    series : mapping of (site, meter, quantity) to (ts, value)
        Each register series' readings in time order: ts [ns since the epoch, UTC] and
        value [register unit] (as :func:`register_series` gives them).
    meters, sites : MeterInfo, SiteInfo
        The metadata of the series' meters and sites.
    start, end : Timestamp or int [ns], optional
        As in :func:`stage1`.

    Returns
    -------
    Stage1
        Equal, bit for bit, to :func:`stage1` of the same readings as a frame.
    """
    keys = sorted(series)
    table = _series_table(keys, list(meters))
    acc = _Accumulator(table, {s.site: s for s in sites}, _ns(start), _ns(end))
    for j, key in enumerate(keys):
        acc.add(j, *series[key])
    hourly, table = acc.finish()
    energy = _daily(hourly)
    anomalies = acc.anomalies()
    if len(anomalies):
        log.info("stage 1: %d anomalies (resets, rollovers, gaps)", len(anomalies))
    return Stage1(
        energy=_energy_frame(energy, table),
        anomalies=anomalies,
        hourly=lambda: _hourly_frame(hourly, table),
    )


def _ns(t: pd.Timestamp | int | None) -> int | None:
    if t is None or isinstance(t, int | np.integer):
        return None if t is None else int(t)
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        raise AccountingError(f"stage 1 window: expected a tz-aware time; found naive {ts}")
    return int(ts.tz_convert("UTC").as_unit("ns").value)


# --------------------------------------------------------------------------- layout



def _codes(col: pd.Series) -> Codes:
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy(), [str(c) for c in col.cat.categories]
    codes, uniques = pd.factorize(col, sort=False)
    return codes.astype(np.int64), [str(u) for u in uniques]


def register_series(ts: np.ndarray, site: Codes, meter: Codes, quantity: Codes,
                    value: np.ndarray) -> dict[SeriesKey, View]:
    """Each register series of readings given as columns, as (ts [ns], value) in time order.

    Parameters
    ----------
    ts : ndarray of int64 [ns since the epoch, UTC]
    site, meter, quantity : (ndarray of int, list of str)
        Each column as codes and the names they index.
    value : ndarray of float64

    Returns
    -------
    dict of (site, meter, quantity) to (ts, value)
        Views where the rows allow it: a slice when the rows come series by series (as
        the simulator yields them), a strided slice when a site's rows (or all) form a
        ts-major block with every series at every timestamp (as a store returns them;
        the series of a block share one ts array). Rows in any other order are sorted
        by series and ts first.
    """
    (sc, snames), (mc, mnames), (qc, qnames) = site, meter, quantity
    nm, nq = max(len(mnames), 1), max(len(qnames), 1)

    def combo(i: np.ndarray | slice) -> np.ndarray:
        out: np.ndarray = (sc[i].astype(np.int64) * nm + mc[i]) * nq + qc[i]
        return out

    is_reg = [q in QUANTITIES and QUANTITIES[q].kind == "register" for q in qnames]
    reg_q = np.asarray([*is_reg, False], dtype=bool)
    where = (_blocks(ts, [sc, mc, qc], combo) or _runs(ts, combo(slice(None)))
             or _sorted(ts, combo(slice(None)), reg_q[qc]))
    found: dict[SeriesKey, View] = {}
    shared: dict[tuple[int, int], np.ndarray] = {}
    for c, pos in where:
        if is_reg[c % nq]:
            if isinstance(pos, slice) and pos.step:  # a ts-major block: every series has the same ts
                t = shared.setdefault((pos.stop, pos.step), ts[pos])
            else:
                t = ts[pos]
            found[(snames[c // (nm * nq)], mnames[(c // nq) % nm], qnames[c % nq])] = (t, value[pos])
    return found


def _blocks(ts: np.ndarray, codes: list[np.ndarray], combo: Callable[[slice], np.ndarray]) -> Where | None:
    """Series positions if the frame, or each site's run of rows, is one ts-major block."""
    whole = _block(ts, codes, combo, 0, len(ts))
    if whole is not None:
        return whole
    sc = codes[0]
    cuts = np.flatnonzero(sc[1:] != sc[:-1]) + 1
    if len(cuts) > 4096 or len(np.unique(sc[np.r_[0, cuts]])) != len(cuts) + 1:
        return None
    out: Where = []
    for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(ts)].tolist(), strict=True):
        blk = _block(ts, codes, combo, a, b)
        if blk is None:
            return None
        out += blk
    return out


def _block(ts: np.ndarray, codes: list[np.ndarray], combo: Callable[[slice], np.ndarray], a: int, b: int) -> Where | None:
    """Rows ``[a, b)`` as ``k`` series x ``length`` timestamps, ts-major; None if they are not."""
    t = ts[a:b]
    if len(t) < 2:
        return None
    head = t[: 1 << 16]
    later = np.flatnonzero(head != head[0])
    k = int(later[0]) if len(later) else 0
    if k < 1 or len(t) % k or not (t[k::k] > t[: -k : k]).all():
        return None
    if not (t.reshape(-1, k) == t[::k, None]).all():
        return None
    for c in codes:
        c2 = c[a:b].reshape(-1, k)
        if not (c2 == c2[0]).all():
            return None
    first = combo(slice(a, a + k))
    if len(np.unique(first)) != k:
        return None
    return [(int(first[j]), slice(a + j, b, k)) for j in range(k)]  # one ts view serves them all


def _runs(ts: np.ndarray, combo: np.ndarray) -> Where | None:
    """Series positions if every series is one run of rows in time order."""
    cut = np.flatnonzero(combo[1:] != combo[:-1]) + 1
    first = np.r_[0, cut]
    if len(cut) > 100_000 or len(np.unique(combo[first])) != len(first):
        return None
    step = np.diff(ts) > 0
    step[cut - 1] = True
    if not step.all():
        return None
    last = np.r_[cut, len(ts)]
    return [(int(combo[a]), slice(a, b)) for a, b in zip(first.tolist(), last.tolist(), strict=True)]


def _sorted(ts: np.ndarray, combo: np.ndarray, keep: np.ndarray) -> Where:
    """Positions of the rows ``keep`` marks, sorted by series, then ts (stable: repeated readings
    keep their order). Rows already in time order need only a radix sort by series."""
    rows = np.flatnonzero(keep)
    if not len(rows):
        return []
    c = combo[rows]
    present = np.flatnonzero(np.bincount(c))
    lut = np.zeros(int(present[-1]) + 1, dtype=np.int64)
    lut[present] = np.arange(len(present))
    sid = lut[c]
    key = sid.astype(np.int16) if len(present) < 2**15 else sid
    t = ts[rows]
    if bool((t[1:] >= t[:-1]).all()):
        order = np.argsort(key, kind="stable")
    else:
        by_t = np.argsort(t, kind="stable")
        order = by_t[np.argsort(key[by_t], kind="stable")]
    s_sorted = sid[order]
    bounds = np.r_[0, np.flatnonzero(s_sorted[1:] != s_sorted[:-1]) + 1, len(order)].tolist()
    pos = rows[order]
    return [(int(present[s_sorted[a]]), pos[a:b]) for a, b in itertools.pairwise(bounds)]


def _series_table(names: list[SeriesKey], infos: list[MeterInfo]) -> _Series:
    meters = {(m.site, m.meter): m for m in infos}
    out = _Series([], [], [], [], np.zeros(len(names), np.int64), np.full(len(names), np.nan))
    for i, (s, m, q) in enumerate(names):
        mi = meters.get((s, m))
        if mi is None:
            raise AccountingError(
                f"readings of meter {s}/{m} have no MeterInfo; expected one per meter in ReadingSet.meters"
            )
        out.site.append(s)
        out.meter.append(m)
        out.quantity.append(q)
        out.kind.append(mi.kind)
        out.iv_ns[i] = int(mi.interval_s) * 1_000_000_000
        out.roll[i] = float(mi.attrs.get("rollover_at", np.nan))
    return out


# --------------------------------------------------------------------------- one series


def _timing(t: np.ndarray, iv: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Differences of ts [ns] spanning other than one interval, their interval counts, and the
    interval starts if none does (step 3)."""
    dt = np.diff(t)
    odd = np.flatnonzero(dt != iv)
    n = np.maximum(1, np.rint(dt[odd] / iv)).astype(np.int64) if len(odd) else odd
    return odd, n, t[1:] - iv


def _series_parts(
    t: np.ndarray, x: np.ndarray, iv: int, roll: float, timing: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...] | None, tuple[np.ndarray, ...] | None]:
    """Steps 1-3 for one series in time order: interval starts [ns] and energy of its parts,
    and its resets (ts, prev, value, energy) and gaps (ts, prev, value, energy, n)."""
    d = np.diff(x)
    t_end = t[1:]
    resets = gaps = None
    neg = np.flatnonzero(d < 0)
    if len(neg):
        prev, cur = x[:-1][neg], x[1:][neg]
        d[neg] = d[neg] + roll if np.isfinite(roll) else cur
        resets = (t_end[neg], prev, cur, d[neg])
    odd, n, start = timing
    gap = odd[n > 1]
    if not len(gap):
        return start, d, resets, gaps
    ng = n[n > 1]
    gaps = (t_end[gap], x[:-1][gap], x[1:][gap], d[gap], ng)
    counts = np.ones(len(d), dtype=np.int64)
    counts[gap] = ng
    rep = np.repeat(np.arange(len(d)), counts)
    first = np.cumsum(counts) - counts
    k = np.arange(int(ng.sum())) - np.repeat(np.cumsum(ng) - ng, ng)  # part number within its gap
    at = np.repeat(first[gap], ng) + k
    back = np.ones(len(rep), dtype=np.int64)  # intervals from a part's start to the reading
    back[at] = np.repeat(ng, ng) - k
    val = d[rep]
    val[at] = np.repeat(d[gap] / ng, ng)
    return t_end[rep] - back * iv, val, resets, gaps


class _Calendar:
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
        lo, hi = int(start.min()) // _NS_H - 1, int(start.max()) // _NS_H + 1
        if len(self._off) and lo >= self._h0 and hi <= self._h1:
            return
        self._h0, self._h1 = (min(lo, self._h0), max(hi, self._h1)) if len(self._off) else (lo, hi)
        grid = pd.DatetimeIndex((np.arange(self._h0, self._h1 + 1, dtype=np.int64) * _NS_H).view("M8[ns]"), tz="UTC")
        try:
            local = grid.tz_convert(self.site.tz).tz_localize(None)
        except Exception as exc:
            raise AccountingError(f"site {self.site.site}: expected an IANA time zone; found {self.site.tz!r}") from exc
        self._off = local.as_unit("ns").asi8 - grid.as_unit("ns").asi8
        phase = (-self._off) % _NS_H
        self._phase = int(phase[0]) if (phase == phase[0]).all() else None

    def _offset(self, t: np.ndarray) -> np.ndarray | int:
        off = self._off
        return int(off[0]) if (off == off[0]).all() else off[t // _NS_H - self._h0]

    def hours(self, start: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Local-hour bucket number of each start (non-decreasing with ``start``).

        Returns the numbers and, when the zone's hours are not all in one phase with UTC
        (a 30-minute daylight-saving shift), the bucket starts [ns] they index.
        """
        self._cover(start)
        if self._phase is not None:
            return (start - self._phase) // _NS_H, None
        bucket = start - (start + self._offset(start)) % _NS_H
        uniq, inv = np.unique(bucket, return_inverse=True)
        return inv.astype(np.int64), uniq

    def hour_start(self, number: np.ndarray, starts: np.ndarray | None) -> np.ndarray:
        """UTC start [ns] of the buckets numbered by :meth:`hours`."""
        return number * _NS_H + self._phase if starts is None else starts[number]

    def day(self, t: np.ndarray) -> np.ndarray:
        """Local calendar day [days since the epoch] of each time [ns] (in the covered range)."""
        out: np.ndarray = (t + self._offset(t)) // _NS_D
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
            key = (wall.view("M8[ns]").astype("M8[M]").astype(np.int64) % 12) * _NS_D + wall % _NS_D
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


class _Accumulator:
    """Stage 1 series by series (steps 1-6); the derived PV export per site at the end."""

    def __init__(self, series: _Series, sites: Mapping[str, SiteInfo], lo: int | None, hi: int | None) -> None:
        self.series = self.base = series
        self.sites = sites
        self.lo, self.hi = lo, hi
        self.codes: dict[str, int] = {"": 0}
        self.cal: dict[str, _Calendar] = {}
        self.tou: dict[tuple[str, ...], np.ndarray] = {}
        self.timing: dict[tuple[int, int], tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.rows: list[tuple[np.ndarray, ...]] = []
        self.resets: list[tuple[int, tuple[np.ndarray, ...]]] = []
        self.gaps: list[tuple[int, tuple[np.ndarray, ...]]] = []
        self.pv_parts: dict[str, dict[str, list[tuple[int, np.ndarray, np.ndarray]]]] = {}
        for s in sorted(set(series.site)):
            if s not in sites:
                raise AccountingError(f"readings name site {s!r} but the ReadingSet has no SiteInfo for it")

    def _calendar(self, site: str) -> _Calendar:
        if site not in self.cal:
            grid = [int(self.series.iv_ns[i]) for i in range(len(self.series))
                    if self.series.site[i] == site and self.series.kind[i] == "grid"]
            self.cal[site] = _Calendar(self.sites[site], int(np.gcd.reduce(grid)) if grid else 900_000_000_000, self.codes, self.tou)
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
            self.timing[key] = (t, _timing(t, iv))
        start, val, resets, gaps = _series_parts(t, x, iv, float(s.roll[j]), self.timing[key][1])
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
        cal = self._calendar(self.series.site[j])
        number, starts = cal.hours(start)
        h0 = int(number[0])
        if self._priced(j):
            pcode = cal.period(start)
            npd = int(pcode.max()) + 1
            key = (number - h0) * npd + pcode
        else:
            npd = 1
            key = number - h0
        size = int(key[-1]) // npd * npd + npd
        cnt = np.bincount(key, minlength=size)
        sums = np.bincount(key, weights=val, minlength=size)
        keys = np.flatnonzero(cnt)
        if self.series.quantity[j] in _RATE_Q:
            top = np.full(size, -np.inf)
            np.maximum.at(top, key, val * (_NS_H / iv))
            rate = top[keys]
        else:
            rate = np.full(len(keys), np.nan)
        hour = cal.hour_start(keys // npd + h0, starts)
        self.rows.append((np.full(len(keys), j, np.int64), hour, cal.day(hour), keys % npd, sums[keys], rate, cnt[keys]))

    def finish(self) -> tuple[_Rows, _Series]:
        """The hourly rows of every series, the derived ones included, and the series table."""
        s = self.series
        added: list[str] = []
        for site in sorted(self.pv_parts):
            got = _pv_export(self.pv_parts[site])
            if got is None:
                continue
            j = len(s.site)
            s = _Series([*s.site, site], [*s.meter, _DERIVED[0]], [*s.quantity, _DERIVED[1]], [*s.kind, "_site"],
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
        self.series = s = _Series(
            _permute(s.site, rank), _permute(s.meter, rank), _permute(s.quantity, rank), _permute(s.kind, rank),
            _permute_array(s.iv_ns, rank), _permute_array(s.roll, rank),
        )
        if not rows:
            empty = np.zeros(0, np.int64)
            return _Rows(empty, empty, empty, empty, np.zeros(0), np.zeros(0), empty, periods), s
        cols = [np.concatenate(c) for c in zip(*rows, strict=True)]
        return _Rows(rank[cols[0]], cols[1], cols[2], relabel[cols[3]], cols[4], cols[5], cols[6], periods), s

    def anomalies(self) -> pd.DataFrame:
        """Resets and rollovers, then gaps, each by series then ts; in the window only."""
        frames = [_reset_frame(j, r, self.base) for j, r in self.resets]
        frames += [_gap_frame(j, g, self.base) for j, g in self.gaps]
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


def _rank(s: _Series) -> np.ndarray:
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


def _named(sid: np.ndarray | list[int], series: _Series) -> dict[str, np.ndarray]:
    return {f: np.asarray([*getattr(series, f), ""], dtype=object)[np.asarray(sid, dtype=np.int64)]
            for f in ("site", "meter", "quantity")}


def _reset_frame(j: int, r: tuple[np.ndarray, ...], series: _Series) -> pd.DataFrame:
    """Anomaly rows of one series' resets and rollovers (step 2)."""
    ts, prev, value, energy = r
    rolled = bool(np.isfinite(series.roll[j]))
    return pd.DataFrame({
        **_named([j] * len(ts), series),
        "ts": pd.DatetimeIndex(np.asarray(ts).view("M8[ns]"), tz="UTC"),
        "kind": "rollover" if rolled else "reset",
        "prev_value": prev,
        "value": value,
        "energy": energy,
        "detail": "register passed rollover_at; energy = value + rollover_at - prev_value" if rolled else
        "register went down (meter reset or replacement); post-reset value counted as energy since reset",
        "_iv": int(series.iv_ns[j]),
    })


def _gap_frame(j: int, g: tuple[np.ndarray, ...], series: _Series) -> pd.DataFrame:
    """Anomaly rows of one series' differences spanning ``n > 1`` intervals (lost messages)."""
    ts, prev, value, energy, n = g
    return pd.DataFrame({
        **_named([j] * len(ts), series),
        "ts": pd.DatetimeIndex(np.asarray(ts).view("M8[ns]"), tz="UTC"),
        "kind": "gap",
        "prev_value": prev,
        "value": value,
        "energy": energy,
        "detail": [f"{k - 1} interval(s) missing; delta split pro rata over {k} intervals" for k in n],
        "_iv": int(series.iv_ns[j]),
    })


def empty_anomalies() -> pd.DataFrame:
    """An anomalies frame without rows."""
    return pd.DataFrame({c: np.zeros(0, dtype=object) for c in ANOMALY_COLUMNS})


# --------------------------------------------------------------------------- daily and frames


def _daily(h: _Rows) -> _Rows:
    """Daily rows from hourly rows (step 7): sums in hour order."""
    if not len(h.sid):
        return h
    d0 = int(h.day.min())
    nd = int(h.day.max()) - d0 + 1
    npd = len(h.periods)
    key = (h.sid * nd + (h.day - d0)) * npd + h.period
    size = (int(h.sid.max()) + 1) * nd * npd
    if size > 50_000_000:
        keys, inv = np.unique(key, return_inverse=True)
        key, size = inv, len(keys)
    else:
        keys = None
    cnt = np.bincount(key, weights=h.n, minlength=size)
    sums = np.bincount(key, weights=h.value, minlength=size)
    top = np.full(size, -np.inf)
    np.maximum.at(top, key, np.nan_to_num(h.max_rate, nan=-np.inf))
    present = np.flatnonzero(np.bincount(key, minlength=size))
    k = present if keys is None else keys[present]
    return _Rows(
        k // (nd * npd), np.zeros(len(k), np.int64), (k // npd) % nd + d0, k % npd,
        sums[present], np.where(top[present] == -np.inf, np.nan, top[present]),
        cnt[present].astype(np.int64), h.periods,
    )


def _energy_frame(d: _Rows, series: _Series) -> pd.DataFrame:
    return pd.DataFrame({
        **_named(d.sid, series),
        "date": (d.day * _NS_D).view("M8[ns]"),
        "period": np.asarray(d.periods, dtype=object)[d.period] if len(d.sid) else np.zeros(0, object),
        "value": d.value.astype(np.float64),
        "max_rate": d.max_rate.astype(np.float64),
        "n": d.n.astype(np.int64),
    })


def _hourly_frame(h: _Rows, series: _Series) -> pd.DataFrame:
    def cat(codes: np.ndarray, names: list[str]) -> pd.Categorical:
        uniq = sorted(set(names))
        pos = {x: i for i, x in enumerate(uniq)}
        lut = np.asarray([pos[x] for x in names], dtype=np.int32)
        return pd.Categorical.from_codes(lut[codes] if len(codes) else codes.astype(np.int32), uniq)

    return pd.DataFrame({
        "site": cat(h.sid, series.site),
        "meter": cat(h.sid, series.meter),
        "quantity": cat(h.sid, series.quantity),
        "hour": pd.DatetimeIndex(h.hour.view("M8[ns]"), tz="UTC"),
        "date": (h.day * _NS_D).view("M8[ns]"),
        "period": pd.Categorical.from_codes(h.period.astype(np.int32), h.periods),
        "value": h.value,
        "max_rate": h.max_rate,
        "n": h.n.astype(np.int64),
    })


def daily_from_hourly(hourly: pd.DataFrame) -> pd.DataFrame:
    """Daily stage-1 rows (:data:`STAGE1_COLUMNS`) from hourly rows (:data:`HOURLY_COLUMNS`).

    The hourly rows must hold whole local days and come in hour order per series (as
    :func:`stage1` and the stores give them); the result equals :func:`stage1`'s
    ``energy`` for those days, bit for bit.
    """
    if not len(hourly):
        z = np.zeros(0, np.int64)
        return _energy_frame(_Rows(z, z, z, z, z, z, z, [""]), _Series([], [], [], [], z, z))
    names = pd.MultiIndex.from_arrays([hourly[c].astype(str) for c in ("site", "meter", "quantity")])
    codes, uniq = pd.factorize(names, sort=True)
    site_, meter_, quantity_ = (list(map(str, uniq.get_level_values(i))) for i in range(3))
    series = _Series(site_, meter_, quantity_, [], np.zeros(0), np.zeros(0))
    pcodes, periods = pd.factorize(hourly["period"].astype(str), sort=True)
    if "" not in periods:
        periods = pd.Index(["", *periods])
        pcodes = pcodes + 1
    hour = pd.DatetimeIndex(hourly["hour"]).as_unit("ns").asi8
    order = np.lexsort((hour, codes))
    d = _daily(_Rows(
        codes[order].astype(np.int64), np.zeros(len(order), np.int64),
        (pd.DatetimeIndex(hourly["date"]).as_unit("ns").asi8 // _NS_D)[order], pcodes[order].astype(np.int64),
        hourly["value"].to_numpy(np.float64)[order], hourly["max_rate"].to_numpy(np.float64)[order],
        hourly["n"].to_numpy(np.int64)[order], [str(p) for p in periods],
    ))
    return _energy_frame(d, series)
