"""End-to-end recovery of readings a broker acknowledged and then lost (contract v1, additive).

A PUBACK only says the *broker* has a message; mosquitto killed with SIGKILL
loses what it acknowledged since its last persistence snapshot. Two messages
close that window without an operator (``docs/telemetry.md``, "Backfill"):

``ems/v1/{site}/_hwm`` (retained, QoS 1, publisher -> ingestors)
    The high-water mark: per meter the last seq up to which the broker
    acknowledged everything, and when it was sent:
    ``{"v": 1, "site": "alpha", "sent": "2026-01-05T10:00:00Z", "last_seq": {"grid": 672}}``.
    It reveals a lost *tail* (no later message shows the gap). ``sent`` lets an
    ingestor ignore an older copy (a broker restored from a snapshot may deliver one late).
``ems/v1/{site}/_backfill`` (QoS 1, ingestor -> publisher)
    A request to publish a meter's readings ``from_seq..to_seq`` (inclusive)
    again: ``{"v": 1, "site": "alpha", "meter": "grid", "from_seq": 5, "to_seq": 9}``.
    The publisher re-publishes them with the same seq, ts and values, so the
    idempotent store absorbs any repeat.

This module holds the pure parts: the codecs, :func:`ranges`, the ingestor's
:class:`GapPlanner` (what to request, when) and the publisher's
:func:`answer_slices` (which of its readings answer a request).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ems.errors import PayloadError
from ems.telemetry import topics
from ems.telemetry.codec.wire import (
    MAX_SEQ,
    dumps,
    format_ts,
    load_message,
    parse_ts,
    short_repr,
    typed_field,
)

__all__ = [
    "BackfillPolicy",
    "BackfillRequest",
    "GapPlanner",
    "HighWaterMark",
    "answer_slices",
    "answerable",
    "decode_hwm",
    "decode_request",
    "encode_hwm",
    "encode_request",
    "ranges",
]

log = logging.getLogger(__name__)

MAX_HWM_METERS = 10_000
"""Most meters in one high-water mark message."""


@dataclass(frozen=True, slots=True)
class BackfillRequest:
    """Publish ``site/meter`` readings ``from_seq..to_seq`` (inclusive) again."""

    site: str
    meter: str
    from_seq: int
    to_seq: int

    @property
    def count(self) -> int:
        """Sequence numbers asked for."""
        return self.to_seq - self.from_seq + 1


def encode_request(req: BackfillRequest) -> bytes:
    """Encode a backfill request (checks the identifiers and the range)."""
    topics.validate_id(req.site, "site")
    topics.validate_id(req.meter, "meter")
    if not 0 <= req.from_seq <= req.to_seq:
        raise PayloadError("bad_range", f"expected 0 <= from_seq <= to_seq, found {req.from_seq}..{req.to_seq}")
    return dumps({"v": 1, "site": req.site, "meter": req.meter, "from_seq": req.from_seq, "to_seq": req.to_seq})


def decode_request(site: str, payload: bytes) -> BackfillRequest:
    """Decode a backfill request received on ``ems/v1/{site}/_backfill``.

    Raises
    ------
    PayloadError
        The codec's reasons, ``bad_topic`` (payload site differs from the topic's,
        bad meter id) or ``bad_range`` (not ``0 <= from_seq <= to_seq``).
    """
    where = f"backfill request of {site}"
    obj = load_message(payload, where, site=site)
    meter = topics.validate_id(typed_field(obj, "meter", str, where), f"{where}.meter")
    a = typed_field(obj, "from_seq", int, where)
    b = typed_field(obj, "to_seq", int, where)
    if not 0 <= a <= b <= MAX_SEQ:
        raise PayloadError("bad_range", f"{where}: expected 0 <= from_seq <= to_seq <= 2**63-1, found {short_repr(a)}..{short_repr(b)}")
    return BackfillRequest(site, meter, a, b)


@dataclass(frozen=True)
class HighWaterMark:
    """A site's high-water mark: per meter the last seq acknowledged without a hole; ``sent_ns`` [ns] (0: not given)."""

    site: str
    last_seq: dict[str, int]
    sent_ns: int = 0


