"""``ems report``: KPIs from a readings folder, a store or a scenario."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from ems.errors import ConfigError, StoreError
from ems.readings import ReadingSet

__all__ = ["load_source", "report"]

log = logging.getLogger(__name__)


def _as_readingset(obj: Any) -> ReadingSet:
    if isinstance(obj, ReadingSet):
        return obj
    for attr in ("readingset", "reading_set", "to_readingset"):
        x = getattr(obj, attr, None)
        if x is not None:
            x = x() if callable(x) else x
            if isinstance(x, ReadingSet):
                return x
    if all(hasattr(obj, a) for a in ("readings", "events", "meters", "sites")):
        return ReadingSet(readings=obj.readings, events=obj.events, meters=list(obj.meters), sites=list(obj.sites))
    raise ConfigError(f"expected the simulation to return a ReadingSet; found {type(obj).__name__}")


def load_source(source: str | None, store: str | None) -> ReadingSet:
    """Return the ReadingSet of a readings folder, a scenario YAML or a store URL."""
    if store:
        from ems.store import open_store  # type: ignore[attr-defined]

        st = open_store(store, read_only=True)  # a report never creates a store
        try:
            rs: ReadingSet = st.read()
        finally:
            st.close()
        if rs.readings.empty:
            raise StoreError(f"store {store} is empty: no readings yet; write some first, e.g. "
                             f"ems run scenarios/demo.yaml --store {store}")
        return rs
    if not source:
        raise ConfigError("expected SOURCE (a readings folder or a scenario YAML) or --store URL; found neither")
    p = Path(source)
    if p.is_dir():
        return ReadingSet.from_parquet(p)
    if p.suffix in (".yaml", ".yml") and p.exists():
        import ems

        return _as_readingset(ems.simulate(ems.load_scenario(str(p))))
    raise ConfigError(f"{source}: expected a readings folder (ems run --out) or a scenario .yaml; found neither")


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
@click.option("--store", "store_url", help="Read from a store URL instead of SOURCE (e.g. duckdb:///path.db).")
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
    """Compute energy and carbon KPIs from SOURCE (readings folder or scenario YAML) or a store."""
    from ems.accounting.kpis import kpis, rollup
    from ems.accounting.report import FORMATS, write_html, write_tables
    from ems.accounting.targets import load_targets, progress
    from ems.console import make_console

    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad:
        raise ConfigError(f"--format: expected some of {list(FORMATS)}; found {bad}")
    if (start is None) != (end is None):
        raise ConfigError(f"--start and --end go together; found start={start!r}, end={end!r}")
    rs = load_source(source, store_url)
    chosen: str | tuple[str, str] = (start, end) if start is not None and end is not None else period
    res = kpis(rs, by=by, period=chosen, factors=_overrides(factor_overrides, gwp) or None, tce_method=tce_method,
               onsite_renewables=onsite_re, framework=framework, currency=currency)
    yearly = rollup(res.daily, by="group", period="year", tce_method=tce_method, onsite_renewables=onsite_re)
    prog = progress(yearly, load_targets(targets_name))
    console = make_console()
    _print_tables(console, res, prog)
    if len(res.anomalies):
        console.print(f"[yellow]{len(res.anomalies)} register anomalies (resets, rollovers, gaps); see anomalies table[/]")
    if out_dir is not None:
        paths = write_tables(res, out_dir, fmts, prog)
        if "html" in fmts:
            paths.append(write_html(res, out_dir / "report.html", rs, prog))
        console.print(f"wrote {len(paths)} files to {out_dir}")
