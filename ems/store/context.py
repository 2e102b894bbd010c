"""What the parts of the embedded store share: its directory, options, DuckDB connection, locks.

The embedded store (:class:`ems.store.duckdb_store.DuckDBStore`) is four parts with one
job each: the :class:`~ems.store.registry.Registry` (sites and meters), the
:class:`~ems.store.writer.SegmentWriter` (publishes and compacts segments), the
:class:`~ems.store.reader.SegmentReader` (reads them back) and the
:class:`~ems.store.rollups.RegisterAggregates` (stage 1 pushed down, kept up to date as
segments are written). They share one :class:`StoreContext`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from ems.errors import StoreError
from ems.store.segments import FileLock

if TYPE_CHECKING:
    import duckdb

__all__ = ["StoreContext"]

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRIES = 20


@dataclass
class StoreContext:
    """The directory, options and shared handles of one open embedded store.

    Attributes
    ----------
    root : Path
        Store directory.
    read_only : bool
        True if opened for reading only.
    compression : str
        Parquet codec of new files.
    threads : int
        Threads for writing segments and for DuckDB.
    lock_timeout_s : float or None [s]
        Longest wait for the writers' lock; None waits forever.
    """

    root: Path
    read_only: bool
    compression: str
    threads: int
    lock_timeout_s: float | None = None
    _con: duckdb.DuckDBPyConnection | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.write_lock = FileLock(self.root / ".write.lock", self.lock_timeout_s)
        self.compact_lock = FileLock(self.root / ".compact.lock")

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The store's in-memory DuckDB connection (the query engine), opened on first use: a
        writer that only appends never needs it (importing and opening DuckDB costs ~80 ms)."""
        self.check_open()
        if self._con is None:
            import duckdb

            self._con = duckdb.connect(":memory:")
            self._con.sql(f"SET threads = {self.threads}")
            self._con.sql("SET TimeZone = 'UTC'")
        return self._con

    def check_open(self) -> None:
        """Raise if the store was closed."""
        if self._closed:
            raise StoreError(f"the store at {self.root} is closed; open it again to use it")

    def close(self) -> None:
        self._closed = True
        if self._con is not None:
            self._con.close()
            self._con = None

    def writable(self, what: str) -> None:
        """Raise unless the store is open for writing."""
        self.check_open()
        if self.read_only:
            raise StoreError(f"{what}: the store at {self.root} was opened read-only")

    def arrow(self, sql: str, params: dict[str, Any]) -> pa.Table:
        """Run a query on the store's DuckDB connection; return its result as Arrow."""
        rel = self.con.sql(sql, params=params)
        if rel is None:
            raise StoreError(f"DuckDB returned no result for {sql[:60]!r}...")
        t: pa.Table = rel.to_arrow_table()
        return t

    def retry(self, fn: Callable[[], T]) -> T:
        """Run a read, starting again if compaction removed a file under it."""
        for attempt in range(RETRIES):
            try:
                return fn()
            except FileNotFoundError as exc:
                log.debug("read raced with compaction (%s); retry %d", exc, attempt + 1)
            except Exception as exc:
                if not _vanished(exc):
                    raise
                log.debug("read raced with compaction (%s); retry %d", exc, attempt + 1)
            time.sleep(0.005 * (attempt + 1))
        raise StoreError(f"{self.root}: files kept vanishing during {RETRIES} read attempts")


def _vanished(exc: Exception) -> bool:
    """True for an error of a file that compaction deleted under a read (DuckDB's IOException,
    an OSError saying so)."""
    duckdb = sys.modules.get("duckdb")  # not imported: it raised nothing
    if duckdb is not None and isinstance(exc, duckdb.IOException):
        return True
    return isinstance(exc, OSError) and ("No such file" in str(exc) or "not found" in str(exc).lower())


def default_threads(threads: int | None) -> int:
    return max(1, threads or os.cpu_count() or 1)
