"""Stage 1's two paths agree: the dense path (no sort) equals the general path, bit for bit."""

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest
from accounting_fixtures import TARIFF, const, from_power, index, meter, readingset, site

from ems.accounting.energy import _stage1_general, stage1
from ems.accounting.matrix import _dense_blocks, _stage1_dense
from ems.readings import ReadingSet


@pytest.fixture(scope="module")
def simulated() -> ReadingSet:
    """Two simulated sites (Asia/Shanghai, Europe/Ljubljana) over the spring DST change, 15 min."""
    sim = pytest.importorskip("ems.sim")
    from sim_fixtures import make_scenario, make_site

    res = sim.simulate(
        make_scenario([make_site("qingdao"), make_site("velenje")], dt.date(2024, 3, 30), dt.date(2024, 4, 2), 900)
    )
    return ReadingSet(readings=res.readings, events=res.events, meters=res.meters, sites=res.sites)


def _with(rs: ReadingSet, readings: pd.DataFrame) -> ReadingSet:
    return ReadingSet(readings=readings, events=rs.events, meters=rs.meters, sites=rs.sites)


def _order(r: pd.DataFrame, *keys: str) -> pd.DataFrame:
    cols = {"ts": r.index.asi8, **{k: r[k].cat.codes.to_numpy() for k in ("site", "meter", "quantity")}}
    return r.iloc[np.lexsort([cols[k] for k in reversed(keys)])]


def _common_span(r: pd.DataFrame) -> pd.DataFrame:
    """The UTC times every site has readings for (so that a ts-major frame is one dense block)."""
    lo = max(g.index.min() for _, g in r.groupby("site", observed=True))
    hi = min(g.index.max() for _, g in r.groupby("site", observed=True))
    return r[(r.index >= lo) & (r.index <= hi)]


def test_simulated_layouts_take_the_dense_path_and_equal_the_general_path(simulated):
    ref = _stage1_general(simulated)
    e = ref.energy
    # the scenario exercises what stage 1 does: tariff periods, the derived PV export, both zones
    assert (e["period"] != "").any() and (e["meter"] == "_site").any()
    assert set(e["site"]) == {"qingdao", "velenje"}
    # 31 March 2024 in Ljubljana has 23 hours: 92 intervals
    vg = e[(e["site"] == "velenje") & (e["meter"] == "grid") & (e["quantity"] == "import_kwh")]
    assert vg.groupby("date")["n"].sum()[pd.Timestamp("2024-03-31")] == 92
    r = simulated.readings
    layouts = {
        "as simulated (per site, series by series)": r,
        "per site, ts-major (what DuckDBStore.read returns)": _order(r, "site", "ts", "meter", "quantity"),
        "series-major": _order(r, "site", "meter", "quantity", "ts"),
    }
    for name, frame in layouts.items():
        got = _stage1_dense(_with(simulated, frame))
        assert got is not None, name
        pd.testing.assert_frame_equal(got.energy, ref.energy, check_exact=True, obj=name)
        assert got.anomalies.empty
        pd.testing.assert_frame_equal(stage1(_with(simulated, frame)).energy, ref.energy, check_exact=True)


def test_one_ts_major_block_with_two_time_zones(simulated):
    r = _common_span(simulated.readings)
    rs = _with(simulated, _order(r, "ts", "site", "meter", "quantity"))
    got = _stage1_dense(rs)
    assert got is not None
    pd.testing.assert_frame_equal(got.energy, _stage1_general(rs).energy, check_exact=True)


def test_shuffled_rows_take_the_grid_path(simulated):
    r = simulated.readings.sample(frac=1.0, random_state=1)
    codes = [r[c].cat.codes.to_numpy() for c in ("site", "meter", "quantity")]
    assert _dense_blocks(r.index.asi8, codes) is None
    got = _stage1_dense(_with(simulated, r))
    assert got is not None
    pd.testing.assert_frame_equal(got.energy, _stage1_general(simulated).energy, check_exact=True)


