"""The dashboard: views (pure), the monitor's KPI cache, the HTTP server and ``ems dashboard``."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
from brokers import mosquitto  # noqa: F401
from builders import HOSTILE, meters, plant, plant_readings, site_info, write

from ems.accounting import kpis
from ems.dashboard import views
from ems.dashboard.monitor import Monitor
from ems.dashboard.server import make_server
from ems.dashboard.status import StatusWatcher
from ems.errors import EmsError
from ems.readings import ReadingSet, empty_events
from ems.store import open_store

# ---------------------------------------------------------------- views


def test_latest_flows_signs_and_soc():
    df, _ = plant_readings("a", "2024-07-01", 8)
    f = views.latest_flows(df, meters("a"))
    last = df[df.index == df.index.max()]
    get = dict(
        zip(
            last["meter"].astype(str) + "." + last["quantity"].astype(str),
            last["value"],
            strict=True,
        )
    )
    assert f["load"] == pytest.approx(get["load1.power_kw"])
    assert f["grid"] == pytest.approx(get["grid.power_kw"])
    assert f["battery"] == pytest.approx(get["bess.power_kw"])
    assert f["steam"] == pytest.approx(300.0)
    assert f["soc_pct"] == pytest.approx(get["bess.soc_pct"])
    assert f["last_ts_ms"] == df.index.max().value // 1_000_000
    # the balance the fixture wrote: grid = load - pv - battery
    assert f["grid"] == pytest.approx(f["load"] - f["pv"] - f["battery"])


def test_latest_flows_empty():
    assert views.latest_flows(plant_readings("a", "2024-07-01", 1)[0].iloc[:0], meters("a")) == {
        "soc_pct": None,
        "last_ts_ms": None,
    }


@pytest.mark.parametrize(
    ("range_s", "interval_s", "expected"),
    [
        (86_400, 900, 900),
        (7 * 86_400, 900, 2700),
        (365 * 86_400, 900, 105_300),
        (86_400, 60, 300),
    ],
)
def test_bucket_seconds(range_s, interval_s, expected):
    b = views.bucket_seconds(range_s, interval_s, 300)
    assert b == expected
    assert b % interval_s == 0
    assert range_s / b <= 300


def test_bucket_seconds_rejects_nonsense():
    with pytest.raises(EmsError, match="expected positive range"):
        views.bucket_seconds(0, 900)


@pytest.mark.parametrize("bucket_s", [900, 3600, 7200])
def test_power_series_means_and_energy_sums(bucket_s):
    df, _ = plant_readings("a", "2024-07-01", 96)
    start, end = pd.Timestamp("2024-07-01", tz="UTC"), pd.Timestamp("2024-07-02", tz="UTC")
    p = views.power_series(df, meters("a"), start, end, bucket_s)
    assert len(p["t"]) == 86_400 // bucket_s
    assert p["t"][-1] == end.value // 1_000_000
    assert np.mean(p["series"]["load"]) == pytest.approx(1000.0)
    assert len(p["soc_pct"]) == len(p["t"])
    e = views.energy_series(df, meters("a"), start, end, bucket_s)
    load = df[(df["meter"] == "load1") & (df["quantity"] == "energy_kwh")]["value"]
    # the first reading is the baseline: energy = last - first register value
    assert sum(e["series"]["load"]["values"]) == pytest.approx(load.iloc[-1] - load.iloc[0])
    assert e["series"]["steam"]["unit"] == "GJ"
    assert e["series"]["grid_import"]["carrier"] == "electricity"


def test_energy_series_ignores_a_register_reset():
    df, _ = plant_readings("a", "2024-07-01", 8)
    sel = (df["meter"] == "load1") & (df["quantity"] == "energy_kwh")
    vals = df.loc[sel, "value"].to_numpy().copy()
    vals[4:] -= vals[3]  # reset to zero after the 4th reading
    df.loc[sel, "value"] = vals
    e = views.energy_series(
        df,
        meters("a"),
        pd.Timestamp("2024-07-01", tz="UTC"),
        pd.Timestamp("2024-07-01 02:00", tz="UTC"),
        900,
    )
    assert min(e["series"]["load"]["values"]) >= 0.0


def test_event_list_and_jsonable():
    rs = plant({"a": "A"})
    ev = views.event_list(rs.events)
    assert [e["kind"] for e in ev] == ["outage_start", "outage_end"]
    assert ev[0]["value"] is None  # NaN in the ledger
    assert views.jsonable({"x": float("nan"), "y": np.float64(2.0), "z": [float("inf")]}) == {
        "x": None,
        "y": 2.0,
        "z": [None],
    }


# ---------------------------------------------------------------- monitor


def test_monitor_overview_kpis_match_accounting(store):
    rs = plant({"a": "Alpha", "b": "Beta"}, n=3 * 96)
    write(store, rs)
    mon = Monitor(store)
    mon.refresh()
    ov = mon.overview()
    assert [t["site"] for t in ov["sites"]] == ["a", "b"]
    a = ov["sites"][0]
    assert a["name"] == "Alpha"
    assert a["flows"]["load"] == pytest.approx(1000.0)
    ref = kpis(
        ReadingSet(
            rs.readings[rs.readings["site"] == "a"],
            rs.events.iloc[:0],
            [m for m in rs.meters if m.site == "a"],
            [rs.site("a")],
        ),
        period="year",
    ).kpis
    for k in ("electricity_consumed_kwh", "total_tce", "green_share", "scope12_market_t"):
        assert a["year"][k] == pytest.approx(float(ref[k].iloc[0]), rel=1e-9), k
    assert a["today"]["period"] == a["today_date"]
    assert {t["target"] for t in a["targets"]} >= {"clean-2030"}
    assert "g" in ov["group"]
    json.dumps(ov, allow_nan=False)


def test_monitor_is_incremental_and_stays_equal_to_a_full_recompute(store, monkeypatch):
    site = "a"
    first, reg = plant_readings(site, "2024-07-01", 2 * 96)
    store.register_sites([site_info(site)])
    store.register_meters(meters(site))
    store.write_readings(first)
    mon = Monitor(store, today_every_s=0.0)
    full = []
    orig = Monitor._start_frame
    monkeypatch.setattr(Monitor, "_start_frame", lambda self, *a: full.append(1) or orig(self, *a))
    mon.refresh()
    v0 = mon.version
    assert len(full) == 1
    mon.refresh()  # nothing new: nothing recomputed
    assert mon.version == v0 and len(full) == 1
    more, _ = plant_readings(site, "2024-07-01", 96, offset=2 * 96, base=reg, load_kw=2500.0)
    store.write_readings(more)
    mon.refresh()
    assert len(full) == 1, "a new day extends the cached year instead of recomputing it"
    ov = mon.overview()["sites"][0]
    assert ov["flows"]["load"] == pytest.approx(2500.0)
    both = pd.concat([first, more])
    ref = kpis(
        ReadingSet(both, empty_events(), meters(site), [site_info(site)]), period="year"
    ).kpis
    assert ov["year"]["electricity_consumed_kwh"] == pytest.approx(
        float(ref["electricity_consumed_kwh"].iloc[0])
    )
    assert ov["year"]["total_tce"] == pytest.approx(float(ref["total_tce"].iloc[0]))
    # the year's hourly-matched share covers the day closed while watching, as a full recompute does
    from ems.accounting.hourly import hourly_of

    rs_both = ReadingSet(both, empty_events(), meters(site), [site_info(site)])
    full_cfe = hourly_of(kpis(rs_both, period="year"), rs_both).rollup("site", "year")["cfe"].iloc[0]
    assert ov["year"]["cfe"] == pytest.approx(float(full_cfe), rel=1e-9)


def test_monitor_status(store):
    first, reg = plant_readings("a", "2024-07-01", 8)
    store.register_sites([site_info("a")])
    store.register_meters(meters("a"))
    store.write_readings(first)
    mon = Monitor(store)
    mon.refresh()
    st = mon.sites["a"]
    assert mon.status(st)["state"] == "stale"  # 2024 readings, found at start: history
    assert mon.status(st, now=st.last_ts.timestamp() + 60)["state"] == "fresh"  # real time
    store.write_readings(plant_readings("a", "2024-07-01", 4, offset=8, base=reg)[0])
    mon.refresh()
    assert mon.status(st)["state"] == "fresh"  # a replay: readings advance while we watch
    assert mon.status(st, now=st.last_new_wall + 3600)["state"] == "stale"
    mon.status_fn = lambda: {"a": "offline"}
    assert mon.status(st) == {"state": "offline", "source": "mqtt"}


def test_site_view(store):
    write(store, plant({"a": "A"}, n=3 * 96))
    mon = Monitor(store)
    mon.refresh()
    v = mon.site_view("a", "week")
    assert v["range"] == "week" and v["bucket_s"] == 2700
    assert len(v["power"]["t"]) <= 300
    assert v["end_ms"] == v["power"]["t"][-1]
    assert [e["kind"] for e in v["events"]] == ["outage_start", "outage_end"]
    assert v["site"]["tz"] == "Asia/Shanghai"
    with pytest.raises(EmsError, match="expected one of"):
        mon.site_view("a", "decade")
    with pytest.raises(EmsError, match="unknown site"):
        mon.site_view("nope")


# ---------------------------------------------------------------- HTTP server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = open_store(tmp_path_factory.mktemp("server") / "store")
    write(store, plant({"a": HOSTILE}))
    mon = Monitor(store, poll_s=0.2).start()
    srv = make_server(mon, port=0).start()
    yield srv
    srv.stop()
    mon.stop()
    store.close()


def _get(url, method="GET"):
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_server_routes(server):
    assert server.server_address[0] == "127.0.0.1"
    status, headers, body = _get(server.url + "/")
    assert status == 200 and b"app.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert _get(server.url + "/static/app.js")[0] == 200
    assert _get(server.url + "/static/style.css")[1]["Content-Type"].startswith("text/css")
    assert _get(server.url + "/healthz")[2] == b"ok\n"
    status, headers, body = _get(server.url + "/api/overview", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    status, _, body = _get(server.url + "/api/site/a?range=day")
    assert status == 200 and json.loads(body)["site"]["name"] == HOSTILE
    status, _, body = _get(server.url + "/api/overview")
    assert status == 200 and json.loads(body)["sites"][0]["name"] == HOSTILE


@pytest.mark.parametrize(
    "path",
    [
        "/static/../commands.py",
        "/static/..%2fcommands.py",
        "/static/.hidden",
        "/nope",
        "/api/site/zzz",
    ],
)
def test_server_404(server, path):
    assert _get(server.url + path)[0] == 404


def test_server_bad_range_is_400(server):
    status, _, body = _get(server.url + "/api/site/a?range=decade")
    assert status == 400 and b"expected one of" in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_server_is_read_only(server, method):
    status, headers, _ = _get(server.url + "/api/overview", method)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_server_port_in_use(server):
    with pytest.raises(EmsError, match="expected to listen on"):
        make_server(server.monitor, port=server.server_address[1])


# ---------------------------------------------------------------- CLI as a real process


def test_ems_dashboard_subprocess(tmp_path):
    s = open_store(tmp_path / "store")
    write(s, plant({"a": "A"}))
    s.close()
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ems.cli",
            "dashboard",
            "--store",
            str(tmp_path / "store"),
            "--port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            line = proc.stderr.readline()
            m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            assert m, line
            assert _get(m.group(1) + "/healthz")[0] == 200
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 0
            assert "stopped" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_ems_dashboard_missing_store(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "ems.cli", "dashboard", "--store", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert f"no store at {tmp_path / 'none'} (nothing there)" in r.stderr
    assert not (tmp_path / "none").exists()


def test_static_files_ship_as_package_data():
    """A non-editable install (the Docker image) must carry the page: pyproject's package-data."""
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["ems"]
    static = sorted((root / "ems/dashboard/static").iterdir())
    assert {p.name for p in static} >= {"index.html", "app.js", "charts.js", "style.css"}
    missing = [
        p.name
        for p in static
        if not any(fnmatch(f"dashboard/static/{p.name}", pat) for pat in patterns)
    ]
    assert not missing, (
        f'pyproject.toml [tool.setuptools.package-data] ems needs "dashboard/static/*": {missing}'
    )


