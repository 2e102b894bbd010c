"""InfluxDB 2 backend on influxdb-client (extra ``ems[influx]``).

Writes go through the client's batching :class:`~influxdb_client.client.write_api.WriteApi`
as line protocol (:mod:`ems.store.lineproto`), built a chunk at a time and handed
over as request bodies of ``batch_size`` lines (one queue item per request, not per
line); at most ``max_pending_batches`` bodies wait in the client's queue, after which
a write waits for the server, so memory stays bounded however much is written. Its
success, error and retry callbacks are counted and logged, and :meth:`InfluxStore.close` (or :meth:`InfluxStore.flush`) raises
:class:`~ems.errors.StoreError` if a batch failed for good. Reads run Flux built
by :mod:`ems.store.flux`.

The token is taken from the ``token`` argument, else ``EMS_INFLUX_TOKEN``, else
the file named by ``EMS_INFLUX_TOKEN_FILE``; it is never logged (it is registered
with :mod:`ems.redaction`, which redacts it from every log record, influxdb_client's
own included), never shown in ``repr`` and never read from a site file or a URL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import influxdb_client  # noqa: F401  (first: a missing extra fails here, by name)
import numpy as np
import pandas as pd
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import WriteApi, WriteOptions, WriteType
from influxdb_client.domain.write_precision import WritePrecision

from ems import redaction
from ems.errors import StoreError
from ems.readings import (
    EVENT_COLUMNS,
    MeterInfo,
    ReadingSet,
    SiteInfo,
    empty_events,
    empty_readings,
    validate_readings,
)
from ems.store import flux, lineproto

if TYPE_CHECKING:
    from ems.accounting.energy import Stage1

__all__ = ["TOKEN_ENV", "TOKEN_FILE_ENV", "InfluxStore", "read_token", "tidy_from_flux"]

log = logging.getLogger(__name__)

_SECONDS: Any = WritePrecision.S
TOKEN_ENV = "EMS_INFLUX_TOKEN"
TOKEN_FILE_ENV = "EMS_INFLUX_TOKEN_FILE"


def read_token(token: str | None = None) -> str:
    """Return the API token: ``token``, else ``$EMS_INFLUX_TOKEN``, else the file in ``$EMS_INFLUX_TOKEN_FILE``.

    Raises
    ------
    StoreError
        No token is configured, or the token file cannot be read or is empty.
    """
    if token:
        redaction.register(token)
        return token
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        redaction.register(env)
        return env
    path = os.environ.get(TOKEN_FILE_ENV, "").strip()
    if path:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise StoreError(
                f"{TOKEN_FILE_ENV}={path}: cannot read the token file ({exc.strerror})"
            ) from exc
        if not text:
            raise StoreError(
                f"{TOKEN_FILE_ENV}={path}: expected a token in the file; found it empty"
            )
        redaction.register(text)
        return text
    raise StoreError(
        f"InfluxDB needs an API token: expected {TOKEN_ENV} or {TOKEN_FILE_ENV} in the environment; found neither"
    )


def tidy_from_flux(df: pd.DataFrame) -> pd.DataFrame:
    """Turn Flux tidy rows (``_time, site, meter, _field, _value``) into a contract frame."""
    if df.empty:
        return empty_readings()
    idx = pd.DatetimeIndex(pd.to_datetime(df["_time"], utc=True), name="ts").as_unit("ns")
    out = pd.DataFrame(
        {
            "site": pd.Categorical(df["site"].astype(str).to_numpy()),
            "meter": pd.Categorical(df["meter"].astype(str).to_numpy()),
            "quantity": pd.Categorical(df["_field"].astype(str).to_numpy()),
            "value": df["_value"].to_numpy(dtype=np.float64),
        },
        index=idx,
    )
    order = np.lexsort((out.index.asi8, out["site"].cat.codes.to_numpy()))
    return out.iloc[order]


class InfluxStore:
    """A store in an InfluxDB 2 bucket.

    Parameters
    ----------
    url : str
        Server URL, e.g. ``http://localhost:8086``.
    org, bucket : str
        Organisation and bucket.
    token : str, optional
        API token; default from the environment (see :func:`read_token`).
    read_only : bool
        Refuse writes (reports and dashboards).
    meta_bucket : str, optional
        Bucket for the ``meta`` measurement (give it infinite retention); default ``bucket``.
    batch_size : int [lines]
        Lines per write request.
    flush_interval_ms : int [ms]
        Longest time a line waits in the client before it is sent.
    max_retries : int
        Retries of a failed batch (429, 503, network errors) before it fails for good.
    retry_interval_ms, max_retry_time_ms, timeout_ms : int [ms]
        Retry back-off start, total retry budget, HTTP timeout.
    max_pending_batches : int [requests]
        Request bodies queued in the client, not yet answered, before a write waits.
    """

    def __init__(
        self,
        url: str,
        *,
        org: str,
        bucket: str,
        token: str | None = None,
        read_only: bool = False,
        meta_bucket: str | None = None,
        batch_size: int = 5000,
        flush_interval_ms: int = 1000,
        max_retries: int = 5,
        retry_interval_ms: int = 1000,
        max_retry_time_ms: int = 60_000,
        timeout_ms: int = 30_000,
        max_pending_batches: int = 8,
    ) -> None:
        self.url = url
        self.org = org
        self.bucket = bucket
        self.meta_bucket = meta_bucket or bucket
        self.read_only = read_only
        self._token = read_token(token)
        self.batch_size = max(1, batch_size)
        self.max_pending_batches = max(1, max_pending_batches)
        # each queue item is a whole request body already: the client must not merge them
        self._options = WriteOptions(
            write_type=WriteType.batching,
            batch_size=1,
            flush_interval=flush_interval_ms,
            jitter_interval=0,
            retry_interval=retry_interval_ms,
            max_retries=max_retries,
            max_retry_delay=max(retry_interval_ms, 30_000),
            max_retry_time=max_retry_time_ms,
            exponential_base=2,
        )
        self.stats = {
            "batches": 0,
            "lines": 0,
            "retries": 0,
            "failed_batches": 0,
            "failed_lines": 0,
        }
        self._pending = 0  # request bodies handed to the client, not yet answered
        self._answered = threading.Condition()
        self._stall_s = (max_retry_time_ms + 2 * timeout_ms) / 1000 + 10
        self._first_error: str | None = None
        self._reported = (0, 0)  # failed batches and lines already raised by flush()/close()
        self._meters: dict[tuple[str, str], MeterInfo] = {}
        self._sites: dict[str, SiteInfo] = {}
        self._meta_loaded = False
        self._client: InfluxDBClient | None = InfluxDBClient(
            url=url, token=self._token, org=org, timeout=timeout_ms
        )
        self._write_api: WriteApi | None = self._new_write_api()
        log.info("InfluxDB store %s org=%s bucket=%s", url, org, bucket)

    def __repr__(self) -> str:
        return f"InfluxStore({self.url!r}, org={self.org!r}, bucket={self.bucket!r})"

    # -- callbacks (run on the client's scheduler threads) -----------------------
    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    @staticmethod
    def _nlines(data: Any) -> int:
        text = data.decode() if isinstance(data, bytes) else str(data)
        return text.count("\n") + 1 if text else 0

    def _answer(self) -> None:
        with self._answered:
            self._pending = max(0, self._pending - 1)
            self._answered.notify_all()

    def _on_success(self, conf: tuple[str, str, str], data: Any) -> None:
        self.stats["batches"] += 1
        self.stats["lines"] += self._nlines(data)
        self._answer()

    def _on_error(self, conf: tuple[str, str, str], data: Any, exc: Exception) -> None:
        self._answer()
        n = self._nlines(data)
        self.stats["failed_batches"] += 1
        self.stats["failed_lines"] += n
        msg = self._redact(f"{type(exc).__name__}: {exc}")
        if self._first_error is None:
            self._first_error = msg
        log.error("InfluxDB write of %d lines to bucket %s failed for good: %s", n, conf[0], msg)

    def _on_retry(self, conf: tuple[str, str, str], data: Any, exc: Exception) -> None:
        self.stats["retries"] += 1
        log.warning(
            "InfluxDB write of %d lines to bucket %s will be retried: %s",
            self._nlines(data),
            conf[0],
            self._redact(f"{type(exc).__name__}: {exc}"),
        )

    def _new_write_api(self) -> WriteApi:
        return self.client.write_api(
            write_options=self._options,
            success_callback=self._on_success,
            error_callback=self._on_error,
            retry_callback=self._on_retry,
        )

    @property
    def client(self) -> InfluxDBClient:
        """The influxdb-client client."""
        if self._client is None:
            raise StoreError(f"{self!r} is closed; open the store again to use it")
        return self._client

    def _put(self, chunks: Iterable[list[str]], bucket: str | None = None) -> None:
        """Hand lines to the client as bodies of ``batch_size`` lines, waiting while
        ``max_pending_batches`` bodies are unanswered."""
        if self._write_api is None:
            raise StoreError(f"{self!r} is closed; open the store again to use it")
        if self.read_only:
            raise StoreError(f"{self!r} was opened read-only; it does not write")
        for lines in chunks:
            for i in range(0, len(lines), self.batch_size):
                self._wait_below(self.max_pending_batches)
                with self._answered:
                    self._pending += 1
                self._write_api.write(bucket=bucket or self.bucket, org=self.org,
                                      record="\n".join(lines[i:i + self.batch_size]), write_precision=_SECONDS)

    def _wait_below(self, limit: int) -> None:
        """Wait until fewer than ``limit`` bodies are unanswered; raise if none is answered
        for longer than a request and all its retries can take."""
        with self._answered:
            pending, since = self._pending, time.monotonic()
            while self._pending >= limit:
                self._answered.wait(timeout=1.0)
                if self._pending < pending:
                    pending, since = self._pending, time.monotonic()
                elif time.monotonic() - since > self._stall_s:
                    raise StoreError(
                        f"InfluxDB {self.url}: expected an answer to one of {self._pending} queued "
                        f"writes within {self._stall_s:g} s; found none"
                    )

    def _drained(self) -> None:
        """The write API was closed (drained): nothing of it is pending any more."""
        with self._answered:
            self._pending = 0
            self._answered.notify_all()

    def _raise_failures(self) -> None:
        """Raise for batches that failed since the last report (each failure is reported once).

        ``stats`` keeps the totals; a writer that spools and retries (the ingestor) can
        flush again after the server is back and gets a clean result.
        """
        failed = self.stats["failed_batches"] - self._reported[0]
        if failed:
            lines = self.stats["failed_lines"] - self._reported[1]
            first, self._first_error = self._first_error, None
            self._reported = (self.stats["failed_batches"], self.stats["failed_lines"])
            raise StoreError(
                f"InfluxDB {self.url} bucket {self.bucket}: {failed} batch(es) "
                f"({lines} lines) failed for good after retries; "
                f"first error: {first}"
            )

    # -- Store interface ---------------------------------------------------------
    def register_sites(self, sites: Iterable[SiteInfo]) -> None:
        """Upsert site registrations (``meta`` points at a fixed time); cached for tags."""
        items = list(sites)
        for s in items:
            self._sites[s.site] = s
        self._put([lineproto.meta_lines(sites=items)], self.meta_bucket)

    def register_meters(self, meters: Iterable[MeterInfo]) -> None:
        """Upsert meter metadata; a meter must be registered before its readings are written."""
        items = list(meters)
        for m in items:
            self._meters[(m.site, m.meter)] = m
        self._put([lineproto.meta_lines(meters=items)], self.meta_bucket)

    def write_readings(self, readings: pd.DataFrame) -> int:
        """Queue readings for writing in batches; return rows accepted.

        Rows are sent within ``flush_interval_ms``; :meth:`flush` or :meth:`close`
        waits for them and raises if any batch failed for good.
        """
        validate_readings(readings, where="write_readings")
        self._put(self._reading_chunks(readings))
        return len(readings)

    def _reading_chunks(self, readings: pd.DataFrame) -> Iterator[list[str]]:
        """The readings' lines by chunk; unknown sites or meters are looked up in the
        ``meta`` measurement once (registered by an earlier process?) before failing."""
        try:
            return lineproto.reading_line_chunks(readings, self._meters, self._sites)
        except StoreError as exc:
            if self._meta_loaded:
                raise
            try:
                self._load_meta()
            except StoreError:
                raise exc from None
            return lineproto.reading_line_chunks(readings, self._meters, self._sites)

    def write_events(self, events: pd.DataFrame) -> int:
        """Queue events for writing (measurement ``event``); return rows accepted."""
        self._put([lineproto.event_lines(events)])
        return len(events)

    def flush(self) -> None:
        """Send every queued line and wait; raise StoreError if a batch failed for good.

        influxdb-client's own ``flush()`` does nothing in released versions, so the
        write API is closed (which drains it) and a new one opened.
        """
        if self._write_api is not None:
            self._write_api.close()  # type: ignore[no-untyped-call]
            self._drained()
            self._write_api = self._new_write_api()
        self._raise_failures()

    def _query(self, query: str) -> pd.DataFrame:
        log.debug("Flux query: %s", query)
        try:
            res = self.client.query_api().query_data_frame(query, org=self.org)
        except Exception as exc:  # the client raises many kinds; report them as StoreError
            raise StoreError(
                f"InfluxDB query failed at {self.url}: {self._redact(str(exc))}"
            ) from exc
        if isinstance(res, list):
            res = pd.concat(res, ignore_index=True) if res else pd.DataFrame()
        return res

    def _load_meta(self) -> None:
        self._meta_loaded = True
        df = self._query(flux.meta_query(self.meta_bucket))
        for ent, doc in zip(df.get("entity", []), df.get("_value", []), strict=False):
            d = json.loads(doc)
            if ent == "site":
                self._sites.setdefault(d["site"], SiteInfo.from_dict(d))
            elif ent == "meter":
                self._meters.setdefault((d["site"], d["meter"]), MeterInfo.from_dict(d))

    def read(
        self,
        *,
        sites: Iterable[str] | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        readings: bool = True,
        fields: Iterable[str] | None = None,
    ) -> ReadingSet:
        """Read readings in UTC ``[start, end]`` (Flux), events and metadata as a ReadingSet.

        ``readings=False``: events and metadata only; ``fields``: only these quantities.
        """
        self.flush()
        wanted = None if sites is None else sorted(set(sites))
        frame = (
            tidy_from_flux(self._query(flux.readings_query(self.bucket, start=start, end=end, sites=wanted,
                                                           fields=fields)))
            if readings else empty_readings()
        )
        ev = self._query(flux.events_query(self.bucket, start=start, end=end, sites=wanted))
        if ev.empty:
            events = empty_events()
        else:
            ev = ev.rename(columns={"_time": "ts"})
            for c in EVENT_COLUMNS:
                if c not in ev.columns:
                    ev[c] = np.nan if c == "value" else ""
            events = ev.set_index(pd.DatetimeIndex(pd.to_datetime(ev["ts"], utc=True), name="ts"))
            events = events[list(EVENT_COLUMNS)].sort_index(kind="stable")
        self._load_meta()
        keep = None if wanted is None else set(wanted)
        return ReadingSet(
            readings=frame,
            events=events,
            meters=[m for k, m in sorted(self._meters.items()) if keep is None or m.site in keep],
            sites=[s for k, s in sorted(self._sites.items()) if keep is None or k in keep],
        )

    def bulk_load(self) -> contextlib.AbstractContextManager[None]:
        """A bulk load: nothing to defer here (the write API batches on its own)."""
        return contextlib.nullcontext()

    def stage1(self, *, sites: Iterable[str] | None = None) -> Stage1:
        """Stage 1 of every reading of ``sites``: only the register fields leave the server
        (Flux filter), and stage 1 runs on them as defined in :mod:`ems.accounting.energy`
        (its gap splitting, resets and tariff periods are not expressible in Flux)."""
        from ems.accounting.energy import stage1

        return stage1(self.read(sites=sites, fields=flux.REGISTERS))

    def count(self) -> int:
        """Number of readings (field values) held."""
        self.flush()
        df = self._query(flux.count_query(self.bucket))
        return int(df["_value"].sum()) if "_value" in df else 0

    def close(self) -> None:
        """Drain the write API, close the client; raise StoreError if a batch failed for good."""
        if self._write_api is not None:
            self._write_api.close()  # type: ignore[no-untyped-call]
            self._drained()
            self._write_api = None
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]
            self._client = None
            log.info(
                "InfluxDB store closed: %d batches, %d lines written, %d retries, %d failed batches",
                self.stats["batches"],
                self.stats["lines"],
                self.stats["retries"],
                self.stats["failed_batches"],
            )
            self._raise_failures()

    def __enter__(self) -> InfluxStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
