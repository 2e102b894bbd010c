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


def _print_tables(console: Any, res: Any, prog: Any) -> None:
    """The report in a terminal, by the one formatting rule (:mod:`ems.formatting`)."""
    from ems.accounting.report import (
        factors_table,
        fx_table,
        gases_table,
        grid_factors_table,
        instruments_table,
        kpi_table,
        targets_table,
    )
    from ems.formatting import to_rich

    console.print(to_rich(kpi_table(res, console=True)))
    for line in res.notes[:2]:  # the tce method and the reporting boundary
        console.print(line, markup=False, highlight=False)
    tables = [targets_table(prog, "Progress against targets (group, latest year)")] if len(prog) else []
    tables += [grid_factors_table(res.factors_used), factors_table(res.factors_used)]
    tables += [gases_table(res)] if len(res.gases) else []
    tables += [instruments_table(res.instruments, res.options.get("framework", ""))] if len(res.instruments) else []
    tables += [fx_table(res.fx_used, res.options.get("currency", "CNY"))] if len(res.fx_used) else []
    for t in tables:
        console.print(to_rich(t))


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
@click.option("--gwp", type=click.Choice(["AR4", "AR5", "AR6"]), help="IPCC GWP edition for fugitive and process gases.")
@click.option("--targets", "targets_name", default="group", show_default=True, help="Targets name or YAML path.")
@click.option("--tce-method", type=click.Choice(["calorific", "coal_equivalent"]), default="calorific", show_default=True,
              help="GB/T 2589-2020: calorific value (当量值) or coal equivalent (等价值) for electricity.")
@click.option("--onsite-re", type=click.Choice(["excluded", "included"]), default="excluded", show_default=True,
              help="On-site renewable electricity out of or in the total tce.")
@click.option("--framework", type=click.Choice(["RE100", "GHG-Scope2", "CN-GEC"]), default="RE100", show_default=True,
              help="Eligibility rules for certificates and contracts.")
@click.option("--currency", default=None, help="Reporting currency of company, park and group costs (default CNY).")
def report(
    source: str | None,
    store_url: str | None,
    by: str,
    period: str,
    start: str | None,
    end: str | None,
    out_dir: Path | None,
    formats: str,
    factor_overrides: tuple[str, ...],
    gwp: str | None,
    targets_name: str,
    tce_method: str,
    onsite_re: str,
    framework: str,
    currency: str | None,
) -> None:
    """Compute energy and carbon KPIs from SOURCE (a store, a readings folder or a scenario YAML)."""
    from ems.accounting.report import FORMATS
    from ems.accounting.reporting import make_report, write_report
    from ems.console import make_console

    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad:
        raise ConfigError(f"--format: expected some of {list(FORMATS)}; found {bad}")
    where = store_url or source
    if not where:
        raise ConfigError("expected SOURCE (a store, a readings folder or a scenario YAML) or --store URL; found neither")
    rep = make_report(where, store=store_url is not None, by=by, period=period, start=start, end=end,
                      factors=_overrides(factor_overrides, gwp),
                      targets=targets_name, tce_method=tce_method, onsite_renewables=onsite_re, framework=framework,
                      currency=currency)
    with rep.readings:
        console = make_console()
        _print_tables(console, rep.result, rep.progress)
        if len(rep.result.anomalies):
            console.print(f"[yellow]{len(rep.result.anomalies)} register anomalies (resets, rollovers, gaps); "
                          "see anomalies table[/]")
        if out_dir is not None:
            paths = write_report(rep, out_dir, fmts)
            console.print(f"wrote {len(paths)} files to {out_dir}")
