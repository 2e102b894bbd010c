"""Arrow and NumPy helpers of the embedded store: segment schemas, categorical codes,
and the duplicate check of a batch.

Pure functions over arrays; :mod:`ems.store.duckdb_store` orchestrates them.
"""

from __future__ import annotations

import datetime as dt
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ems.errors import ReadingError, StoreError
from ems.readings import QUANTITIES, READING_COLUMNS, validate_readings

__all__ = [
    "EVENTS_SCHEMA",
    "READINGS_SCHEMA",
    "ROW_GROUP",
    "TS",
    "arrow_columns",
    "codes_of",
    "dict_array",
    "frame_columns",
    "segment_table",
    "site_parts",
    "to_us",
    "unique_last",
    "write_table",
]

TS = pa.timestamp("us", tz="UTC")
DICT = pa.dictionary(pa.int32(), pa.string())
READINGS_SCHEMA = pa.schema(
    [("ts", TS), ("meter", DICT), ("quantity", DICT), ("value", pa.float64())]
)
"""Arrow schema of a readings segment (the site is the directory ``site=<id>``)."""
EVENTS_SCHEMA = pa.schema(
    [
        ("ts", TS),
        ("site", pa.string()),
        ("kind", pa.string()),
        ("subject", pa.string()),
        ("value", pa.float64()),
        ("unit", pa.string()),
        ("detail", pa.string()),
    ]
)
ROW_GROUP = 1 << 20


def to_us(t: dt.datetime | pd.Timestamp | str | None, name: str) -> int | None:
    """Return ``t`` as µs since the epoch (UTC); reject naive times."""
    if t is None:
        return None
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        raise StoreError(f"read: {name} must be tz-aware (UTC inside); found naive {ts}")
    return int(ts.tz_convert("UTC").as_unit("ns").value // 1000)


def codes_of(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Return (integer codes, categories as str) of a column, categorical or not."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cat = col.array
        assert isinstance(cat, pd.Categorical)
        return np.asarray(cat.codes), [str(c) for c in cat.categories]
    codes, uniques = pd.factorize(col.astype(str), sort=False)
    return codes, [str(u) for u in uniques]


def _arrow_codes(col: pa.ChunkedArray, name: str, where: str) -> tuple[np.ndarray, list[str]]:
    """Return (integer codes, categories as str) of an Arrow string or dictionary column."""
    arr = col.combine_chunks()
    if not pa.types.is_dictionary(arr.type):
        arr = arr.cast(pa.string()).dictionary_encode()
    assert isinstance(arr, pa.DictionaryArray)
    if arr.null_count:
        raise ReadingError(
            f"{where}: expected a {name} in every row, found {arr.null_count} missing"
        )
    return arr.indices.to_numpy(zero_copy_only=False), [str(c) for c in arr.dictionary.to_pylist()]


ArrowColumns = tuple[
    np.ndarray,
    tuple[np.ndarray, list[str]],
    tuple[np.ndarray, list[str]],
    tuple[np.ndarray, list[str]],
    np.ndarray,
]


def arrow_columns(table: pa.Table, *, where: str) -> ArrowColumns:
    """Check a readings table against the contract; return its columns as arrays.

    The table has the tidy frame's columns with ``ts`` as a column: ``ts``
    (timestamp with a time zone, any unit), ``site``, ``meter``, ``quantity`` (string
    or dictionary), ``value`` (float64, finite).

    Returns
    -------
    ts_ns, (site codes, sites), (meter codes, meters), (quantity codes, quantities), values
    """
    missing = [c for c in ("ts", *READING_COLUMNS) if c not in table.column_names]
    if missing:
        raise ReadingError(
            f"{where}: expected columns {['ts', *READING_COLUMNS]}, missing {missing}; "
            f"found {table.column_names}"
        )
    ts_type = table.schema.field("ts").type
    if not pa.types.is_timestamp(ts_type) or ts_type.tz is None:
        raise ReadingError(f"{where}: expected 'ts' as tz-aware timestamps, found {ts_type}")
    ts = table.column("ts").combine_chunks().cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
    if ts.null_count:
        raise ReadingError(f"{where}: expected a ts in every row, found {ts.null_count} missing")
    cols = [_arrow_codes(table.column(c), c, where) for c in ("site", "meter", "quantity")]
    unknown = set(cols[2][1]) - set(QUANTITIES)
    if unknown:
        raise ReadingError(
            f"{where}: unknown quantities {sorted(unknown)}; expected names from "
            "ems.readings.QUANTITIES"
        )
    values = (
        table.column("value").combine_chunks().cast(pa.float64()).to_numpy(zero_copy_only=False)
    )
    if not np.isfinite(values).all():
        raise ReadingError(
            f"{where}: {int((~np.isfinite(values)).sum())} values are NaN or infinite"
        )
    return ts.to_numpy(zero_copy_only=False), cols[0], cols[1], cols[2], values


def frame_columns(readings: pd.DataFrame, *, where: str) -> ArrowColumns:
    """Check a readings frame against the contract; return its columns as :func:`arrow_columns` does."""
    validate_readings(readings, where=where)
    idx = readings.index
    assert isinstance(idx, pd.DatetimeIndex)
    ts_ns = idx.asi8 if idx.unit == "ns" else idx.as_unit("ns").asi8  # UTC in any zone
    cols = [codes_of(readings[c]) for c in ("site", "meter", "quantity")]
    return ts_ns, cols[0], cols[1], cols[2], readings["value"].to_numpy(dtype=np.float64)


def site_parts(codes: np.ndarray, sites: list[str]) -> list[tuple[str, np.ndarray | None]]:
    """Rows of each site: ``(site, row indices)``, or ``[(site, None)]`` when all are one site."""
    if len(sites) == 1 or (codes == codes[0]).all():
        return [(sites[int(codes[0])], None)]
    small = codes.astype(np.int16, copy=False) if len(sites) < 2**15 else codes
    order = np.argsort(small, kind="stable")  # radix sort for 16-bit keys
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes))])
    return [
        (sites[i], order[bounds[i] : bounds[i + 1]])
        for i in range(len(sites))
        if bounds[i + 1] > bounds[i]
    ]


