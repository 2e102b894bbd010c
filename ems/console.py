"""The rich console every command prints through."""

from __future__ import annotations

from rich.console import Console

__all__ = ["make_console"]

PIPE_WIDTH = 160
"""Width used when output is not a terminal (piped, captured), so tables are not squeezed."""


def make_console(*, quiet: bool = False, stderr: bool = False) -> Console:
    """Return a console; wide when not attached to a terminal."""
    console = Console(quiet=quiet, stderr=stderr)
    if not console.is_terminal:
        console = Console(quiet=quiet, stderr=stderr, width=max(console.width, PIPE_WIDTH))
    return console
