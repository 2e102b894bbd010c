"""The embedded store: roundtrip, idempotency, ordering, filtering, durability,
compaction and a second process reading while the first one writes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from builders import meter, readingset, rows, site

from ems.errors import MissingExtraError, ReadingError, StoreError
from ems.readings import SiteInfo
from ems.store import Store, open_store
from ems.store.duckdb_store import DuckDBStore
from ems.store.segments import Segment, list_segments, overlap_groups

UTC = dt.UTC
GRID_Q = ("power_kw", "import_kwh", "export_kwh")
PV_Q = ("power_kw", "energy_kwh", "curtailed_kwh")


def make_set(sites=("qd", "sd"), start="2024-03-01T00:15Z", periods=192, freq="15min", seed=1):
    """A small ReadingSet with the contract's columns: a grid and a PV meter per site."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=periods, freq=freq, tz="UTC", name="ts")
    frames, ms, infos = [], [], []
    for s in sites:
        for meter_id, kind, qs in (("grid", "grid", GRID_Q), ("pv1", "pv", PV_Q)):
            ms.append(meter(s, meter_id, kind, carrier="electricity", quantities=qs, x=1))
            for q in qs:
                v = rng.random(periods) * 100
                frames.append(rows(s, meter_id, q, ts, np.cumsum(v) if q.endswith("_kwh") else v))
        infos.append(site(s, "Asia/Shanghai", name=s.upper(), group="grp", company="co", park="park", lat=36.0,
                          lon=120.0, factor_set="cn-2024", contract_kw=5000))
    events = [
        {"ts": ts[3], "site": sites[0], "kind": "fuel_delivery", "subject": "fleet", "value": 500.0, "unit": "kg",
         "detail": {"fuel": "diesel"}},
        {"ts": ts[9], "site": sites[-1], "kind": "outage_start", "subject": "pv1", "value": float("nan"), "unit": "",
         "detail": None},
    ]
    return readingset(frames, ms, infos, events)


def canon(df: pd.DataFrame) -> pd.DataFrame:
    """Readings in a canonical order with plain string columns, for comparison."""
    out = df.reset_index()
    out["ts"] = out["ts"].dt.as_unit("ns")
    for c in ("site", "meter", "quantity"):
        out[c] = out[c].astype(str)
    return out.sort_values(["site", "meter", "quantity", "ts"]).reset_index(drop=True)


def keys(df: pd.DataFrame) -> pd.DataFrame:
    return canon(df)[["ts", "site", "meter", "quantity"]]


@pytest.fixture
def rs():
    return make_set()


def write_all(st, rs):
    st.register_sites(rs.sites)
    st.register_meters(rs.meters)
    st.write_readings(rs.readings)
    st.write_events(rs.events)


def test_is_a_store(store):
    assert isinstance(store, Store)


def test_roundtrip(store, rs):
    write_all(store, rs)
    back = store.read()
    pd.testing.assert_frame_equal(canon(back.readings), canon(rs.readings))
    r = back.readings
    assert r.index.name == "ts"
    assert str(r.index.tz) == "UTC"
    assert r.index.dtype == "datetime64[ns, UTC]"
    for c in ("site", "meter", "quantity"):
        assert isinstance(r[c].dtype, pd.CategoricalDtype)
    assert r["value"].dtype == np.float64
    # ordered by site, then ts
    for _, sub in r.groupby("site", observed=True):
        assert sub.index.is_monotonic_increasing
    assert back.meters == sorted(rs.meters, key=lambda m: (m.site, m.meter))
    assert back.sites == rs.sites
    pd.testing.assert_frame_equal(back.events, rs.events, check_dtype=False)
    assert store.count() == len(rs.readings)


def test_write_twice_stored_once(store, rs):
    write_all(store, rs)
    write_all(store, rs)
    assert store.count() == len(rs.readings)
    back = store.read()
    pd.testing.assert_frame_equal(canon(back.readings), canon(rs.readings))
    assert len(back.events) == len(rs.events)


