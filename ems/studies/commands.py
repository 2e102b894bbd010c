"""Study commands: ``ems calibrate``, ``ems compare``, ``ems sweep``, ``ems pathway``, ``ems measures``."""

from __future__ import annotations

import calendar
import logging
from pathlib import Path
from typing import Any

import click
import pandas as pd

from ems.errors import ConfigError

__all__ = ["calibrate", "compare", "measures", "pathway", "sweep"]

log = logging.getLogger(__name__)


def _console() -> Any:
    from ems.console import make_console

    return make_console()


def _e(text: Any) -> str:
    """Escape rich markup (units are in brackets)."""
    from rich.markup import escape

    return escape(str(text))


_STUDY_LABELS = {
    "total_annual_cost": "total annual cost", "net_scope12_t": "Scope 1+2 net", "green_share": "green share",
    "cfe": "hourly (CFE)", "scope2_market_hourly_t": "Scope 2 mkt. hourly",
    "capex": "capex", "cost_per_tco2e": "cost per tCO2e avoided",
    "scope12_market_intensity_t_per_10k_rmb": "intensity", "total_tce": "energy",
    "annual_cost": "measures",
}
"""Labels of study columns; units come from the column names (:mod:`ems.formatting`)."""


def _resolution_s(text: str | None) -> int | None:
    if text is None:
        return None
    from ems.model.scenario import ScenarioFile

    try:
        ScenarioFile._resolution(text)
    except ValueError as exc:
        raise ConfigError(f"--resolution: {exc}") from None
    return int(pd.Timedelta(pd.tseries.frequencies.to_offset(text)).total_seconds())


def _costs(path: str | None) -> dict[str, Any]:
    from ems.studies.measures import load_costs

    return load_costs(path)


@click.command()
@click.option("--costs", "costs_file", type=click.Path(dir_okay=False), help="Cost data YAML (default built in).")
def measures(costs_file: str | None) -> None:
    """List the measures a scenario's 'measures:' list can use, with parameters and costs."""
    from rich.table import Table

    from ems.studies.measures import MEASURES

    costs = _costs(costs_file)
    t = Table(title="Measures (docs/studies.md)", show_lines=True)
    t.add_column("measure", no_wrap=True)
    for c in ("what", "parameters", "cost data"):
        t.add_column(c)
    for m in MEASURES.values():
        key = {"buy_certificates": "buy_certificates", "zero_carbon": "offsets"}.get(m.name, m.name)
        cd: dict[str, Any] = costs["measures"].get(key) or {}
        money = (f"capex {cd.get('capex_per_unit', 0):,} {costs.get('currency', '')}/{cd.get('unit', '')}, "
                 f"opex {cd.get('opex_share', 0):.1%}/yr + {cd.get('opex_per_unit', 0)}/{cd.get('unit', '')}, "
                 f"{cd.get('lifetime_years', '')} yr")
        params = "\n".join(f"{k}: {v}" for k, v in m.params.items())
        t.add_row(m.name, _e(m.summary), _e(params), _e(money))
    _console().print(t)
    click.echo(f"discount rate {costs.get('discount_rate')}; cost data '{costs.get('name')}' (assumptions, see its sources)")


@click.command()
@click.argument("scenarios", nargs=-1, required=True)
@click.option("--resolution", help="Replace each scenario's resolution, e.g. 1h for a fast look.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the table as CSV.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write an HTML report with charts.")
@click.option("--costs", "costs_file", type=click.Path(dir_okay=False), help="Cost data YAML.")
def compare(scenarios: tuple[str, ...], resolution: str | None, csv_path: str | None, html_path: str | None,
            costs_file: str | None) -> None:
    """Run (or load) SCENARIOS and print their KPIs side by side, with deltas vs the first.

    Each SCENARIO is a scenario YAML (its measures applied) or a readings folder
    from 'ems run --out'.
    """
    from ems.formatting import to_rich
    from ems.studies.compare import compare as run_compare
    from ems.studies.compare import comparison_table, to_html

    cmp = run_compare(list(scenarios), resolution_s=_resolution_s(resolution), costs=_costs(costs_file))
    _console().print(to_rich(comparison_table(cmp)))
    if csv_path:
        cmp.table.to_csv(csv_path, index_label="kpi")
        click.echo(f"wrote {csv_path}")
    if html_path:
        Path(html_path).write_text(to_html(cmp))
        click.echo(f"wrote {html_path}")