def test_gaps_of_one_series(simulated):
    r = simulated.readings
    pos = np.flatnonzero(_series(r, "velenje", "grid", "import_kwh"))
    rs = _with(simulated, r.iloc[np.setdiff1d(np.arange(len(r)), pos[100:103])])
    s1 = stage1(rs)
    assert list(s1.anomalies["kind"]) == ["gap"]
    assert "3 interval(s) missing" in s1.anomalies["detail"].iloc[0]
    ref = _stage1_general(rs)
    pd.testing.assert_frame_equal(s1.energy, ref.energy, check_exact=True)
    pd.testing.assert_frame_equal(s1.anomalies, ref.anomalies, check_exact=True)


def test_a_whole_timestamp_lost_in_a_dense_block(simulated):
    r = _order(simulated.readings, "site", "ts", "meter", "quantity")
    t = r.index[(r["site"] == "velenje").to_numpy()][40]
    drop = ((r["site"] == "velenje") & (r.index == t)).to_numpy()
    rs = _with(simulated, r[~drop])
    codes = [rs.readings[c].cat.codes.to_numpy() for c in ("site", "meter", "quantity")]
    assert _dense_blocks(rs.readings.index.asi8, codes) is not None  # still blocks, one step too long
    got = _stage1_dense(rs)
    assert got is not None
    ref = _stage1_general(rs)
    pd.testing.assert_frame_equal(got.energy, ref.energy, check_exact=True)
    pd.testing.assert_frame_equal(got.anomalies, ref.anomalies, check_exact=True)
    assert set(got.anomalies["kind"]) == {"gap"}


@pytest.mark.parametrize("lost", [0.001, 0.05, 0.3])
def test_lost_messages_on_the_grid_path(simulated, lost):
    r = simulated.readings
    keep = np.random.default_rng(int(lost * 1000)).random(len(r)) > lost
    for frame in (r[keep], r[keep].sample(frac=1.0, random_state=2)):
        rs = _with(simulated, frame)
        ref = _stage1_general(rs)
        assert set(ref.anomalies["kind"]) == {"gap"}
        got = _stage1_dense(rs)
        assert got is not None
        pd.testing.assert_frame_equal(got.energy, ref.energy, check_exact=True)
        pd.testing.assert_frame_equal(got.anomalies, ref.anomalies, check_exact=True)
        # a lost message loses no energy: each register's total is its last minus first reading
        e = got.energy[got.energy["meter"] != "_site"]
        tot = e.groupby(["site", "meter", "quantity"])["value"].sum()
        ends = frame.reset_index().sort_values("ts").groupby(["site", "meter", "quantity"], observed=True)["value"]
        span = (ends.last() - ends.first()).reindex(tot.index)
        np.testing.assert_allclose(tot.to_numpy(), span.to_numpy(), rtol=1e-9, atol=1e-9)


def test_repeated_readings_and_mixed_intervals_take_the_general_path(simulated):
    r = simulated.readings
    twice = pd.concat([r, r.iloc[np.flatnonzero(_series(r, "qingdao", "grid", "import_kwh"))[[10]]]])
    assert _stage1_dense(_with(simulated, twice)) is None
    rs = _with(simulated, twice)
    pd.testing.assert_frame_equal(stage1(rs).energy, _stage1_general(rs).energy)
    gap = r.iloc[np.r_[0:50, 51 : len(r)]].sample(frac=1.0, random_state=4)
    hourly = [dataclasses.replace(m, interval_s=3600) if m.meter == "gas" else m for m in simulated.meters]
    mixed = ReadingSet(readings=gap, events=simulated.events, meters=hourly, sites=simulated.sites)
    assert _stage1_dense(mixed) is None
    assert len(stage1(mixed).energy)


def _series(r: pd.DataFrame, site_id: str, meter_id: str, quantity: str) -> np.ndarray:
    return ((r["site"] == site_id) & (r["meter"] == meter_id) & (r["quantity"] == quantity)).to_numpy()


