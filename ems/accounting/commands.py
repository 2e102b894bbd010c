"""``ems report``: KPIs from a readings folder, a store or a scenario."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from ems.errors import ConfigError
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

        st = open_store(store)
        try:
            rs: ReadingSet = st.read()
        finally:
            st.close()
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


def _cell(v: object, share: bool = False) -> str:
    """Content of a console cell: nothing for a missing number, shares in %."""
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        if share:
            return f"{100 * v:.1f}"
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _print_tables(console: Any, res: Any, prog: Any) -> None:
    from rich.table import Table

    short = {"key": res.by, "period": res.period, "total_tce": "tce", "tce_per_10k_rmb": "tce/10k RMB",
             "green_share": "green %", "scope1_t": "S1 t", "scope2_location_t": "S2 loc t",
             "scope2_market_t": "S2 mkt t", "peak_import_kw": "peak kW", "total_cost": "cost", "currency": "currency"}
    t = Table(title=f"KPIs by {res.by} and {res.period}")
    for c, h in short.items():
        t.add_column(h, justify="left" if c in ("key", "period", "currency") else "right", no_wrap=c in ("key", "period"))
    for row in res.kpis[list(short)].itertuples(index=False):
        t.add_row(*[_cell(v, share=c == "green_share") for c, v in zip(short, row, strict=True)])
    console.print(t)
    for line in res.notes[:2]:
        console.print(line)
    if len(prog):
        tp = Table(title="Progress against targets (group, latest year)")
        for c in ("target", "value", "base", "change", "requirement", "status", "reason"):
            tp.add_column(c)
        for r in prog.itertuples(index=False):
            share = str(r.metric).endswith("share")
            chg = _cell(r.change_vs_base, True)
            tp.add_row(r.target, _cell(r.value, share), _cell(r.base_value, share), f"{chg} %" if chg else "",
                       r.requirement, r.status, r.reason)
        console.print(tp)
    fu = res.factors_used
    grid = fu[fu["site"] != "*"]
    tg = Table(title="Grid factor per site (most local place first, then nearest year)")
    for c in ("site", "factor", "level", "place", "year", "value", "source"):
        tg.add_column(c, overflow="fold")
    for r in grid.itertuples(index=False):
        tg.add_row(r.site, r.name.replace("_kgco2_per_kwh", "").replace("grid_", ""), r.level, r.place,
                   str(r.year_used), _cell(r.value), r.source[:60])
    console.print(tg)
    tf = Table(title="Factors used")
    for c in ("name", "year", "value", "unit", "set", "version"):
        tf.add_column(c)
    for r in fu[fu["site"] == "*"].itertuples(index=False):
        tf.add_row(r.name, str(r.year_used or ""), _cell(r.value), r.unit, r.set, r.version)
    console.print(tf)
    if len(res.instruments):
        ti = Table(title=f"Certificates and contracts ({res.options.get('framework')})")
        for c in ("site", "instrument", "id", "MWh", "counted MWh", "status", "reason"):
            ti.add_column(c, overflow="fold")
        agg = res.instruments.groupby(["site", "instrument", "id", "status", "reason"], sort=False)[["mwh", "counted_mwh"]].sum()
        for (site, inst, ident, status, reason), r in agg.iterrows():
            ti.add_row(site, inst, ident, _cell(r["mwh"]), _cell(r["counted_mwh"]), status, reason)
        console.print(ti)


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
