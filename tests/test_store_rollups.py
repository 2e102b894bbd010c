"""Register aggregates of the embedded store: stage 1 pushed down, kept up to date as segments
are written, equal bit for bit to stage 1 of a full read, whatever the order of the writes."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from builders import TARIFF, plant, write

import ems
from ems.accounting.energy import stage1
from ems.errors import EmsError
from ems.readings import ReadingSet
from ems.store import open_store
from ems.store.rollups import Manifest


def _manifest(root: Path, site: str) -> Manifest:
    return Manifest.load(root / "rollups" / f"site={site}" / "manifest.json")


def _same_as_a_read(st) -> None:
    """The push-down equals stage 1 of everything read back, bit for bit."""
    want = stage1(st.read())
    got = st.stage1()
    pd.testing.assert_frame_equal(got.energy, want.energy, check_exact=True)
    pd.testing.assert_frame_equal(got.anomalies.reset_index(drop=True), want.anomalies, check_exact=True,
                                  check_dtype=False)
    h = got.hourly.astype({c: str for c in ("site", "meter", "quantity", "period")})
    w = want.hourly.astype({c: str for c in ("site", "meter", "quantity", "period")})
    pd.testing.assert_frame_equal(h.reset_index(drop=True), w, check_exact=True)


def _hourly_same_as_a_read(st) -> None:
    """The hourly push-down (what hourly matching reads) equals stage 1's hours of a full read."""
    key = ["site", "meter", "quantity", "hour"]
    got = st.hourly().astype({c: str for c in key[:3]}).groupby(key)["value"].sum()
    want = stage1(st.read()).hourly.astype({c: str for c in key[:3]}).groupby(key)["value"].sum()
    pd.testing.assert_series_equal(got, want, check_exact=True)


def _slices(r: pd.DataFrame, k: int) -> list[pd.DataFrame]:
    ts = r.index.asi8
    lo, width = int(ts.min()), (int(ts.max()) - int(ts.min())) // k + 1  # integer ns: no rounding
    edges = [lo + i * width for i in range(k + 1)]
    return [r[(ts >= a) & (ts < b)] for a, b in itertools.pairwise(edges)]


def _register(st, rs: ReadingSet) -> None:
    st.register_sites(rs.sites)
    st.register_meters(rs.meters)


def test_written_in_time_slices_the_pushdown_equals_stage1(store, simulated):
    _register(store, simulated)
    for part in _slices(simulated.readings, 3):
        store.write_readings(part)
    man = _manifest(store.root, "velenje")
    assert man.watermark == pd.Timestamp("2024-04-02", tz="Europe/Ljubljana").value  # every day complete
    assert man.chunks and man.chunks[0]["lo"] == pd.Timestamp("2024-03-30", tz="Europe/Ljubljana").value
    _same_as_a_read(store)
    want = stage1(simulated)
    pd.testing.assert_frame_equal(store.stage1().energy, want.energy, check_exact=True)


def test_late_writes_backfills_and_rewrites_below_the_watermark(tmp_path, simulated):
    """Lost messages backfilled a day later, a rewrite of an hour, a series silent over the
    watermark that comes back: each write keeps the push-down equal to a full read."""
    store = open_store(tmp_path / "s", silent_after_s=6 * 3600)
    r = simulated.readings
    _register(store, simulated)
    lost = np.random.default_rng(2).random(len(r)) < 0.03
    pv = ((r["site"] == "qingdao") & (r["meter"] == "pv-roof")).to_numpy()
    silent = pv & (r.index > pd.Timestamp("2024-03-31T12:00Z"))  # PV silent over the watermark
    store.write_readings(r[~lost & ~silent])
    wm = _manifest(store.root, "qingdao").watermark
    assert wm is not None and any(a is None for _, a in _manifest(store.root, "qingdao").series.values())
    _same_as_a_read(store)
    store.write_readings(r[lost & ~silent])  # the backfill
    _same_as_a_read(store)
    hour = r[(r.index > pd.Timestamp("2024-03-30T20:00Z")) & (r.index <= pd.Timestamp("2024-03-30T21:00Z"))]
    store.write_readings(hour.assign(value=hour["value"] * 1.0))  # a rewrite of the same values
    _same_as_a_read(store)
    store.write_readings(r[silent])  # the PV comes back
    _same_as_a_read(store)
    pd.testing.assert_frame_equal(store.stage1().energy, stage1(simulated).energy, check_exact=True)
    store.close()