@click.command()
@click.argument("site_file", type=click.Path(dir_okay=False))
@click.option("--totals", "totals_file", required=True, type=click.Path(dir_okay=False),
              help="YAML with annual and/or monthly totals from the bills.")
@click.option("--year", type=int, help="Calendar year (default: the totals file's, else 2024).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tol", type=click.FloatRange(min=1e-6), default=0.005, show_default=True,
              help="Relative tolerance on annual totals.")
@click.option("--month-tol", type=click.FloatRange(min=1e-6), default=0.10, show_default=True,
              help="Relative tolerance on every billed month (monthly totals in the totals file).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="Write the calibrated site: SITE_FILE with the fitted values, comments and layout kept.")
def calibrate(site_file: str, totals_file: str, year: int | None, seed: int, tol: float, month_tol: float,
              out_path: str | None) -> None:
    """Fit SITE_FILE's profile scales so the simulation reproduces known totals.

    Converged means every annual total within --tol and every billed month within
    --month-tol; otherwise the months that miss are named and the exit code is 1.
    """
    from ems.model.loader import load_site
    from ems.studies.calibrate import calibrate as run_calibrate
    from ems.studies.calibrate import load_totals

    site = load_site(site_file)
    totals = load_totals(totals_file)
    y = year or int(totals.get("year") or 2024)
    cal = run_calibrate(site, totals, year=y, seed=seed, tol=tol, month_tol=month_tol)
    con = _console()
    con.print(_calibration_table(cal, f"{site.id} {y}: simulated vs target per month (deviation %)"))
    con.print("* no monthly target given: the annual target spread like the simulation")
    _print_verdict(con, cal)
    if out_path:
        Path(out_path).write_text(cal.to_yaml(site_file), encoding="utf-8")
        n = len(cal.changes())
        click.echo(f"wrote {out_path}: {site_file} with {n} fitted value{'s' if n != 1 else ''} "
                   f"(comments and layout kept)")
    if not cal.converged:
        raise SystemExit(1)


def _calibration_table(cal: Any, title: str) -> Any:
    from ems.formatting import Table, number, to_rich, with_unit

    t = Table(title=title, headers=["quantity", *(f"{mo:02d}" for mo in range(1, 13)), "year", "target"],
              numeric=[False] + [True] * 14)
    for q, g in cal.residuals.groupby("quantity", sort=False):
        g = g.set_index("month")
        cells = [number(100 * float(g.loc[mo, "deviation"]), 1) + ("" if bool(g.loc[mo, "given"]) else "*")
                 for mo in range(1, 13)]
        t.rows.append([str(q), *cells, number(100 * float(g.loc[0, "deviation"]), 2),
                       with_unit(str(q), float(g.loc[0, "target"]))])
    return to_rich(t)


def _print_verdict(con: Any, cal: Any) -> None:
    from ems.studies.calibrate import monthly_fit

    rule = (f"every annual total within ±{100 * cal.tol:g} % and every billed month within "
            f"±{100 * cal.month_tol:g} %")
    for q in cal.residuals.loc[cal.residuals["given"] & (cal.residuals["month"] > 0), "quantity"].unique():
        fit = monthly_fit(cal.residuals, str(q))
        con.print(f"{q}: NMBE {100 * fit['nmbe']:+.1f} %, CV(RMSE) {100 * fit['cv_rmse']:.1f} % over the billed "
                  "months (ASHRAE Guideline 14 calibrates monthly models to within 5 % and 15 %)")
    if cal.converged:
        con.print(f"converged after {cal.iterations} correction(s): {rule}")
    else:
        where = "; ".join(
            f"{q} " + ", ".join(f"{'year' if r.month == 0 else calendar.month_abbr[int(r.month)]} "
                                f"{100 * r.deviation:+.1f} %" for r in g.itertuples())
            for q, g in cal.misses().groupby("quantity", sort=False))
        con.print(f"NOT converged after {cal.iterations} correction(s): expected {rule}; outside: {where}")
    con.print("annual deviations by iteration:")
    for i, h in enumerate(cal.history):
        con.print(f"  {i}: " + ", ".join(f"{k} {100 * v:+.2f} %" for k, v in h.items()))


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--scheduler", help="Address of a running Dask scheduler, or 'synchronous'; default a local cluster.")
@click.option("--workers", type=int, default=2, show_default=True, help="Local cluster worker processes.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="sweep-results", show_default=True)
@click.option("--costs", "costs_file", type=click.Path(dir_okay=False), help="Cost data YAML.")
def sweep(spec_file: str, scheduler: str | None, workers: int, out_dir: str, costs_file: str | None) -> None:
    """Run the variants of SPEC_FILE in parallel; write results, the Pareto front and the best variant."""
    from ems.formatting import cell, table_of, to_rich, with_unit
    from ems.studies.sweep import load_sweep_spec, run_sweep

    spec = load_sweep_spec(spec_file)
    con = _console()
    res = run_sweep(spec, scheduler=scheduler, n_workers=workers, costs=_costs(costs_file),
                    progress=lambda d, n: log.info("sweep: %d/%d variants", d, n))
    out = Path(out_dir)
    written = res.write(out)
    df, front = res.results, res.front
    pcols = [c for c in df.columns if c.startswith("p:")]
    shown = [*pcols, "total_annual_cost", "net_scope12_t", "green_share", "cfe", "scope2_market_hourly_t", "capex",
             "cost_per_tco2e"]
    con.print(to_rich(table_of(
        front, f"Pareto front: cost vs Scope 1+2 ({len(front)} of {len(df)} variants)", columns=shown,
        labels={**{c: c.removeprefix("p:") for c in pcols}, **_STUDY_LABELS})))
    if res.target is not None:
        tgt = res.target
        metric = str(tgt["metric"])
        cond = (f"{metric} >= {with_unit(metric, tgt['min'])}" if "min" in tgt
                else f"{metric} <= {with_unit(metric, tgt['max'])}")
        if res.best is None:
            con.print(f"no variant meets {cond}")
        else:
            b = res.best
            desc = ", ".join(f"{c.removeprefix('p:')} = {cell(b[c])}" for c in pcols)
            con.print(f"cheapest meeting {cond}: {desc}; total annual cost "
                      f"{with_unit('total_annual_cost', b['total_annual_cost'])}, {metric} {with_unit(metric, b[metric])}")
    click.echo(f"wrote {', '.join(p.name for p in written)} to {out}")


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Write pathway.csv and targets.csv here.")
@click.option("--costs", "costs_file", type=click.Path(dir_okay=False), help="Cost data YAML.")
def pathway(spec_file: str, out_dir: str | None, costs_file: str | None) -> None:
    """Simulate a pathway year by year and report when each group target is met."""
    from ems.accounting.report import targets_table
    from ems.formatting import table_of, to_rich
    from ems.studies.pathway import load_pathway_spec, study

    spec = load_pathway_spec(spec_file)
    con = _console()
    res = study(spec, costs=_costs(costs_file), progress=lambda y: log.info("pathway: %d done", y))
    yearly, a = res.yearly, res.targets
    cols = ["net_scope12_t", "scope12_market_intensity_t_per_10k_rmb", "green_share", "total_tce", "annual_cost"]
    con.print(to_rich(table_of(yearly.rename_axis("year").reset_index(), "Pathway (group, per year)",
                               columns=["year", *cols], labels=_STUDY_LABELS)))
    con.print(to_rich(targets_table(a, f"Targets (base year {spec.targets['base_year']})",
                                    value="value_in_target_year")))
    if out_dir:
        paths = res.write(Path(out_dir))
        click.echo(f"wrote {', '.join(str(p) for p in paths)}")