def test_resets_and_rollovers_on_the_dense_path(simulated):
    r = simulated.readings.copy()
    vals = r["value"].to_numpy(copy=True)
    reset = np.flatnonzero(_series(r, "qingdao", "grid", "import_kwh"))
    vals[reset[150:]] -= vals[reset[150]] - 1.0  # the register restarts near zero
    roll = np.flatnonzero(_series(r, "velenje", "pv-roof", "energy_kwh"))
    limit = float(vals[roll[200]]) - 0.5
    vals[roll[200:]] -= limit  # a register that wraps at `limit`
    r["value"] = vals
    meters = [
        dataclasses.replace(m, attrs={**m.attrs, "rollover_at": limit})
        if (m.site, m.meter) == ("velenje", "pv-roof") else m
        for m in simulated.meters
    ]
    rs = ReadingSet(readings=r, events=simulated.events, meters=meters, sites=simulated.sites)
    ref = _stage1_general(rs)
    assert sorted(ref.anomalies["kind"]) == ["reset", "rollover"]
    for frame in (r, _order(r, "site", "ts", "meter", "quantity")):
        got = _stage1_dense(_with(rs, frame))
        assert got is not None
        pd.testing.assert_frame_equal(got.energy, ref.energy, check_exact=True)
        pd.testing.assert_frame_equal(got.anomalies, ref.anomalies, check_exact=True)
    # no energy lost or made up: the rollover restores the original increments
    e = ref.energy
    pv = e[(e["site"] == "velenje") & (e["meter"] == "pv-roof") & (e["quantity"] == "energy_kwh")]
    orig = _stage1_general(simulated).energy
    pv0 = orig[(orig["site"] == "velenje") & (orig["meter"] == "pv-roof") & (orig["quantity"] == "energy_kwh")]
    assert pv["value"].sum() == pytest.approx(pv0["value"].sum())


def test_clock_going_back_at_midnight():
    # Chile ends DST at 24:00 on 6 April 2024: local time goes back to 23:00, a 25-hour Saturday
    tz = "America/Santiago"
    idx = index("2024-04-06", 96 * 2, tz=tz)
    rs = readingset([from_power("s1", "grid", "import_kwh", const(idx, 100.0)),
                     from_power("s1", "grid", "export_kwh", const(idx, 0.0))],
                    [meter("s1", "grid", "grid")], [site("s1", tz, country="CL", tariff=TARIFF)])
    got = _stage1_dense(rs)
    assert got is not None
    pd.testing.assert_frame_equal(got.energy, _stage1_general(rs).energy, check_exact=True)
    e = got.energy[got.energy["quantity"] == "import_kwh"].groupby("date")[["n", "value"]].sum()
    assert e.loc[pd.Timestamp("2024-04-06"), "n"] == 100
    assert e.loc[pd.Timestamp("2024-04-06"), "value"] == pytest.approx(2500.0)


def test_dense_path_on_the_fixture_layout():
    idx = index("2024-06-01", 96, tz="Asia/Shanghai")
    rs = readingset([from_power("s1", "grid", "import_kwh", const(idx, 100.0)),
                     from_power("s1", "grid", "export_kwh", const(idx, 10.0)),
                     from_power("s1", "pv", "energy_kwh", const(idx, 30.0))],
                    [meter("s1", "grid", "grid"), meter("s1", "pv", "pv")], [site("s1", tariff=TARIFF)])
    got = _stage1_dense(rs)
    assert got is not None
    pd.testing.assert_frame_equal(got.energy, _stage1_general(rs).energy, check_exact=True)
    e = got.energy.groupby(["meter", "quantity", "period"]).agg({"value": "sum", "max_rate": "max"})
    assert e.loc[("_site", "pv_exported_kwh"), "value"].sum() == pytest.approx(10 * 24)
    assert e.loc[("grid", "import_kwh", "peak"), "value"] == pytest.approx(100 * 4)
    assert e.loc[("grid", "import_kwh", "peak"), "max_rate"] == pytest.approx(100.0)