def test_a_new_meter_after_the_watermark_and_a_rebuild(store):
    rs = plant({"a": "A"}, n=4 * 96, tariff=TARIFF)
    r = rs.readings
    write(store, ReadingSet(r[r["meter"] != "steam"], rs.events, rs.meters, rs.sites))
    late = r[(r["meter"] == "steam").to_numpy() & (r.index > pd.Timestamp("2024-07-03T12:00Z"))]
    store.write_readings(late)
    _same_as_a_read(store)
    before = store.stage1().energy
    store.rebuild_aggregates()
    pd.testing.assert_frame_equal(store.stage1().energy, before, check_exact=True)
    import shutil

    shutil.rmtree(store.root / "rollups")  # without aggregates: everything from the raw readings
    pd.testing.assert_frame_equal(store.stage1().energy, before, check_exact=True)


@pytest.mark.parametrize("tz", ["Europe/Ljubljana", "Asia/Kathmandu", "America/Santiago"])
def test_zones_with_daylight_saving_and_odd_offsets(tmp_path, tz):
    rs = plant({"a": "A"}, start="2024-03-29", n=10 * 96, tz=tz, tariff=TARIFF)
    with open_store(tmp_path / "s") as st:
        _register(st, rs)
        for part in _slices(rs.readings, 4):
            st.write_readings(part)
        assert len(_manifest(st.root, "a").chunks) >= 1
        _same_as_a_read(st)


def test_kpis_of_a_store_equal_kpis_of_its_readings(store, simulated):
    write(store, simulated)
    with ems.open_readings(str(store.root)) as stored:
        got = ems.kpis(stored, by="group", period="year").kpis
    want = ems.kpis(simulated, by="group", period="year").kpis
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=1e-9)


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from builders import TARIFF, plant
    from ems.store import open_store
    rs = plant({"alpha": "Alpha", "beta": "Beta"}, n=96 + 24, tariff=TARIFF)
    st = open_store(sys.argv[1])
    st.register_sites(rs.sites)
    st.register_meters(rs.meters)
    st.write_events(rs.events)
    rng = np.random.default_rng(0)
    r = rs.readings
    grid = (r["meter"] == "grid").to_numpy()
    for t in np.unique(r.index.asi8):  # the grid meter's and the others' messages of each site, in any order
        at = r.index.asi8 == t
        groups = [r[at & grid & (r["site"] == s).to_numpy()] for s in ("alpha", "beta")]
        groups += [r[at & ~grid & (r["site"] == s).to_numpy()] for s in ("alpha", "beta")]
        for i in rng.permutation(len(groups)):
            st.write_readings(groups[i])
        time.sleep(float(sys.argv[2]))
    st.close()
    """
)


def test_rollups_while_another_process_writes_at_live_speed(tmp_path):
    """``ems live`` crashed here: KPIs of a store another process is writing, message by
    message, with the grid meter's newest readings sometimes not there yet."""
    from ems.dashboard.monitor import Monitor

    path = tmp_path / "live"
    open_store(path).close()
    tests = str(Path(__file__).parent)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "0.002", tests])
    runs = 0
    try:
        with open_store(path, read_only=True) as reader:
            mon = Monitor(reader, today_every_s=0.0, year_every_s=0.0)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if len(reader.site_ids()) < 2 or reader.count() < 2 * 30 * 4:  # a few timestamps of both sites
                    time.sleep(0.01)
                    continue
                with ems.open_readings(str(path)) as rs:
                    ems.kpis(rs, by="site", period="day")
                runs += 1
                mon.refresh()
                assert all(not st.error for st in mon.sites.values()), [st.error for st in mon.sites.values()]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0 and runs > 5
    rs = plant({"alpha": "Alpha", "beta": "Beta"}, n=96 + 24, tariff=TARIFF)
    with ems.open_readings(str(path)) as stored:
        got = ems.kpis(stored, by="site", period="day").kpis
    pd.testing.assert_frame_equal(got, ems.kpis(rs, by="site", period="day").kpis, check_exact=False, rtol=1e-12)
    man = _manifest(path, "alpha")
    assert man.watermark is not None and len(man.chunks) == 1  # the days merged into one chunk
    assert json.loads((path / "rollups" / "site=alpha" / "manifest.json").read_text())["version"] == 1


def test_a_bulk_load_brings_the_aggregates_up_to_date_once(store, simulated):
    _register(store, simulated)
    with store.bulk_load():
        for part in _slices(simulated.readings, 4):
            store.write_readings(part)
        assert not list(store.root.glob("rollups/site=*/manifest.json"))  # nothing published yet
        _same_as_a_read(store)  # readers compute the unpublished days from the raw segments
    assert _manifest(store.root, "qingdao").watermark == pd.Timestamp("2024-04-02", tz="Asia/Shanghai").value
    _same_as_a_read(store)


def test_a_rewrite_of_the_reading_at_the_watermark(store):
    """The reading at the watermark closes the last materialized interval: rewriting it changes
    a materialized day."""
    rs = plant({"a": "A"}, n=4 * 96, tariff=TARIFF)
    r = rs.readings
    _register(store, rs)
    store.write_readings(r)
    wm = _manifest(store.root, "a").watermark
    at = r[(r.index.asi8 == wm) & (r["quantity"] == "import_kwh").to_numpy()]
    assert len(at) == 1
    store.write_readings(at.assign(value=at["value"] + 5.0))
    _same_as_a_read(store)