# ---------------------------------------------------------------- MQTT site status


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.mark.service
def test_status_watcher_follows_the_retained_status(mosquitto, store):  # noqa: F811
    def pub(site, state):
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                mosquitto.host,
                "-p",
                str(mosquitto.port),
                "-q",
                "1",
                "-r",
                "-t",
                f"ems/v1/{site}/_status",
                "-m",
                state,
            ],
            check=True,
            timeout=10,
        )

    pub("a", "online")
    pub("b", "offline")
    write(store, plant({"a": "A"}))
    with StatusWatcher(mosquitto.url) as watcher:
        assert _wait(lambda: watcher() == {"a": "online", "b": "offline"}), watcher()
        mon = Monitor(store, status=watcher)
        mon.refresh()
        assert mon.overview()["sites"][0]["status"] == {"state": "online", "source": "mqtt"}
        pub("a", "offline")
        assert _wait(lambda: watcher().get("a") == "offline")
        assert mon.status(mon.sites["a"])["state"] == "offline"


def test_ems_dashboard_unreachable_broker(tmp_path):
    s = open_store(tmp_path / "store")
    write(s, plant({"a": "A"}))
    s.close()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ems.cli",
            "dashboard",
            "--store",
            str(tmp_path / "store"),
            "--broker",
            "mqtt://127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "cannot connect to broker" in r.stderr


