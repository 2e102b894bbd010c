"""Run a scenario into a store and Parquet folders: the library function behind ``ems run``.

:func:`run_scenario` simulates the sites of a scenario and delivers each site's
readings, events and metadata as soon as that site is done, so memory is bounded
by the sites in flight, not by the scenario:

* into a store (:func:`ems.store.open_store`): the embedded store takes the
  readings as Arrow tables of whole steps in time order
  (:func:`ems.sim.meters.site_tables`, at most :data:`STORE_SLICE_ROWS` rows a
  segment), other stores the tidy frame of the same slices;
* into Parquet (:meth:`ems.readings.ReadingSet.to_parquet`): one folder
  ``OUT/<scenario>/`` when the scenario is small, else one per site
  ``OUT/<scenario>/<site>/``.

Sites are independent (each has its own random streams), so they are simulated
in parallel worker processes, one per core, as many as memory allows
(:func:`plan_workers`); the readings are the same whatever the number of processes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ems.errors import ConfigError, EmsError, SimulationError
from ems.model.scenario import ResolvedScenario
from ems.sim.engine import SimulationResult, _check, estimate_rows, simulate_site
from ems.sim.meters import site_tables

if TYPE_CHECKING:
    from ems.store.base import Store

__all__ = ["ONE_FOLDER_MAX_ROWS", "STORE_SLICE_ROWS", "RunResult", "plan_workers", "run_scenario"]

ONE_FOLDER_MAX_ROWS = 30_000_000
"""Above this many reading rows, Parquet output is written one folder per site."""
STORE_SLICE_ROWS = 1_000_000
"""Most rows per store write, one segment of the embedded store: bounds the memory a write
takes (a one-minute site is 15 M rows; 1.5 M rows a write cost ~30 MiB more a process).
The writes of a site are one bulk load, so its register aggregates are published once
whatever the number of writes."""
_WORKER_BYTES_PER_STEP = 1_000
"""Memory of one site in flight per simulated step (arrays, series, a slice) [B]."""
_WORKER_BASE_BYTES = 200 * 2**20
"""Memory of a worker process before it simulates [B]."""
_TRIM_STEPS = 100_000
"""Sites with more steps than this give their memory back when done (:func:`_trim_heap`)."""
_MIN_PARALLEL_STEPS = 100_000
"""Fewer site steps than this are simulated in-process: starting workers would cost more."""

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_scenario` did.

    Attributes
    ----------
    summary : DataFrame
        Per-site totals, one row per site in scenario order (columns of
        :meth:`ems.sim.engine.SimulationResult.summary`).
    n_readings : int
        Readings written (one meter's values at one time, ``docs/glossary.md``).
    n_values : int
        Values written (rows of the tidy frame: one per quantity of a reading).
    n_events : int
        Event rows written.
    written_to : list of str
        Where the readings went (store URL, Parquet folders).
    workers : int
        Processes that simulated (1: this process).
    """

    summary: pd.DataFrame
    n_readings: int
    n_values: int
    n_events: int
    written_to: list[str]
    workers: int


@dataclass(frozen=True)
class _Plan:
    scenario: ResolvedScenario
    store_url: str | None
    site_folder: Path | None  # OUT/<scenario>/ when each site gets its own folder
    base_dir: str | None
    trim: bool = False  # give memory back after each site (large sites only: it costs faults)


@dataclass(frozen=True)
class _SiteDone:
    summary: pd.DataFrame
    n_readings: int
    n_values: int
    n_events: int


