"""Stage 1 against its definition: a slow reference written from the module docs, row orders,
windows of whole days (what the store's register aggregates rely on), and the data shapes
that crashed the live dashboard."""

import dataclasses
import itertools
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from builders import TARIFF, const, from_power, index, meter, readingset, site

from ems.accounting.energy import daily_from_hourly, stage1
from ems.readings import QUANTITIES, ReadingSet, tou_periods


def _with(rs: ReadingSet, readings: pd.DataFrame, meters=None) -> ReadingSet:
    return ReadingSet(readings=readings, events=rs.events, meters=meters or rs.meters, sites=rs.sites)


def _order(r: pd.DataFrame, *keys: str) -> pd.DataFrame:
    cols = {"ts": r.index.asi8, **{k: r[k].cat.codes.to_numpy() for k in ("site", "meter", "quantity")}}
    return r.iloc[np.lexsort([cols[k] for k in reversed(keys)])]


def _series(r: pd.DataFrame, site_id: str, meter_id: str, quantity: str) -> np.ndarray:
    return ((r["site"] == site_id) & (r["meter"] == meter_id) & (r["quantity"] == quantity)).to_numpy()


def reference(rs: ReadingSet) -> pd.DataFrame:
    """Stage 1 written straight from the definition, one reading at a time (slow, small sets)."""
    sites = {s.site: s for s in rs.sites}
    meters = {(m.site, m.meter): m for m in rs.meters}
    out = defaultdict(lambda: [0.0, 0, -np.inf])
    export_pv = defaultdict(lambda: {"e": 0.0, "p": 0.0, "has": set()})
    r = rs.readings.reset_index()
    for (s, m, q), g in r.groupby(["site", "meter", "quantity"], observed=True, sort=True):
        if QUANTITIES[q].kind != "register":
            continue
        mi, si = meters[(s, m)], sites[s]
        iv = pd.Timedelta(seconds=mi.interval_s)
        roll = mi.attrs.get("rollover_at")
        g = g.sort_values("ts", kind="stable")
        for (t0, v0), (t1, v1) in itertools.pairwise(zip(g["ts"], g["value"], strict=True)):
            d = v1 - v0
            if d < 0:
                d = d + roll if roll else v1
            n = max(1, round((t1 - t0) / iv))
            for k in range(n):
                start = t1 - (n - k) * iv
                local = start.tz_convert(si.tz)
                priced = mi.kind == "grid" and q in ("import_kwh", "export_kwh") and si.attrs.get("tariff")
                period = str(tou_periods(pd.DatetimeIndex([local]), si.attrs["tariff"])[0]) if priced else ""
                row = out[(s, m, q, local.tz_localize(None).normalize(), period)]
                row[0] += d / n
                row[1] += 1
                if q in ("import_kwh", "export_kwh"):
                    row[2] = max(row[2], d / n * 3600 / mi.interval_s)
                if (mi.kind, q) in (("grid", "export_kwh"), ("pv", "energy_kwh")):
                    slot = export_pv[(s, start)]
                    slot["e" if mi.kind == "grid" else "p"] += d / n
                    slot["has"].add(mi.kind)
                    slot["period"] = slot.get("period", "") or period
    for (s, start), slot in export_pv.items():
        if slot["has"] == {"grid", "pv"}:
            local = start.tz_convert(sites[s].tz)
            row = out[(s, "_site", "pv_exported_kwh", local.tz_localize(None).normalize(), slot["period"])]
            row[0] += min(slot["e"], slot["p"])
            row[1] += 1
    rows = [(*k, v[0], np.nan if v[2] == -np.inf else v[2], v[1]) for k, v in out.items()]
    df = pd.DataFrame(rows, columns=["site", "meter", "quantity", "date", "period", "value", "max_rate", "n"])
    df["date"] = df["date"].astype("datetime64[ns]")
    return df.sort_values(["site", "meter", "quantity", "date", "period"]).reset_index(drop=True)


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_exact=False, rtol=1e-12, atol=1e-9)


def _lossy(simulated: ReadingSet) -> ReadingSet:
    """The simulated set with lost messages, a reset and a rollover."""
    r = simulated.readings.copy()
    vals = r["value"].to_numpy(copy=True)
    reset = np.flatnonzero(_series(r, "qingdao", "grid", "import_kwh"))
    vals[reset[150:]] -= vals[reset[150]] - 1.0  # the register restarts near zero
    roll = np.flatnonzero(_series(r, "velenje", "pv-roof", "energy_kwh"))
    limit = float(vals[roll[200]]) - 0.5
    vals[roll[200:]] -= limit  # a register that wraps at `limit`
    r["value"] = vals
    keep = np.random.default_rng(5).random(len(r)) > 0.03
    meters = [
        dataclasses.replace(m, attrs={**m.attrs, "rollover_at": limit}) if (m.site, m.meter) == ("velenje", "pv-roof") else m
        for m in simulated.meters
    ]
    return _with(simulated, r[keep], meters)


