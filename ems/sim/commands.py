"""``ems run``: simulate a scenario and write its readings.

By default the readings go into the embedded store (``./ems-data``, see
:mod:`ems.store`), where ``ems report --store`` and the dashboard read them;
``--out DIR`` also (or, with ``--no-store``, only) writes the Parquet exchange
folder of :meth:`ems.readings.ReadingSet.to_parquet`.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["run"]

_ONE_FOLDER_MAX_ROWS = 30_000_000
"""Above this many tidy rows the readings are written per site (memory)."""

_STORE_CHUNK_ROWS = 2_000_000
"""Rows per store write when a (site's) frame is larger (memory)."""


@click.command("run")
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--store",
    "store_url",
    default=None,
    metavar="URL",
    help="Store to write into: a path (embedded, default ./ems-data) or an InfluxDB URL.",
)
@click.option("--no-store", is_flag=True, help="Do not write into a store (needs --out).")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write Parquet to OUT/<scenario name>/ (ReadingSet.to_parquet).",
)
@click.option("--seed", type=int, default=None, help="Override the scenario's random seed.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary table.")
@click.option(
    "--per-site",
    is_flag=True,
    help="Write one folder per site (OUT/<name>/<site>/) even when small.",
)
def run(
    scenario: Path,
    store_url: str | None,
    no_store: bool,
    out: Path | None,
    seed: int | None,
    quiet: bool,
    per_site: bool,
) -> None:
    """Simulate SCENARIO, write its readings into the store (and Parquet), print a summary."""
    import dataclasses

    import pandas as pd
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import ems
    from ems.console import make_console
    from ems.errors import ConfigError
    from ems.readings import ReadingSet
    from ems.sim.engine import estimate_rows, iter_simulate, simulate
    from ems.store import DEFAULT_URL, open_store

    if no_store and out is None:
        raise ConfigError("--no-store needs --out DIR: the readings must go somewhere")

    console = make_console(quiet=quiet)
    from ems.studies.measures import size_measures

    resolved = size_measures(ems.load_scenario(str(scenario)))  # measures sized from KPIs: a study step
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

        store = None if no_store else open_store(store_url)
        wheres = [] if store is None else [store_url or DEFAULT_URL]

        def save(part: ReadingSet) -> None:
            if store is None:
                return
            store.register_sites(part.sites)
            store.register_meters(part.meters)
            r = part.readings
            with store.bulk_load():  # the store's register aggregates: updated once, after the slices
                if len(r) <= _STORE_CHUNK_ROWS:
                    store.write_readings(r)
                else:
                    # in time slices: the store's transient copies stay small, and the
                    # segments do not overlap in time (no de-duplication on read)
                    ts = r.index.asi8
                    n_slices = -(-len(r) // _STORE_CHUNK_ROWS)
                    t0 = int(ts.min())
                    width = (int(ts.max()) - t0) // n_slices + 1  # integer ns: no float rounding
                    slot = (ts - t0) // width
                    for k in range(n_slices):
                        store.write_readings(r[slot == k])
            store.write_events(part.events)

        folder = out / resolved.name if out is not None else None
        try:
            if per_site or estimate_rows(resolved) > _ONE_FOLDER_MAX_ROWS:
                # one site at a time: memory stays bounded by the largest site
                summaries, n_rows, n_events = [], 0, 0
                for part in iter_simulate(resolved, progress=progress):
                    save(part)
                    if folder is not None:
                        part.to_parquet_per_site(folder)
                    summaries.append(part.summary())
                    n_rows += part.n_readings()
                    n_events += len(part.events)
                    del part
                summary = pd.concat(summaries)
                if folder is not None:
                    wheres.append(f"{folder}/<site>/ ({len(summaries)} sites)")
            else:
                result = simulate(resolved, progress=progress)
                save(result)
                if folder is not None:
                    result.to_parquet(folder)
                    wheres.append(str(folder))
                summary, n_rows, n_events = (
                    result.summary(),
                    result.n_readings(),
                    len(result.events),
                )
        finally:
            if store is not None:
                store.close()
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
    console.print(f"{n_rows:,} readings and {n_events:,} events written to {' and '.join(wheres)}")
