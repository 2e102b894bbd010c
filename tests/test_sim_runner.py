"""``ems.sim.runner.run_scenario``: the library function behind ``ems run``, tested directly."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pandas as pd
import pytest
from sim_fixtures import make_scenario, make_site

from ems.errors import ConfigError, SimulationError
from ems.readings import ReadingSet
from ems.sim import runner
from ems.sim.engine import simulate
from ems.sim.runner import RunResult, plan_workers, run_scenario
from ems.store import open_store


@pytest.fixture(scope="module")
def three():
    """Three sites (two zones, one with DST) for a week at 15 minutes."""
    sites = [make_site("qingdao"), make_site("velenje"), make_site("foshan")]
    return make_scenario(sites, dt.date(2024, 3, 27), dt.date(2024, 4, 3), 900)


@pytest.fixture(scope="module")
def reference(three):
    return simulate(three)


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    out = df.reset_index()
    out["ts"] = out["ts"].dt.as_unit("ns")
    for c in ("site", "meter", "quantity"):
        out[c] = out[c].astype(str)
    return out.sort_values(["site", "meter", "quantity", "ts"]).reset_index(drop=True)


def _events(df: pd.DataFrame) -> pd.DataFrame:
    out = df.reset_index().astype(str)
    return out.sort_values(list(out.columns)).reset_index(drop=True)


def _stored(path) -> ReadingSet:
    with open_store(str(path), read_only=True) as st:
        return st.read()


@pytest.mark.parametrize("workers", [1, 2])
def test_store_holds_exactly_the_simulated_readings(tmp_path, three, reference, workers):
    """Whatever the number of processes, the store holds simulate()'s readings bit for bit."""
    got = run_scenario(three, store=tmp_path / "s", workers=workers)
    assert isinstance(got, RunResult) and got.workers == workers
    back = _stored(tmp_path / "s")
    pd.testing.assert_frame_equal(
        _canon(back.readings), _canon(reference.readings), check_exact=True
    )
    pd.testing.assert_frame_equal(_events(back.events), _events(reference.events))
    assert {(m.site, m.meter) for m in back.meters} == {(m.site, m.meter) for m in reference.meters}
    assert [s.site for s in back.sites] == sorted(s.site for s in reference.sites)
    assert got.n_values == len(reference.readings) and got.n_events == len(reference.events)
    assert got.n_readings == reference.n_readings()
    pd.testing.assert_frame_equal(got.summary, reference.summary())
    assert got.written_to == [str(tmp_path / "s")]


def test_parquet_one_folder_and_per_site(tmp_path, three, reference):
    got = run_scenario(three, store=None, out=tmp_path)
    assert got.written_to == [str(tmp_path / "test")]
    one = ReadingSet.from_parquet(tmp_path / "test")
    pd.testing.assert_frame_equal(
        _canon(one.readings), _canon(reference.readings), check_exact=True
    )
    got = run_scenario(three, store=None, out=tmp_path / "p", per_site=True, workers=2)
    assert got.written_to == [f"{tmp_path / 'p' / 'test'}/<site>/ (3 sites)"]
    for site in ("qingdao", "velenje", "foshan"):
        part = ReadingSet.from_parquet(tmp_path / "p" / "test" / site)
        want = reference.readings[reference.readings["site"] == site]
        pd.testing.assert_frame_equal(_canon(part.readings), _canon(want), check_exact=True)


def test_progress_reaches_every_site_and_announce_says_how(tmp_path, three):
    seen: dict[str, tuple[int, int]] = {}
    lines: list[str] = []
    run_scenario(
        three,
        store=tmp_path / "s",
        workers=2,
        progress=lambda s, d, t: seen.__setitem__(s, (d, t)),
        announce=lines.append,
    )
    assert set(seen) == {"qingdao", "velenje", "foshan"}
    assert all(d == t for d, t in seen.values())
    assert lines == ["3 site(s) in 2 processes (as asked)"]


