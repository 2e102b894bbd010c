"""Dead letters: where a rejected message goes, durably, with its reason; bounded in size.

A dead letter is one JSON line::

    {"received": "2026-11-25T18:30:00.123456Z", "reason": "unknown_quantity",
     "message": "unknown_quantity: ...", "topic": "ems/v1/alpha/grid",
     "payload_bytes": 812, "payload_sha256": "9f86d0...", "payload_b64": "eyJ2IjogMSwg...",
     "payload_truncated": false}

It keeps the whole payload up to ``keep_bytes`` (16 KiB by default: a data message of a
hundred readings fits), else only that prefix; always the payload's size and SHA-256, so a
flood of large messages cannot fill the disk or the broker.

:class:`DeadLetters` makes dead letters durable: appended to the JSONL file and
``fsync``\\ ed (a partial line left by a failed write is cut off again), and republished to
``ems/v1/_deadletter/{reason}`` (QoS 1; a refusal is logged). Without a file, a dead letter
is durable once the broker acknowledged its republication; only then is the rejected
message acknowledged.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ems.durable import write_fsync
from ems.telemetry import topics
from ems.telemetry.session import Ack, Message

__all__ = ["DEFAULT_KEEP_BYTES", "DeadLetter", "DeadLetters", "Publishes", "payload_record", "record"]

log = logging.getLogger(__name__)

DEFAULT_KEEP_BYTES = 16 * 1024
"""Payload bytes a dead letter keeps [B]; beyond that only the prefix, the size and the SHA-256."""
_MESSAGE_CHARS = 2000


def payload_record(
    reason: str,
    message: str,
    topic: str,
    payload: bytes,
    received_s: float,
    *,
    size: int | None = None,
    sha256: str = "",
    keep_bytes: int = DEFAULT_KEEP_BYTES,
) -> dict[str, Any]:
    """The record of a rejected message (JSONL file and ``ems/v1/_deadletter/{reason}``), bounded in size.

    Parameters
    ----------
    reason, message : str
        The short code and the full explanation (cut at 2,000 characters).
    topic : str
        Where the message was (or would have been) published.
    payload : bytes
        The message, or the prefix of it that was held (then give ``size`` and ``sha256``).
    received_s : float [s since the epoch]
        When it was received (or read, for a gateway).
    size : int [B], optional
        The whole payload's size (default ``len(payload)``).
    sha256 : str, optional
        Hex SHA-256 of the whole payload (default: of ``payload``).
    keep_bytes : int [B]
        Payload bytes kept (base64); beyond, the record says ``payload_truncated``.
    """
    kept = payload[:keep_bytes]
    total = len(payload) if size is None else size
    return {
        "received": dt.datetime.fromtimestamp(received_s, dt.UTC).isoformat().replace("+00:00", "Z"),
        "reason": reason,
        "message": message if len(message) <= _MESSAGE_CHARS else message[:_MESSAGE_CHARS] + "...",
        "topic": topic,
        "payload_bytes": total,
        "payload_sha256": sha256 or hashlib.sha256(payload).hexdigest(),
        "payload_b64": base64.b64encode(kept).decode("ascii"),
        "payload_truncated": total > len(kept),
    }


def record(msg: Message, reason: str, text: str, keep_bytes: int = DEFAULT_KEEP_BYTES) -> dict[str, Any]:
    """The dead-letter record of ``msg`` rejected with ``reason`` (:func:`payload_record`)."""
    return payload_record(reason, text, msg.topic, msg.payload, msg.received, size=msg.size,
                                   sha256=msg.sha256, keep_bytes=keep_bytes)


class Publishes(Protocol):
    """What dead letters are republished through: the ingestor's :class:`~ems.telemetry.session.MqttSession`,
    or a gateway's site connection. ``on_done(accepted)`` is called once the broker answered."""

    def publish(self, topic: str, payload: bytes, on_done: Callable[[bool], None] | None = None,
                qos: int = 1) -> None:
        """Publish ``payload`` on ``topic``."""
        ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message as it is kept until it is durable: its acknowledgement, reason and JSON line."""

    ack: Ack
    reason: str
    line: bytes

    @classmethod
    def of(cls, msg: Message, reason: str, text: str, keep_bytes: int = DEFAULT_KEEP_BYTES) -> DeadLetter:
        """Build it (the payload is not held any longer: only what the record keeps)."""
        line = json.dumps(record(msg, reason, text, keep_bytes), ensure_ascii=True).encode()
        return cls(Ack.of(msg), reason, line)

    @classmethod
    def of_record(cls, rec: dict[str, Any]) -> DeadLetter:
        """A dead letter of a record made elsewhere (:func:`payload_record`; a gateway's
        reading that was never received as a message, so nothing is acknowledged)."""
        return cls(Ack(0, 0, 0.0), str(rec["reason"]), json.dumps(rec, ensure_ascii=True).encode())


class DeadLetters:
    """Durable dead letters: a JSONL file (optional) and the broker's dead-letter topic.

    Parameters
    ----------
    path : path, optional
        JSONL file; None: durable only once the broker acknowledged the republication.
    session : Publishes
        Where dead letters are republished (``ems/v1/_deadletter/{reason}``).
    """

    def __init__(self, path: Path | None, session: Publishes) -> None:
        self.path = path
        self.session = session
        if path is not None:
            _end_cut_line(path)
        self._acked: list[Ack] = []
        self._refused: list[tuple[float, DeadLetter]] = []
        self.waiting = 0

    def write(self, letters: list[DeadLetter]) -> list[Ack]:
        """Make dead letters durable; return the acknowledgements that may be sent now.

        Raises
        ------
        OSError
            The file could not be written (nothing of this call stays in it); try again later.
        """
        if not letters:
            return []
        if self.path is not None:
            _append(self.path, b"".join(d.line + b"\n" for d in letters))
        for d in letters:
            self._publish(d)
        return [d.ack for d in letters] if self.path is not None else []

    def _publish(self, d: DeadLetter) -> None:
        topic = topics.deadletter_topic(d.reason)
        if self.path is not None:  # the file is what is durable; the topic is a notification
            self.session.publish(topic, d.line)
            return
        self.waiting += 1

        def done(ok: bool) -> None:
            self.waiting -= 1
            if ok:
                self._acked.append(d.ack)
            else:
                self._refused.append((time.monotonic() + 5.0, d))

        self.session.publish(topic, d.line, done)

    def settled(self) -> list[Ack]:
        """Acknowledgements whose dead letter the broker has taken since the last call (no file)."""
        out, self._acked = self._acked, []
        return out

    def retry_refused(self, now: float) -> None:
        """Republish the dead letters the broker refused (no file) once their back-off passed."""
        due = [d for t, d in self._refused if t <= now]
        if due:
            self._refused = [(t, d) for t, d in self._refused if t > now]
            for d in due:
                self._publish(d)


def _end_cut_line(path: Path) -> None:
    """End a line an earlier process left cut (killed while appending), so the next record starts afresh."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("dead-letter file %s: cannot read its end (%s)", path, exc)
        return
    if last != b"\n":
        log.warning("dead-letter file %s ends in a cut line (a process was killed while writing it); ended it", path)
        try:
            _append(path, b"\n")
        except OSError as exc:
            log.warning("dead-letter file %s: could not end the cut line (%s)", path, exc)


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` and fsync; on failure cut the file back to where it was, then raise."""
    with open(path, "ab", buffering=0) as f:
        start = f.tell()
        try:
            write_fsync(f, data)
        except OSError:
            try:
                f.truncate(start)
            except OSError:  # pragma: no cover - a cut line stays; readers skip what does not parse
                log.warning("dead-letter file %s: could not cut a partial line at byte %d", path, start)
            raise