def test_monitor_shows_the_grid_intensity_now_and_todays_hourly_matched_share(store):
    from ems.accounting.energy import stage1
    from ems.accounting.hourly import hourly_of

    rs = plant({"a": "Alpha"}, n=3 * 96)
    write(store, rs)
    mon = Monitor(store)
    mon.refresh()
    tile = mon.overview()["sites"][0]
    today, year = tile["today"], tile["year"]
    # the same hourly matching computed from the readings, all at once
    res = kpis(ReadingSet(rs.readings, rs.events.iloc[:0], rs.meters, rs.sites), period="year")
    ref = hourly_of(res, rs)
    days = ref.rollup("site", "day").set_index("period")
    assert today["cfe"] == pytest.approx(float(days.loc[tile["today_date"], "cfe"]), rel=1e-9)
    assert year["cfe"] == pytest.approx(float(ref.rollup("site", "year")["cfe"].iloc[0]), rel=1e-9)
    assert 0.0 < today["cfe"] < 1.0
    hours = ref.hours["a"]
    assert today["grid_intensity_kg_per_kwh"] == pytest.approx(float(hours["average_kg_per_kwh"].iloc[-1]))
    assert today["grid_intensity_method"] in ("modelled", "annual")
    assert len(stage1(rs).hourly)  # (the reference really had hours)
    json.dumps(tile, allow_nan=False)
