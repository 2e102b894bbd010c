"""``ems stream``, ``ems ingest``, ``ems broker`` and ``ems reconcile``."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ems.errors import ConfigError

__all__ = ["broker", "ingest", "reconcile", "stream"]

log = logging.getLogger(__name__)


def _broker_options(f: Any) -> Any:
    f = click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Client key (PEM).")(f)
    f = click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Client certificate (PEM).")(f)
    f = click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="CA bundle; implies TLS.")(f)
    f = click.option(
        "--username", default=None, help="Broker user; the password comes from EMS_MQTT_PASSWORD or EMS_MQTT_PASSWORD_FILE."
    )(f)
    f = click.option(
        "--mqtt-version", type=click.Choice(["auto", "5", "3.1.1"]), default=None,
        help="MQTT protocol (default auto: 5, or 3.1.1 if the broker refuses 5; the URL may say ?protocol=...).",
    )(f)
    return f


def _encoding_options(f: Any) -> Any:
    f = click.option("--sparkplug-group", default="ems", show_default=True, help="Sparkplug group id.")(f)
    f = click.option(
        "--encoding", type=click.Choice(["json", "sparkplug"]), default="json", show_default=True,
        help="json: the ems/v1 contract; sparkplug: Sparkplug B (sites are edge nodes, meters devices; ems[plant]).",
    )(f)
    return f


def _check_host_id(host_id: str, encoding: str, option: str) -> None:
    """A Sparkplug host id option: only with ``--encoding sparkplug``, and a valid id."""
    from ems.errors import PayloadError
    from ems.telemetry.sparkplug import check_host_id

    if encoding != "sparkplug":
        raise click.UsageError(f"{option} needs --encoding sparkplug")
    try:
        check_host_id(host_id)
    except PayloadError as exc:
        raise click.UsageError(f"{option}: {str(exc).split(': ', 1)[-1]}") from None


def _config(url: str, kw: dict[str, Any]) -> Any:
    """The broker config of the options, its protocol negotiated; say which protocol is used."""
    from ems.telemetry.connection import AUTO, negotiate

    cfg = _url_config(url, kw)
    used = negotiate(cfg)
    if cfg.protocol == AUTO:
        why = ("" if used.v5 else
               ": it refused MQTT 5 (sessions as clean_session=False, no shared subscriptions)")
        click.echo(f"broker {used.describe()}{why}", err=True)
    return used


def _url_config(url: str, kw: dict[str, Any]) -> Any:
    from ems.telemetry.connection import BrokerConfig, password_from_env

    return BrokerConfig.from_url(
        url,
        username=kw.get("username"),
        password=password_from_env() if kw.get("username") else None,
        ca_file=kw.get("tls_ca"),
        cert_file=kw.get("tls_cert"),
        key_file=kw.get("tls_key"),
        protocol=kw.get("mqtt_version"),
    )


@click.command()
@click.argument("scenario")
@click.option("--broker", "broker_url", default=None, help="mqtt://host:port; default: start the embedded broker.")
@click.option("--qos", type=click.Choice(["0", "1"]), default="1", show_default=True)
@click.option("--speed", type=float, default=None, help="Plant seconds per real second (3600: an hour per second).")
@click.option("--as-fast-as-possible", "fast", is_flag=True, help="As fast as the broker acknowledges (default).")
@click.option("--batch", type=int, default=100, show_default=True, help="Readings per message when as fast as possible.")
@click.option("--window", type=int, default=1000, show_default=True, help="Unacknowledged messages per connection.")
@click.option("--ledger", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Ledger and checkpoint file (resume after it; reconcile with it).")
@click.option("--client-id-prefix", default="ems-pub", show_default=True)
@click.option("--linger", "linger_s", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="[s] after the stream, answer ingestors' backfill requests until none came for this long; 0: exit.")
@click.option("--sparkplug-primary-host", default=None,
              help="Sparkplug: births wait for this host application's STATE online; its offline ends the session.")
@_encoding_options
@_broker_options
def stream(scenario: str, broker_url: str | None, qos: str, speed: float | None, fast: bool, batch: int,
           window: int, ledger: Path | None, client_id_prefix: str, linger_s: float, encoding: str,
           sparkplug_group: str, sparkplug_primary_host: str | None, **kw: Any) -> None:
    """Publish SCENARIO's readings (a scenario file, or a readings folder) over MQTT."""
    from ems.formatting import plural
    from ems.telemetry.broker import EmbeddedBroker
    from ems.telemetry.publisher import Publisher, PublishOptions

    if fast and speed is not None:
        raise click.UsageError("give --speed or --as-fast-as-possible, not both")
    if speed is not None and speed <= 0:
        raise click.UsageError(f"--speed must be > 0, found {speed}")
    if sparkplug_primary_host is not None:
        _check_host_id(sparkplug_primary_host, encoding, "--sparkplug-primary-host")
    import ems

    rs = ems.open_readings(scenario)
    opts = PublishOptions(qos=int(qos), speed=speed, batch=batch, window=window, ledger=ledger,
                          client_id_prefix=client_id_prefix, linger_s=linger_s if encoding == "json" else 0.0,
                          encoding=encoding, sparkplug_group=sparkplug_group,
                          sparkplug_primary_host=sparkplug_primary_host)
    with contextlib.ExitStack() as stack:
        if broker_url is None:
            b = stack.enter_context(EmbeddedBroker())
            broker_url = b.url
            click.echo(f"started the embedded broker at {b.url}", err=True)
        cfg = _config(broker_url, kw)
        pub = Publisher(cfg, rs, opts)

        def on_signal(signum: int, frame: Any) -> None:  # stop after the current message; ledger saved
            pub.stop()

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                stack.callback(signal.signal, s, signal.signal(s, on_signal))
        stats = pub.run()
    click.echo(
        f"published {plural(stats.readings, 'reading')} in {plural(stats.messages, 'message')} "
        f"({stats.skipped:,} already acknowledged before) in {stats.elapsed_s:.1f} s: {stats.rate:,.0f} readings/s"
        + (f"; {stats.backfilled} published again for {stats.backfill_requests} backfill requests"
           if stats.backfill_requests else "")
    )


