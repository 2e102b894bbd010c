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

from ems.errors import StoreError

__all__ = [
    "EVENTS_SCHEMA",
    "READINGS_SCHEMA",
    "ROW_GROUP",
    "TS",
    "codes_of",
    "dict_array",
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


def dict_array(codes: np.ndarray, cats: list[str]) -> pa.DictionaryArray:
    """Build a compact dictionary array (only the categories used)."""
    codes = codes.astype(np.int32, copy=False)
    used = np.bincount(codes, minlength=len(cats)) > 0
    if used.all():
        return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(cats, pa.string()))
    remap = np.cumsum(used, dtype=np.int32) - 1
    kept = [c for c, u in zip(cats, used, strict=True) if u]
    return pa.DictionaryArray.from_arrays(pa.array(remap[codes]), pa.array(kept, pa.string()))


def unique_last(ts: np.ndarray, series: np.ndarray, nseries: int) -> np.ndarray | None:
    """Return a keep-mask removing earlier duplicates of (ts, series), or None if unique.

    ``ts`` must be sorted. Duplicates can only sit within a run of equal ``ts``, so
    a dense key (run number, series renumbered densely) is checked against a bitmap:
    a few ms per million rows, no sort and no hashing unless duplicates exist.
    """
    n = len(ts)
    if n < 2:
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
