"""Stage 1 on time x series matrices: the dense and grid paths (no sort).

:func:`ems.accounting.energy.stage1` tries these before its general path; the definition
of stage 1 and the choice between paths are in the module docs of
:mod:`ems.accounting.energy`. Both paths here give the general path's frame bit for bit
(``tests/test_accounting_stage1.py``):

* dense: readings that form dense blocks (:func:`_block_shape`: the whole frame or each
  site's rows, ts-major or series-major) with one reading per interval. The register
  columns are differenced as a matrix; local days and tariff periods are computed once
  per timestamp, not per row; columns are summed per run of equal day;
* grid: any row order, lost messages allowed, when every register has the same interval
  and all readings lie on one grid of it (:func:`_grid_entry`): register rows are
  scattered onto a time x series grid and gaps split there.

Sums are taken row after row in time order (:func:`_run_sums`), the order in which the
general path's ``np.bincount`` adds, so that the results are bit-identical.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ems.accounting.energy import (
    _NS_D,
    _NS_H,
    _RATE_Q,
    ANOMALY_COLUMNS,
    Stage1,
    _energy_frame,
    _gap_frame,
    _offset_table,
    _resets,
    _tariff_codes,
)
from ems.errors import AccountingError
from ems.readings import QUANTITIES, ReadingSet

__all__: list[str] = []

log = logging.getLogger(__name__)

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




def _grid_entry(
    t: np.ndarray,
    val: np.ndarray,
    sid: np.ndarray,
    iv_ns: np.ndarray,
    roll: np.ndarray,
    names: tuple[list[str], list[str], list[str]],
    resets: list[tuple[np.ndarray, np.ndarray, pd.DataFrame]],
    gaps: list[tuple[np.ndarray, np.ndarray, pd.DataFrame]],
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray | None] | None:
    """Register rows scattered onto one (time x series) grid, their differences and which are real.

    Applies when every series has the same interval, every reading lies on one grid of
    that interval and no reading is repeated, and the grid is not much larger than the
    rows (sites or series over very different spans); returns None otherwise. A
    difference spanning ``n`` grid steps (lost messages) is split into ``n`` equal parts,
    resets and rollovers are fixed, and both are listed, as in the general path.

    Returns
    -------
    (series, interval [ns], interval starts [ns], differences, valid) or None
    """
    k = len(iv_ns)
    iv0 = int(iv_ns[0])
    if not (iv_ns == iv0).all():
        return None
    tmin = int(t.min())
    ti, rem = np.divmod(t - tmin, iv0)
    if rem.any():
        return None
    n_t = int(ti.max()) + 1
    if n_t < 2 or n_t * k > 2 * len(t) + 1_000_000:
        return None
    cell = ti * k + sid
    seen = np.bincount(cell, minlength=n_t * k)
    if seen.max() > 1:  # a repeated reading: the general path's rules apply
        return None
    pres = (seen > 0).reshape(n_t, k)
    flat = np.zeros(n_t * k)
    flat[cell] = val
    m = flat.reshape(n_t, k)
    dmat = m[1:] - m[:-1]
    valid = pres[1:] & pres[:-1]
    dmat[~valid] = 0.0
    grid_t = tmin + np.arange(n_t, dtype=np.int64) * iv0
    neg = dmat < 0
    if neg.any():
        ri, rj = np.nonzero(neg)
        fixed, frame = _resets(rj, grid_t[ri + 1], m[ri, rj], m[ri + 1, rj], dmat[ri, rj], roll, names)
        dmat[ri, rj] = fixed
        resets.append((rj, grid_t[ri + 1], frame))
    # gaps: runs of missing readings between a series' first and last reading
    first = pres.argmax(axis=0)
    last = n_t - 1 - pres[::-1].argmax(axis=0)
    mj, mi = np.nonzero(~pres.T)  # missing cells, series then time (few)
    inner = (mi > first[mj]) & (mi < last[mj])
    mj, mi = mj[inner], mi[inner]
    if len(mi):
        if len(mi) > 1_000_000:
            return None
        run0 = np.flatnonzero(np.r_[True, (mj[1:] != mj[:-1]) | (mi[1:] != mi[:-1] + 1)])
        run1 = np.r_[run0[1:], len(mi)] - 1
        gj, ta, tb = mj[run0], mi[run0] - 1, mi[run1] + 1
        n = tb - ta
        d = m[tb, gj] - m[ta, gj]
        negg = d < 0
        if negg.any():
            fixed, frame = _resets(gj[negg], grid_t[tb[negg]], m[ta[negg], gj[negg]], m[tb[negg], gj[negg]],
                                   d[negg], roll, names)
            d[negg] = fixed
            resets.append((gj[negg], grid_t[tb[negg]], frame))
        gaps.append((gj, grid_t[tb], _gap_frame(gj, grid_t[tb], m[ta, gj], m[tb, gj], d, n, names)))
        rep = np.repeat(np.arange(len(gj)), n)
        rows = np.repeat(ta, n) + (np.arange(len(rep)) - np.repeat(np.cumsum(n) - n, n))
        dmat[rows, gj[rep]] = np.repeat(d / n, n)
        valid[rows, gj[rep]] = True
    return np.arange(k), iv0, grid_t[1:] - iv0, dmat, valid


def _stage1_dense(rs: ReadingSet, *, grid: bool = False) -> Stage1 | None:
    """Stage 1 without sorting: the dense path, else the grid path (see the module docs).

    Dense: readings that form dense blocks (:func:`_block_shape`) with one reading per
    interval. Grid (or with ``grid=True``): otherwise the register rows scattered onto
    one grid (:func:`_grid_entry`), gaps split there. Resets and rollovers are fixed and listed
    on both. Returns None when neither applies (the general path then runs); the result
    equals the general path's, bit for bit.
    """
    r = rs.readings
    if len(r) < 2 or not isinstance(r.index, pd.DatetimeIndex):
        return None
    ts_index = r.index if r.index.unit == "ns" else r.index.as_unit("ns")
    ts = ts_index.asi8
    sc, snames = _raw_codes(r["site"])
    mc, mnames = _raw_codes(r["meter"])
    qc, qnames = _raw_codes(r["quantity"])
    blocks = None if grid else _dense_blocks(ts, [sc, mc, qc])
    v = r["value"].to_numpy(dtype=np.float64)
    nm, nq = max(len(mnames), 1), max(len(qnames), 1)
    q_is_reg = np.asarray([QUANTITIES[q].kind == "register" if q in QUANTITIES else False for q in qnames])
    cols: list[np.ndarray] = []
    combos_of: list[np.ndarray] = []
    if blocks is None:
        # rows in another order or with lost messages: scatter the register rows onto one
        # (time x series) grid, if they share one (see _grid_entry)
        rows = np.flatnonzero(q_is_reg[qc])
        if len(rows) < 2:
            return None
        combo_r = (sc[rows].astype(np.int64) * nm + mc[rows]) * nq + qc[rows]
        present = np.bincount(combo_r, minlength=len(snames) * nm * nq)
        combos = np.flatnonzero(present)
        dense_id = np.zeros(len(present), dtype=np.int64)
        dense_id[combos] = np.arange(len(combos))
        row_sid = dense_id[combo_r]
    else:
        # series of each block (its columns), register ones only
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
    roll = np.full(k_series, np.nan)
    kind_of: list[str] = []
    for i in range(k_series):
        mi = meters.get((ser_site[i], ser_meter[i]))
        if mi is None:
            raise AccountingError(
                f"readings of meter {ser_site[i]}/{ser_meter[i]} have no MeterInfo; expected one per meter in ReadingSet.meters"
            )
        iv_ns[i] = int(mi.interval_s) * 1_000_000_000
        roll[i] = float(mi.attrs.get("rollover_at", np.nan))
        kind_of.append(mi.kind)
    tz_of = {s.site: s.tz for s in rs.sites}
    tariffs = {s.site: s.attrs.get("tariff") for s in rs.sites}
    grid_ser = [i for i in range(k_series) if kind_of[i] == "grid" and ser_q[i] in _RATE_Q and tariffs.get(ser_site[i])]

    # per block: interval differences as a (time x series) matrix
    prepared: list[tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray | None]] = []
    resets: list[tuple[np.ndarray, np.ndarray, pd.DataFrame]] = []
    gaps: list[tuple[np.ndarray, np.ndarray, pd.DataFrame]] = []
    all_ser = (ser_site, ser_meter, ser_q)
    if blocks is None:
        entry = _grid_entry(ts[rows], v[rows], row_sid, iv_ns, roll, all_ser, resets, gaps)
        if entry is None:
            return None
        prepared.append(entry)
    for blk, reg, combo in zip(blocks or [], cols, combos_of, strict=True):
        if not len(reg):
            continue
        sid = np.searchsorted(combos, combo)
        iv = iv_ns[sid]
        length = blk.length
        tb = ts[blk.a : blk.b : blk.k] if blk.ts_major else ts[blk.a : blk.a + length]
        if not (iv == iv[0]).all() or not (np.diff(tb) == iv[0]).all():
            return _stage1_dense(rs, grid=True)  # whole timestamps missing: split on the grid
        if blk.ts_major:
            m = v[blk.a : blk.b].reshape(length, blk.k)
            mr = m if len(reg) == blk.k else m[:, reg]
            dmat = mr[1:] - mr[:-1]
        else:
            m = v[blk.a : blk.b].reshape(blk.k, length)
            mr = m if len(reg) == blk.k else m[reg]
            dmat = (mr[:, 1:] - mr[:, :-1]).T
        neg = dmat < 0
        if neg.any():  # resets and rollovers: fixed in place and listed, as the general path does
            ri, rj = np.nonzero(neg)
            mv = m if blk.ts_major else m.T  # (time x all columns of the block)
            prev, value = mv[ri, reg[rj]], mv[ri + 1, reg[rj]]
            fixed, frame = _resets(sid[rj], tb[ri + 1], prev, value, dmat[ri, rj], roll, all_ser)
            dmat[ri, rj] = fixed
            resets.append((sid[rj], tb[ri + 1], frame))
        prepared.append((sid, int(iv[0]), tb[1:] - iv[0], dmat, None))
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
    grid_set = set(grid_ser)
    if grid_ser:
        lo: list[int] = []
        hi: list[int] = []
        g_sites = set()
        for sid, _, start, _, valid in prepared:
            gcols = [j for j in range(len(sid)) if int(sid[j]) in grid_set]
            if not gcols:
                continue
            if valid is None:
                rows_g = np.arange(len(start))
                g_sites |= {ser_site[sid[j]] for j in gcols}
            else:  # only the intervals the readings cover, as the general path sees them
                rows_g = np.flatnonzero(valid[:, gcols].any(axis=1))
                g_sites |= {ser_site[sid[j]] for j in gcols if valid[:, j].any()}
            if len(rows_g):
                lo.append(int(start[rows_g[0]]))
                hi.append(int(start[rows_g[-1]]))
        g_step = int(np.gcd.reduce(iv_ns[grid_ser]))
        if lo:
            t0 = min(lo)
            n_slot = (max(hi) - t0) // g_step + 1
            tcodes = _tariff_codes(sorted(g_sites), tz_of, tariffs, t0, g_step, n_slot, period_names)

    o_sid: list[np.ndarray] = []
    o_day: list[np.ndarray] = []
    o_p: list[np.ndarray] = []
    o_val: list[np.ndarray] = []
    o_rate: list[np.ndarray] = []
    o_n: list[np.ndarray] = []
    x_site: list[int] = []
    for sid, step_ns, start, dmat, valid in prepared:
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
            vsub = None if valid is None else valid if len(jj) == valid.shape[1] else valid[:, jj]
            rate_cols = [j for j, c in enumerate(jj) if ser_q[sid[c]] in _RATE_Q]
            rates = np.full(sums.shape, np.nan)
            if rate_cols:
                rsub = sub[:, rate_cols] if vsub is None else np.where(vsub[:, rate_cols], sub[:, rate_cols], -np.inf)
                rates[:, rate_cols] = np.maximum.reduceat(rsub, idx, axis=0) * _NS_H / step_ns
            plain = [j for j, c in enumerate(jj) if int(sid[c]) not in grid_set]
            nd_ = len(idx)
            b_sid = np.repeat(sid[jj[plain]][None, :], nd_, axis=0).ravel()
            b_day = np.repeat(day[idx], len(plain))
            b_val, b_rate = sums[:, plain].ravel(), rates[:, plain].ravel()
            if vsub is None:
                b_n = np.repeat(cnt, len(plain))
            else:  # intervals covered per day and series; (day, series) without any: no row
                cnt_m = np.repeat(cnt[:, None], len(jj), axis=1)
                ii, ij = np.nonzero(~vsub)  # few: before a series' first or after its last reading
                np.subtract.at(cnt_m, (np.searchsorted(idx, ii, side="right") - 1, ij), 1)
                b_n = cnt_m[:, plain].ravel()
                keep = b_n > 0
                b_sid, b_day, b_val, b_rate, b_n = b_sid[keep], b_day[keep], b_val[keep], b_rate[keep], b_n[keep]
            o_sid.append(b_sid)
            o_day.append(b_day)
            o_p.append(np.zeros(len(b_sid), dtype=np.int64))
            o_val.append(b_val)
            o_rate.append(b_rate)
            o_n.append(b_n)
        # grid import/export of sites with a tariff: sums per (day, period)
        pcode_of: dict[int, np.ndarray] = {}
        for j in [j for j in range(len(sid)) if int(sid[j]) in grid_set]:
            if valid is not None and not valid[:, j].any():
                continue
            sc_ = int(site_codes[j])
            if sc_ not in pcode_of:
                pcode_of[sc_] = tcodes[snames[sc_]][(start - t0) // g_step]
            day, pc_ = day_of[sc_], pcode_of[sc_]
            npd = len(period_names)
            d0 = int(day[0])
            key = (day - d0) * npd + pc_
            size = int(key[-1]) + npd
            col = np.ascontiguousarray(dmat[:, j])
            if valid is not None:
                key, col = key[valid[:, j]], col[valid[:, j]]
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
            if gj and snames[sc_] in tcodes:
                if sc_ not in pcode_of:
                    pcode_of[sc_] = tcodes[snames[sc_]][(start - t0) // g_step]
                pc_ = pcode_of[sc_]
            else:
                pc_ = np.zeros(len(start), dtype=np.int64)
            npd = len(period_names)
            d0 = int(day[0])
            key = (day - d0) * npd + pc_
            size = int(key[-1]) + npd
            if valid is not None:  # intervals with both an export and a PV part
                both = valid[:, ex].any(axis=1) & valid[:, pv].any(axis=1)
                if not both.any():
                    continue
                key, pvx = key[both], pvx[both]
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
    # resets, then gaps, each ordered by series, then ts (as the general path lists them)
    parts = []
    for found in (resets, gaps):
        if found:
            frame = pd.concat([f[2] for f in found], ignore_index=True)
            o = np.lexsort((np.concatenate([f[1] for f in found]), np.concatenate([f[0] for f in found])))
            parts.append(frame.iloc[o].reset_index(drop=True))
    if parts:
        anom = pd.concat(parts, ignore_index=True)
        log.info("stage 1: %d anomalies (resets, rollovers, gaps)", len(anom))
    else:
        anom = pd.DataFrame({c: pd.Series(dtype=object) for c in ANOMALY_COLUMNS})
    return Stage1(energy=energy, anomalies=anom)
