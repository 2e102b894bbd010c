"""Time-series stores of readings: one interface, two backends, opened by URL.

* a plain path, ``duckdb:///abs/path`` or ``duckdb://rel/path``: the embedded
  store (:class:`ems.store.duckdb_store.DuckDBStore`), a directory of Parquet
  segments queried with DuckDB. Default: ``./ems-data``.
* ``influx+http://host:8086?org=acme&bucket=ems`` (or ``influx+https://``), or
  ``http(s)://host:8086`` with ``org=`` and ``bucket=`` options: InfluxDB 2
  (:class:`ems.store.influx.InfluxStore`, extra ``ems[influx]``). The token comes
  from ``EMS_INFLUX_TOKEN`` or the file named by ``EMS_INFLUX_TOKEN_FILE``, never
  from the URL.

Backends are imported on first use.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ems.errors import MissingExtraError, StoreError
from ems.store.base import Store

__all__ = ["DEFAULT_URL", "Store", "open_store"]

DEFAULT_URL = "./ems-data"
"""Where the embedded store lives unless told otherwise (relative to the working dir)."""


def open_store(url: str | os.PathLike[str] | None = None, **options: Any) -> Store:
    """Open a store by URL or path.

    Parameters
    ----------
    url : str or path, optional
        See the module docs; default :data:`DEFAULT_URL`.
    **options
        Passed to the backend: for the embedded store ``read_only``,
        ``compression``, ``threads``; for InfluxDB ``org``, ``bucket``, ``token``,
        ``batch_size``, ``flush_interval_ms``, ``max_retries``, ...

    Returns
    -------
    Store
        An open store; use it as a context manager or call ``close()``.

    Raises
    ------
    StoreError
        The URL's scheme is not known or a required part is missing.
    MissingExtraError
        InfluxDB was asked for but ``influxdb-client`` is not installed.
    """
    text = os.fspath(url) if url is not None else DEFAULT_URL
    if "://" not in text:
        return _embedded(text, options)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "duckdb":
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise StoreError(f"store URL {text!r}: expected duckdb:///path/to/dir; found no path")
        return _embedded(path, options)
    if parts.username is not None or parts.password is not None:
        raise StoreError(
            f"store URL {_redact(text)!r}: credentials in the URL are refused (they would show in "
            "process lists and logs); set EMS_INFLUX_TOKEN or EMS_INFLUX_TOKEN_FILE"
        )
    if scheme in {"influx+http", "influx+https", "http", "https"}:
        return _influx(text, scheme, options)
    raise StoreError(
        f"store URL {_redact(text)!r}: expected a path, duckdb:///path, "
        f"influx+http(s)://host:port?org=..&bucket=.. or http(s)://...; found scheme {scheme!r}"
    )


def _influx(text: str, scheme: str, options: dict[str, Any]) -> Store:
    parts = urlsplit(text)
    query = dict(parse_qsl(parts.query))
    for key in ("org", "bucket"):
        if key in query:
            options.setdefault(key, query.pop(key))
    missing = [k for k in ("org", "bucket") if not options.get(k)]
    if missing:
        raise StoreError(
            f"store URL {_redact(text)!r}: expected org and bucket (as ?org=..&bucket=.. "
            f"or options); missing {missing}"
        )
    if "token" in query:
        raise StoreError(
            "store URL: a token in the URL is refused; set EMS_INFLUX_TOKEN or "
            "EMS_INFLUX_TOKEN_FILE"
        )
    http = scheme.removeprefix("influx+")
    base = urlunsplit((http, parts.netloc, parts.path, "", ""))
    try:
        from ems.store.influx import InfluxStore
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("influxdb_client"):
            raise MissingExtraError("influxdb-client", "influx") from exc
        raise
    return InfluxStore(base, **options)


def _embedded(path: str, options: dict[str, Any]) -> Store:
    from ems.store.duckdb_store import DuckDBStore

    return DuckDBStore(path, **options)


def _redact(url: str) -> str:
    """Drop user info and query from a URL for messages."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))
