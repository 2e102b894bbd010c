"""``ems run``: simulate a scenario and write its readings.

By default the readings go into the embedded store (``./ems-data``, see
:mod:`ems.store`), where ``ems report --store`` and the dashboard read them;
``--out DIR`` also (or, with ``--no-store``, only) writes the Parquet exchange
folder of :meth:`ems.readings.ReadingSet.to_parquet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import pandas as pd

    from ems.formatting import Table

__all__ = ["run", "summary_table"]

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

    import ems
    from ems.console import make_console
    from ems.errors import ConfigError
    from ems.formatting import plural, to_rich
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
                summaries, n_rows, n_readings, n_events = [], 0, 0, 0
                for part in iter_simulate(resolved, progress=progress):
                    save(part)
                    if folder is not None:
                        part.to_parquet_per_site(folder)
                    summaries.append(part.summary())
                    n_rows += part.n_values()
                    n_readings += part.n_readings()
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
                summary, n_rows, n_readings, n_events = (
                    result.summary(),
                    result.n_values(),
                    result.n_readings(),
                    len(result.events),
                )
        finally:
            if store is not None:
                store.close()
    if quiet:
        return
    console.print(to_rich(summary_table(resolved, summary)))
    console.print(
        f"{plural(n_readings, 'reading')} ({plural(n_rows, 'value')}) and {plural(n_events, 'event')} "
        f"written to {' and '.join(wheres)}"
    )


_SUMMARY = (
    # summary column, shown as, scale (kWh -> MWh)
    ("load_kwh", "load_mwh", 1e-3),
    ("grid_import_kwh", "grid_import_mwh", 1e-3),
    ("grid_export_kwh", "grid_export_mwh", 1e-3),
    ("pv_kwh", "pv_mwh", 1e-3),
    ("chp_kwh", "chp_mwh", 1e-3),
    ("pv_specific_yield_kwh_per_kwp", "pv_kwh_per_kwp", 1.0),
    ("self_consumption", "self_consumption", 1.0),
    ("peak_import_kw", "peak_import_kw", 1.0),
    ("battery_cycles", "battery_efc", 1.0),
    ("purchased_heat_gj", "steam_gj", 1.0),
    ("gas_m3", "natural_gas_m3", 1.0),
    ("diesel_kg", "diesel_kg", 1.0),
    ("gasoline_kg", "gasoline_kg", 1.0),
)
_SUMMARY_LABELS = {
    "load_mwh": "load", "grid_import_mwh": "import", "grid_export_mwh": "export", "pv_mwh": "PV",
    "chp_mwh": "CHP", "pv_kwh_per_kwp": "PV yield", "self_consumption": "PV self-cons.",
    "peak_import_kw": "peak import", "battery_efc": "battery", "steam_gj": "steam", "natural_gas_m3": "gas",
    "diesel_kg": "diesel", "gasoline_kg": "gasoline",
}


def summary_table(resolved: Any, summary: pd.DataFrame) -> Table:
    """The per-site summary of a run, by the formatting rule (``ems.formatting``).

    Electricity balances across a row: load = import - export + PV + CHP (+ battery
    discharge - charge, a few per cent of losses).
    """
    import pandas as pd

    from ems.formatting import table_of

    df = pd.DataFrame({shown: summary[col] * scale for col, shown, scale in _SUMMARY}, index=summary.index)
    df = df.rename_axis("site").reset_index()
    title = f"{resolved.name}: {resolved.start} to {resolved.end}, {resolved.resolution_s} s, seed {resolved.seed}"
    return table_of(df, title, labels=_SUMMARY_LABELS)