def test_overlapping_batches_last_write_wins(store, rs):
    r = rs.readings
    half = r.index[len(r) // 2]
    first = r[r.index <= half]
    second = r[r.index >= half - pd.Timedelta("2h")].copy()
    second["value"] = second["value"] + 1000.0
    store.write_readings(first)
    store.write_readings(second)
    expected = pd.concat([r[r.index < half - pd.Timedelta("2h")], second])
    assert store.count() == len(r)
    pd.testing.assert_frame_equal(canon(store.read().readings), canon(expected))


def test_repeats_within_a_frame_keep_last(store, rs):
    r = rs.readings.iloc[:60]
    twice = pd.concat([r, r.assign(value=r["value"] * 2)])
    store.write_readings(twice)
    pd.testing.assert_frame_equal(
        canon(store.read().readings), canon(r.assign(value=r["value"] * 2))
    )


@pytest.mark.parametrize("layout", ["whole steps", "a series twice a step", "ragged steps"])
def test_duplicate_check_of_time_major_batches(layout):
    """The whole-steps shortcut of the duplicate check never hides a repeated key."""
    from ems.store.arrays import unique_last

    steps, per = 50, 6
    ts = np.repeat(np.arange(steps, dtype=np.int64) * 900, per)
    series = np.tile(np.arange(per), steps)
    if layout == "whole steps":
        assert unique_last(ts, series, per) is None
        return
    if layout == "a series twice a step":
        series = np.tile(np.array([0, 1, 2, 3, 4, 1]), steps)
    else:
        ts, series = ts[:-1], series[:-1]
        series[-3] = series[-4]  # the last, shorter step repeats a series
    keep = unique_last(ts, series, per)
    assert keep is not None
    key = ts * per + series
    assert len(np.unique(key[keep])) == keep.sum() == len(np.unique(key))
    last = {k: i for i, k in enumerate(key)}
    assert set(np.flatnonzero(keep)) == set(last.values())


def test_out_of_order_writes(store, rs):
    r = rs.readings
    late, early = r[r.index >= r.index[len(r) // 2]], r[r.index < r.index[len(r) // 2]]
    store.write_readings(late)
    shuffled = early.sample(frac=1.0, random_state=3)
    store.write_readings(shuffled)
    back = store.read().readings
    pd.testing.assert_frame_equal(canon(back), canon(r))
    for _, sub in back.groupby("site", observed=True):
        assert sub.index.is_monotonic_increasing


def test_plain_string_columns_and_us_index(store, rs):
    r = rs.readings.copy()
    for c in ("site", "meter", "quantity"):
        r[c] = r[c].astype(str)
    r.index = r.index.as_unit("us")
    store.write_readings(r)
    pd.testing.assert_frame_equal(canon(store.read().readings), canon(rs.readings))


@pytest.mark.parametrize("tz", ["UTC", "Asia/Shanghai", "Europe/Ljubljana"])
def test_time_filter_inclusive(store, rs, tz):
    write_all(store, rs)
    start = pd.Timestamp("2024-03-01T01:00Z").tz_convert(tz)
    end = pd.Timestamp("2024-03-01T02:00Z").tz_convert(tz)
    back = store.read(start=start.to_pydatetime(), end=end.to_pydatetime())
    r = rs.readings
    expected = r[(r.index >= start) & (r.index <= end)]
    pd.testing.assert_frame_equal(canon(back.readings), canon(expected))
    assert back.events.index.min() >= start
    assert len(back.events) == 1  # 01:00 is in, 02:30 is out
    assert back.readings.index.min() == start and back.readings.index.max() == end


def test_site_filter(store, rs):
    write_all(store, rs)
    back = store.read(sites=["sd"])
    r = rs.readings
    pd.testing.assert_frame_equal(canon(back.readings), canon(r[r["site"] == "sd"]))
    assert [s.site for s in back.sites] == ["sd"]
    assert {m.site for m in back.meters} == {"sd"}
    assert set(back.events["site"]) == {"sd"}
    assert list(back.readings["site"].cat.categories) == ["sd"]
    assert store.read(sites=["nowhere"]).readings.empty


def test_empty_store(store):
    back = store.read()
    assert back.readings.empty and back.events.empty
    assert store.count() == 0
    assert store.write_readings(make_set().readings.iloc[:0]) == 0


def test_naive_bounds_rejected(store):
    with pytest.raises(StoreError, match="tz-aware"):
        store.read(start=dt.datetime(2024, 1, 1))


def test_bad_input_rejected(store, rs):
    bad = rs.readings.iloc[:3].copy()
    bad["quantity"] = "watts"
    with pytest.raises(ReadingError, match="unknown quantities"):
        store.write_readings(bad)
    bad = rs.readings.iloc[:3].copy()
    bad["site"] = "../etc"
    with pytest.raises(StoreError, match="names a directory"):
        store.write_readings(bad)
    with pytest.raises(ReadingError, match="tz-aware"):
        store.write_events(rs.events.tz_localize(None))


def _arrow(df: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(df.reset_index(), preserve_index=False)


def test_arrow_table_is_written_like_the_frame(tmp_path, rs):
    """The Arrow fast path of write_readings stores exactly what the frame path stores."""
    import pyarrow as pa

    with DuckDBStore(tmp_path / "a") as a, DuckDBStore(tmp_path / "b") as b:
        assert a.write_readings(rs.readings) == b.write_readings(_arrow(rs.readings))
        pd.testing.assert_frame_equal(canon(a.read().readings), canon(b.read().readings))
        # strings instead of dictionaries, microseconds, another zone: the same readings
        t = _arrow(rs.readings)
        t = t.set_column(0, "ts", t["ts"].cast(pa.timestamp("us", tz="Asia/Shanghai")))
        for c in ("site", "meter", "quantity"):
            t = t.set_column(t.column_names.index(c), c, t[c].cast(pa.string()))
        b.write_readings(t)
        pd.testing.assert_frame_equal(canon(a.read().readings), canon(b.read().readings))
        assert b.write_readings(t.slice(0, 0)) == 0


def test_arrow_table_bad_input_rejected(store, rs):
    import pyarrow as pa

    t = _arrow(rs.readings.iloc[:6])
    with pytest.raises(ReadingError, match="missing \\['value'\\]"):
        store.write_readings(t.drop_columns(["value"]))
    naive = t.set_column(0, "ts", t["ts"].cast(pa.timestamp("ns")))
    with pytest.raises(ReadingError, match="tz-aware"):
        store.write_readings(naive)
    watts = t.set_column(3, "quantity", pa.array(["watts"] * 6))
    with pytest.raises(ReadingError, match="unknown quantities"):
        store.write_readings(watts)
    nan = t.set_column(4, "value", pa.array([1.0, float("nan"), 2, 3, 4, 5]))
    with pytest.raises(ReadingError, match="1 values are NaN"):
        store.write_readings(nan)
    no_site = t.set_column(1, "site", pa.array(["qd", None, "qd", "qd", "qd", "qd"]))
    with pytest.raises(ReadingError, match="expected a site in every row"):
        store.write_readings(no_site)
    with pytest.raises(StoreError, match="names a directory"):
        store.write_readings(t.set_column(1, "site", pa.array(["../etc"] * 6)))
    assert store.count() == 0


def test_durable_across_reopen_and_read_only(tmp_path, rs):
    path = tmp_path / "s"
    with open_store(str(path)) as st:
        write_all(st, rs)
    with open_store(f"duckdb://{path}", read_only=True) as ro:
        pd.testing.assert_frame_equal(canon(ro.read().readings), canon(rs.readings))
        with pytest.raises(StoreError, match="read-only"):
            ro.write_readings(rs.readings)
    assert not list(path.rglob(".tmp-*"))


def test_closed_store_refuses(tmp_path, rs):
    st = DuckDBStore(tmp_path / "s")
    st.close()
    st.close()
    with pytest.raises(StoreError, match="closed"):
        st.read()


def test_not_a_store_dir(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "other.txt").write_text("hello")
    with pytest.raises(StoreError, match="empty or new directory"):
        DuckDBStore(tmp_path / "x")
    with pytest.raises(StoreError, match=r"no store at .*y \(nothing there\)"):
        DuckDBStore(tmp_path / "y", read_only=True)
    with pytest.raises(StoreError, match=r"no store at .*x \(a folder without ems-store.json\)"):
        DuckDBStore(tmp_path / "x", read_only=True)
    assert not (tmp_path / "y").exists()  # a reader creates nothing


def test_upsert_metadata(store, rs):
    store.register_sites(rs.sites)
    changed = SiteInfo(**{**rs.sites[0].to_dict(), "name": "Renamed"})
    store.register_sites([changed])
    sites = store.read().sites
    assert len(sites) == len(rs.sites)
    assert next(s for s in sites if s.site == changed.site).name == "Renamed"
    store.register_meters(rs.meters)
    store.register_meters(rs.meters[:1])
    assert len(store.read().meters) == len(rs.meters)


def test_compaction(store, rs):
    r = rs.readings
    for k in range(0, len(r), 100):  # many small, partly repeated batches
        store.write_readings(r.iloc[max(0, k - 30) : k + 100])
    store.write_events(rs.events)
    store.write_events(rs.events)
    before = store.segments()
    assert before > 2
    result = store.compact()
    assert result["after"] == 3  # two sites + events
    assert store.segments() == 2
    assert store.count() == len(r)
    back = store.read()
    pd.testing.assert_frame_equal(canon(back.readings), canon(r))
    assert len(back.events) == 2
    # writes after compaction still win
    newer = r.iloc[:10].assign(value=-1.0)
    store.write_readings(newer)
    got = canon(store.read().readings).merge(keys(newer))
    assert (got["value"] == -1.0).all()
    assert store.compact()["after"] == 3
    assert store.count() == len(r)


def test_sql_view(store, rs):
    write_all(store, rs)
    store.write_readings(rs.readings.iloc[:10])
    out = store.sql("SELECT site, count(*) AS n FROM readings GROUP BY site ORDER BY site")
    assert out["n"].sum() == len(rs.readings)
    ev = store.sql("SELECT count(*) AS n FROM events")
    assert int(ev["n"].iloc[0]) == len(rs.events)


def test_overlap_groups():
    def seg(seq, lo, hi):
        return Segment(seq, 0, lo, hi, Path(f"{seq}"))

    groups = overlap_groups([seg(1, 0, 10), seg(2, 20, 30), seg(3, 5, 12), seg(4, 31, 40)])
    assert [[s.seq for s in g] for g in groups] == [[1, 3], [2], [4]]


def test_open_store_urls(tmp_path, monkeypatch):
    st = open_store(tmp_path / "a")
    assert isinstance(st, DuckDBStore)
    st.close()
    st = open_store(f"duckdb://{tmp_path}/b")
    assert st.root == tmp_path / "b"
    st.close()
    monkeypatch.chdir(tmp_path)
    with open_store() as st:
        assert st.root == Path("./ems-data")
    with pytest.raises(StoreError, match="found scheme 'ftp'"):
        open_store("ftp://example.com/x")
    with pytest.raises(StoreError, match=r"missing \['bucket'\]"):
        open_store("influx+http://127.0.0.1:8086?org=o")
    with pytest.raises(StoreError, match="token in the URL"):
        open_store("influx+http://127.0.0.1:8086?org=o&bucket=b&token=secret")
    monkeypatch.setitem(sys.modules, "influxdb_client", None)
    monkeypatch.delitem(sys.modules, "ems.store.influx", raising=False)
    with pytest.raises(MissingExtraError, match=r"pip install 'ems\[influx\]'"):
        open_store("http://127.0.0.1:8086", org="o", bucket="b")


WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np, pandas as pd
    from ems.store.duckdb_store import DuckDBStore
    path, batches, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    st = DuckDBStore(path)
    t0 = pd.Timestamp("2024-01-01T00:15Z")
    for b in range(batches):
        ts = pd.date_range(t0 + pd.Timedelta(minutes=15 * rows * b), periods=rows, freq="15min")
        df = pd.DataFrame({"site": "qd", "meter": "grid", "quantity": "import_kwh",
                           "value": np.arange(rows, dtype=float) + b * rows}, index=ts.rename("ts"))
        st.write_readings(df)
        if b % 2:  # a repeat of the previous batch: at-least-once delivery
            st.write_readings(df)
        if b % 7 == 6:
            st.compact()
        time.sleep(0.01)  # let the reader see many states
    st.close()
    """
)


def test_second_process_reads_while_first_writes(tmp_path):
    path = tmp_path / "shared"
    DuckDBStore(path).close()
    batches, rows = 60, 96
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(batches), str(rows)])
    seen = []
    try:
        with DuckDBStore(path, read_only=True) as reader:
            deadline = time.monotonic() + 50
            while time.monotonic() < deadline:
                done = proc.poll() is not None
                r = reader.read().readings
                n = len(r)
                assert n % rows == 0, f"partial batch visible: {n} rows"
                assert not r.index.duplicated().any()
                # values are consecutive from 0: no batch missing before the newest one
                assert np.array_equal(r["value"].to_numpy(), np.arange(n, dtype=float))
                seen.append(n)
                if done:
                    break
            final = reader.count()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert seen == sorted(seen), "count went backwards"
    assert len(set(seen)) > 2, f"reader saw too few states: {sorted(set(seen))}"
    assert seen[-1] == final == batches * rows
    assert json.loads((path / "ems-store.json").read_text())["format"] == "ems-segments"
    assert len(list_segments(path / "readings" / "site=qd")) >= 1


def test_simulated_scenario_roundtrip(tmp_path):
    """A short simulated scenario (two sites) through the store and back, unchanged."""
    sim = pytest.importorskip("ems.sim")
    from sim_fixtures import make_scenario, make_site

    result = sim.simulate(
        make_scenario(
            [make_site("qingdao"), make_site("second", climate="qingdao")],
            dt.date(2024, 6, 1),
            dt.date(2024, 6, 3),
            900,
        )
    )
    with DuckDBStore(tmp_path / "s") as st:
        write_all(st, result)
        write_all(st, result)  # delivered twice
        back = st.read()
        assert st.count() == len(result.readings)
    pd.testing.assert_frame_equal(canon(back.readings), canon(result.readings))
    assert back.meters == sorted(result.meters, key=lambda m: (m.site, m.meter))
    assert sorted(back.sites, key=lambda s: s.site) == sorted(result.sites, key=lambda s: s.site)
    assert len(result.events) > 0
    ev = result.events.reset_index().drop_duplicates(["ts", "site", "kind", "subject"], keep="last")
    ev = ev.sort_values(["ts", "site", "kind", "subject"]).reset_index(drop=True)
    got = back.events.reset_index().sort_values(["ts", "site", "kind", "subject"])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ev, check_dtype=False)


def test_events_repeated_in_one_batch_keep_last(store, rs):
    ev = rs.events.iloc[:1]
    twice = pd.concat([ev, ev.assign(value=1.0)])
    store.write_events(twice)
    store.write_events(rs.events.iloc[1:])
    back = store.read().events
    assert len(back) == len(rs.events)
    assert back["value"].iloc[0] == 1.0
    store.compact()
    assert store.read().events["value"].iloc[0] == 1.0


def test_sql_on_empty_store(store):
    assert int(store.sql("SELECT count(*) AS n FROM readings")["n"].iloc[0]) == 0


def test_tiered_compaction_keeps_last_write_wins(tmp_path, rs):
    """Random overlapping batches with fanout 3 (several generations): the latest write wins."""
    rng = np.random.default_rng(5)
    r = rs.readings[rs.readings["site"] == "qd"]
    expected = canon(r).set_index(["ts", "site", "meter", "quantity"])["value"]
    with DuckDBStore(tmp_path / "s", fanout=3) as st:
        st.write_readings(r)
        for k in range(40):
            a = int(rng.integers(0, len(r) - 50))
            batch = r.iloc[a : a + int(rng.integers(1, 50))]
            batch = batch.assign(value=float(k))
            st.write_readings(batch)
            expected.loc[canon(batch).set_index(["ts", "site", "meter", "quantity"]).index] = float(
                k
            )
            gens = {s.gen for s in list_segments(tmp_path / "s" / "readings" / "site=qd")}
            assert st.segments() < 3 * (len(gens) + 1)
        assert max(gens) >= 2
        got = canon(st.read().readings).set_index(["ts", "site", "meter", "quantity"])["value"]
        pd.testing.assert_series_equal(got, expected.sort_index().reindex(got.index))
        assert len(got) == len(expected) == st.count()
        st.compact()
        assert st.segments() == 1
        got2 = canon(st.read().readings).set_index(["ts", "site", "meter", "quantity"])["value"]
        pd.testing.assert_series_equal(got2, got)


def test_bad_fanout(tmp_path):
    with pytest.raises(StoreError, match="fanout"):
        DuckDBStore(tmp_path / "s", fanout=1)
