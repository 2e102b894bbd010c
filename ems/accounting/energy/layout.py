"""Where each register series is in readings given as columns (stage 1's input layout).

:func:`register_series` returns each series' ts and values in time order, as views of
the columns wherever their order allows: a slice per series when rows come series by
series (the simulator), a strided slice when a site's rows form a ts-major block (a
store); rows in any other order are sorted by series, then ts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pandas as pd

from ems.readings import QUANTITIES

__all__ = ["Codes", "SeriesKey", "View", "column_codes", "register_series"]


View = tuple[np.ndarray, np.ndarray]
"""One register series: ts [ns since the epoch, UTC] and values, in time order."""
SeriesKey = tuple[str, str, str]
"""(site, meter, quantity)"""
Codes = tuple[np.ndarray, list[str]]
"""A column as integer codes and the names they index."""
Where = list[tuple[int, slice | np.ndarray]]


def column_codes(col: pd.Series) -> Codes:
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
    where = _blocks(ts, [sc, mc, qc], combo)
    if where is None:
        every = combo(slice(None))
        where = _runs(ts, every) or _sorted(ts, every, reg_q[qc])
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
    if _changes(sc, 4096):
        return None
    cuts = np.flatnonzero(sc[1:] != sc[:-1]) + 1
    if len(np.unique(sc[np.r_[0, cuts]])) != len(cuts) + 1:
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


def _changes(code: np.ndarray, most: int) -> bool:
    """True if ``code`` changes value more than ``most`` times (looked at in pieces: rows that
    change series at every row are found in the first piece)."""
    seen = 0
    for a in range(0, len(code) - 1, 1 << 20):
        piece = code[a: a + (1 << 20) + 1]
        seen += int(np.count_nonzero(piece[1:] != piece[:-1]))
        if seen > most:
            return True
    return False


def _runs(ts: np.ndarray, combo: np.ndarray) -> Where | None:
    """Series positions if every series is one run of rows in time order."""
    if _changes(combo, 100_000):
        return None
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
        order = _by_series_and_time(sid, len(present), t)
    s_sorted = sid[order]
    bounds = np.r_[0, np.flatnonzero(s_sorted[1:] != s_sorted[:-1]) + 1, len(order)].tolist()
    pos = order if len(rows) == len(keep) else rows[order]  # every row kept: positions are the order
    return [(int(present[s_sorted[a]]), pos[a:b]) for a, b in itertools.pairwise(bounds)]


def _by_series_and_time(sid: np.ndarray, n_series: int, t: np.ndarray) -> np.ndarray:
    """The order of rows by series, then time, stable. Without repeated (series, ts) pairs, a counting
    sort on (series, rank of ts) puts each row in its place in one pass; else two stable sorts."""
    codes, uniq = pd.factorize(t)  # hashing: the distinct timestamps, few beside the rows
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(uniq, kind="stable")] = np.arange(len(uniq))
    slots = n_series * len(uniq)
    if slots <= 4 * len(t) + 1_000_000:
        ck = sid.astype(np.int64) * len(uniq) + rank[codes]
        counts = np.bincount(ck, minlength=slots)
        if counts.max(initial=0) <= 1:
            place = np.cumsum(counts) - counts
            order = np.empty(len(t), dtype=np.int64)
            order[place[ck]] = np.arange(len(t))
            return order
    by_t = np.argsort(t, kind="stable")
    out: np.ndarray = by_t[np.argsort(sid[by_t], kind="stable")]
    return out