@click.command()
@click.option("--broker", "broker_url", default="mqtt://127.0.0.1:1883", show_default=True)
@click.option("--store", "store_url", required=True, help="Store path or URL (see ems.store.open_store).")
@click.option("--group", default=None, help="Shared subscription group: ingestors of one group split the load (MQTT 5).")
@click.option("--client-id", default="ems-ingest", show_default=True, help="Fixed: the broker keeps the session under it.")
@click.option("--deadletter", type=click.Path(dir_okay=False, path_type=Path), default=Path("deadletter.jsonl"),
              show_default=True, help="JSONL file of rejected messages.")
@click.option("--stats", "stats_every", type=float, is_flag=False, flag_value=5.0, default=None,
              help="Print a line of counters to stderr every N seconds (default 5).")
@click.option("--json", "as_json", is_flag=True,
              help="Counters as JSON (every field of Ingestor.stats) instead of readable lines.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics.")
@click.option("--batch-readings", type=int, default=20_000, show_default=True)
@click.option("--batch-seconds", type=float, default=0.5, show_default=True)
@click.option("--session-expiry", type=int, default=3600, show_default=True, help="[s] broker keeps the session offline.")
@click.option("--max-future", type=float, default=300.0, show_default=True, help="[s] tolerated source clock skew.")
@click.option("--unknown-grace", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="[s] a reading of a meter without metadata waits this long for it, then is dead-lettered.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds (default: until SIGTERM/SIGINT).")
@click.option("--meta", "meta_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder with meters.json and sites.json (ems run --out) known before any metadata message.")
@click.option("--spool", "spool_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Disk spool: batches the store cannot take are kept here (fsynced, acknowledged) and replayed.")
@click.option("--spool-limit-mb", type=float, default=1024.0, show_default=True,
              help="[MiB] most disk the spool may use; full: nothing more is acknowledged.")
@click.option("--sparkplug-host-id", default=None,
              help="Sparkplug: the host id whose STATE this ingestor publishes (default: the client id).")
