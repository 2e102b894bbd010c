"""ems: an energy and carbon monitoring simulator for manufacturing groups.

Quick start::

    import ems
    scenario = ems.load_scenario("scenarios/demo.yaml")
    readings = ems.simulate(scenario)          # a ReadingSet: what the meters send
    ems.kpis(readings, by="site", period="month").kpis

    with ems.open_readings("ems-data") as rs:  # a store (or a readings folder, or a scenario)
        ems.kpis(rs, by="group", period="year").kpis

The top level offers the contract (:class:`ReadingSet`) and the main verbs; everything else
lives in the packages by concept (``ems.model``, ``ems.sim``, ``ems.telemetry``,
``ems.store``, ``ems.accounting``, ``ems.studies``, ``ems.dashboard``). Names are imported
on first use, so ``import ems`` (and ``ems --help``) stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ems.accounting.kpis import KpiResult
    from ems.model.scenario import ResolvedScenario
    from ems.readings import ReadingSet
    from ems.sim.engine import SimulationResult
    from ems.store.base import Store

__all__ = ["ReadingSet", "__version__", "kpis", "load_scenario", "open_readings", "open_store", "simulate"]


def __getattr__(name: str) -> Any:
    if name == "ReadingSet":
        from ems.readings import ReadingSet

        return ReadingSet
    raise AttributeError(f"module 'ems' has no attribute {name!r}")


def load_scenario(path: str | os.PathLike[str], *, measures: bool = True, **kwargs: Any) -> ResolvedScenario:
    """Load a scenario file with its sites, overrides and physical measures.

    Loading never simulates: physical measures (``add_pv``, ``add_storage``, ...) are pure
    changes of the site models (:func:`ems.model.measures.apply_physical`); measures sized
    from KPIs (``buy_certificates`` with a ``target_share``, ``zero_carbon``) are a study
    step (:func:`ems.studies.measures.size_from_kpis`), applied by ``ems compare``,
    ``ems sweep`` and ``ems pathway``.

    Parameters
    ----------
    path : str or path
        Scenario file.
    measures : bool
        Apply the physical measures (default); False leaves the sites as the files say.
    **kwargs
        Passed to :func:`ems.model.loader.load_scenario` (e.g. ``overrides``).
    """
    from ems.model.loader import load_scenario as _load
    from ems.model.measures import apply_physical

    scenario: ResolvedScenario = _load(Path(path), **kwargs)
    if not measures or not scenario.extra.get("measures"):
        return scenario
    from ems.errors import ConfigError
    from ems.model.loader import located_measure_error

    try:
        return apply_physical(scenario)[0]
    except ConfigError as exc:  # with the file and line of the measure
        raise located_measure_error(exc, Path(path)) from None


def simulate(scenario: ResolvedScenario, **kwargs: Any) -> SimulationResult:
    """Simulate a scenario; see :func:`ems.sim.engine.simulate`."""
    from ems.sim.engine import simulate as _simulate

    return _simulate(scenario, **kwargs)


def open_store(url: str | os.PathLike[str] | None = None, **options: Any) -> Store:
    """Open a store by URL or path; see :func:`ems.store.open_store`."""
    from ems.store import open_store as _open

    return _open(url, **options)


def open_readings(source: str | os.PathLike[str], *, sites: list[str] | None = None,
                  store: bool = False) -> ReadingSet:
    """The readings of a source, as a :class:`ReadingSet`: the one way in.

    Parameters
    ----------
    source : str or path
        * a store: a directory with ``ems-store.json``, ``duckdb:///path`` or an InfluxDB
          URL (:func:`ems.store.open_store`). The set reads events and metadata at once,
          the readings frame on first use, and gives stage 1 from the store's register
          aggregates; close it (or use it as a context manager) when done;
        * a readings folder written by ``ems run --out`` (``readings.parquet``, ...);
        * a scenario file (``.yaml``/``.yml``): simulated now, with its measures (those sized
          from KPIs are sized first: :func:`ems.studies.measures.size_measures`).
    sites : list of str, optional
        For a store: only these sites.
    store : bool
        ``source`` names a store (``--store``): a path without a store is an error
        (``no store at ...``), never a new store.

    Raises
    ------
    ConfigError
        The source is none of these.
    """
    from ems.errors import ConfigError
    from ems.readings import ReadingSet

    text = os.fspath(source)
    p = Path(text)
    if store or "://" in text or (p / "ems-store.json").is_file():
        from ems.store.base import StoredReadings

        embedded = "://" not in text or text.lower().startswith("duckdb://")
        st = open_store(text, read_only=True) if embedded else open_store(text)
        return StoredReadings(st, sites=sites, owned=True)
    if p.is_dir() and (p / "readings.parquet").is_file():
        return ReadingSet.from_parquet(p)
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        from ems.studies.measures import size_measures

        return simulate(size_measures(load_scenario(p)))
    raise ConfigError(
        f"{text}: expected a store (a directory with ems-store.json, or a store URL), a readings folder "
        "(ems run --out) or a scenario .yaml; found "
        + ("a directory with neither" if p.is_dir() else "a file of another kind" if p.exists() else "nothing")
    )


def kpis(readingset: ReadingSet, by: str = "site", period: str | tuple[Any, Any] = "month",
         factors: Any = None) -> KpiResult:
    """Energy and carbon KPIs of a ReadingSet; see :func:`ems.accounting.kpis`."""
    from ems.accounting import kpis as _kpis

    return _kpis(readingset, by=by, period=period, factors=factors)
