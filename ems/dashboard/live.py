"""``ems live``: broker, publisher, ingestor, store and dashboard in one process.

Start order: the broker (embedded amqtt unless ``--broker`` is given), the store
(a new embedded store unless ``--store`` is given), the ingestor (subscribed
before anything is published), the dashboard (reading its own read-only handle
of the store), then the publisher replaying the scenario at ``--speed`` in a
thread.

Stop order on Ctrl-C (SIGINT) or SIGTERM, so that nothing published is lost:

1. the publisher stops before its next message and waits for the broker's
   acknowledgements of what it sent (its ledger counts only acknowledged readings);
2. the ingestor receives, writes and acknowledges everything the broker
   acknowledged to the publisher (waited for by count), then flushes and stops;
3. the dashboard stops, then the broker, then the stores are closed;
4. the ledger is reconciled with the store: published, stored, lost.

A replay at speed ``X`` sleeps ``interval / X`` between steps (0.25 s for 15-min
readings at the default 3600), so the publisher notices Ctrl-C within one step.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ems.errors import EmsError
from ems.readings import ReadingSet

__all__ = ["LiveOptions", "run_live", "serve_dashboard"]

log = logging.getLogger(__name__)


@dataclass
class LiveOptions:
    """What ``ems live`` runs (see the command's help)."""

    scenario: str
    speed: float = 3600.0
    host: str = "127.0.0.1"
    port: int = 8050
    broker_url: str | None = None
    store_url: str | None = None
    ledger: str | None = None
    exit_when_done: bool = False
    drain_timeout_s: float = 60.0
    poll_s: float = 1.0
    guard: dict[str, Any] = field(default_factory=dict)
    """The dashboard server's limits: ``allow_hosts``, ``idle_timeout_s``, ``max_connections``."""
    broker: dict[str, Any] = field(default_factory=dict)
    """Broker options of ``ems stream``: ``username``, ``tls_ca``, ``tls_cert``, ``tls_key``, ``mqtt_version``."""


class _Stopped(Exception):
    """Raised inside the publisher's thread to end a replay early."""


def _publisher(cfg: Any, rs: ReadingSet, opts: Any, stop: threading.Event) -> Any:
    """A :class:`~ems.telemetry.publisher.Publisher` that ends cleanly when ``stop`` is set.

    Before each message it checks ``stop``; when set it waits for the broker's
    acknowledgements of everything in flight (so the ledger is exact) and ends.
    """
    from ems.telemetry.publisher import Publisher

    class LivePublisher(Publisher):
        def _send(self, s: Any, i: int, j: int) -> None:
            if stop.is_set():
                for gw in self._gw.values():
                    gw.finish(self.opts.ack_timeout_s)
                raise _Stopped
            super()._send(s, i, j)

    return LivePublisher(cfg, rs, opts)


def _copy(d: dict[str, str]) -> dict[str, str]:
    """Copy a dict another thread may be changing (retry on a resize)."""
    for _ in range(5):
        try:
            return dict(d)
        except RuntimeError:
            continue
    return {}


def _default_store() -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return str(Path.cwd() / f"ems-live-{stamp}")


def _is_embedded(url: str) -> bool:
    return "://" not in url or url.lower().startswith("duckdb://")


def _discard_on_failure(store: Any, ledger_path: Path) -> Callable[..., bool]:
    """An exit callback removing a store this run created if the run fails before storing.

    A failed start (a refused broker, a bad scenario found late) must not leave an
    empty ``ems-live-<time>/`` folder with its lock file, nor a ledger, behind. A
    store that holds readings is kept: nothing accepted is lost.
    """
    new_ledger = not ledger_path.exists()

    def discard(et: type[BaseException] | None, ev: BaseException | None, tb: Any) -> bool:
        if et is None or store.count() > 0:
            return False
        shutil.rmtree(store.root, ignore_errors=True)
        if new_ledger:
            ledger_path.unlink(missing_ok=True)
        log.info("removed %s: the run failed before storing anything", store.root)
        return False

    return discard


def _ledger_path(opts: LiveOptions, store_url: str, tmp: str) -> Path:
    if opts.ledger:
        return Path(opts.ledger)
    if _is_embedded(store_url):
        base = Path(store_url.split("://", 1)[-1])
        return base.with_name(base.name + ".ledger.json")
    return Path(tmp) / "ledger.json"


def _broker(stack: contextlib.ExitStack, url: str | None, options: dict[str, Any], echo: Callable[[str], None]) -> Any:
    """The broker's config (``options``: :attr:`LiveOptions.broker`): the given URL, or an embedded broker started here."""
    from ems.telemetry.broker import EmbeddedBroker
    from ems.telemetry.commands import _url_config
    from ems.telemetry.connection import negotiate

    if url is None:
        b = EmbeddedBroker().start()
        stack.callback(b.stop)
        url = b.url
        echo(f"embedded broker at {url}")
    cfg = negotiate(_url_config(url, options))
    echo(f"broker {cfg.describe()}")
    return cfg


def _ingestor(stack: contextlib.ExitStack, cfg: Any, store: Any, rs: ReadingSet, tmp: str) -> tuple[Any, Callable[[], None]]:
    """A started ingestor writing into ``store``, and a function that stops it once."""
    from ems.telemetry.ingestor import IngestOptions, Ingestor

    ing = Ingestor(cfg, store, IngestOptions(client_id=f"ems-live-{os.getpid()}", meters=list(rs.meters),
                                             sites=list(rs.sites), deadletter=Path(tmp) / "deadletter.jsonl"))
    ing.start()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            ing.stop()

    stack.callback(stop)
    return ing, stop


def serve_dashboard(stack: contextlib.ExitStack, store_url: str, host: str, port: int, *, poll_s: float = 1.0,
                    status: Callable[[], Any] | None = None, **guard: Any) -> Any:
    """Start the dashboard of a store on its own read-only handle; return the server.

    Everything started is stopped (and the handle closed) when ``stack`` closes. ``guard``:
    ``allow_hosts``, ``idle_timeout_s``, ``max_connections`` (:func:`ems.dashboard.server.make_server`).
    """
    from ems.dashboard.commands import open_for_reading
    from ems.dashboard.monitor import Monitor
    from ems.dashboard.server import make_server

    reader = open_for_reading(store_url)
    mon = Monitor(reader, poll_s=poll_s, status=status)

    def close_reader() -> None:
        with mon.lock:
            reader.close()

    stack.callback(close_reader)
    server = make_server(mon, host, port, **guard)
    mon.start()
    stack.callback(mon.stop)
    server.start()
    stack.callback(server.stop)
    return server


def _replay(pub: Any, opts: LiveOptions, stop: threading.Event, errors: list[BaseException],
            echo: Callable[[str], None]) -> threading.Thread:
    """The publisher's replay in a thread; errors are kept for the main thread."""

    def publish() -> None:
        try:
            stats = pub.run()
            echo(f"replay finished: {stats.readings:,} readings published")
        except _Stopped:
            pass
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            if opts.exit_when_done or errors:
                stop.set()

    th = threading.Thread(target=publish, name="ems-live-publisher", daemon=True)
    th.start()
    return th


def _drain(ing: Any, published: int, timeout_s: float) -> None:
    """Wait until the ingestor holds everything the broker acknowledged to the publisher (bounded:
    give up after ``timeout_s``, or 5 s without progress, e.g. rejections)."""
    deadline = time.monotonic() + timeout_s
    last, last_change = -1, time.monotonic()
    while ing.counters["written"] < published and time.monotonic() < deadline:
        if ing.counters["written"] != last:
            last, last_change = ing.counters["written"], time.monotonic()
        elif time.monotonic() - last_change > 5.0:
            log.warning("the ingestor stopped making progress before holding all published readings")
            break
        time.sleep(0.05)


def _load(source: str, echo: Callable[[str], None]) -> ReadingSet:
    import ems

    t_load = time.monotonic()
    rs = ems.open_readings(source)
    echo(f"loaded {rs.n_readings():,} readings ({rs.n_values():,} values) of {len(rs.sites)} sites "
         f"in {time.monotonic() - t_load:.1f} s")
    return rs


def run_live(
    opts: LiveOptions, echo: Callable[[str], None] = log.info, stop: threading.Event | None = None
) -> str:
    """Run everything until SIGINT/SIGTERM (or ``stop``); return a one-line summary.

    Raises
    ------
    EmsError
        Bad input (scenario, store URL, busy port) or a failure of a part.
    """
    import ems
    from ems.dashboard.commands import wait_for_signal
    from ems.telemetry.broker import check_port_free
    from ems.telemetry.ledger import reconcile
    from ems.telemetry.publisher import PublishOptions

    stop = stop or threading.Event()
    check_port_free(opts.host, opts.port, "dashboard", "choose another --port (0 picks a free one)")
    rs = _load(opts.scenario, echo)
    store_url = opts.store_url or _default_store()
    errors: list[BaseException] = []
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ems-live-"))
        ledger_path = _ledger_path(opts, store_url, tmp)
        new_store = _is_embedded(store_url) and not Path(store_url.split("://", 1)[-1]).exists()
        store = stack.enter_context(contextlib.closing(ems.open_store(store_url)))  # closed last, after the broker
        if new_store:
            stack.push(_discard_on_failure(store, ledger_path))
        cfg = _broker(stack, opts.broker_url, opts.broker, echo)
        ing, stop_ingestor = _ingestor(stack, cfg, store, rs, tmp)
        time.sleep(0.5)  # let the SUBSCRIBE reach the broker before the first PUBLISH
        server = serve_dashboard(stack, store_url, opts.host, opts.port, poll_s=opts.poll_s,
                                 status=lambda: _copy(ing.status), **opts.guard)
        echo(f"dashboard at {server.url}/  store {store_url}  (Ctrl-C to stop)")
        pub = _publisher(cfg, rs, PublishOptions(speed=opts.speed, ledger=ledger_path,
                                                 client_id_prefix=f"ems-live-{os.getpid()}"), stop)
        before = pub.ledger.total()
        th = _replay(pub, opts, stop, errors, echo)
        wait_for_signal(stop)
        stop.set()
        th.join(timeout=max(10.0, max((m.interval_s for m in rs.meters), default=900) / opts.speed + 5.0))
        if th.is_alive():
            log.warning("the publisher did not stop in time; shutting down without it")
        published = pub.ledger.total() - before
        _drain(ing, published, opts.drain_timeout_s)
        stop_ingestor()
        stats = ing.stats()
        pub.ledger.save()
        rows = reconcile(pub.ledger, store) if not errors else []
        summary = (
            f"published {published:,} readings ({pub.ledger.total():,} in the ledger {ledger_path}), "
            f"stored {sum(r.stored for r in rows):,}, lost {sum(r.lost for r in rows):,}; ingestor: "
            f"{stats['written']:,} written, {stats['rejected']} rejected"
        )
    if errors:
        exc = errors[0]
        if isinstance(exc, EmsError):
            raise exc
        raise EmsError(f"ems live: the publisher failed: {exc!r}") from exc
    return summary