def test_simulated_readings_match_the_definition(simulated):
    got = stage1(simulated)
    e = got.energy
    # the scenario exercises what stage 1 does: tariff periods, the derived PV export, both zones
    assert (e["period"] != "").any() and (e["meter"] == "_site").any()
    assert set(e["site"]) == {"qingdao", "velenje"}
    # 31 March 2024 in Ljubljana has 23 hours: 92 intervals
    vg = e[(e["site"] == "velenje") & (e["meter"] == "grid") & (e["quantity"] == "import_kwh")]
    assert vg.groupby("date")["n"].sum()[pd.Timestamp("2024-03-31")] == 92
    _same(e, reference(simulated))
    assert got.anomalies.empty


def test_lost_messages_resets_and_rollovers_match_the_definition(simulated):
    rs = _lossy(simulated)
    got = stage1(rs)
    _same(got.energy, reference(rs))
    kinds = got.anomalies["kind"].value_counts()
    assert kinds["reset"] == 1 and kinds["rollover"] == 1 and kinds["gap"] > 100
    # resets and rollovers first, then gaps; each by series, then ts
    a = got.anomalies
    assert list(a["kind"].iloc[:2]) == ["reset", "rollover"]
    g = a[a["kind"] == "gap"]
    assert (g.sort_values(["site", "meter", "quantity", "ts"]).index == g.index).all()


@pytest.mark.parametrize("lossy", [False, True])
def test_every_row_order_gives_the_same_numbers_bit_for_bit(simulated, lossy):
    rs = _lossy(simulated) if lossy else simulated
    r = rs.readings
    want = stage1(rs)
    layouts = {
        "per site, ts-major (what a store returns)": _order(r, "site", "ts", "meter", "quantity"),
        "ts-major over both sites": _order(r, "ts", "site", "meter", "quantity"),
        "series-major": _order(r, "site", "meter", "quantity", "ts"),
        "shuffled": r.sample(frac=1.0, random_state=1),
    }
    for name, frame in layouts.items():
        got = stage1(_with(rs, frame))
        pd.testing.assert_frame_equal(got.energy, want.energy, check_exact=True, obj=name)
        pd.testing.assert_frame_equal(got.hourly, want.hourly, check_exact=True, obj=name)
        pd.testing.assert_frame_equal(got.anomalies, want.anomalies, check_exact=True, obj=name)


@pytest.mark.parametrize("lossy", [False, True])
def test_windows_of_whole_days_add_up_to_the_whole_bit_for_bit(simulated, lossy):
    """What lets a store keep finished days: stage 1 of day ranges, concatenated, is stage 1."""
    rs = _lossy(simulated) if lossy else simulated
    want = stage1(rs)
    cuts = {}
    for s in rs.sites:
        mid = pd.Timestamp("2024-03-31", tz=s.tz).tz_convert("UTC")
        site_rs = ReadingSet(rs.readings[rs.readings["site"] == s.site], rs.events, rs.meters, rs.sites)
        cuts[s.site] = (stage1(site_rs, end=mid), stage1(site_rs, start=mid))
    energy = pd.concat([p.energy for s in sorted(cuts) for p in cuts[s]]).sort_values(
        ["site", "meter", "quantity", "date", "period"], kind="stable")
    pd.testing.assert_frame_equal(energy.reset_index(drop=True), want.energy, check_exact=True)
    anomalies = pd.concat([p.anomalies for s in sorted(cuts) for p in cuts[s]])
    assert len(anomalies) == len(want.anomalies)
    hourly = pd.concat([p.hourly.astype({c: str for c in ("site", "meter", "quantity", "period")})
                        for s in sorted(cuts) for p in cuts[s]], ignore_index=True)
    pd.testing.assert_frame_equal(daily_from_hourly(hourly), want.energy, check_exact=True)


def test_daily_rows_are_the_hourly_rows_summed(simulated):
    s1 = stage1(_lossy(simulated))
    pd.testing.assert_frame_equal(daily_from_hourly(s1.hourly), s1.energy, check_exact=True)
    h = s1.hourly
    assert (pd.DatetimeIndex(h["hour"]).minute == 0).all()
    assert h.groupby(["site", "meter", "quantity", "period"], observed=True)["n"].max().max() <= 4


