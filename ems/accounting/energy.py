"""Stage 1 of the rollup: readings to per-day energy sums (pure, vectorised).

Definition (the exact contract a store may push down into SQL)
----------------------------------------------------------------
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
   ``n_i`` equal parts whose intervals start at ``ts_i - (n_i - k) * interval_s``,
   ``k = 0 .. n_i - 1``, so energy crossing a day or tariff-period boundary is
   shared by time. A lost message therefore loses no energy.
4. **Attribution**: each (part) interval belongs to the local calendar day (site
   ``tz``) and tariff period containing its *start* ``ts - interval_s``. Tariff
   periods (``ems.sim.tariff.tou_periods`` on ``SiteInfo.attrs["tariff"]``) are resolved
   for the grid meter's ``import_kwh``/``export_kwh`` only (other rows have
   ``period == ""``), on a grid of the grid meters' interval from the first start
   (exact for interval-aligned readings).
5. **Output rows** per (site, meter, quantity, date, period): ``value`` = sum of parts
   [register unit], ``n`` = number of intervals, ``max_rate`` = max of
   ``part * 3600 / interval_s`` [kW] for ``import_kwh``/``export_kwh`` (NaN otherwise).
6. **Derived row** ``meter == "_site"``, ``quantity == "pv_exported_kwh"``: per interval
   start, ``min(sum of grid export parts, sum of PV energy parts)`` of the site (the
   PV share of the export: PV is taken as exported first), summed like the others.

In SQL terms, steps 1-3 are ``LAG(value) OVER (PARTITION BY site, meter, quantity
ORDER BY ts)`` with ``generate_series`` for gaps, step 4 a ``date_trunc('day', (ts -
interval) AT TIME ZONE tz)`` and a tariff join, step 5 a ``GROUP BY``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import ValidationError

from ems.errors import AccountingError
from ems.model.site import Tariff
from ems.readings import QUANTITIES, ReadingSet
from ems.sim.tariff import tou_periods

__all__ = ["STAGE1_COLUMNS", "Stage1", "stage1"]

log = logging.getLogger(__name__)

STAGE1_COLUMNS = ("site", "meter", "quantity", "date", "period", "value", "max_rate", "n")
ANOMALY_COLUMNS = ("site", "meter", "quantity", "ts", "kind", "prev_value", "value", "energy", "detail")
_NS_H = 3_600_000_000_000
_NS_D = 86_400_000_000_000
_RATE_Q = ("import_kwh", "export_kwh")


@dataclass
class Stage1:
    """Result of stage 1.

    Attributes
    ----------
    energy : DataFrame
        Columns :data:`STAGE1_COLUMNS`; ``date`` is the local calendar day (naive
        ``datetime64[ns]`` at midnight).
    anomalies : DataFrame
        Resets, rollovers and gaps: columns ``site, meter, quantity, ts, kind,
        prev_value, value, energy, detail``.
    """

    energy: pd.DataFrame
    anomalies: pd.DataFrame


def _codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy(dtype=np.int64), [str(c) for c in col.cat.categories]
    codes, uniques = pd.factorize(col, sort=False)
    return codes.astype(np.int64), [str(u) for u in uniques]


def _offset_table(
    site_names: list[str], used: set[int], tz_of: Mapping[str, str], h0: int, h1: int
) -> np.ndarray:
    """UTC offset [ns] of each site for each UTC hour in ``[h0, h1]`` (rows: sites)."""
    hours = pd.DatetimeIndex((np.arange(h0, h1 + 1, dtype=np.int64) * _NS_H).view("M8[ns]"), tz="UTC")
    table = np.zeros((len(site_names), h1 - h0 + 1), dtype=np.int64)
    cache: dict[str, np.ndarray] = {}
    for i, s in enumerate(site_names):
        if i not in used:
            continue
        tz = tz_of.get(s)
        if tz is None:
            raise AccountingError(f"readings name site {s!r} but the ReadingSet has no SiteInfo for it")
        if tz not in cache:
            local = hours.tz_convert(tz).tz_localize(None).as_unit("ns")
            cache[tz] = local.asi8 - hours.as_unit("ns").asi8
        table[i] = cache[tz]
    return table


def _member(ids: np.ndarray, members: list[int], size: int) -> np.ndarray:
    """``np.isin`` for small non-negative ids, by table lookup."""
    table = np.zeros(max(size, int(ids.max(initial=0)) + 1), dtype=bool)
    table[members] = True
    out: np.ndarray = table[ids]
    return out


def _energy_frame(
    all_names: list[tuple[str, str, str]],
    period_names: list[str],
    k_sid: np.ndarray,
    k_day: np.ndarray,
    k_p: np.ndarray,
    sums: np.ndarray,
    max_rate: np.ndarray,
    cnt: np.ndarray,
) -> pd.DataFrame:
    """The stage-1 frame from output rows (series index, day number, period code)."""
    names_arr = np.asarray(all_names, dtype=object).reshape(-1, 3)
    return pd.DataFrame(
        {
            "site": names_arr[k_sid, 0],
            "meter": names_arr[k_sid, 1],
            "quantity": names_arr[k_sid, 2],
            "date": (np.asarray(k_day, dtype=np.int64) * _NS_D).view("M8[ns]"),
            "period": np.asarray(period_names, dtype=object)[k_p],
            "value": sums,
            "max_rate": max_rate,
            "n": cnt.astype(np.int64),
        }
    )


def _tariff_codes(
    sites: list[str],
    tz_of: Mapping[str, str],
    tariffs: Mapping[str, object],
    t0: int,
    step: int,
    n_slot: int,
    period_names: list[str],
) -> dict[str, np.ndarray]:
    """Tariff period code of each slot ``t0 + i * step`` [ns] for each site.

    ``period_names`` (code -> name) is extended in place, site by site in the given
    order, with each site's periods in sorted order.
    """
    cache: dict[tuple[str, str], np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    for site in sites:
        ckey = (tz_of[site], json.dumps(tariffs[site], sort_keys=True, default=str))
        if ckey not in cache:
            try:
                tariff = Tariff.model_validate(tariffs[site])
            except ValidationError as exc:
                raise AccountingError(
                    f"site {site}: SiteInfo.attrs['tariff'] is not a valid tariff "
                    f"(expected Tariff.model_dump(mode='json')): {exc.errors()[0]['msg']}"
                ) from None
            grid_t = t0 + np.arange(n_slot, dtype=np.int64) * step
            idx = pd.DatetimeIndex(grid_t.view("M8[ns]"), tz="UTC").tz_convert(tz_of[site])
            names = tou_periods(idx, tariff).astype(str)
            pu, inv = np.unique(names, return_inverse=True)
            for u in pu:
                if str(u) not in period_names:
                    period_names.append(str(u))
            cache[ckey] = np.asarray([period_names.index(str(u)) for u in pu], dtype=np.int64)[inv]
        out[site] = cache[ckey]
    return out


def _raw_codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Codes in their own (small) dtype and names; -1 never occurs in valid readings."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy(), [str(c) for c in col.cat.categories]
    codes, uniques = pd.factorize(col, sort=False)
    return codes, [str(u) for u in uniques]


def _run_sums(mat: np.ndarray, idx: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Sums of the runs of rows starting at ``idx`` (lengths ``lens``), row after row.

    Adds in the order :func:`numpy.bincount` does (``np.add.reduceat`` does not), so
    the sums are bit-identical to the general path's.
    """
    acc: np.ndarray = mat[idx].copy()
    for i in range(1, int(lens.max(initial=1))):
        live = lens > i
        if live.all():
            acc += mat[idx + i]
        else:
            acc[live] += mat[idx[live] + i]
    return acc