def run_scenario(
    scenario: ResolvedScenario,
    *,
    store: str | os.PathLike[str] | None = "./ems-data",
    out: str | os.PathLike[str] | None = None,
    per_site: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
    base_dir: str | None = None,
) -> RunResult:
    """Simulate ``scenario``, write its readings into a store and/or Parquet; say what was done.

    Parameters
    ----------
    scenario : ResolvedScenario
    store : str or path, optional
        Store URL or path (:func:`ems.store.open_store`); None: no store.
    out : str or path, optional
        Parquet output root; the readings go to ``out/<scenario name>/``.
    per_site : bool
        One Parquet folder per site even when the scenario is small.
    workers : int, optional
        Processes to simulate in; default :func:`plan_workers`' choice.
    progress : callable, optional
        ``progress(site_id, steps_done, steps_total)`` as sites advance.
    announce : callable, optional
        Called once with a line saying how the run is done (sites, processes).
    base_dir : str, optional
        Folder for relative weather-file paths (default: the scenario file's).

    Raises
    ------
    ConfigError
        Neither a store nor ``out``, or a bad ``workers``; and as the simulation
        and the store raise (:class:`SimulationError`, :class:`StoreError`).
    """
    if store is None and out is None:
        raise ConfigError("run_scenario: the readings must go somewhere; expected a store or out")
    base_dir = _check(scenario, base_dir)
    url = os.fspath(store) if store is not None else None
    folder = Path(out) / scenario.name if out is not None else None
    one_folder = folder is not None and not per_site
    one_folder = one_folder and estimate_rows(scenario) <= ONE_FOLDER_MAX_ROWS
    n, why = (1, "one Parquet folder") if one_folder else _plan(scenario, workers)
    if url is not None:
        _open(url).close()  # create or check the store before any work
    if announce is not None:
        where = "in this process" if n == 1 else f"in {n} processes"
        announce(f"{len(scenario.sites)} site(s) {where} ({why})")
    steps = estimate_rows(scenario) // 40 // len(scenario.sites)
    plan = _Plan(scenario, url, None if one_folder else folder, base_dir, steps > _TRIM_STEPS)
    if n == 1:
        done = _run_here(plan, progress, folder if one_folder else None)
    else:
        done = _run_parallel(plan, n, progress)
    written = [url] if url is not None else []
    if folder is not None:
        written.append(str(folder) if one_folder else f"{folder}/<site>/ ({len(done)} sites)")
    return _result(done, written, n)


def _result(done: list[_SiteDone], written: list[str], workers: int) -> RunResult:
    return RunResult(
        summary=pd.concat([d.summary for d in done]),
        n_readings=sum(d.n_readings for d in done),
        n_values=sum(d.n_values for d in done),
        n_events=sum(d.n_events for d in done),
        written_to=written,
        workers=workers,
    )


def plan_workers(scenario: ResolvedScenario, requested: int | None = None) -> int:
    """Number of processes to simulate ``scenario`` in.

    ``requested`` if given (at most one per site); else one per free core and one
    more (usable cores less those other work keeps busy now, :func:`_busy_cores`: on a
    machine others keep busy, more processes only cost more CPU, as ``make -l``
    knows), at most one per core and site, as many as half the available memory
    holds (each about ``200 MiB + 1 kB x steps``), and 1 for small runs, where
    starting processes costs more than it saves.
    """
    return _plan(scenario, requested)[0]


