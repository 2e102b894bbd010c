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

Three implementations give the same frame, bit for bit, and :func:`stage1` picks the
first that applies (the first two are in :mod:`ems.accounting.matrix`):

* dense: readings that form time x series matrices (ts-major, as a store returns
  them, or series-major, as the simulator yields them; one reading per interval). No
  sort; days and tariff periods are computed once per timestamp, not per row;
* grid: any row order, lost messages allowed, when every register has the same
  interval and all readings lie on one grid of it. Register rows are scattered onto a
  time x series grid (no sort) and gaps are split there;
* general: anything else (repeated readings, mixed intervals); sorts by series and ts.
"""

from __future__ import annotations

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


def _gap_frame(
    sid: np.ndarray,
    ts: np.ndarray,
    prev: np.ndarray,
    value: np.ndarray,
    energy: np.ndarray,
    n: np.ndarray,
    names: tuple[list[str], list[str], list[str]],
) -> pd.DataFrame:
    """Anomaly rows of differences spanning ``n > 1`` intervals (lost messages)."""
    return pd.DataFrame(
        {
            "site": [names[0][i] for i in sid],
            "meter": [names[1][i] for i in sid],
            "quantity": [names[2][i] for i in sid],
            "ts": pd.DatetimeIndex(ts.view("M8[ns]"), tz="UTC"),
            "kind": "gap",
            "prev_value": prev,
            "value": value,
            "energy": energy,
            "detail": [f"{k - 1} interval(s) missing; delta split pro rata over {k} intervals" for k in n],
        }
    )


def stage1(rs: ReadingSet) -> Stage1:
    """Turn readings into per (site, meter, quantity, local date, period) sums.

    Readings that form dense blocks (every series of a block with one reading per
    interval at the same timestamps, in ts-major or series-major order, as a store
    or the simulator gives them) take a path that needs no sort; readings in another
    order or with lost messages, on one time grid, a grid path that needs none
    either; anything else (repeated readings, mixed intervals) the general path,
    which sorts. All give the same result (see the module docs).

    Parameters
    ----------
    rs : ReadingSet
        Readings with their meters and sites.

    Returns
    -------
    Stage1
        Energy sums and anomalies; see the module docs for the exact definition.
    """
    from ems.accounting.matrix import _stage1_dense  # it imports this module's helpers

    fast = _stage1_dense(rs)
    return fast if fast is not None else _stage1_general(rs)


def _resets(
    sid: np.ndarray,
    ts: np.ndarray,
    prev: np.ndarray,
    value: np.ndarray,
    delta: np.ndarray,
    roll: np.ndarray,
    names: tuple[list[str], list[str], list[str]],
) -> tuple[np.ndarray, pd.DataFrame]:
    """Energy of the intervals where a register went down, and their anomaly rows.

    ``sid`` series, ``ts`` [ns] end of the interval, ``prev``/``value`` the readings,
    ``delta`` their (negative) difference, ``roll`` the rollover of every series (NaN: none).
    """
    rr = roll[sid]
    fixed = np.where(np.isfinite(rr), delta + np.nan_to_num(rr), value)
    frame = pd.DataFrame(
        {
            "site": [names[0][i] for i in sid],
            "meter": [names[1][i] for i in sid],
            "quantity": [names[2][i] for i in sid],
            "ts": pd.DatetimeIndex(ts.view("M8[ns]"), tz="UTC"),
            "kind": np.where(np.isfinite(rr), "rollover", "reset"),
            "prev_value": prev,
            "value": value,
            "energy": fixed,
            "detail": np.where(
                np.isfinite(rr),
                "register passed rollover_at; energy = value + rollover_at - prev_value",
                "register went down (meter reset or replacement); post-reset value counted as energy since reset",
            ),
        }
    )
    return fixed, frame


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
    all_ser = (ser_site, ser_meter, ser_q)

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
        fixed, frame = _resets(c_sid[ri], ts[ri + 1], v[ri], v[ri + 1], d[ri], roll, all_ser)
        d[ri] = fixed
        anomalies.append(frame)
    irregular = dt != c_iv
    n = np.ones(len(dt), dtype=np.int64)
    if irregular.any():
        n[irregular] = np.maximum(1, np.rint(dt[irregular] / c_iv[irregular])).astype(np.int64)
    gap = n > 1
    if gap.any():
        gi = np.flatnonzero(gap)
        anomalies.append(_gap_frame(c_sid[gi], ts[gi + 1], v[gi], v[gi + 1], d[gi], n[gi], all_ser))
        # every difference becomes n parts; only the few gap rows need more than a copy
        first = np.cumsum(n) - n  # position of each difference's first part
        rep = np.repeat(np.arange(len(n)), n)
        p_sid = c_sid[rep]
        p_iv = c_iv[rep]
        ng = n[gi]
        k = np.arange(int(ng.sum())) - np.repeat(np.cumsum(ng) - ng, ng)  # part of its gap
        parts = np.repeat(first[gi], ng) + k
        back = np.ones(len(rep), dtype=np.int64)  # intervals from a part's start to the reading
        back[parts] = np.repeat(ng, ng) - k
        start = ts[1:][rep] - back * p_iv
        val = d[rep]  # d / 1 where there is no gap
        val[parts] = np.repeat(d[gi] / ng, ng)
        bnd = first[bnd]
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
    exp_ser = [i for i in range(k_series) if kind_of[i] == "grid" and ser_q[i] == "export_kwh"]
    pv_ser = [i for i in range(k_series) if kind_of[i] == "pv" and ser_q[i] == "energy_kwh"]
    rate_ser = [i for i in range(k_series) if ser_q[i] in _RATE_Q]
    # what each row's series is, as bit flags (one gather instead of one per set)
    flag = np.zeros(k_series + 1, dtype=np.uint8)
    for bit, members in ((1, grid_ser), (2, exp_ser), (4, pv_ser), (8, rate_ser)):
        flag[members] |= bit
    p_flag = flag[p_sid]
    if grid_ser:
        grows = np.flatnonzero((p_flag & 1).astype(bool) & ok)
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
    extra_names: list[tuple[str, str, str]] = []
    x_sid = x_day = x_p = np.zeros(0, dtype=np.int64)
    pvx = np.zeros(0)
    if exp_ser and pv_ser:
        em = (p_flag & 2).astype(bool) & ok
        pm = (p_flag & 4).astype(bool) & ok
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
        x_sid = remap[xs]
        extra_names = [(snames[s], "_site", "pv_exported_kwh") for s in site_ids]

    all_names = list(zip(ser_site, ser_meter, ser_q, strict=True)) + extra_names
    if not len(val):
        energy = _energy_frame(all_names, period_names, *(np.zeros(0, np.int64),) * 3,
                               np.zeros(0), np.zeros(0), np.zeros(0, np.int64))
    else:
        # the derived rows (x_*) are summed apart from the readings' rows: their keys never
        # meet, so the sums are the same as over one concatenated array
        d0 = int(min(day.min(), x_day.min(initial=day.min())))
        nd = int(max(day.max(), x_day.max(initial=day.max()))) - d0 + 1
        npd = len(period_names)
        key = p_sid * nd  # in place below: fewer temporaries of the row count
        key += day
        key -= d0
        key *= npd
        key += pcode
        x_key = ((x_sid * nd) + x_day - d0) * npd + x_p
        size = len(all_names) * nd * npd
        key[bnd] = size  # series boundaries: dropped
        rm = (p_flag & 8).astype(bool)
        rm[bnd] = False
        rates = val[rm] * _NS_H / p_iv[rm]
        if size <= 50_000_000:
            sums = np.bincount(key, weights=val, minlength=size + 1)[:size]
            cnt = np.bincount(key, minlength=size + 1)[:size]
            if len(x_key):
                sums += np.bincount(x_key, weights=pvx, minlength=size)
                cnt += np.bincount(x_key, minlength=size)
            keys = np.flatnonzero(cnt)
            sums, cnt = sums[keys], cnt[keys]
            mx = np.full(size + 1, -np.inf)
            np.maximum.at(mx, key[rm], rates)
            top = mx[keys]
        else:
            keys, inv = np.unique(np.concatenate([key, x_key]), return_inverse=True)
            sums = np.bincount(inv, weights=np.concatenate([val, pvx]))
            cnt = np.bincount(inv)
            mx = np.full(len(keys), -np.inf)
            np.maximum.at(mx, inv[: len(key)][rm], rates)
            keep = keys < size
            keys, sums, cnt, top = keys[keep], sums[keep], cnt[keep], mx[keep]
        max_rate = np.where(top == -np.inf, np.nan, top)  # keys without a rate series
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
