"""The one exception tree of ems.

Every error ems raises on purpose derives from :class:`EmsError`, so a caller can
catch them all, and the CLI can print one line for a user's mistake and exit
non-zero, keeping tracebacks for bugs::

    EmsError
    ├── ConfigError            a site, scenario or factor file is wrong
    │   └── LocatedError       ... with file, line and field path
    ├── ReadingError           a reading or readings frame breaks the contract
    │   └── PayloadError       ... a telemetry payload that cannot be accepted
    ├── SimulationError        the simulation cannot proceed
    ├── AccountingError        a KPI cannot be computed (missing factor, ...)
    ├── StoreError             the time-series store failed or is unavailable
    ├── TelemetryError         the MQTT side failed (broker, connection, ...)
    └── MissingExtraError      an optional integration is not installed

Messages say what was expected, what was found and where.
"""

from __future__ import annotations

__all__ = [
    "AccountingError",
    "ConfigError",
    "EmsError",
    "LocatedError",
    "MissingExtraError",
    "PayloadError",
    "ReadingError",
    "SimulationError",
    "StoreError",
    "TelemetryError",
]


class EmsError(Exception):
    """Base class of every error ems raises on purpose."""


class ConfigError(EmsError):
    """A site, scenario or factor file (or an override) is not acceptable."""


class LocatedError(ConfigError):
    """A configuration error with its location.

    Parameters
    ----------
    message : str
        What was expected and what was found.
    file : str, optional
        Path of the file.
    line : int, optional
        1-based line in the file.
    field : str, optional
        Dotted field path inside the document, e.g. ``pv.0.kwp``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.detail = message
        where = ""
        if file is not None:
            where = file if line is None else f"{file}:{line}"
        if field:
            where = f"{where}: {field}" if where else field
        super().__init__(f"{where}: {message}" if where else message)


class ReadingError(EmsError):
    """A reading, or a frame of readings, breaks the readings contract."""


class PayloadError(ReadingError):
    """A telemetry payload that cannot be accepted; ``reason`` is a short code.

    Parameters
    ----------
    reason : str
        Machine-readable code, e.g. ``malformed_json``, ``unknown_meter``.
    message : str
        Human-readable explanation: what was expected, what was found.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class SimulationError(EmsError):
    """The simulation cannot proceed with the given sites and scenario."""


class AccountingError(EmsError):
    """A KPI cannot be computed, e.g. a factor is missing for a region and year."""


class StoreError(EmsError):
    """The time-series store failed or is unavailable."""


class TelemetryError(EmsError):
    """The MQTT side failed: broker unreachable, refused, or a protocol error."""


class MissingExtraError(EmsError, ImportError):
    """An optional integration is not installed; the message gives the install command."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is needed for this feature but is not installed; "
            f"install it with: pip install 'ems[{extra}]'"
        )