@_encoding_options
@_broker_options
def ingest(broker_url: str, store_url: str, group: str | None, client_id: str, deadletter: Path,
           stats_every: float | None, as_json: bool, metrics_port: int | None, batch_readings: int,
           batch_seconds: float, session_expiry: int, max_future: float, unknown_grace: float, duration: float | None,
           meta_dir: Path | None, spool_dir: Path | None, spool_limit_mb: float, sparkplug_host_id: str | None,
           encoding: str, sparkplug_group: str, **kw: Any) -> None:
    """Subscribe to ems/v1, check every message and write readings to a store."""
    import json

    from ems.readings import MeterInfo, SiteInfo
    from ems.store import open_store
    from ems.telemetry.ingestor import IngestOptions, Ingestor

    if sparkplug_host_id is not None:
        _check_host_id(sparkplug_host_id, encoding, "--sparkplug-host-id")
    cfg = _config(broker_url, kw)
    if group and not cfg.v5:
        log.warning("shared subscriptions are an MQTT 5 feature; the broker may not support them over 3.1.1")
    store = open_store(store_url)
    meters: list[MeterInfo] = []
    sites: list[SiteInfo] = []
    if meta_dir is not None:
        from ems.yamldoc import read_config_text

        try:
            if (meta_dir / "meters.json").exists():
                meters = [MeterInfo.from_dict(d) for d in json.loads(read_config_text(meta_dir / "meters.json"))]
            if (meta_dir / "sites.json").exists():
                sites = [SiteInfo.from_dict(d) for d in json.loads(read_config_text(meta_dir / "sites.json"))]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{meta_dir}: expected meters.json/sites.json as written by ems run --out; {exc}") from None
    opts = IngestOptions(group=group, client_id=client_id, deadletter=deadletter, batch_readings=batch_readings,
                         batch_s=batch_seconds, session_expiry_s=session_expiry, max_future_s=max_future,
                         unknown_grace_s=unknown_grace,
                         meters=meters, sites=sites, spool=spool_dir,
                         spool_limit_bytes=int(spool_limit_mb * (1 << 20)), encoding=encoding,
                         sparkplug_group=sparkplug_group, sparkplug_host_id=sparkplug_host_id)
    ing = Ingestor(cfg, store, opts)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ing.start()
        if metrics_port is not None:
            port = ing.serve_metrics(metrics_port)
            click.echo(f"metrics at http://127.0.0.1:{port}/metrics", err=True)
        t0 = time.monotonic()
        _print_stats_until(stop, ing, duration, stats_every, as_json)
    finally:
        ing.stop()
        store.close()
        for s, h in old.items():
            signal.signal(s, h)
    final = ing.stats()
    click.echo(json.dumps(final) if as_json else "ingest stopped: " + stats_line(final, None, time.monotonic() - t0))


def _print_stats_until(stop: threading.Event, ing: Any, duration: float | None, every: float | None,
                       as_json: bool) -> None:
    """Wait for ``stop`` (or ``duration`` [s]); print the counters to stderr every ``every`` [s]."""
    import json

    t0 = time.monotonic()
    next_stats = t0 + (every or 0)
    prev, t_prev = ing.stats(), t0
    while not stop.is_set():
        if duration is not None and time.monotonic() - t0 >= duration:
            break
        stop.wait(0.2)
        if every and time.monotonic() >= next_stats:
            now, t_now = ing.stats(), time.monotonic()
            click.echo(json.dumps(now) if as_json else stats_line(now, prev, t_now - t_prev), err=True)
            prev, t_prev = now, t_now
            next_stats += every


def rate_of(now: dict[str, Any], prev: dict[str, Any] | None, key: str, dt_s: float) -> float:
    """Rate of a counter over the last ``dt_s`` [s] (since ``prev``; the whole run without it) [1/s]."""
    got = now[key] - (prev[key] if prev else 0)
    return float(got / dt_s) if dt_s > 0 else 0.0