def encode_hwm(site: str, last_seq: Mapping[str, int], sent_ns: int) -> bytes:
    """Encode a site's high-water mark: per meter, the last seq acknowledged without a hole, sent at ``sent_ns`` [ns]."""
    topics.validate_id(site, "site")
    return dumps({"v": 1, "site": site, "sent": format_ts(sent_ns),
                   "last_seq": {topics.validate_id(m, "meter"): int(s) for m, s in sorted(last_seq.items())}})


def decode_hwm(site: str, payload: bytes, *, now_ns: int | None = None, max_future_s: float = 300.0) -> HighWaterMark:
    """Decode a high-water mark received on ``ems/v1/{site}/_hwm`` (``sent`` is optional).

    Raises
    ------
    PayloadError
        The codec's reasons, ``bad_topic``, ``wrong_type`` (a seq not an integer >= 0)
        or ``oversized`` (more than :data:`MAX_HWM_METERS` meters).
    """
    where = f"high-water mark of {site}"
    obj = load_message(payload, where, site=site)
    marks = typed_field(obj, "last_seq", dict, where)
    if len(marks) > MAX_HWM_METERS:
        raise PayloadError("oversized", f"{where}.last_seq: expected at most {MAX_HWM_METERS} meters, found {len(marks)}")
    out: dict[str, int] = {}
    for m, s in marks.items():
        topics.validate_id(m, f"{where}.last_seq meter")
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise PayloadError("wrong_type", f"{where}.last_seq.{m}: expected an integer >= 0, found {short_repr(s)}")
        if s > MAX_SEQ:
            raise PayloadError("out_of_range", f"{where}.last_seq.{m}: expected at most 2**63-1, found {short_repr(s)}")
        out[m] = s
    sent = parse_ts(obj["sent"], f"{where}.sent") if "sent" in obj else 0
    if now_ns is not None and sent > now_ns + int(max_future_s * 1e9):
        # a mark from the future would make every later one look stale
        raise PayloadError("future_timestamp", f"{where}.sent: {obj['sent']} is more than {max_future_s:g} s after now")
    return HighWaterMark(site, out, sent)