def test_readers_stay_exact_while_a_write_is_not_folded_in(tmp_path):
    """The visibility rule: segments newer than the manifest's ``through`` (a write in progress,
    a writer without aggregates) are folded in by the reader when they only append, and make it
    compute the site from the raw readings when they could change a materialized day."""
    rs = plant({"a": "A"}, n=4 * 96, tariff=TARIFF)
    r = rs.readings
    early = r.index < pd.Timestamp("2024-07-03T06:00Z")
    with open_store(tmp_path / "s") as st, open_store(tmp_path / "s", aggregates=False) as plain:
        _register(st, rs)
        st.write_readings(r[early])
        wm = _manifest(st.root, "a").watermark
        plain.write_readings(r[~early & (r.index < pd.Timestamp("2024-07-04T06:00Z"))])  # an append
        assert _manifest(st.root, "a").covers(st.reader.site_segments("a"))
        _same_as_a_read(st)
        _hourly_same_as_a_read(st)
        old = r[(r.index.asi8 < wm - 6 * 3600 * 10**9) & (r["meter"] == "grid").to_numpy()]
        plain.write_readings(old.assign(value=old["value"] * 1.5))  # a rewrite below the watermark
        assert not _manifest(st.root, "a").covers(st.reader.site_segments("a"))
        _same_as_a_read(st)
        _hourly_same_as_a_read(st)
        st.write_readings(r[r.index >= pd.Timestamp("2024-07-04T06:00Z")])  # folds in the other's segments
        man = _manifest(st.root, "a")
        assert man.covers(st.reader.site_segments("a")) and man.through == max(
            s.seq for s in st.reader.site_segments("a"))
        _same_as_a_read(st)


def test_a_manifest_of_an_older_ems_is_rebuilt(store):
    rs = plant({"a": "A"}, n=3 * 96, tariff=TARIFF)
    r = rs.readings
    _register(store, rs)
    store.write_readings(r[r.index < pd.Timestamp("2024-07-02T12:00Z")])
    path = store.root / "rollups" / "site=a" / "manifest.json"
    old = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in old.items() if k not in ("through", "base", "last", "rev")}))
    assert _manifest(store.root, "a").outdated()
    _same_as_a_read(store)  # from the raw readings
    store.write_readings(r[r.index >= pd.Timestamp("2024-07-02T12:00Z")])
    assert not _manifest(store.root, "a").outdated()
    _same_as_a_read(store)


TWO_WRITERS = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from builders import TARIFF, plant
    from ems.store import open_store
    rs = plant({"alpha": "Alpha", "beta": "Beta"}, n=3 * 96, tariff=TARIFF)
    st = open_store(sys.argv[1])
    st.register_sites(rs.sites)
    st.register_meters(rs.meters)
    r = rs.readings
    grid = (r["meter"] == "grid").to_numpy()
    alpha = (r["site"] == "alpha").to_numpy()
    mine = (alpha & grid) | ~alpha if sys.argv[2] == "A" else alpha & ~grid
    ts = r.index.asi8
    steps = np.unique(ts)
    for k in range(0, len(steps), 12):  # three hours a write, in time order
        at = (ts >= steps[k]) & (ts <= steps[min(k + 11, len(steps) - 1)])
        st.write_readings(r[mine & at])
        if sys.argv[2] == "B" and k == 8 * 12:  # and once a day already written again
            old = mine & (ts <= steps[k - 60]) & (ts > steps[k - 72])
            st.write_readings(r[old])
        time.sleep(0.005)
    st.close()
    """
)


def test_two_writer_processes_on_the_same_site(tmp_path):
    """Two processes write a site's meters (and another site) at once, one of them a day again:
    the aggregates end equal to stage 1 of everything read back."""
    path = tmp_path / "two"
    open_store(path).close()
    tests = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", TWO_WRITERS, str(path), who, tests]) for who in "AB"]
    for p in procs:
        assert p.wait(timeout=120) == 0
    with open_store(path) as st:
        for site in ("alpha", "beta"):
            man = _manifest(path, site)
            assert man.watermark is not None and man.covers(st.reader.site_segments(site))
        _same_as_a_read(st)


def test_rebuild_after_a_damaged_manifest(store):
    rs = plant({"a": "A"}, n=3 * 96, tariff=TARIFF)
    _register(store, rs)
    store.write_readings(rs.readings)
    want = store.stage1().energy
    (store.root / "rollups" / "site=a" / "manifest.json").write_text("{not json")
    with pytest.raises(EmsError, match="unreadable register aggregates manifest"):
        store.stage1()
    store.rebuild_aggregates()
    pd.testing.assert_frame_equal(store.stage1().energy, want, check_exact=True)
