"""``ems dashboard`` and ``ems live``."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any

import click

from ems.telemetry.commands import _broker_options

__all__ = ["dashboard", "live", "open_for_reading"]

log = logging.getLogger(__name__)


def open_for_reading(url: str) -> Any:
    """Open a store for the dashboard: read-only where the backend supports it."""
    from ems.store import open_store

    return open_store(url, read_only=True)


def wait_for_signal(stop: threading.Event | None = None) -> None:
    """Block until SIGINT or SIGTERM (or ``stop`` is set); restore the handlers after."""
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set():
            stop.wait(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _serving_options(f: Any) -> Any:
    """The dashboard server's options, the same in ``ems dashboard`` and ``ems live``."""
    f = click.option("--max-connections", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Connections served at once; more are answered 503.")(f)
    f = click.option("--idle-timeout", "idle_timeout_s", type=click.FloatRange(min=0.1), default=10.0,
                     show_default=True, help="[s] close a connection that sends nothing for this long.")(f)
    f = click.option("--allow-host", "allow_hosts", multiple=True,
                     help="Also answer to this host name (e.g. a reverse proxy's); others get 421. Repeatable.")(f)
    f = click.option("--poll", "poll_s", type=click.FloatRange(min=0.0, min_open=True), default=1.0,
                     show_default=True, help="[s] between store polls.")(f)
    return f


@click.command()
@click.option(
    "--store", "store_url", required=True, help="Store path or URL (see ems.store.open_store)."
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (loopback by default).",
)
@click.option("--port", type=int, default=8050, show_default=True, help="Port; 0 picks a free one.")
@_serving_options
@click.option(
    "--broker",
    "broker_url",
    default=None,
    help="mqtt://host:port to follow the sites' online/offline status (default: fresh/stale from the data).",
)
@click.option(
    "--username",
    default=None,
    help="Broker user; the password comes from EMS_MQTT_PASSWORD or EMS_MQTT_PASSWORD_FILE.",
)
def dashboard(
    store_url: str,
    host: str,
    port: int,
    poll_s: float,
    allow_hosts: tuple[str, ...],
    idle_timeout_s: float,
    max_connections: int,
    broker_url: str | None,
    username: str | None,
) -> None:
    """Serve the built-in dashboard of a store (read-only) until interrupted."""
    from ems.dashboard.live import serve_dashboard
    from ems.dashboard.status import StatusWatcher

    with contextlib.ExitStack() as stack:
        watcher = None
        if broker_url is not None:
            watcher = StatusWatcher(broker_url, username).start()
            stack.callback(watcher.stop)
        server = serve_dashboard(stack, store_url, host, port, poll_s=poll_s, status=watcher, allow_hosts=allow_hosts,
                                 idle_timeout_s=idle_timeout_s, max_connections=max_connections)
        click.echo(f"dashboard at {server.url}/ (Ctrl-C to stop)", err=True)
        wait_for_signal()
    click.echo("dashboard stopped", err=True)


@click.command()
@click.argument("scenario")
@click.option(
    "--speed",
    type=float,
    default=3600.0,
    show_default=True,
    help="Plant seconds per real second (3600: an hour per second).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Dashboard address.")
@click.option(
    "--port", type=int, default=8050, show_default=True, help="Dashboard port; 0 picks a free one."
)
@click.option(
    "--broker",
    "broker_url",
    default=None,
    help="mqtt://host:port of an external broker; default: start the embedded one.",
)
@click.option(
    "--store",
    "store_url",
    default=None,
    help="Store path or URL (e.g. influx+http://host:8086?org=..&bucket=..); default: a new "
    "embedded store in ./ems-live-<time>.",
)
@click.option(
    "--ledger",
    type=click.Path(dir_okay=False),
    default=None,
    help="Publisher ledger (default: ledger.json in the embedded store's parent folder).",
)
@click.option(
    "--exit-when-done", is_flag=True, help="Stop once everything is published and stored."
)
@_serving_options
@_broker_options
def live(
    scenario: str,
    speed: float,
    host: str,
    port: int,
    broker_url: str | None,
    store_url: str | None,
    ledger: str | None,
    exit_when_done: bool,
    poll_s: float,
    allow_hosts: tuple[str, ...],
    idle_timeout_s: float,
    max_connections: int,
    **broker: Any,
) -> None:
    """Simulate SCENARIO and watch it live: broker, stream, ingest, store and dashboard in one.

    SCENARIO is a scenario file or a readings folder (``ems run --out``). Ctrl-C
    stops the publisher, lets the ingestor write and acknowledge what it holds,
    stops the broker and closes the store: nothing published is lost. The dashboard
    options are ``ems dashboard``'s; the broker options (--username, TLS, --mqtt-version)
    are ``ems stream``'s and apply to the stream and the ingestor alike (with an ACL, the
    user needs both roles' rights).
    """
    from ems.dashboard.live import LiveOptions, run_live

    if speed <= 0:
        raise click.UsageError(f"--speed must be > 0, found {speed}")
    opts = LiveOptions(
        scenario=scenario,
        speed=speed,
        host=host,
        port=port,
        broker_url=broker_url,
        store_url=store_url,
        ledger=ledger,
        exit_when_done=exit_when_done,
        poll_s=poll_s,
        guard={"allow_hosts": allow_hosts, "idle_timeout_s": idle_timeout_s, "max_connections": max_connections},
        broker=broker,
    )
    summary = run_live(opts, echo=lambda s: click.echo(s, err=True))
    click.echo(summary)
