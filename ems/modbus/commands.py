"""``ems modbus`` (simulated meters as Modbus TCP devices) and ``ems gateway`` (poll them, publish)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import click
import yaml

from ems.telemetry.commands import _broker_options, _config, counters_line, rate_of

__all__ = ["gateway", "gateway_file", "gateway_stats_line", "modbus"]

log = logging.getLogger(__name__)


def _quiet_pymodbus() -> None:
    """pymodbus logs every frame at debug level; keep it to warnings unless ems runs with -vv."""
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("pymodbus").setLevel(logging.WARNING)


def gateway_file(server: Any, host: str, encoding: str = "float32") -> dict[str, Any]:
    """A gateway file (as a dict) that polls every meter ``server`` serves.

    Polls each meter once per interval of plant time at the server's speed (the gateway's
    schedule follows each meter's changes: :mod:`ems.modbus.schedule`), at most once a second
    and at least 20 times a second.
    """
    devices = []
    for m in server.meters:
        info = m.series.info
        poll_s = min(1.0, max(0.05, info.interval_s / server.speed))
        devices.append({"site": info.site, "meter": info.meter, "kind": info.kind, "carrier": info.carrier,
                        "host": host, "port": m.port, "unit": m.unit, "model": f"ems-em3-{encoding}",
                        "interval_s": info.interval_s, "poll_s": round(poll_s, 3),
                        "quantities": list(info.quantities), "attrs": dict(info.attrs)})
    sites = [s.to_dict() for s in server.sites]
    return {"sites": sites, "devices": devices}


@click.command()
@click.argument("scenario")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5020, show_default=True,
              help="First port: units 1-247 on it, further meters on the next ports.")
@click.option("--speed", type=float, default=1.0, show_default=True, help="Plant seconds per real second.")
@click.option("--units-per-port", type=click.IntRange(1, 247), default=247, show_default=True)
@click.option("--gateway", "gateway_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a gateway file (ems gateway) that polls these meters.")
@click.option("--encoding", type=click.Choice(["float32", "int32", "int64", "sdm630"]), default="float32",
              show_default=True, help="Which register block the written gateway file reads.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds (default: until SIGTERM/SIGINT).")
def modbus(scenario: str, host: str, port: int, speed: float, units_per_port: int, gateway_out: Path | None,
           encoding: str, duration: float | None) -> None:
    """Serve every meter of SCENARIO (a scenario file or a readings folder) as a Modbus TCP unit."""
    from ems.modbus.server import MeterServer

    _quiet_pymodbus()
    if not speed > 0:
        raise click.UsageError(f"--speed must be > 0, found {speed}")
    import ems

    rs = ems.open_readings(scenario)
    server = MeterServer(rs, host=host, port=port, speed=speed, per_port=units_per_port)
    click.echo(f"{'port':>5} {'unit':>4}  {'site/meter':<32} {'kind':<10} quantities")
    for m in server.meters:
        i = m.series.info
        click.echo(f"{m.port:>5} {m.unit:>4}  {i.site + '/' + i.meter:<32} {i.kind:<10} {' '.join(i.quantities)}")
    if gateway_out is not None:
        doc = gateway_file(server, host if host not in ("0.0.0.0", "::") else "127.0.0.1", encoding)
        gateway_out.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        click.echo(f"wrote {gateway_out}: ems gateway {gateway_out} --broker mqtt://...", err=True)
    click.echo(f"serving {len(server.meters)} meters on {host} port(s) {', '.join(map(str, server.ports))} "
               f"at {speed:g}x (Ctrl-C to stop)", err=True)
    asyncio.run(_serve(server, duration))


async def _serve(server: Any, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    await server.serve(stop)


@click.command()
@click.argument("gateway_yaml", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--broker", "broker_url", default="mqtt://127.0.0.1:1883", show_default=True)
@click.option("--qos", type=click.Choice(["0", "1"]), default="1", show_default=True)
@click.option("--ledger", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="What the broker acknowledged, per meter (ems reconcile --ledger); seq continues from it.")
@click.option("--deadletter", type=click.Path(dir_okay=False, path_type=Path), default=Path("gateway-deadletter.jsonl"),
              show_default=True, help="JSONL file of dead-lettered readings.")
@click.option("--client-id-prefix", default="ems-gw", show_default=True)
@click.option("--max-backoff", type=click.FloatRange(min=0.5), default=30.0, show_default=True,
              help="[s] longest wait before reconnecting to a device.")
@click.option("--history", type=click.Path(file_okay=False, path_type=Path), default=Path("gateway-history"),
              show_default=True, help="Directory of the published messages that backfill requests are answered from.")
@click.option("--history-mb", type=click.FloatRange(min=8), default=256.0, show_default=True,
              help="[MiB] most disk the history may use: its retention (the oldest messages go first).")
@click.option("--stats", "stats_every", type=float, is_flag=False, flag_value=5.0, default=None,
              help="Print a line of counters to stderr every N seconds (default 5).")
@click.option("--json", "as_json", is_flag=True, help="Counters as JSON (every field of Gateway.stats) instead of lines.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds (default: until SIGTERM/SIGINT).")
@_broker_options
def gateway(gateway_yaml: Path, broker_url: str, qos: str, ledger: Path | None, deadletter: Path,
            client_id_prefix: str, max_backoff: float, history: Path, history_mb: float, stats_every: float | None,
            as_json: bool, duration: float | None, **kw: Any) -> None:
    """Poll the Modbus TCP devices of GATEWAY_YAML and publish their readings (contract v1)."""
    from ems.modbus.config import load_gateway
    from ems.modbus.gateway import Gateway, GatewayOptions

    _quiet_pymodbus()
    spec, models = load_gateway(gateway_yaml)
    opts = GatewayOptions(qos=int(qos), ledger=ledger, deadletter=deadletter, client_id_prefix=client_id_prefix,
                          max_backoff_s=max_backoff, history=history, history_limit_bytes=int(history_mb * (1 << 20)))
    gw = Gateway(spec, models, _config(broker_url, kw), opts)
    click.echo(f"polling {len(gw.devices)} devices on {len(gw.endpoints)} connections; publishing to "
               f"{gw.cfg.describe()}", err=True)
    t0 = time.monotonic()
    stats = asyncio.run(_gateway(gw, duration, stats_every, as_json))
    click.echo(json.dumps(stats) if as_json else
               "gateway stopped: " + gateway_stats_line(stats, None, time.monotonic() - t0))


def gateway_stats_line(now: dict[str, Any], prev: dict[str, Any] | None, dt_s: float) -> str:
    """The gateway's counters as one line for people (the ingestor's formatter, :func:`counters_line`).

    Readings published per second over the last ``dt_s`` [s] (since ``prev``; the whole run
    without it), readings the broker acknowledged, readings dead-lettered, the poll latency
    (from a poll's due time to its values read) p50 and p99, devices offline, poll errors.
    """
    from ems.formatting import plural

    errors = now.get("poll_errors") or {}
    after = [f"{now['offline']:,} of {plural(int(now['devices']), 'device')} offline",
             f"poll errors: {', '.join(f'{k} {v:,}' for k, v in errors.items())}" if errors else "",
             f"{plural(int(now['intervals_skipped']), 'interval')} skipped (polled too late)"
             if now.get("intervals_skipped") else "",
             f"{plural(int(now['backfilled']), 'reading')} published again" if now.get("backfilled") else ""]
    latency = ("poll latency", now["poll_latency_p50_s"], "p99", now["poll_latency_p99_s"]) if now["polls"] else None
    return counters_line(rate_of(now, prev, "readings", dt_s), (int(now["acknowledged"]), "acknowledged"),
                         int(now["deadlettered"]), latency, (), after, dead_unit="reading")


async def _gateway(gw: Any, duration: float | None, stats_every: float | None, as_json: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, gw.stop)

    async def report() -> None:
        prev, t_prev = gw.stats(), time.monotonic()
        while stats_every:
            await asyncio.sleep(stats_every)
            now, t_now = gw.stats(), time.monotonic()
            click.echo(json.dumps(now) if as_json else gateway_stats_line(now, prev, t_now - t_prev), err=True)
            prev, t_prev = now, t_now

    reporter = asyncio.create_task(report())
    try:
        result: dict[str, Any] = await gw.run(duration)
        return result
    finally:
        reporter.cancel()