def segment_table(
    t: np.ndarray,
    m: np.ndarray,
    q: np.ndarray,
    v: np.ndarray,
    meters: list[str],
    quantities: list[str],
) -> tuple[pa.Table, int, int]:
    """One site's segment: rows sorted by time, repeats dropped (the last kept).

    Parameters
    ----------
    t : ndarray of int64 [µs since the epoch, UTC]
    m, q : ndarray of int
        Codes into ``meters`` and ``quantities``.
    v : ndarray [the quantity's unit]

    Returns
    -------
    table, tmin, tmax
        The segment (:data:`READINGS_SCHEMA`) and its first and last time [µs].
    """
    if len(t) > 1 and not bool((t[1:] >= t[:-1]).all()):
        o = np.argsort(t, kind="stable")
        t, m, q, v = t[o], m[o], q[o], v[o]
    nq = max(len(quantities), 1)
    keep = unique_last(t, m.astype(np.int64) * nq + q, max(len(meters), 1) * nq)
    if keep is not None:
        t, m, q, v = t[keep], m[keep], q[keep], v[keep]
    table = pa.table(
        [pa.array(t, TS), dict_array(m, meters), dict_array(q, quantities), pa.array(v)],
        schema=READINGS_SCHEMA,
    )
    return table, int(t[0]), int(t[-1])


def dict_array(codes: np.ndarray, cats: list[str]) -> pa.DictionaryArray:
    """Build a compact dictionary array (only the categories used)."""
    codes = codes.astype(np.int32, copy=False)
    used = np.bincount(codes, minlength=len(cats)) > 0
    if used.all():
        return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(cats, pa.string()))
    remap = np.cumsum(used, dtype=np.int32) - 1
    kept = [c for c, u in zip(cats, used, strict=True) if u]
    return pa.DictionaryArray.from_arrays(pa.array(remap[codes]), pa.array(kept, pa.string()))


def _whole_steps(ts: np.ndarray, series: np.ndarray) -> bool:
    """True when sorted rows are whole steps, each the same distinct series in the same order.

    The layout of a producer writing time-major (``ems run``): then no key repeats,
    which a few comparisons show, with no bitmap.
    """
    k = int(np.searchsorted(ts, ts[0], side="right"))  # rows of the first step
    if len(ts) % k or len(np.unique(series[:k])) != k:
        return False
    t = ts.reshape(-1, k)
    if not (t[:, 0] == t[:, -1]).all() or not (t[1:, 0] > t[:-1, 0]).all():
        return False
    return bool((series.reshape(-1, k) == series[:k]).all())


def unique_last(ts: np.ndarray, series: np.ndarray, nseries: int) -> np.ndarray | None:
    """Return a keep-mask removing earlier duplicates of (ts, series), or None if unique.

    ``ts`` must be sorted. Duplicates can only sit within a run of equal ``ts``, so
    a dense key (run number, series renumbered densely) is checked against a bitmap:
    a few ms per million rows, no sort and no hashing unless duplicates exist.
    """
    n = len(ts)
    if n < 2 or _whole_steps(ts, series):
        return None
    used = np.zeros(nseries, dtype=bool)
    used[series] = True
    dense = (np.cumsum(used) - 1)[series]
    width = int(used.sum())
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    np.not_equal(ts[1:], ts[:-1], out=new_run[1:])
    run = np.cumsum(new_run, dtype=np.int64) - 1
    nbins = (int(run[-1]) + 1) * width
    key = run * width + dense
    if nbins <= 32 * n + 1024:
        seen = np.zeros(nbins, dtype=bool)
        seen[key] = True
        if int(np.count_nonzero(seen)) == n:
            return None
    elif not pd.Index(key).has_duplicates:
        return None
    mask: np.ndarray = ~pd.Index(key).duplicated(keep="last")
    return mask


def write_table(table: pa.Table, f: IO[bytes], compression: str) -> None:
    pq.write_table(
        table,
        f,
        compression=compression,
        row_group_size=ROW_GROUP,
        use_dictionary=["meter", "quantity", "site", "kind", "subject", "unit"],
        write_statistics=["ts"],
    )