def ranges(seqs: Iterable[int], max_len: int = 0) -> list[tuple[int, int]]:
    """Compress sequence numbers into sorted inclusive ``(first, last)`` runs (each at most ``max_len`` long if > 0)."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1 and (max_len <= 0 or s - out[-1][0] < max_len):
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def answer_slices(seq: np.ndarray, from_seq: int, to_seq: int, batch: int) -> list[tuple[int, int]]:
    """Index slices ``[i, j)`` of a sorted ``seq`` array within ``from_seq..to_seq``, at most ``batch`` long."""
    i = int(np.searchsorted(seq, from_seq, side="left"))
    j = int(np.searchsorted(seq, to_seq, side="right"))
    b = max(int(batch), 1)
    return [(k, min(k + b, j)) for k in range(i, j, b)]


def answerable(site: str, raw: bytes, acked: Callable[[str], int | None], limit: int) -> BackfillRequest | None:
    """A backfill request a publisher received, cut to what it may answer; None when nothing (logged).

    The one rule of every publisher (``ems stream``, ``ems gateway``): answer only up to
    what the broker acknowledged (later readings are still to come in the stream) and at
    most ``limit`` readings a request.

    Parameters
    ----------
    site : str
        The site whose ``_backfill`` topic it came on.
    raw : bytes
        The request.
    acked : callable
        ``acked(meter)``: the meter's ledger ``last_seq`` (every reading up to it was
        acknowledged), or None for a meter this publisher does not have.
    limit : int
        Most readings answered for one request.
    """
    try:
        req = decode_request(site, raw)
    except PayloadError as exc:
        log.warning("site %s: ignored a backfill request: %s", site, exc)
        return None
    last = acked(req.meter)
    if last is None:
        log.warning("site %s: backfill request for unknown meter %r ignored", site, req.meter)
        return None
    top = min(req.to_seq, last, req.from_seq + limit - 1)
    return BackfillRequest(site, req.meter, req.from_seq, top) if top >= req.from_seq else None


@dataclass
class BackfillPolicy:
    """When an ingestor asks for readings again.

    Attributes
    ----------
    grace_s : float [s]
        A gap (or a tail behind the high-water mark) must persist this long
        before it is requested: reordered or still-queued messages come first.
    retry_s : float [s]
        Ask again for what is still missing after this long.
    max_tries : int
        Requests per meter without progress before giving up (logged; reconcile names it).
    max_range : int
        Most sequence numbers in one request.
    max_requests : int
        Most requests per planning round (the rest wait for the next round).
    hwm_refresh_s : float [s]
        How often the ingestor subscribes again to the retained high-water marks: a
        broker whose queue for the ingestor was full dropped the marks published meanwhile
        (with the readings), but keeps the latest one retained.
    """

    grace_s: float = 2.0
    retry_s: float = 5.0
    max_tries: int = 5
    max_range: int = 5000
    max_requests: int = 50
    hwm_refresh_s: float = 5.0


@dataclass
class _KeyState:
    since: float
    last_req: float = float("-inf")
    tries: int = 0
    wanted: int = 0


Key = tuple[str, str]


@dataclass
class GapPlanner:
    """Decide which backfill requests to send (pure: the caller passes the time and the state).

    The ingestor calls :meth:`plan` every round with its :class:`SeqTracker` state,
    the high-water marks received, and when each meter last sent data.
    """

    policy: BackfillPolicy = field(default_factory=BackfillPolicy)
    state: dict[Key, _KeyState] = field(default_factory=dict)
    gave_up: int = 0

    def wanted(
        self, key: Key, missing: set[int] | None, hi: int | None, hwm: int | None, quiet: bool
    ) -> set[int]:
        """Sequence numbers of ``key`` to ask for: the gaps, plus the tail up to ``hwm`` when the meter is quiet."""
        out = set(missing) if missing else set()
        if quiet and hi is not None and hwm is not None and hwm > hi:
            out.update(range(hi + 1, min(hwm, hi + self.policy.max_range * self.policy.max_requests) + 1))
        return out

    def plan(
        self,
        now: float,
        missing: Mapping[Key, set[int]],
        hi: Mapping[Key, int],
        hwm: Mapping[Key, int],
        last_rx: Mapping[Key, float],
    ) -> list[BackfillRequest]:
        """Return the requests due at ``now`` [s, monotonic] and record them as sent."""
        p = self.policy
        out: list[BackfillRequest] = []
        for key in sorted(set(missing) | set(hwm)):
            quiet = now - last_rx.get(key, float("-inf")) >= p.grace_s
            want = self.wanted(key, missing.get(key), hi.get(key), hwm.get(key), quiet)
            st = self.state.get(key)
            if not want:
                self.state.pop(key, None)
                continue
            if st is None:
                self.state[key] = _KeyState(since=now, wanted=len(want))
                continue
            if len(want) < st.wanted:  # progress: the budget of tries starts again
                st.tries = 0
            st.wanted = len(want)
            if now - st.since < p.grace_s or now - st.last_req < p.retry_s:
                continue
            if st.tries >= p.max_tries:
                continue
            st.tries += 1
            st.last_req = now
            if st.tries == p.max_tries:
                self.gave_up += 1
            for a, b in ranges(want, p.max_range):
                if len(out) >= p.max_requests:
                    break
                out.append(BackfillRequest(key[0], key[1], a, b))
        return out