def _plan(scenario: ResolvedScenario, requested: int | None) -> tuple[int, str]:
    """:func:`plan_workers` and why, in words."""
    sites = len(scenario.sites)
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"workers: expected an integer >= 1, found {requested}")
        return max(1, min(requested, sites)), "as asked"
    steps = estimate_rows(scenario) // 40 // max(sites, 1)  # steps per site
    if sites < 2 or steps * sites < _MIN_PARALLEL_STEPS:
        return 1, "a small run"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    free = max(0, min(cores, int(cores - _busy_cores() + 0.5)))
    n = min(free + 1, cores, sites)  # the free cores, and one to share with the others
    why = f"{free} of {cores} cores free"
    avail = _available_memory()
    if avail is not None:
        fits = int(avail // 2 // (_WORKER_BASE_BYTES + steps * _WORKER_BYTES_PER_STEP))
        if fits < n:
            n, why = max(1, fits), f"memory for {max(1, fits)}: {avail / 2**30:.1f} GiB available"
    return n, why


def _busy_cores() -> float:
    """Cores other work keeps busy now: runnable threads less this one (Linux), else the load.

    The median of five looks at ``procs_running`` in ``/proc/stat`` over 10 ms: the
    1-minute load average lags, and would count this program's own last minute.
    """
    try:
        seen = []
        for _ in range(5):
            with open("/proc/stat") as f:
                line = next(x for x in f if x.startswith("procs_running"))
            seen.append(int(line.split()[1]) - 1)
            time.sleep(0.002)
        return float(sorted(seen)[2])
    except (OSError, StopIteration, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo [B], or None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _open(url: str) -> Store:
    from ems.store import open_store

    return open_store(url)


def _deliver(part: SimulationResult, store: Store | None, site_folder: Path | None) -> _SiteDone:
    """Write one simulated site into the store and its Parquet folder."""
    if store is not None:
        from ems.store.duckdb_store import DuckDBStore

        store.register_sites(part.sites)
        store.register_meters(part.meters)
        arrow = isinstance(store, DuckDBStore)
        # slices in time order, each ending at a local midnight: the store's register
        # aggregates take each from the rows in hand, and publish the site's once, at the end
        with store.bulk_load():
            for flows in part.flows.values():
                for table in site_tables(flows, STORE_SLICE_ROWS):
                    store.write_readings(table if arrow else table.to_pandas().set_index("ts"))
        store.write_events(part.events)
    if site_folder is not None:
        part.to_parquet_per_site(site_folder)
    return _SiteDone(part.summary(), part.n_readings(), part.n_values(), len(part.events))


def _run_here(plan: _Plan, progress: Progress | None, one_folder: Path | None) -> list[_SiteDone]:
    """Simulate and deliver every site in this process, one after the other."""
    store = _open(plan.store_url) if plan.store_url is not None else None
    kept: dict[str, Any] = {}

    def sites() -> Iterator[tuple[int, SimulationResult]]:
        for i in range(len(plan.scenario.sites)):
            part = simulate_site(plan.scenario, i, progress=progress, base_dir=plan.base_dir)
            if one_folder is not None:
                kept.update(part.flows)
            yield i, part

    try:
        done = [got for _i, got in _delivered(sites(), plan, store)]
    except _SiteFailed as failed:
        raise failed.error from None
    finally:
        if store is not None:
            store.close()
    if one_folder is not None:
        SimulationResult(plan.scenario, kept).to_parquet(one_folder)
    return done


def _delivered(
    parts: Iterator[tuple[int, SimulationResult]], plan: _Plan, store: Store | None
) -> Iterator[tuple[int, _SiteDone]]:
    """Deliver each simulated site; a small site's delivery overlaps the next one's simulation.

    Writing a site is mostly Parquet encoding and fsync, which release the GIL, so a
    writer thread uses a second core while the next site is simulated. Large sites
    (:data:`_TRIM_STEPS`) are delivered in turn instead, and the heap trimmed after
    each: two of them in memory at once would double a process's peak.
    """
    if plan.trim:
        for i, part in parts:
            got = _deliver(part, store, plan.site_folder)
            del part
            _trim_heap()
            yield i, got
        return
    with ThreadPoolExecutor(1) as writer:
        pending: tuple[int, Future[_SiteDone]] | None = None
        for i, part in parts:
            if pending is not None:
                yield pending[0], _result_of(*pending)
            pending = i, writer.submit(_deliver, part, store, plan.site_folder)
            del part
        if pending is not None:
            yield pending[0], _result_of(*pending)


class _SiteFailed(Exception):
    """A site's delivery failed in the writer thread (``index``, ``error``)."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


def _result_of(index: int, future: Future[_SiteDone]) -> _SiteDone:
    try:
        return future.result()
    except Exception as exc:
        raise _SiteFailed(index, exc) from exc


def _worker(plan: _Plan, tasks: Any, results: Any) -> None:
    """Worker process: simulate and deliver the sites named on ``tasks`` until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends the workers
    if hasattr(signal, "pthread_sigmask"):  # started with it blocked (_start_without_sigint)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _keep_heap()
    store: Store | None = None
    current = -1  # before the first site

    def report(site: str, steps: int, total: int) -> None:
        results.put(("progress", site, steps, total))

    def assigned() -> Iterator[tuple[int, SimulationResult]]:
        nonlocal current
        while (i := tasks.get()) is not None:
            current = i
            yield i, simulate_site(plan.scenario, i, progress=report, base_dir=plan.base_dir)

    try:
        store = _open(plan.store_url) if plan.store_url is not None else None
        for i, got in _delivered(assigned(), plan, store):
            results.put(("done", i, got))
    except Exception as exc:
        i, error = (exc.index, exc.error) if isinstance(exc, _SiteFailed) else (current, exc)
        if isinstance(error, EmsError):
            results.put(("error", i, _portable(error)))
        else:
            text = "".join(traceback.format_exception(error))
            results.put(("bug", i, text))
    finally:
        if store is not None:
            store.close()


def _keep_heap() -> None:
    """Let this (worker) process keep freed memory for reuse (glibc ``mallopt``).

    A site allocates and frees arrays of a few MB again and again; by default glibc
    maps each one afresh and gives it back on free, so every allocation faults its
    pages in anew (a third of a worker's system time). Arrays up to 64 MiB come from
    the heap instead, which keeps up to 256 MiB free before shrinking; large sites
    still give memory back after each site (:func:`_trim_heap`).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 * 2**20)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 16 * 2**20)  # M_TOP_PAD
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc), so a worker's size is one site's.

    NumPy's freed arrays stay in the heap otherwise, and the next site's peak adds to them.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _portable(exc: EmsError) -> EmsError:
    """``exc`` if it survives pickling (to cross the process boundary), else its message."""
    try:
        back: EmsError = pickle.loads(pickle.dumps(exc))
        return back
    except Exception:
        return SimulationError(str(exc))


def _run_parallel(plan: _Plan, n: int, progress: Progress | None) -> list[_SiteDone]:
    """Simulate and deliver the sites in ``n`` worker processes; results in site order."""
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork") if "fork" in methods else mp.get_context("spawn")
    tasks, results = ctx.SimpleQueue(), ctx.Queue()
    total = len(plan.scenario.sites)
    procs = [
        ctx.Process(target=_worker, args=(plan, tasks, results), daemon=True) for _ in range(n)
    ]
    done: dict[int, _SiteDone] = {}
    try:
        _start_without_sigint(procs)
        for i in [*range(total), *[None] * n]:  # after the start: a full pipe would block
            tasks.put(i)
        while len(done) < total:
            msg = _next_message(results, procs, plan, total - len(done))
            if msg is not None:
                _handle(msg, done, progress, plan)
    finally:
        for p in procs:
            if p.pid is None:  # never started (Ctrl-C while the others started)
                continue
            if p.is_alive():
                p.terminate()
            p.join()
    return [done[i] for i in range(total)]


def _start_without_sigint(procs: list[Any]) -> None:
    """Start the worker processes with SIGINT blocked, so that none can see a Ctrl-C before it
    ignores it (:func:`_worker`); a Ctrl-C in the meantime reaches this process once they are started.

    Without this, a Ctrl-C while a worker is being forked interrupts it in Python's at-fork
    handlers and prints a traceback.
    """
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        for p in procs:
            p.start()
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for p in procs:
            p.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _handle(
    msg: tuple[Any, ...], done: dict[int, _SiteDone], progress: Progress | None, plan: _Plan
) -> None:
    kind = msg[0]
    if kind == "progress":
        if progress is not None:
            progress(msg[1], msg[2], msg[3])
    elif kind == "done":
        done[msg[1]] = msg[2]
    elif kind == "error":
        raise msg[2]
    else:
        what = (
            f"site {plan.scenario.sites[msg[1]].id}: the simulation process failed"
            if msg[1] >= 0
            else "a simulation process failed before its first site"
        )
        raise SimulationError(f"{what}:\n{msg[2]}")


def _next_message(results: Any, procs: list[Any], plan: _Plan, left: int) -> tuple[Any, ...] | None:
    """The next message of the workers; None after a quiet half second; raise if they died."""
    try:
        msg: tuple[Any, ...] = results.get(timeout=0.5)
        return msg
    except queue.Empty:
        pass
    dead = [p.exitcode for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
    if dead:
        raise SimulationError(
            f"a simulation process ended with exit code {dead[0]} (killed, or out of memory?) "
            f"with {left} site(s) of {plan.scenario.name!r} not done"
        )
    if any(p.is_alive() for p in procs):
        return None
    try:
        msg = results.get(timeout=2.0)  # the last words of ended workers, if any
        return msg
    except queue.Empty:
        raise SimulationError(
            f"the simulation processes ended with {left} site(s) of {plan.scenario.name!r} not done"
        ) from None
