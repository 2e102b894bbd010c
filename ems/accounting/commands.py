"""``ems report``: KPIs from a store, a readings folder or a scenario."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from ems.errors import ConfigError

__all__ = ["intensity", "report"]

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


def _print_tables(console: Any, rep: Any) -> None:
    """The report in a terminal, by the one formatting rule (:mod:`ems.formatting`)."""
    from ems.accounting.report import (
        factors_table,
        fx_table,
        gases_table,
        grid_factors_table,
        hourly_table,
        instruments_table,
        intensity_table,
        kpi_table,
        targets_table,
    )
    from ems.formatting import to_rich

    res, prog = rep.result, rep.progress
    console.print(to_rich(kpi_table(res, console=True)))
    for line in res.notes[:2]:  # the tce method and the reporting boundary
        console.print(line, markup=False, highlight=False)
    tables = [hourly_table(rep.side_by_side(), res.by, res.period), intensity_table(rep.hourly.intensity)] \
        if rep.hourly is not None else []
    tables += [targets_table(prog, "Progress against targets (group, latest year)")] if len(prog) else []
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
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Folder to write the report's files into (--format says which).")
@click.option("--format", "formats", default=None,
              help="With --out, the files written: comma list of csv, parquet, json, html  [default: csv,json,html]. "
                   "Without --out, json (every table in one document) or csv (the KPI table) goes to standard "
                   "output instead of the tables.")
@click.option("--tables/--no-tables", default=None,
              help="Print the report's tables to the terminal. Default: yes, except when --out is given with "
                   "machine formats only (csv, parquet, json): then only where the files went is printed.")
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
@click.option("--hourly/--no-hourly", default=True, show_default=True,
              help="Also match green supply to use hour by hour (CFE) and compute hourly Scope 2.")
@click.option("--intensity", "intensity", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An hourly carbon-intensity file (ems layout, Electricity Maps or ENTSO-E export) for the "
                   "places it covers (repeatable); other sites use the modelled mix of their grid region.")
def report(
    source: str | None,
    store_url: str | None,
    by: str,
    period: str,
    start: str | None,
    end: str | None,
    out_dir: Path | None,
    formats: str | None,
    tables: bool | None,
    factor_overrides: tuple[str, ...],
    gwp: str | None,
    targets_name: str,
    tce_method: str,
    onsite_re: str,
    framework: str,
    currency: str | None,
    hourly: bool,
    intensity: tuple[str, ...],
) -> None:
    """Compute energy and carbon KPIs from SOURCE (a store, a readings folder or a scenario YAML).

    Prints the KPI tables for people; with --out, writes the files --format names (csv, parquet,
    json for machines, html for people) and says where. With machine formats only, the tables are
    left out unless --tables. --format json or csv without --out writes that to standard output,
    for a pipe (e.g. into jq).
    """
    from ems.accounting.reporting import dump_report, make_report, write_report
    from ems.console import make_console

    fmts, tables = _outputs(formats, out_dir, tables)
    where = store_url or source
    if not where:
        raise ConfigError("expected SOURCE (a store, a readings folder or a scenario YAML) or --store URL; found neither")
    rep = make_report(where, store=store_url is not None, by=by, period=period, start=start, end=end,
                      factors=_overrides(factor_overrides, gwp),
                      targets=targets_name, tce_method=tce_method, onsite_renewables=onsite_re, framework=framework,
                      currency=currency, hourly=hourly, intensity=intensity)
    with rep.readings:
        console = make_console()
        if tables:
            _print_tables(console, rep)
        if len(rep.result.anomalies):
            make_console(stderr=not tables).print(
                f"[yellow]{len(rep.result.anomalies)} register anomalies (resets, rollovers, gaps); "
                "see the anomalies table[/]")
        if out_dir is None and formats is not None:
            click.echo(dump_report(rep, fmts[0]), nl=False)
        if out_dir is not None:
            paths = write_report(rep, out_dir, fmts)
            names = ", ".join(sorted(Path(p).name for p in paths))
            click.echo(f"wrote {len(paths)} files to {out_dir}: {names}")


MACHINE_FORMATS = ("csv", "parquet", "json")
"""File formats for programs; ``html`` is for people."""


def _outputs(formats: str | None, out_dir: Path | None, tables: bool | None) -> tuple[tuple[str, ...], bool]:
    """The file formats to write and whether to print the tables (``ems report --format/--out/--tables``)."""
    from ems.accounting.report import FORMATS, STREAM_FORMATS

    fmts = tuple(f.strip() for f in (formats or "csv,json,html").split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise ConfigError(f"--format: expected some of {list(FORMATS)}; found {bad or formats!r}")
    if formats is not None and out_dir is None:
        if len(fmts) != 1 or fmts[0] not in STREAM_FORMATS:
            raise click.UsageError(f"--format {formats} without --out: expected one of {', '.join(STREAM_FORMATS)} "
                                   "(written to standard output); for other formats or several, add --out DIR")
        if tables:
            raise click.UsageError(f"--tables with --format {fmts[0]} and no --out: both would go to standard "
                                   "output; add --out DIR for the files")
        return fmts, False
    if tables is False and out_dir is None:
        raise click.UsageError("--no-tables without --out would output nothing; add --out DIR or --format json")
    if tables is None:
        tables = out_dir is None or not set(fmts) <= set(MACHINE_FORMATS)
    return fmts, tables


@click.command()
@click.argument("source", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--layout", type=click.Choice(["auto", "ems", "electricitymaps", "entsoe"]), default="auto", show_default=True)
@click.option("--region", help="Region name for a file of one region (instead of its zone or area code).")
@click.option("--kind", type=click.Choice(["direct", "lifecycle"]), default="direct", show_default=True,
              help="Electricity Maps: direct (combustion, Scope 2) or life-cycle intensity.")
@click.option("--mtu-tz", help="ENTSO-E web export: IANA zone of an MTU column whose header names none.")
@click.option("--model", "model", help="Instead of a file: ems's modelled mix of this grid region (e.g. CN-North).")
@click.option("--year", type=int, help="With --model: the local calendar year.")
@click.option("--annual", type=float, help="With --model: the published annual factor to calibrate to [kgCO2/kWh].")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Write the series in the ems layout (.csv or .parquet).")
def intensity(source: str | None, layout: str, region: str | None, kind: str, mtu_tz: str | None, model: str | None,
              year: int | None, annual: float | None, out: str | None) -> None:
    """Check an hourly carbon-intensity file, or model a grid region's hourly factors.

    Prints a summary per region; --out writes the series in the ems layout (docs/grid-intensity.md).
    """
    from ems.accounting.intensity_files import read_intensity, write_intensity
    from ems.console import make_console
    from ems.formatting import table_of, to_rich

    if (source is None) == (model is None):
        raise ConfigError("expected a FILE or --model REGION (with --year and --annual); found "
                          + ("both" if source else "neither"))
    if model is not None:
        from ems.accounting.gridmix import load_mix, modelled_intensity

        if year is None or annual is None:
            raise ConfigError(f"--model {model}: expected --year and --annual (the published factor, kgCO2/kWh)")
        series = modelled_intensity(load_mix(model), year, annual, "given with --annual")
    else:
        series = read_intensity(str(source), layout=layout, region=region, kind=kind, mtu_tz=mtu_tz)
    console = make_console()
    s = series.summary().reset_index()
    g = {c: (s[c] * 1000.0).round(1) for c in ("average_mean", "average_min", "average_max", "marginal_mean")}
    shown = s.assign(**g, count=s["hours"], first_hour=s["first_hour"].dt.strftime("%Y-%m-%d %H:%M"),
                     last_hour=s["last_hour"].dt.strftime("%Y-%m-%d %H:%M"))
    console.print(to_rich(table_of(
        shown, f"Hourly carbon intensity ({series.method}) [gCO2/kWh]",
        columns=["region", "count", "missing_hours", "first_hour", "last_hour", "average_mean", "average_min",
                 "average_max", "marginal_mean"],
        labels={"count": "hours", "missing_hours": "missing", "first_hour": "first hour (UTC)",
                "last_hour": "last hour (UTC)", "average_mean": "average", "average_min": "min",
                "average_max": "max", "marginal_mean": "marginal"})))
    console.print(series.describe(), markup=False, highlight=False)
    if out is not None:
        click.echo(f"wrote {write_intensity(series, out)}")
