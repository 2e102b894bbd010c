"""When the gateway polls a meter: just after its interval ends, once per interval, with a retry.

A meter **without a clock** is polled at the ends of its intervals (multiples of
``interval_s`` since the Unix epoch, UTC) and each reading is stamped with that end.

A meter **with a clock** (a ``ts`` register) changes its registers when its interval ends,
at a moment the gateway does not know in advance: a real meter's clock may be off, and a
simulated one (``ems modbus --speed``) runs on its own time. Polling at fixed multiples of
``poll_s`` then misses intervals whenever the change falls near the poll: one poll sees the
interval just before the change, the next one sees the interval after the following change
(the benchmark saw 11,271 readings of 15,000 intervals at one poll per interval). So
:class:`PollClock` learns the meter's phase from what the polls see:

* a poll that sees a new interval sets the next one a period later, minus a small
  ``creep``, so the polls follow the changes and drift towards them;
* the first four polls come every half period, so the phase is known after about two
  intervals;
* when the polls come about once per interval (the time between two changes seen is under
  1.8 periods, retries included) and a poll sees no new interval, it was early: it is tried again ``retry``
  later, inside the interval, at most ``max_retries`` times, and the schedule moves with it.

In the steady state a poll comes between ``offset`` and about ``retry`` after each change;
each retry pushes the schedule later by up to ``retry`` and each interval pulls it earlier by
``creep``, so a few polls in a hundred are retries when the reads are served on time, more
when they queue (10-15 % in ``bench/results/gateway.md``: 500 meters on three connections).
Pure logic on the times the caller passes (seconds since the epoch): no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PollClock"]

_LOCK = 1.8
"""Changes seen less than this many periods apart (retries included) mean one poll per interval."""


@dataclass
class PollClock:
    """The poll schedule of one meter (see module docs).

    Attributes
    ----------
    period : float [s]
        Time between polls (``poll_s``).
    has_clock : bool
        The meter says which interval its registers hold; without a clock the polls are
        at the ends of its intervals exactly (``offset`` and retries do not apply).
    offset : float [s]
        A poll's due time after the expected change.
    retry : float [s]
        Wait before trying again after a poll that came before the change.
    creep : float [s]
        How much earlier each next poll is set after one that saw a new interval.
    max_retries : int
        Retries in one interval before the schedule stops expecting a change every period.
    warmup : int
        Polls at half the period at the start (a meter with a clock), to learn its phase.
    due : float [s since the epoch]
        When the next poll is due.
    """

    period: float
    has_clock: bool
    offset: float = 0.0
    retry: float = 0.0
    creep: float = 0.0
    max_retries: int = 3
    warmup: int = 0
    due: float = 0.0
    wall_interval: float | None = None
    retries: int = 0
    _last_new: float | None = None

    @classmethod
    def start(cls, period: float, has_clock: bool, now: float) -> PollClock:
        """A schedule whose first poll is at the next multiple of ``period`` (plus the offset)."""
        offset = min(0.05 * period, 0.5) if has_clock else 0.0
        first = math.floor(now / period) * period + period + offset
        return cls(period, has_clock, offset, period / 4 if has_clock else 0.0, period / 100 if has_clock else 0.0,
                   warmup=4 if has_clock else 0, due=first)

    @property
    def locked(self) -> bool:
        """True when the meter is polled about once per interval (so every on-time poll should see a new one)."""
        return self.wall_interval is not None and self.wall_interval < _LOCK * self.period

    def stamp(self) -> float:
        """The interval end a meter without a clock is read for [s since the epoch]: the due time less the offset."""
        return self.due - self.offset

    def _step(self) -> float:
        """The next period: half of it for the first polls of a meter with a clock (its phase is learnt sooner)."""
        if self.warmup > 0:
            self.warmup -= 1
            return self.period / 2
        return self.period

    def next(self, now: float, outcome: str, advanced: int = 1) -> float:
        """Set and return the next due time after a poll that ended at ``now``.

        Parameters
        ----------
        now : float [s since the epoch]
        outcome : str
            ``new`` (the poll saw a new interval, ``advanced`` intervals after the last one),
            ``old`` (still the interval seen before) or ``failed`` (no values).
        """
        if outcome == "new":
            if self._last_new is not None:  # from due times: the reads' queueing would blur it
                self.wall_interval = (self.due - self._last_new) / max(advanced, 1)
            self._last_new, self.retries = self.due, 0
            self.due += self._step() - (self.creep if self.locked else 0.0)
        elif outcome == "old" and self.has_clock and self.locked and self.retries < self.max_retries:
            self.retries += 1
            self.due = now + self.retry  # early: try again inside the interval; the schedule moves with it
        else:
            if outcome == "old" and self.retries >= self.max_retries:
                self.wall_interval, self.retries = None, 0  # the meter stopped changing every period
            self.due += self._step()
        if self.due < now:  # fell behind: skip the polls missed, keep the phase
            self.due += math.ceil((now - self.due) / self.period) * self.period
        return self.due