@dataclass
class _Block:
    """Rows ``[a, b)`` of the frame that form a dense matrix of ``k`` series x ``length`` times."""

    a: int
    b: int
    k: int
    ts_major: bool

    @property
    def length(self) -> int:
        return (self.b - self.a) // self.k


def _block_shape(t: np.ndarray, codes: list[np.ndarray], a: int, b: int) -> _Block | None:
    """Recognise rows ``[a, b)`` as a dense block, ts-major or series-major, or return None.

    ts-major: every timestamp carries the same series in the same order (what a store
    returns for ``ORDER BY ts``); series-major: each series in turn with the same
    timestamps (what the simulator yields).
    """
    t = t[a:b]
    n = len(t)
    if n < 2:
        return None
    first = np.flatnonzero(t == t[0])
    k = len(first)
    if first[-1] == k - 1:  # ts-major candidate
        if n % k or n == k:
            return None
        t2 = t.reshape(-1, k)
        if not (t2 == t2[:, :1]).all():
            return None
        for c in codes:
            c2 = c[a:b].reshape(-1, k)
            if not (c2 == c2[0]).all():
                return None
        return _Block(a, b, k, True)
    length = int(first[1])
    if length < 2 or k * length != n or not (first == np.arange(k) * length).all():
        return None
    t2 = t.reshape(k, length)
    if not (t2 == t2[0]).all():
        return None
    for c in codes:
        c2 = c[a:b].reshape(k, length)
        if not (c2 == c2[:, :1]).all():
            return None
    return _Block(a, b, k, False)