def test_bad_arguments(tmp_path, three):
    with pytest.raises(ConfigError, match="expected a store or out"):
        run_scenario(three, store=None, out=None)
    with pytest.raises(ConfigError, match="workers: expected an integer >= 1, found 0"):
        run_scenario(three, store=tmp_path / "s", workers=0)


def test_a_users_mistake_in_a_worker_is_raised_as_such(tmp_path):
    """A site whose weather file is missing fails in its worker; the error crosses over."""
    bad = make_site("velenje", weather={"source": "epw", "path": "missing.epw"})
    sc = make_scenario([make_site(), bad], dt.date(2024, 6, 3), dt.date(2024, 6, 5), 900)
    with pytest.raises(ConfigError, match=r"missing\.epw"):
        run_scenario(sc, store=tmp_path / "s", workers=2)


def test_a_dying_worker_is_reported_not_waited_for(tmp_path, three, monkeypatch):
    def die(scenario, index, **kw):
        os._exit(3)

    monkeypatch.setattr(runner, "simulate_site", die)  # inherited by the forked workers
    with pytest.raises(SimulationError, match="exit code 3"):
        run_scenario(three, store=tmp_path / "s", workers=2)


def test_a_bug_in_a_worker_comes_back_with_its_traceback(tmp_path, three, monkeypatch):
    def bug(scenario, index, **kw):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(runner, "simulate_site", bug)
    with pytest.raises(SimulationError, match=r"(?s)failed.*ZeroDivisionError: planted"):
        run_scenario(three, store=tmp_path / "s", workers=2)


def test_busy_cores_counts_others():
    busy = runner._busy_cores()
    assert 0 <= busy <= 4 * (os.cpu_count() or 1) + 64


def test_plan_workers(three, monkeypatch):
    year = make_scenario(three.sites, dt.date(2024, 1, 1), dt.date(2025, 1, 1), 900)
    monkeypatch.setattr(runner, "_available_memory", lambda: 64 * 2**30)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(runner, "_busy_cores", lambda: 0.0)
    assert plan_workers(year) == 2  # two cores
    assert runner._plan(year, None) == (2, "2 of 2 cores free")
    monkeypatch.setattr(runner, "_busy_cores", lambda: 1.0)
    assert runner._plan(year, None) == (2, "1 of 2 cores free")  # one to share
    monkeypatch.setattr(runner, "_busy_cores", lambda: 2.0)
    assert runner._plan(year, None) == (1, "0 of 2 cores free")  # others keep both busy
    monkeypatch.setattr(runner, "_busy_cores", lambda: 0.0)
    assert plan_workers(year, 8) == 3  # at most one per site
    assert plan_workers(three) == 1  # a week of three sites: not worth a process
    assert (
        plan_workers(make_scenario(three.sites[:1], dt.date(2024, 1, 1), dt.date(2025, 1, 1))) == 1
    )
    monkeypatch.setattr(runner, "_available_memory", lambda: 900 * 2**20)
    assert runner._plan(year, None) == (1, "memory for 1: 0.9 GiB available")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_delivery_names_its_site(tmp_path, three, monkeypatch, workers):
    """Writing overlaps the next site's simulation; a failure still names the site it was."""
    deliver = runner._deliver

    def failing(part, store, folder):
        if "velenje" in part.flows:
            raise ZeroDivisionError("planted in delivery")
        return deliver(part, store, folder)

    monkeypatch.setattr(runner, "_deliver", failing)
    error = ZeroDivisionError if workers == 1 else SimulationError
    match = "planted in delivery" if workers == 1 else r"(?s)site velenje: .*planted in delivery"
    with pytest.raises(error, match=match):
        run_scenario(three, store=tmp_path / "s", workers=workers)


