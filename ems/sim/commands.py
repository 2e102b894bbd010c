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
    from rich.console import Console

    from ems.formatting import Table

__all__ = ["run", "summary_table"]


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
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes to simulate in (default: one per core, as memory allows; 1: this one).",
)
def run(
    scenario: Path,
    store_url: str | None,
    no_store: bool,
    out: Path | None,
    seed: int | None,
    quiet: bool,
    per_site: bool,
    workers: int | None,
) -> None:
    """Simulate SCENARIO, write its readings into the store (and Parquet), print a summary."""
    import dataclasses
    import gc

    import ems
    from ems.errors import ConfigError
    from ems.sim.runner import run_scenario
    from ems.store import DEFAULT_URL

    if no_store and out is None:
        raise ConfigError("--no-store needs --out DIR: the readings must go somewhere")
    from ems.studies.measures import size_measures

    resolved = size_measures(
        ems.load_scenario(str(scenario))
    )  # measures sized from KPIs: a study step
    if seed is not None:
        resolved = dataclasses.replace(resolved, seed=seed)
    # the modules and the scenario live as long as the process: the cyclic collector
    # need not walk them again (nor at exit), about 7 % of a 15-minute year's CPU
    gc.freeze()
    with _ProgressBar(resolved.name, quiet) as bar:
        result = run_scenario(
            resolved,
            store=None if no_store else (store_url or DEFAULT_URL),
            out=out,
            per_site=per_site,
            workers=workers,
            progress=bar.progress,
            announce=bar.announce,
        )
    if quiet:
        return
    from ems.formatting import plural, to_rich

    console = bar.console
    console.print(to_rich(summary_table(resolved, result.summary)))
    console.print(
        f"{plural(result.n_readings, 'reading')} ({plural(result.n_values, 'value')}) and "
        f"{plural(result.n_events, 'event')} written to {' and '.join(result.written_to)}"
    )


class _ProgressBar:
    """One bar per site; refreshed by the progress calls, not by a thread (workers are forked).

    Nothing of rich is imported when quiet.
    """

    def __init__(self, name: str, quiet: bool) -> None:
        self.name, self.quiet = name, quiet
        self.bar: Any = None
        self.tasks: dict[str, int] = {}

    @property
    def console(self) -> Console:
        """The bar's console (not quiet only)."""
        assert self.bar is not None
        console: Console = self.bar.console
        return console

    def __enter__(self) -> _ProgressBar:
        if not self.quiet:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            from ems.console import make_console

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=make_console(),
                transient=True,
                auto_refresh=False,
            )
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def progress(self, site: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if site not in self.tasks:
            self.tasks[site] = int(self.bar.add_task(site, total=total))
        self.bar.update(self.tasks[site], completed=done, refresh=True)

    def announce(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(f"{self.name}: simulating {text}")


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
    "load_mwh": "load",
    "grid_import_mwh": "import",
    "grid_export_mwh": "export",
    "pv_mwh": "PV",
    "chp_mwh": "CHP",
    "pv_kwh_per_kwp": "PV yield",
    "self_consumption": "PV self-cons.",
    "peak_import_kw": "peak import",
    "battery_efc": "battery",
    "steam_gj": "steam",
    "natural_gas_m3": "gas",
    "diesel_kg": "diesel",
    "gasoline_kg": "gasoline",
}


def summary_table(resolved: Any, summary: pd.DataFrame) -> Table:
    """The per-site summary of a run, by the formatting rule (``ems.formatting``).

    Electricity balances across a row: load = import - export + PV + CHP (+ battery
    discharge - charge, a few per cent of losses).
    """
    import pandas as pd

    from ems.formatting import table_of

    df = pd.DataFrame(
        {shown: summary[col] * scale for col, shown, scale in _SUMMARY}, index=summary.index
    )
    df = df.rename_axis("site").reset_index()
    title = f"{resolved.name}: {resolved.start} to {resolved.end}, {resolved.resolution_s} s, seed {resolved.seed}"
    return table_of(df, title, labels=_SUMMARY_LABELS)
