"""Play plant time in scaled real time: one clock for everything that replays readings.

``ems stream --speed`` publishes each reading when its time comes; ``ems modbus --speed``
changes each meter's registers when their time comes. Both step through the readings'
timestamps with :func:`run_paced`, on SimPy's :class:`simpy.rt.RealtimeEnvironment`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

__all__ = ["run_paced"]


def run_paced(
    times_ns: np.ndarray,
    speed: float,
    on_step: Callable[[int], None],
    *,
    stop: threading.Event,
    idle: Callable[[], None] | None = None,
    slice_s: float = 0.2,
) -> None:
    """Call ``on_step(t)`` for every ``t`` of ``times_ns`` when its time comes.

    Parameters
    ----------
    times_ns : ndarray of int [ns since the epoch]
        Sorted, distinct plant times; the first is played at once.
    speed : float
        Plant seconds per real second (3600: an hour of plant per second).
    on_step : callable
        Called with each plant time [ns].
    stop : threading.Event
        Set it (from another thread) to stop within about ``slice_s``.
    idle : callable, optional
        Called between the waiting slices (answer requests, publish marks, ...).
    slice_s : float [s]
        Longest real-time wait before ``stop`` and ``idle`` are looked at.
    """
    import simpy
    import simpy.rt

    if len(times_ns) == 0:
        return
    t0 = int(times_ns[0])
    env = simpy.rt.RealtimeEnvironment(initial_time=0, factor=1.0 / speed, strict=False)

    def proc(env: simpy.rt.RealtimeEnvironment) -> Generator[simpy.Event, Any, None]:
        for t in times_ns.tolist():
            delay = (t - t0) / 1e9 - env.now
            while delay > 0:  # in slices, so that stop is honoured quickly
                step = min(delay, slice_s * speed)
                yield env.timeout(step)
                delay -= step
                if stop.is_set():
                    return
                if idle is not None:
                    idle()
            if stop.is_set():
                return
            on_step(int(t))

    env.process(proc(env))
    env.run()