@pytest.mark.parametrize("max_rows", [7, 1000, 10**9])
def test_site_tables_are_the_tidy_frame_in_time_order(reference, max_rows):
    """The Arrow slices hold the tidy frame's rows bit for bit, whole steps, in time order."""
    import pyarrow as pa

    from ems.sim.meters import site_tables, tidy_frame

    flows = reference.flows["velenje"]
    tables = list(site_tables(flows, max_rows))
    n_series = len(tables[0]) // len(np.unique(tables[0]["ts"].to_numpy()))
    assert all(len(t) % n_series == 0 and len(t) <= max(max_rows, n_series) for t in tables)
    ts = pa.concat_tables(tables)["ts"].to_numpy()
    assert (np.diff(ts.astype(np.int64)) >= 0).all()
    got = pa.concat_tables(tables).to_pandas().set_index("ts")
    pd.testing.assert_frame_equal(_canon(got), _canon(tidy_frame([flows])), check_exact=True)


def test_a_worker_failing_before_its_first_site(tmp_path, three, monkeypatch):
    parent = os.getpid()
    opened = runner._open

    def fails_in_a_worker(url):
        if os.getpid() != parent:
            raise RuntimeError("planted: no store in the worker")
        return opened(url)

    monkeypatch.setattr(runner, "_open", fails_in_a_worker)
    with pytest.raises(SimulationError, match=r"(?s)before its first site.*planted: no store"):
        run_scenario(three, store=tmp_path / "s", workers=2)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_stores_register_aggregates_are_up_to_date(tmp_path, three, workers):
    """Arrow slices in bulk loads keep the register aggregates: stage 1 pushed down equals
    stage 1 of everything read back, bit for bit."""
    from ems.accounting.energy import stage1

    run_scenario(three, store=tmp_path / "s", workers=workers)
    with open_store(str(tmp_path / "s")) as st:
        assert (tmp_path / "s" / "rollups").is_dir()
        want, got = stage1(st.read()), st.stage1()
    pd.testing.assert_frame_equal(got.energy, want.energy, check_exact=True)


def test_slices_end_at_local_midnights():
    from ems.sim.meters import slice_ends

    ts = pd.date_range("2024-03-29T00:15", periods=6 * 96, freq="15min", tz="Europe/Ljubljana")  # DST on the 31st
    ns = ts.tz_convert("UTC").as_unit("ns").asi8
    ends = slice_ends(ns, "Europe/Ljubljana", 150)
    assert ends[-1] == len(ns) and all(b - a <= 150 for a, b in zip([0, *ends[:-1]], ends, strict=True))
    assert all(ts[e - 1].hour == 0 and ts[e - 1].minute == 0 for e in ends[:-1])  # a reading at midnight closes each
    assert slice_ends(ns, "Europe/Ljubljana", 50)[:2] == [48, 96]  # no midnight within reach: even slices
    assert slice_ends(ns, "Europe/Ljubljana", 10**6) == [len(ns)]


def test_aggregates_of_a_run_come_from_the_rows_in_hand(tmp_path, three, monkeypatch):
    """Slices ending at local midnights are appends: the register aggregates never read the
    store back while ``ems run`` writes (one bulk load a site), and equal a full read."""
    from ems.accounting.energy import stage1
    from ems.store.rollups import RegisterAggregates

    monkeypatch.setattr(runner, "STORE_SLICE_ROWS", 8_000)  # about a day and a half a slice
    reads = []
    window = RegisterAggregates._window
    monkeypatch.setattr(RegisterAggregates, "_window", lambda self, *a: reads.append(a) or window(self, *a))
    run_scenario(three, store=tmp_path / "s", workers=1)
    assert reads == []
    with open_store(str(tmp_path / "s")) as st:
        assert len(st.reader.site_segments("velenje")) > 3
        want, got = stage1(st.read()), st.stage1()
    pd.testing.assert_frame_equal(got.energy, want.energy, check_exact=True)
    pd.testing.assert_frame_equal(got.hourly.astype({"period": str}), want.hourly.astype({"period": str}),
                                  check_exact=True, check_categorical=False)
