"""Keep secrets out of every log line: the broker password and the InfluxDB token.

ems reads a secret only from the environment or a file named there (never from a
URL, an argument or a site file) and registers it here (:func:`register`). From then
on every log record of the process, whoever logs it (ems, influxdb_client, paho,
urllib3), has each registered secret replaced by ``***`` in its message, its
arguments and its traceback text before any handler sees it: a record factory
(:func:`logging.setLogRecordFactory`) does it when the record is made. A server that
echoes request headers back in an error (influxdb_client logs the whole response)
therefore cannot make the token appear in a log. :func:`redact` does the same for
text printed directly (the CLI's one-line errors).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["REDACTED", "redact", "register"]

REDACTED = "***"
_MIN_LEN = 4
_secrets: frozenset[str] = frozenset()
_lock = threading.Lock()
_installed = False


def register(secret: str | None) -> None:
    """Remember ``secret`` (ignored if empty or shorter than 4 characters) and redact it from now on."""
    global _secrets
    if not secret or len(secret) < _MIN_LEN:
        return
    with _lock:
        if secret not in _secrets:
            _secrets = _secrets | {secret}
        _install()


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for s in _secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def _install() -> None:
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _secrets:
            _scrub(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def _scrub(record: logging.LogRecord) -> None:
    """Format the message now, without secrets; the same for the traceback and stack text."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: leave it to logging's own error report
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:  # formatters print exc_text when it is set
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
