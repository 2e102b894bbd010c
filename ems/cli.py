"""The ``ems`` command line: a thin dispatcher.

Each subcommand lives beside the concept it drives (``ems/<package>/commands.py``)
and is imported only when used, so ``ems --help`` is fast and an optional
integration that is not installed fails only for the command that needs it.
A user's mistake (any :class:`ems.errors.EmsError`) prints one line and exits 2;
a traceback means a bug.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from ems import __version__, redaction
from ems.errors import EmsError

# name -> "module:attribute"; the attribute is a click.Command
COMMANDS: dict[str, str] = {
    "validate": "ems.model.commands:validate",
    "schema": "ems.model.commands:schema",
    "run": "ems.sim.commands:run",
    "report": "ems.accounting.commands:report",
    "intensity": "ems.accounting.commands:intensity",
    "stream": "ems.telemetry.commands:stream",
    "ingest": "ems.telemetry.commands:ingest",
    "broker": "ems.telemetry.commands:broker",
    "reconcile": "ems.telemetry.commands:reconcile",
    "modbus": "ems.modbus.commands:modbus",
    "gateway": "ems.modbus.commands:gateway",
    "calibrate": "ems.studies.commands:calibrate",
    "compare": "ems.studies.commands:compare",
    "sweep": "ems.studies.commands:sweep",
    "pathway": "ems.studies.commands:pathway",
    "measures": "ems.studies.commands:measures",
    "live": "ems.dashboard.commands:live",
    "dashboard": "ems.dashboard.commands:dashboard",
}


# name -> first paragraph of the command's help, so that ``ems --help`` imports no command
# (tests/test_model_cli.py checks that they match); a command missing here is imported
SUMMARIES: dict[str, str] = {
    "broker": "Run the embedded MQTT broker (amqtt, MQTT 3.1.1) until interrupted.",
    "calibrate": "Fit SITE_FILE's profile scales so the simulation reproduces known totals.",
    "compare": "Run (or load) SCENARIOS and print their KPIs side by side, with deltas vs the first.",
    "dashboard": "Serve the built-in dashboard of a store (read-only) until interrupted.",
    "gateway": "Poll the Modbus TCP devices of GATEWAY_YAML and publish their readings (contract v1).",
    "ingest": "Subscribe to ems/v1, check every message and write readings to a store.",
    "intensity": "Check an hourly carbon-intensity file, or model a grid region's hourly factors.",
    "live": "Simulate SCENARIO and watch it live: broker, stream, ingest, store and dashboard in one.",
    "measures": "List the measures a scenario's 'measures:' list can use, with parameters and costs.",
    "modbus": "Serve every meter of SCENARIO (a scenario file or a readings folder) as a Modbus TCP unit.",
    "pathway": "Simulate a pathway year by year and report when each group target is met.",
    "reconcile": "Compare what a publisher's ledger says it sent with what a store holds, per meter.",
    "report": "Compute energy and carbon KPIs from SOURCE (a store, a readings folder or a scenario YAML).",
    "run": "Simulate SCENARIO, write its readings into the store (and Parquet), print a summary.",
    "schema": "Export the JSON Schemas of site and scenario files (for editors and other tools).",
    "stream": "Publish SCENARIO's readings (a scenario file, or a readings folder) over MQTT.",
    "sweep": "Run the variants of SPEC_FILE in parallel; write results, the Pareto front and the best variant.",
    "validate": "Check site and scenario files without running anything.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands and their summaries, without importing them (click's layout)."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            text = SUMMARIES.get(name)
            if text is None:
                cmd = self.get_command(ctx, name)
                if cmd is None or cmd.hidden:
                    continue
                rows.append((name, cmd.get_short_help_str(limit)))
            else:  # click's own shortening, on a stand-in that holds the summary
                rows.append((name, click.Command(name, help=text).get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        mod_name, attr = target.split(":")
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("ems"):
                return None  # not built yet
            raise
        cmd = getattr(mod, attr, None)
        return cmd if isinstance(cmd, click.Command) else None


OWN_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)
"""Lowest level shown of ems's own loggers at -v count 0, 1, 2."""
LIBRARY_LEVELS = (logging.ERROR, logging.WARNING, logging.DEBUG)
"""Lowest level shown of other libraries' loggers (dask, amqtt, paho, influxdb_client, ...)."""


class _Verbosity(logging.Filter):
    """Let ems's records through from OWN_LEVELS, other libraries' from LIBRARY_LEVELS.

    Libraries set their own logger levels (distributed logs INFO whatever the root
    level says), so the handler filters: without ``-v`` a user sees ems's warnings and
    libraries' errors only.
    """

    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.own = OWN_LEVELS[min(verbose, 2)]
        self.library = LIBRARY_LEVELS[min(verbose, 2)]

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == "ems" or record.name.startswith("ems.")
        return record.levelno >= (self.own if own else self.library)


def configure_logging(verbose: int) -> None:
    """One stderr handler on the root logger, filtered by ``verbose`` (the -v count)."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_ems", False)]:
        root.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Verbosity(verbose))
    handler._ems = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(min(OWN_LEVELS[min(verbose, 2)], LIBRARY_LEVELS[min(verbose, 2)]))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ems")
@click.option("-v", "--verbose", count=True,
              help="More log output: -v ems's progress and libraries' warnings, -vv everything.")
def cli(verbose: int) -> None:
    """ems: energy and carbon monitoring simulator for manufacturing groups."""
    configure_logging(verbose)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``ems`` console script."""
    try:
        return cli.main(args=argv, prog_name="ems", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EmsError as exc:
        click.echo(f"error: {redaction.redact(str(exc))}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
