"""Shared fixtures. Test ReadingSets come from one builder, ``tests/builders.py``."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ems.readings import ReadingSet
from ems.store.base import Store


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The test run's own user cache (:mod:`ems.cache`): nothing written to the home folder, nothing
    read from an earlier run (subprocesses inherit it)."""
    before = os.environ.get("EMS_CACHE_DIR")
    os.environ["EMS_CACHE_DIR"] = str(tmp_path_factory.mktemp("ems-cache"))
    yield
    if before is None:
        os.environ.pop("EMS_CACHE_DIR", None)
    else:
        os.environ["EMS_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def simulated() -> ReadingSet:
    """Two simulated sites (Asia/Shanghai, Europe/Ljubljana) over the spring DST change, 15 min.

    Every kind of asset (PV, battery, CHP-less heat, fleets, procurement) and a tariff, so
    it exercises tariff periods, the derived PV export and two time zones.
    """
    sim = pytest.importorskip("ems.sim")
    from sim_fixtures import make_scenario, make_site

    res = sim.simulate(
        make_scenario([make_site("qingdao"), make_site("velenje")], dt.date(2024, 3, 30), dt.date(2024, 4, 2), 900)
    )
    return ReadingSet(readings=res.readings, events=res.events, meters=res.meters, sites=res.sites)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A new embedded store in a temporary directory, closed after the test."""
    from ems.store import open_store

    st = open_store(tmp_path / "store")
    try:
        yield st
    finally:
        st.close()
