"""``ems report``: KPIs from a store, a readings folder or a scenario."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from ems.errors import ConfigError

__all__ = ["report"]

log = logging.getLogger(__name__)


def _overrides(items: tuple[str, ...], gwp: str | None) -> dict[str, Any]:
    ov: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"--factor {it!r}: expected KEY=VALUE, e.g. natural_gas_kgce_per_m3=1.2143")
        k, v = it.split("=", 1)
        try:
            ov[k.strip()] = float(v)
        except ValueError:
            ov[k.strip()] = v.strip()
    if gwp:
        ov["gwp_edition"] = gwp
    return ov


def _cell(c: str, v: Any) -> str:
    import pandas as pd

    if c == "green_share":
        return "" if pd.isna(v) else f"{100 * v:.1f}"
    if isinstance(v, float):
        return "" if pd.isna(v) else f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _print(rep: Any, by: str) -> None:
    import pandas as pd
    from rich.table import Table

    from ems.console import make_console

    console = make_console()
    res, prog = rep.result, rep.progress
    short = {"key": by, "period": res.period, "total_tce": "tce", "tce_per_10k_rmb": "tce/10k RMB",
             "green_share": "green %", "scope1_t": "S1 t", "scope2_location_t": "S2 loc t",
             "scope2_market_t": "S2 mkt t", "peak_import_kw": "peak kW", "total_cost": "cost"}
    t = Table(title=f"KPIs by {by} and {res.period}")
    for c, h in short.items():
        t.add_column(h, justify="left" if c in ("key", "period") else "right", no_wrap=c in ("key", "period"))
    for row in res.kpis[list(short)].itertuples(index=False):
        t.add_row(*(_cell(c, v) for c, v in zip(short, row, strict=True)))
    console.print(t)
    if len(prog):
        tp = Table(title="Progress against targets (group, latest year)")
        for c in ("target", "metric", "target_value", "base_value", "value", "change_vs_base", "met"):
            tp.add_column(c)
        for r in prog.itertuples(index=False):
            tp.add_row(r.target, r.metric, str(r.target_value), "n/a" if pd.isna(r.base_value) else f"{r.base_value:.4g}",
                       f"{r.value:.4g}", f"{r.change_vs_base:+.1%}" if r.change_vs_base == r.change_vs_base else "",
                       str(r.met))
        console.print(tp)
    tf = Table(title="Factors used")
    for c in ("name", "region", "year_used", "value", "unit", "set", "version"):
        tf.add_column(c)
    for r in res.factors_used.itertuples(index=False):
        tf.add_row(r.name, str(r.region), "" if pd.isna(r.year_used) else str(r.year_used), f"{r.value}", r.unit,
                   r.set, r.version)
    console.print(tf)
    if len(res.anomalies):
        console.print(f"[yellow]{len(res.anomalies)} register anomalies (resets, rollovers, gaps); see anomalies table[/]")


@click.command()
@click.argument("source", required=False)
@click.option("--store", "store_url", help="Read from a store path or URL instead of SOURCE (e.g. ./ems-data).")
@click.option("--by", type=click.Choice(["site", "company", "park", "group"]), default="site", show_default=True)
@click.option("--period", type=click.Choice(["day", "month", "year"]), default="month", show_default=True)
@click.option("--start", "start", help="With --end: one custom period of local dates (inclusive), e.g. 2024-01-01.")
@click.option("--end", "end", help="Last local date of the custom period (inclusive).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Folder for the output files.")
@click.option("--format", "formats", default="csv,json,html", show_default=True, help="Comma list of csv, parquet, json, html.")
@click.option("--factor", "factor_overrides", multiple=True, help="Override a factor: KEY=VALUE (repeatable).")
@click.option("--gwp", type=click.Choice(["AR4", "AR5"]), help="IPCC GWP edition for refrigerants.")
@click.option("--targets", "targets_name", default="group", show_default=True, help="Targets name or YAML path.")
def report(source: str | None, store_url: str | None, by: str, period: str, start: str | None, end: str | None,
           out_dir: Path | None, formats: str, factor_overrides: tuple[str, ...], gwp: str | None,
           targets_name: str) -> None:
    """Compute energy and carbon KPIs from SOURCE (a store, a readings folder or a scenario YAML)."""
    from ems.accounting.report import FORMATS
    from ems.accounting.reporting import make_report, write_report

    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad:
        raise ConfigError(f"--format: expected some of {list(FORMATS)}; found {bad}")
    where = store_url or source
    if not where:
        raise ConfigError("expected SOURCE (a store, a readings folder or a scenario YAML) or --store URL; found neither")
    rep = make_report(where, by=by, period=period, start=start, end=end,
                      factors=_overrides(factor_overrides, gwp), targets=targets_name)
    with rep.readings:
        _print(rep, by)
        if out_dir is not None:
            paths = write_report(rep, out_dir, fmts)
            click.echo(f"wrote {len(paths)} files to {out_dir}")
