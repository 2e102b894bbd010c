"""``ems run``: simulate a scenario and write its readings."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["run"]

_ONE_FOLDER_MAX_ROWS = 30_000_000
"""Above this many tidy rows the readings are written per site (memory)."""


@click.command("run")
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out"),
    show_default=True,
    help="Output folder; readings go to OUT/<scenario name>/.",
)
@click.option("--seed", type=int, default=None, help="Override the scenario's random seed.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary table.")
@click.option(
    "--per-site",
    is_flag=True,
    help="Write one folder per site (OUT/<name>/<site>/) even when small.",
)
def run(scenario: Path, out: Path, seed: int | None, quiet: bool, per_site: bool) -> None:
    """Simulate SCENARIO and write its readings (Parquet) and a summary."""
    import dataclasses

    import pandas as pd
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import ems
    from ems.sim.engine import estimate_rows, iter_simulate, simulate

    console = Console(quiet=quiet)
    if not console.is_terminal:  # piped or captured: do not squeeze the table
        console = Console(quiet=quiet, width=max(console.width, 160))
    resolved = ems.load_scenario(str(scenario))
    if seed is not None:
        resolved = dataclasses.replace(resolved, seed=seed)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(site: str, done: int, total: int) -> None:
            if site not in tasks:
                tasks[site] = int(bar.add_task(site, total=total))
            bar.update(tasks[site], completed=done)  # type: ignore[arg-type]

        folder = out / resolved.name
        if per_site or estimate_rows(resolved) > _ONE_FOLDER_MAX_ROWS:
            # one site at a time: memory stays bounded by the largest site
            summaries, n_rows, n_events = [], 0, 0
            for part in iter_simulate(resolved, progress=progress):
                part.to_parquet_per_site(folder)
                summaries.append(part.summary())
                n_rows += part.n_readings()
                n_events += len(part.events)
                del part
            summary = pd.concat(summaries)
            where = f"{folder}/<site>/ ({len(summaries)} sites)"
        else:
            result = simulate(resolved, progress=progress)
            result.to_parquet(folder)
            summary, n_rows, n_events = result.summary(), result.n_readings(), len(result.events)
            where = str(folder)
    if quiet:
        return
    s = summary
    table = Table(
        title=f"{resolved.name}: {resolved.start} to {resolved.end}, {resolved.resolution_s} s, seed {resolved.seed}"
    )
    cols = [
        ("load_kwh", "load MWh", 1e-3, "{:,.0f}"),
        ("grid_import_kwh", "import MWh", 1e-3, "{:,.0f}"),
        ("grid_export_kwh", "export MWh", 1e-3, "{:,.0f}"),
        ("pv_kwh", "PV MWh", 1e-3, "{:,.0f}"),
        ("pv_specific_yield_kwh_per_kwp", "PV kWh/kWp", 1.0, "{:,.0f}"),
        ("self_consumption", "self-cons.", 100.0, "{:.0f} %"),
        ("peak_import_kw", "peak kW", 1.0, "{:,.0f}"),
        ("battery_cycles", "bat. cycles", 1.0, "{:.0f}"),
        ("purchased_heat_gj", "steam GJ", 1.0, "{:,.0f}"),
        ("gas_m3", "gas m3", 1.0, "{:,.0f}"),
        ("diesel_kg", "diesel kg", 1.0, "{:,.0f}"),
        ("gasoline_kg", "gasoline kg", 1.0, "{:,.0f}"),
    ]
    table.add_column("site")
    for _, title, _, _ in cols:
        table.add_column(title, justify="right")
    for sid, row in s.iterrows():
        cells = []
        for key, _, f, fmt in cols:
            v = row[key]
            cells.append("-" if v != v else fmt.format(v * f))  # NaN: not applicable
        table.add_row(str(sid), *cells)
    console.print(table)
    console.print(
        f"{result.n_readings():,} readings and {len(result.events):,} events written to {where}"
    )