def _dense_blocks(t: np.ndarray, codes: list[np.ndarray]) -> list[_Block] | None:
    """Split the frame into dense blocks: the whole frame, or one block per site run."""
    whole = _block_shape(t, codes, 0, len(t))
    if whole is not None:
        return [whole]
    sc = codes[0]
    cuts = np.flatnonzero(sc[1:] != sc[:-1]) + 1
    if len(cuts) > 4096:
        return None
    bounds = [0, *cuts.tolist(), len(t)]
    if len(np.unique(sc[bounds[:-1]])) != len(bounds) - 1:  # a site in two runs
        return None
    blocks = []
    for a, b in itertools.pairwise(bounds):
        blk = _block_shape(t, codes, a, b)
        if blk is None:
            return None
        blocks.append(blk)
    return blocks


def _stage1_dense(rs: ReadingSet) -> Stage1 | None:
    """Stage 1 without sorting, for readings that form dense blocks (see :func:`_block_shape`).

    Applies when, within each block, every series has one reading per interval (no
    gap) and no register goes down; returns None otherwise (the general path then
    handles gaps, resets and rollovers). The result equals the general path's.
    """
    r = rs.readings
    if len(r) < 2 or not isinstance(r.index, pd.DatetimeIndex):
        return None
    ts_index = r.index if r.index.unit == "ns" else r.index.as_unit("ns")
    ts = ts_index.asi8
    sc, snames = _raw_codes(r["site"])
    mc, mnames = _raw_codes(r["meter"])
    qc, qnames = _raw_codes(r["quantity"])
    blocks = _dense_blocks(ts, [sc, mc, qc])
    if blocks is None:
        return None
    v = r["value"].to_numpy(dtype=np.float64)
    nm, nq = max(len(mnames), 1), max(len(qnames), 1)
    q_is_reg = np.asarray([QUANTITIES[q].kind == "register" if q in QUANTITIES else False for q in qnames])
    # series of each block (its columns), register ones only
    cols: list[np.ndarray] = []
    combos_of: list[np.ndarray] = []
    for blk in blocks:
        step = 1 if blk.ts_major else blk.length
        pos = blk.a + np.arange(blk.k) * step
        combo = (sc[pos].astype(np.int64) * nm + mc[pos]) * nq + qc[pos]
        reg = np.flatnonzero(q_is_reg[qc[pos]])
        cols.append(reg)
        combos_of.append(combo[reg])
    all_combos = np.concatenate(combos_of) if combos_of else np.zeros(0, np.int64)
    combos = np.unique(all_combos)
    if len(combos) != len(all_combos):  # a series in two blocks or twice in one
        return None
    k_series = len(combos)
    s_site = combos // (nm * nq)
    ser_site = [snames[i] for i in s_site]
    ser_meter = [mnames[i] for i in (combos // nq) % nm]
    ser_q = [qnames[i] for i in combos % nq]
    meters = {(m.site, m.meter): m for m in rs.meters}
    iv_ns = np.empty(k_series, dtype=np.int64)
    kind_of: list[str] = []
    for i in range(k_series):
        mi = meters.get((ser_site[i], ser_meter[i]))
        if mi is None:
            raise AccountingError(
                f"readings of meter {ser_site[i]}/{ser_meter[i]} have no MeterInfo; expected one per meter in ReadingSet.meters"
            )
        iv_ns[i] = int(mi.interval_s) * 1_000_000_000
        kind_of.append(mi.kind)
    tz_of = {s.site: s.tz for s in rs.sites}
    tariffs = {s.site: s.attrs.get("tariff") for s in rs.sites}
    grid_ser = [i for i in range(k_series) if kind_of[i] == "grid" and ser_q[i] in _RATE_Q and tariffs.get(ser_site[i])]

    # per block: interval differences as a (time x series) matrix
    prepared = []
    for blk, reg, combo in zip(blocks, cols, combos_of, strict=True):
        if not len(reg):
            continue
        sid = np.searchsorted(combos, combo)
        iv = iv_ns[sid]
        length = blk.length
        tb = ts[blk.a : blk.b : blk.k] if blk.ts_major else ts[blk.a : blk.a + length]
        if not (iv == iv[0]).all() or not (np.diff(tb) == iv[0]).all():
            return None  # uneven intervals or gaps: the general path splits them
        if blk.ts_major:
            m = v[blk.a : blk.b].reshape(length, blk.k)
            mr = m if len(reg) == blk.k else m[:, reg]
            dmat = mr[1:] - mr[:-1]
        else:
            m = v[blk.a : blk.b].reshape(blk.k, length)
            mr = m if len(reg) == blk.k else m[reg]
            dmat = (mr[:, 1:] - mr[:, :-1]).T
        if (dmat < 0).any():
            return None  # a reset or rollover: the general path lists it
        prepared.append((sid, int(iv[0]), tb[1:] - iv[0], dmat))
    if not prepared:
        return None

    # local day of each interval start, per block and time zone
    h0 = min(int(p[2][0]) for p in prepared) // _NS_H
    h1 = max(int(p[2][-1]) for p in prepared) // _NS_H
    used = {int(x) for x in s_site}
    table = _offset_table(snames, used, tz_of, h0, h1)
    # tariff periods on the grid of the grid meters' interval from the first start
    period_names = [""]
    tcodes: dict[str, np.ndarray] = {}
    t0 = g_step = 0
    if grid_ser:
        g_in = [p for p in prepared if np.isin(p[0], grid_ser).any()]
        g_step = int(np.gcd.reduce(iv_ns[grid_ser]))
        t0 = min(int(p[2][0]) for p in g_in)
        n_slot = (max(int(p[2][-1]) for p in g_in) - t0) // g_step + 1
        g_sites = sorted({ser_site[i] for i in grid_ser})
        tcodes = _tariff_codes(g_sites, tz_of, tariffs, t0, g_step, n_slot, period_names)
    grid_set = set(grid_ser)

    o_sid: list[np.ndarray] = []
    o_day: list[np.ndarray] = []
    o_p: list[np.ndarray] = []
    o_val: list[np.ndarray] = []
    o_rate: list[np.ndarray] = []
    o_n: list[np.ndarray] = []
    x_site: list[int] = []
    for sid, step_ns, start, dmat in prepared:
        hour = start // _NS_H - h0
        site_codes = s_site[sid]
        day_of: dict[int, np.ndarray] = {}
        for sc_ in np.unique(site_codes).tolist():
            day_of[sc_] = (start + table[sc_, hour]) // _NS_D
            if (np.diff(day_of[sc_]) < 0).any():  # a zone whose clock goes back over midnight
                return None
        # plain columns: sums per run of equal day, all columns of a day-group at once
        groups: dict[bytes, list[int]] = {}
        for sc_, d in day_of.items():
            groups.setdefault(d.tobytes(), []).append(sc_)
        for sites_g in groups.values():
            day = day_of[sites_g[0]]
            jj = np.flatnonzero(np.isin(site_codes, sites_g))
            sub = dmat if len(jj) == dmat.shape[1] else dmat[:, jj]
            idx = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
            cnt = np.diff(np.r_[idx, len(day)])
            sums = _run_sums(sub, idx, cnt)
            rate_cols = [j for j, c in enumerate(jj) if ser_q[sid[c]] in _RATE_Q]
            rates = np.full(sums.shape, np.nan)
            if rate_cols:
                rates[:, rate_cols] = np.maximum.reduceat(sub[:, rate_cols], idx, axis=0) * _NS_H / step_ns
            plain = [j for j, c in enumerate(jj) if int(sid[c]) not in grid_set]
            nd_ = len(idx)
            o_sid.append(np.repeat(sid[jj[plain]][None, :], nd_, axis=0).ravel())
            o_day.append(np.repeat(day[idx], len(plain)))
            o_p.append(np.zeros(nd_ * len(plain), dtype=np.int64))
            o_val.append(sums[:, plain].ravel())
            o_rate.append(rates[:, plain].ravel())
            o_n.append(np.repeat(cnt, len(plain)))
        # grid import/export of sites with a tariff: sums per (day, period)
        pcode_of: dict[int, np.ndarray] = {}
        for j in [j for j in range(len(sid)) if int(sid[j]) in grid_set]:
            sc_ = int(site_codes[j])
            if sc_ not in pcode_of:
                pcode_of[sc_] = tcodes[snames[sc_]][(start - t0) // g_step]
            day, pc_ = day_of[sc_], pcode_of[sc_]
            npd = len(period_names)
            d0 = int(day[0])
            key = (day - d0) * npd + pc_
            size = int(key[-1]) + npd
            col = np.ascontiguousarray(dmat[:, j])
            cnt = np.bincount(key, minlength=size)
            keys = np.flatnonzero(cnt)
            sums = np.bincount(key, weights=col, minlength=size)[keys]
            mx = np.full(size, -np.inf)
            np.maximum.at(mx, key, col)
            o_sid.append(np.full(len(keys), sid[j], dtype=np.int64))
            o_day.append(keys // npd + d0)
            o_p.append(keys % npd)
            o_val.append(sums)
            o_rate.append(mx[keys] * _NS_H / step_ns if ser_q[sid[j]] in _RATE_Q else np.full(len(keys), np.nan))
            o_n.append(cnt[keys])
        # derived: PV share of the export, per interval (PV exported first)
        for sc_ in np.unique(site_codes).tolist():
            ex = [j for j in np.argsort(sid) if site_codes[j] == sc_ and kind_of[sid[j]] == "grid" and ser_q[sid[j]] == "export_kwh"]
            pv = [j for j in np.argsort(sid) if site_codes[j] == sc_ and kind_of[sid[j]] == "pv" and ser_q[sid[j]] == "energy_kwh"]
            if not ex or not pv:
                continue
            e_sum = np.zeros(len(start))
            p_sum = np.zeros(len(start))
            for j in ex:
                e_sum += dmat[:, j]
            for j in pv:
                p_sum += dmat[:, j]
            pvx = np.minimum(e_sum, p_sum)
            day = day_of[sc_]
            gj = [j for j in ex if int(sid[j]) in grid_set]
            if gj:
                if sc_ not in pcode_of:
                    pcode_of[sc_] = tcodes[snames[sc_]][(start - t0) // g_step]
                pc_ = pcode_of[sc_]
            else:
                pc_ = np.zeros(len(start), dtype=np.int64)
            npd = len(period_names)
            d0 = int(day[0])
            key = (day - d0) * npd + pc_
            size = int(key[-1]) + npd
            cnt = np.bincount(key, minlength=size)
            keys = np.flatnonzero(cnt)
            o_sid.append(np.full(len(keys), -1 - sc_, dtype=np.int64))  # remapped below
            o_day.append(keys // npd + d0)
            o_p.append(keys % npd)
            o_val.append(np.bincount(key, weights=pvx, minlength=size)[keys])
            o_rate.append(np.full(len(keys), np.nan))
            o_n.append(cnt[keys])
            x_site.append(sc_)

    k_sid = np.concatenate(o_sid)
    site_ids = sorted(set(x_site))
    if site_ids:
        derived = k_sid < 0
        remap = np.zeros(len(snames), dtype=np.int64)
        remap[site_ids] = k_series + np.arange(len(site_ids))
        k_sid[derived] = remap[-1 - k_sid[derived]]
    all_names = list(zip(ser_site, ser_meter, ser_q, strict=True)) + [(snames[s], "_site", "pv_exported_kwh") for s in site_ids]
    k_day, k_p = np.concatenate(o_day), np.concatenate(o_p)
    order = np.lexsort((k_p, k_day, k_sid))
    energy = _energy_frame(
        all_names, period_names, k_sid[order], k_day[order], k_p[order],
        np.concatenate(o_val)[order], np.concatenate(o_rate)[order], np.concatenate(o_n)[order],
    )
    anom = pd.DataFrame({c: pd.Series(dtype=object) for c in ANOMALY_COLUMNS})
    return Stage1(energy=energy, anomalies=anom)


def stage1(rs: ReadingSet) -> Stage1:
    """Turn readings into per (site, meter, quantity, local date, period) sums.

    Readings that form dense blocks (every series of a block with one reading per
    interval at the same timestamps, in ts-major or series-major order, as a store
    or the simulator gives them) take a path that needs no sort; anything else
    (gaps, resets, any row order) the general path. Both give the same result.

    Parameters
    ----------
    rs : ReadingSet
        Readings with their meters and sites.

    Returns
    -------
    Stage1
        Energy sums and anomalies; see the module docs for the exact definition.
    """
    fast = _stage1_dense(rs)
    return fast if fast is not None else _stage1_general(rs)


def _stage1_general(rs: ReadingSet) -> Stage1:
    """Stage 1 for any row order and layout (sorts by series and ts).

    Turn readings into per (site, meter, quantity, local date, period) sums.

    Parameters
    ----------
    rs : ReadingSet
        Readings with their meters and sites.

    Returns
    -------
    Stage1
        Energy sums and anomalies; see the module docs for the exact definition.
    """
    r = rs.readings
    reg_names = [q for q, d in QUANTITIES.items() if d.kind == "register"]
    qc, qnames = _codes(r["quantity"])
    sc, snames = _codes(r["site"])
    mc, mnames = _codes(r["meter"])
    if not isinstance(r.index, pd.DatetimeIndex):
        raise AccountingError(f"readings: expected a DatetimeIndex named 'ts'; found {type(r.index).__name__}")
    ts_index = r.index if r.index.unit == "ns" else r.index.as_unit("ns")
    ts = ts_index.asi8
    v = r["value"].to_numpy(dtype=np.float64)
    nm, nq = max(len(mnames), 1), max(len(qnames), 1)
    # series id of every row; rows of non-register quantities get the id k_series (dropped below)
    combo = (sc * nm + mc) * nq + qc
    q_is_reg = np.asarray([q in reg_names for q in qnames], dtype=bool)
    counts = np.bincount(combo, minlength=len(snames) * nm * nq) if len(combo) else np.zeros(0, np.int64)
    all_combos = np.arange(len(counts))
    present = (counts > 0) & q_is_reg[all_combos % nq] if len(counts) else np.zeros(0, bool)
    combos = np.flatnonzero(present)
    k_series = len(combos)
    dense = np.full(len(counts), k_series, dtype=np.int16 if k_series < 32000 else np.int64)
    dense[combos] = np.arange(k_series)
    sid = dense[combo] if len(combo) else combo
    n_reg = int(counts[combos].sum()) if k_series else 0
    s_site = combos // (nm * nq)
    s_meter = (combos // nq) % nm
    s_q = combos % nq
    ser_site = [snames[i] for i in s_site]
    ser_meter = [mnames[i] for i in s_meter]
    ser_q = [qnames[i] for i in s_q]

    # order by (series, ts); non-register rows sort last and are cut off
    if len(sid) > 1:
        ordered = False
        if n_reg == len(sid):
            dsid = np.diff(sid)
            ordered = bool(np.all((dsid > 0) | ((dsid == 0) & (np.diff(ts) >= 0))))
        if not ordered:
            if ts_index.is_monotonic_increasing:
                order = np.argsort(sid, kind="stable")[:n_reg]  # radix sort for int16 ids
            else:
                order = np.lexsort((ts, sid))[:n_reg]
            ts, v = ts[order], v[order]
            sid = np.repeat(np.arange(k_series, dtype=np.int64), counts[combos])
    elif n_reg < len(sid):
        sid, ts, v = sid[:0], ts[:0], v[:0]
    sid = sid.astype(np.int64, copy=False)
    ser_n = counts[combos] if k_series else np.zeros(0, np.int64)

    meters = {(m.site, m.meter): m for m in rs.meters}
    iv_s = np.empty(k_series, dtype=np.int64)
    roll = np.full(k_series, np.nan)
    kind_of: list[str] = []
    carrier_of: list[str] = []
    for i in range(k_series):
        mi = meters.get((ser_site[i], ser_meter[i]))
        if mi is None:
            raise AccountingError(
                f"readings of meter {ser_site[i]}/{ser_meter[i]} have no MeterInfo; expected one per meter in ReadingSet.meters"
            )
        iv_s[i] = int(mi.interval_s)
        roll[i] = float(mi.attrs.get("rollover_at", np.nan))
        kind_of.append(mi.kind)
        carrier_of.append(mi.carrier)
    iv_ns = iv_s * 1_000_000_000

    # consecutive differences over the whole sorted array; the K-1 differences that span
    # two series ("boundaries") are neutralised here and dropped when summing
    c_sid = sid[1:]
    d = np.diff(v)
    dt = np.diff(ts)
    c_iv = iv_ns[c_sid]
    bnd = np.cumsum(ser_n)[:-1] - 1 if k_series else np.zeros(0, np.int64)
    bnd = bnd[(bnd >= 0) & (bnd < len(d))]
    d[bnd] = 0.0
    dt[bnd] = c_iv[bnd]

    anomalies: list[pd.DataFrame] = []
    neg = d < 0
    if neg.any():
        ri = np.flatnonzero(neg)
        rr = roll[c_sid[ri]]
        fixed = np.where(np.isfinite(rr), d[ri] + np.nan_to_num(rr), v[ri + 1])
        d[ri] = fixed
        anomalies.append(
            pd.DataFrame(
                {
                    "site": [ser_site[i] for i in c_sid[ri]],
                    "meter": [ser_meter[i] for i in c_sid[ri]],
                    "quantity": [ser_q[i] for i in c_sid[ri]],
                    "ts": pd.DatetimeIndex(ts[ri + 1].view("M8[ns]"), tz="UTC"),
                    "kind": np.where(np.isfinite(rr), "rollover", "reset"),
                    "prev_value": v[ri],
                    "value": v[ri + 1],
                    "energy": fixed,
                    "detail": np.where(
                        np.isfinite(rr),
                        "register passed rollover_at; energy = value + rollover_at - prev_value",
                        "register went down (meter reset or replacement); post-reset value counted as energy since reset",
                    ),
                }
            )
        )
    irregular = dt != c_iv
    n = np.ones(len(dt), dtype=np.int64)
    if irregular.any():
        n[irregular] = np.maximum(1, np.rint(dt[irregular] / c_iv[irregular])).astype(np.int64)
    gap = n > 1
    if gap.any():
        gi = np.flatnonzero(gap)
        anomalies.append(
            pd.DataFrame(
                {
                    "site": [ser_site[i] for i in c_sid[gi]],
                    "meter": [ser_meter[i] for i in c_sid[gi]],
                    "quantity": [ser_q[i] for i in c_sid[gi]],
                    "ts": pd.DatetimeIndex(ts[gi + 1].view("M8[ns]"), tz="UTC"),
                    "kind": "gap",
                    "prev_value": v[gi],
                    "value": v[gi + 1],
                    "energy": d[gi],
                    "detail": [f"{k - 1} interval(s) missing; delta split pro rata over {k} intervals" for k in n[gi]],
                }
            )
        )
        rep = np.repeat(np.arange(len(n)), n)
        k = np.arange(len(rep)) - np.repeat(np.cumsum(n) - n, n)
        p_sid = c_sid[rep]
        p_iv = c_iv[rep]
        start = ts[1:][rep] - (n[rep] - k) * p_iv
        val = d[rep] / n[rep]
        bnd = (np.cumsum(n) - n)[bnd]
    else:
        p_sid, p_iv, val = c_sid, c_iv, d
        start = ts[1:] - c_iv

    ok = np.ones(len(val), dtype=bool)  # False at series boundaries
    ok[bnd] = False

    # local calendar day of each interval start
    site_of_series = np.asarray(s_site, dtype=np.int64)
    p_site = site_of_series[p_sid] if len(p_sid) else p_sid
    tz_of = {s.site: s.tz for s in rs.sites}
    if len(start):
        h0, h1 = int(start.min()) // _NS_H, int(start.max()) // _NS_H
        used = {int(x) for x in s_site}
        table = _offset_table(snames, used, tz_of, h0, h1)
        rows = table[sorted(used)]
        if (rows == rows[0, 0]).all():  # one fixed offset (e.g. all sites in Asia/Shanghai)
            local = start + rows[0, 0]
        elif (rows == rows[:, :1]).all():  # a fixed offset per site
            local = start + table[:, 0][p_site]
        else:
            local = start + table[p_site, start // _NS_H - h0]
        day = local // _NS_D
    else:
        local = start
        day = start
    # tariff periods for grid import/export
    period_names = [""]
    pcode = np.zeros(len(start), dtype=np.int64)
    tariffs = {s.site: s.attrs.get("tariff") for s in rs.sites}
    grid_ser = [i for i in range(k_series) if kind_of[i] == "grid" and ser_q[i] in _RATE_Q and tariffs.get(ser_site[i])]
    if grid_ser:
        grows = np.flatnonzero(_member(p_sid, grid_ser, k_series) & ok)
        gsite = p_site[grows]
        g_step = int(np.gcd.reduce(iv_ns[grid_ser]))
        g_start = start[grows]
        t0 = int(g_start.min())
        slot = (g_start - t0) // g_step
        n_slot = int(slot.max()) + 1
        g_sites = [s for s in sorted({ser_site[i] for i in grid_ser}) if (gsite == snames.index(s)).any()]
        codes_of = _tariff_codes(g_sites, tz_of, tariffs, t0, g_step, n_slot, period_names)
        for site in g_sites:
            in_site = gsite == snames.index(site)
            pcode[grows[in_site]] = codes_of[site][slot[in_site]]

    # derived: PV share of export, per site and interval start
    exp_ser = [i for i in range(k_series) if kind_of[i] == "grid" and ser_q[i] == "export_kwh"]
    pv_ser = [i for i in range(k_series) if kind_of[i] == "pv" and ser_q[i] == "energy_kwh"]
    extra_names: list[tuple[str, str, str]] = []
    if exp_ser and pv_ser:
        em = _member(p_sid, exp_ser, k_series) & ok
        pm = _member(p_sid, pv_ser, k_series) & ok
        g = int(np.gcd.reduce(iv_ns[exp_ser + pv_ser]))
        both_present = bool(em.any() and pm.any())
        tmin = int(min(start[em].min(), start[pm].min())) if both_present else 0
        nslot = (int(max(start[em].max(), start[pm].max())) - tmin) // g + 1 if both_present else 0
        if both_present and len(snames) * nslot <= 50_000_000:
            ke = p_site[em] * nslot + (start[em] - tmin) // g
            kp = p_site[pm] * nslot + (start[pm] - tmin) // g
            size = len(snames) * nslot
            e_sum = np.bincount(ke, weights=val[em], minlength=size)
            p_sum = np.bincount(kp, weights=val[pm], minlength=size)
            both = (np.bincount(ke, minlength=size) > 0) & (np.bincount(kp, minlength=size) > 0)
            slot_day = np.zeros(size, dtype=np.int64)
            slot_p = np.zeros(size, dtype=np.int64)
            slot_day[ke] = day[em]
            slot_p[ke] = pcode[em]
            sl = np.flatnonzero(both)
            pvx = np.minimum(e_sum[sl], p_sum[sl])
            xs = sl // nslot
            x_day, x_p = slot_day[sl], slot_p[sl]
        else:
            ex = pd.DataFrame({"s": p_site[em], "t": start[em], "e": val[em], "day": day[em], "p": pcode[em]})
            pv = pd.DataFrame({"s": p_site[pm], "t": start[pm], "pv": val[pm]})
            exg = ex.groupby(["s", "t"], sort=False).agg(e=("e", "sum"), day=("day", "first"), p=("p", "first"))
            pvg = pv.groupby(["s", "t"], sort=False)["pv"].sum()
            j = exg.join(pvg, how="inner")
            pvx = np.minimum(j["e"].to_numpy(), j["pv"].to_numpy())
            xs = j.index.get_level_values("s").to_numpy(dtype=np.int64)
            x_day, x_p = j["day"].to_numpy(dtype=np.int64), j["p"].to_numpy(dtype=np.int64)
        site_ids = sorted(set(xs.tolist()))
        remap = np.zeros(len(snames), dtype=np.int64)
        remap[site_ids] = k_series + np.arange(len(site_ids))
        extra_sid = remap[xs]
        extra_names = [(snames[s], "_site", "pv_exported_kwh") for s in site_ids]
        p_sid = np.concatenate([p_sid, extra_sid])
        val = np.concatenate([val, pvx])
        day = np.concatenate([day, x_day])
        pcode = np.concatenate([pcode, x_p])
        p_iv = np.concatenate([p_iv, np.full(len(pvx), 1, dtype=np.int64)])

    all_names = list(zip(ser_site, ser_meter, ser_q, strict=True)) + extra_names
    if not len(val):
        energy = _energy_frame(all_names, period_names, *(np.zeros(0, np.int64),) * 3,
                               np.zeros(0), np.zeros(0), np.zeros(0, np.int64))
    else:
        d0 = int(day.min())
        nd = int(day.max()) - d0 + 1
        npd = len(period_names)
        key = p_sid * nd  # in place below: fewer temporaries of the row count
        key += day
        key -= d0
        key *= npd
        key += pcode
        size = len(all_names) * nd * npd
        key[bnd] = size  # series boundaries: dropped
        if size <= 50_000_000:
            sums = np.bincount(key, weights=val, minlength=size + 1)[:size]
            cnt = np.bincount(key, minlength=size + 1)[:size]
            keys = np.flatnonzero(cnt)
            sums, cnt = sums[keys], cnt[keys]
        else:
            keys, inv = np.unique(key, return_inverse=True)
            sums = np.bincount(inv, weights=val)
            cnt = np.bincount(inv)
            keep = keys < size
            keys, sums, cnt = keys[keep], sums[keep], cnt[keep]
        rate_ser = [i for i in range(k_series) if ser_q[i] in _RATE_Q]
        max_rate = np.full(len(keys), np.nan)
        if rate_ser:
            rm = _member(p_sid, rate_ser, len(all_names))
            rm[bnd] = False
            rate = pd.Series(val[rm] * _NS_H / p_iv[rm]).groupby(key[rm]).max()
            rate = rate[rate.index < size]
            pos = np.searchsorted(keys, rate.index.to_numpy())
            max_rate[pos] = rate.to_numpy()
        k_sid = keys // (nd * npd)
        k_day = (keys // npd) % nd + d0
        k_p = keys % npd
        energy = _energy_frame(all_names, period_names, k_sid, k_day, k_p, sums, max_rate, cnt)
    anom = (
        pd.concat(anomalies, ignore_index=True)
        if anomalies
        else pd.DataFrame({c: pd.Series(dtype=object) for c in ANOMALY_COLUMNS})
    )
    if len(anom):
        log.info("stage 1: %d anomalies (resets, rollovers, gaps)", len(anom))
    return Stage1(energy=energy, anomalies=anom)
