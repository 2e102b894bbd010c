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


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ems")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """ems: energy and carbon monitoring simulator for manufacturing groups."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
