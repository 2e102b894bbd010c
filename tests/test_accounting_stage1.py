"""Stage 1's two paths agree: the dense path (no sort) equals the general path, bit for bit."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from accounting_fixtures import TARIFF, const, from_power, index, meter, readingset, site

from ems.accounting.energy import _stage1_dense, _stage1_general, stage1
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


def test_shuffled_rows_take_the_general_path(simulated):
    rs = _with(simulated, simulated.readings.sample(frac=1.0, random_state=1))
    assert _stage1_dense(rs) is None
    pd.testing.assert_frame_equal(stage1(rs).energy, _stage1_general(simulated).energy, check_exact=True)


def test_gaps_and_resets_fall_back_to_the_general_path(simulated):
    r = simulated.readings
    grid_import = ((r["site"] == "velenje") & (r["meter"] == "grid") & (r["quantity"] == "import_kwh")).to_numpy()
    pos = np.flatnonzero(grid_import)
    lost = r.iloc[np.setdiff1d(np.arange(len(r)), pos[100:103])]
    rs = _with(simulated, lost)
    assert _stage1_dense(rs) is None
    s1 = stage1(rs)
    assert list(s1.anomalies["kind"]) == ["gap"]
    pd.testing.assert_frame_equal(s1.energy, _stage1_general(rs).energy)
    reset = r.copy()
    vals = reset["value"].to_numpy(copy=True)
    vals[pos[150:]] -= vals[pos[150]] - 1.0  # the register restarts near zero
    reset["value"] = vals
    rs = _with(simulated, reset)
    assert _stage1_dense(rs) is None
    assert list(stage1(rs).anomalies["kind"]) == ["reset"]


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