def counters_line(rate: float, done: tuple[int, str], deadlettered: int, latency: tuple[str, float, str, float] | None,
                  before: Sequence[str] = (), after: Sequence[str] = (), *, dead_unit: str = "message") -> str:
    """One line of a running command's counters for people (``ems ingest --stats``, ``ems gateway --stats``).

    Parameters
    ----------
    rate : float [readings/s]
    done : (int, str)
        Readings that reached their end and the word for it (``stored``, ``acknowledged``).
    deadlettered : int
        Dead letters (each one ``dead_unit``).
    latency : (str, float, str, float), optional
        What is timed and two percentiles: ``("receipt to write", p50, "p95", p95)`` [s].
    before, after : sequence of str
        Further parts, already worded, before and after the latency (empty ones left out).
    """
    from ems.formatting import number, plural

    parts = [f"{number(rate, 0)} readings/s", f"{plural(done[0], 'reading')} {done[1]}",
             f"{plural(deadlettered, dead_unit)} dead-lettered"]
    parts += [e for e in before if e]
    if latency is not None:
        what, p50, hi_name, hi = latency
        parts.append(f"{what} p50 {number(p50, 2)} s, {hi_name} {number(hi, 2)} s")
    parts += [e for e in after if e]
    return "; ".join(parts)


def stats_line(now: dict[str, Any], prev: dict[str, Any] | None, dt_s: float) -> str:
    """The ingestor's counters as one line for people (:func:`counters_line`).

    Rate over the last ``dt_s`` [s] (since ``prev``; the whole run without it), readings
    stored and dead-lettered, and receipt-to-write latency (p50/p95: from a message's
    arrival to its readings being durable in the store). The age of the data (``lag_s``)
    is left to ``--json``: on replayed history it is years, not a delay.
    """
    from ems.formatting import number, plural

    before = [plural(int(now["duplicates"]), "duplicate") if now.get("duplicates") else "",
              f"{number(now['spooled'], 0)} spooled" if now.get("spooled") else ""]
    p50, p95 = now.get("write_latency_p50_s"), now.get("write_latency_p95_s")
    latency = ("receipt to write", p50, "p95", p95) if p50 is not None and p95 is not None and now["written"] else None
    return counters_line(rate_of(now, prev, "readings_received", dt_s), (int(now["written"]), "stored"),
                         int(now["rejected"]), latency, before, [f"queue {number(now.get('queue_depth', 0), 0)}"])


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=1883, show_default=True)
def broker(host: str, port: int) -> None:
    """Run the embedded MQTT broker (amqtt, MQTT 3.1.1) until interrupted."""
    from ems.telemetry.broker import check_port_free, run_broker

    check_port_free(host, port, "embedded broker")
    click.echo(f"embedded broker on mqtt://{host}:{port} (MQTT 3.1.1; Ctrl-C to stop)", err=True)
    run_broker(host, port)


@click.command()
@click.option("--ledger", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--store", "store_url", required=True, help="Store path or URL.")
def reconcile(ledger: Path, store_url: str) -> None:
    """Compare what a publisher's ledger says it sent with what a store holds, per meter.

    Exits 1 if any reading was lost or doubled.
    """
    from ems.store import open_store
    from ems.telemetry.ledger import Ledger
    from ems.telemetry.ledger import reconcile as _reconcile

    store = open_store(store_url, read_only=True)
    try:
        rows = _reconcile(Ledger(ledger), store)
    finally:
        store.close()
    click.echo(f"{'meter':<40} {'published':>10} {'stored':>10} {'lost':>8} {'doubled':>8} {'extra':>8}")
    for r in rows:
        flag = "" if r.ok else "  <--"
        click.echo(f"{r.site + '/' + r.meter:<40} {r.published:>10,} {r.stored:>10,} {r.lost:>8,} {r.doubled:>8,} "
                   f"{r.extra:>8,}{flag}")
    lost = sum(r.lost for r in rows)
    doubled = sum(r.doubled for r in rows)
    extra = sum(r.extra for r in rows)
    click.echo(f"total readings: published {sum(r.published for r in rows):,}, stored {sum(r.stored for r in rows):,}, "
               f"lost {lost:,}, doubled {doubled:,}, extra {extra:,}")
    if lost or doubled:
        raise SystemExit(1)