def test_a_lost_message_loses_no_energy(simulated):
    rs = _lossy(simulated)
    e = stage1(rs).energy
    e = e[(e["meter"] != "_site") & ~((e["site"] == "qingdao") & (e["meter"] == "grid"))]
    e = e[~((e["site"] == "velenje") & (e["meter"] == "pv-roof"))]
    tot = e.groupby(["site", "meter", "quantity"])["value"].sum()
    ends = rs.readings.reset_index().sort_values("ts").groupby(["site", "meter", "quantity"], observed=True)["value"]
    span = (ends.last() - ends.first()).reindex(tot.index)
    np.testing.assert_allclose(tot.to_numpy(), span.to_numpy(), rtol=1e-9, atol=1e-9)


def test_partial_timestamps_as_a_live_store_returns_them(simulated):
    """The shape that crashed ``ems live``: in a ts-major read of a store being written, some
    meters of the newest timestamps have arrived and others (the grid meter) not yet."""
    r = _order(simulated.readings, "site", "ts", "meter", "quantity")
    last = r.index.max()
    late = (r.index > last - pd.Timedelta(hours=2)) & (r["meter"] == "grid").to_numpy()
    rs = _with(simulated, r[~late])
    got = stage1(rs)
    _same(got.energy, reference(rs))
    grid = got.energy[(got.energy["meter"] == "grid") & (got.energy["quantity"] == "import_kwh")]
    have = rs.readings[(rs.readings["meter"] == "grid") & (rs.readings["quantity"] == "import_kwh")]
    assert grid["n"].sum() == len(have) - 2  # one baseline reading per site, no interval lost
    assert late.sum() > 0


def test_repeated_readings_and_mixed_intervals(simulated):
    r = simulated.readings
    twice = pd.concat([r, r.iloc[np.flatnonzero(_series(r, "qingdao", "grid", "import_kwh"))[[10]]]])
    rs = _with(simulated, twice)
    _same(stage1(rs).energy, reference(rs))
    hourly_gas = [dataclasses.replace(m, interval_s=3600) if m.meter == "gas" else m for m in simulated.meters]
    mixed = _with(simulated, r.iloc[np.r_[0:50, 51: len(r)]].sample(frac=1.0, random_state=4), hourly_gas)
    _same(stage1(mixed).energy, reference(mixed))


def test_clock_going_back_at_midnight():
    # Chile ends DST at 24:00 on 6 April 2024: local time goes back to 23:00, a 25-hour Saturday
    tz = "America/Santiago"
    idx = index("2024-04-06", 96 * 2, tz=tz)
    rs = readingset([from_power("s1", "grid", "import_kwh", const(idx, 100.0)),
                     from_power("s1", "grid", "export_kwh", const(idx, 0.0))],
                    [meter("s1", "grid", "grid")], [site("s1", tz, country="CL", tariff=TARIFF)])
    got = stage1(rs).energy
    _same(got, reference(rs))
    e = got[got["quantity"] == "import_kwh"].groupby("date")[["n", "value"]].sum()
    assert e.loc[pd.Timestamp("2024-04-06"), "n"] == 100
    assert e.loc[pd.Timestamp("2024-04-06"), "value"] == pytest.approx(2500.0)


def test_half_hour_zone_hours_start_at_half_past_utc():
    tz = "Asia/Kolkata"
    idx = index("2024-06-01", 96, tz=tz)
    rs = readingset([from_power("s1", "grid", "import_kwh", const(idx, 40.0))],
                    [meter("s1", "grid", "grid")], [site("s1", tz, country="IN")])
    s1 = stage1(rs)
    assert (pd.DatetimeIndex(s1.hourly["hour"]).minute == 30).all() and len(s1.hourly) == 24
    assert s1.energy["value"].sum() == pytest.approx(40.0 * 24) and len(s1.energy) == 1


def test_fixture_layout_periods_and_derived_export():
    idx = index("2024-06-01", 96, tz="Asia/Shanghai")
    rs = readingset([from_power("s1", "grid", "import_kwh", const(idx, 100.0)),
                     from_power("s1", "grid", "export_kwh", const(idx, 10.0)),
                     from_power("s1", "pv", "energy_kwh", const(idx, 30.0))],
                    [meter("s1", "grid", "grid"), meter("s1", "pv", "pv")], [site("s1", tariff=TARIFF)])
    got = stage1(rs).energy
    _same(got, reference(rs))
    e = got.groupby(["meter", "quantity", "period"]).agg({"value": "sum", "max_rate": "max"})
    assert e.loc[("_site", "pv_exported_kwh"), "value"].sum() == pytest.approx(10 * 24)
    assert e.loc[("grid", "import_kwh", "peak"), "value"] == pytest.approx(100 * 4)
    assert e.loc[("grid", "import_kwh", "peak"), "max_rate"] == pytest.approx(100.0)
