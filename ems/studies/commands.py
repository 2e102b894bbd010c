"""Study commands: ``ems calibrate``, ``ems compare``, ``ems sweep``, ``ems pathway``, ``ems measures``."""

from __future__ import annotations

import logging
import math
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


def _fmt(x: Any, digits: int = 2) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        if math.isinf(x):
            return "never"
        if abs(x) < 0.5 * 10.0**-digits:
            x = 0.0  # no "-0.0"
        return f"{x:,.{digits}f}"
    return str(x)


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
    from rich.table import Table

    from ems.studies.compare import compare as run_compare
    from ems.studies.compare import to_html

    cmp = run_compare(list(scenarios), resolution_s=_resolution_s(resolution), costs=_costs(costs_file))
    t = Table(title="Scenario comparison (Δ vs the first)")
    t.add_column("KPI")
    for c in cmp.table.columns:
        t.add_column(_e(c), justify="right")
    for label, row in cmp.table.iterrows():
        t.add_row(_e(label), *(_fmt(float(v)) for v in row))
    _console().print(t)
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
@click.option("--tol", type=float, default=0.005, show_default=True, help="Relative tolerance on annual totals.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write the calibrated site YAML.")
def calibrate(site_file: str, totals_file: str, year: int | None, seed: int, tol: float, out_path: str | None) -> None:
    """Fit SITE_FILE's profile scales so the simulation reproduces known totals."""
    from rich.table import Table

    from ems.model.loader import load_site
    from ems.studies.calibrate import calibrate as run_calibrate
    from ems.studies.calibrate import load_totals

    site = load_site(site_file)
    totals = load_totals(totals_file)
    y = year or int(totals.get("year") or 2024)
    cal = run_calibrate(site, totals, year=y, seed=seed, tol=tol)
    r = cal.residuals
    t = Table(title=f"{site.id} {y}: simulated vs target per month (deviation %)")
    t.add_column("quantity")
    for mo in range(1, 13):
        t.add_column(f"{mo:02d}", justify="right")
    t.add_column("year", justify="right")
    t.add_column("target", justify="right")
    for q, g in r.groupby("quantity", sort=False):
        g = g.set_index("month")
        cells = [_fmt(100 * float(g.loc[mo, "deviation"]), 1) + ("" if bool(g.loc[mo, "given"]) else "*")
                 for mo in range(1, 13)]
        t.add_row(str(q), *cells, _fmt(100 * float(g.loc[0, "deviation"]), 2), _fmt(float(g.loc[0, "target"]), 0))
    con = _console()
    con.print(t)
    con.print("* no monthly target given: the annual target spread like the simulation")
    state = "converged" if cal.converged else "NOT converged"
    con.print(f"{state} after {cal.iterations} correction(s); annual deviations by iteration:")
    for i, h in enumerate(cal.history):
        con.print(f"  {i}: " + ", ".join(f"{k} {100 * v:+.2f} %" for k, v in h.items()))
    if out_path:
        Path(out_path).write_text(cal.to_yaml())
        click.echo(f"wrote {out_path}")
    if not cal.converged:
        raise SystemExit(1)


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--scheduler", help="Address of a running Dask scheduler, or 'synchronous'; default a local cluster.")
@click.option("--workers", type=int, default=2, show_default=True, help="Local cluster worker processes.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="sweep-results", show_default=True)
@click.option("--costs", "costs_file", type=click.Path(dir_okay=False), help="Cost data YAML.")
def sweep(spec_file: str, scheduler: str | None, workers: int, out_dir: str, costs_file: str | None) -> None:
    """Run the variants of SPEC_FILE in parallel; write results, the Pareto front and the best variant."""
    from rich.table import Table

    from ems.studies.sweep import load_sweep_spec, run_sweep

    spec = load_sweep_spec(spec_file)
    con = _console()
    res = run_sweep(spec, scheduler=scheduler, n_workers=workers, costs=_costs(costs_file),
                    progress=lambda d, n: log.info("sweep: %d/%d variants", d, n))
    out = Path(out_dir)
    written = res.write(out)
    df, front = res.results, res.front
    pcols = [c for c in df.columns if c.startswith("p:")]
    t = Table(title=f"Pareto front: cost vs Scope 1+2 ({len(front)} of {len(df)} variants)")
    for c in [*pcols, "total_annual_cost", "net_scope12_t", "green_share", "capex", "cost_per_tco2e"]:
        t.add_column(c.removeprefix("p:"), justify="right")
    for _, r in front.iterrows():
        t.add_row(*(_fmt(r[c]) if not isinstance(r[c], str) else r[c] for c in
                    [*pcols, "total_annual_cost", "net_scope12_t", "green_share", "capex", "cost_per_tco2e"]))
    con.print(t)
    if res.target is not None:
        tgt = res.target
        cond = f"{tgt['metric']} >= {tgt['min']}" if "min" in tgt else f"{tgt['metric']} <= {tgt['max']}"
        if res.best is None:
            con.print(f"no variant meets {cond}")
        else:
            b = res.best
            desc = ", ".join(f"{c.removeprefix('p:')}={b[c]}" for c in pcols)
            con.print(f"cheapest meeting {cond}: {desc}; total annual cost {_fmt(float(b['total_annual_cost']))}, "
                      f"{tgt['metric']} {_fmt(float(b[tgt['metric']]), 4)}")
    click.echo(f"wrote {', '.join(str(p) for p in written)}")


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Write pathway.csv and targets.csv here.")
@click.option("--costs", "costs_file", type=click.Path(dir_okay=False), help="Cost data YAML.")
def pathway(spec_file: str, out_dir: str | None, costs_file: str | None) -> None:
    """Simulate a pathway year by year and report when each group target is met."""
    from rich.table import Table

    from ems.studies.pathway import load_pathway_spec, study

    spec = load_pathway_spec(spec_file)
    con = _console()
    res = study(spec, costs=_costs(costs_file), progress=lambda y: log.info("pathway: %d done", y))
    yearly, a = res.yearly, res.targets
    t = Table(title="Pathway (group, per year)")
    cols = [("net_scope12_t", "Scope 1+2 net [t]", 0), ("scope12_market_intensity_t_per_10k_rmb",
            "intensity [kg/RMB 10k]", 2), ("green_share", "green share [%]", 1), ("total_tce", "energy [tce]", 0),
            ("annual_cost", "measures [CNY/yr]", 0)]
    t.add_column("year")
    for _, label, _ in cols:
        t.add_column(_e(label), justify="right")
    for y, r in yearly.iterrows():
        vals = []
        for c, _, d in cols:
            v = float(r[c])
            v = v * 1000 if c.endswith("10k_rmb") else v * 100 if c == "green_share" else v
            vals.append(_fmt(v, d))
        t.add_row(str(y), *vals)
    con.print(t)
    t2 = Table(title=f"Targets (base year {spec.targets['base_year']})")
    for c in ("target", "target_year", "target_value", "value_in_target_year", "first_year_met", "status", "note"):
        t2.add_column(c)
    for _, r in a.iterrows():
        t2.add_row(*(_fmt(r[c], 4) if isinstance(r[c], float) else _e(r[c]) for c in
                     ("target", "target_year", "target_value", "value_in_target_year", "first_year_met", "status", "note")))
    con.print(t2)
    if out_dir:
        paths = res.write(Path(out_dir))
        click.echo(f"wrote {', '.join(str(p) for p in paths)}")
