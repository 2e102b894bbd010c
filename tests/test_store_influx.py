"""The InfluxDB backend: line protocol, Flux construction, token handling, and the
write path against a real server speaking the InfluxDB v2 write API (VictoriaMetrics).

The Flux read path needs a real InfluxDB 2; it runs with docker-compose (see docs/store.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import socket
import subprocess
import time
import urllib.request
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest

from ems.errors import StoreError
from ems.readings import MeterInfo, SiteInfo, events_frame
from ems.store import flux, lineproto, open_store
from ems.store.influx import InfluxStore, read_token, tidy_from_flux

TOKEN = "s3cr3t-T0KEN-never-logged"


def site(s="qd", **kw):
    d = dict(
        site=s,
        name="Qingdao",
        group="grp",
        company="Acme Co",
        park="Park, East",
        tz="Asia/Shanghai",
        lat=36.0,
        lon=120.0,
        country="CN",
        grid_region="CN-East",
        factor_set="cn-2024",
    )
    d.update(kw)
    return SiteInfo(**d)


def meters(s="qd"):
    return [
        MeterInfo(s, "grid", "grid", "electricity", ("power_kw", "import_kwh", "export_kwh"), 900),
        MeterInfo(s, "pv1", "pv", "electricity", ("power_kw", "energy_kwh"), 900),
    ]


def readings(sites=("qd", "sd"), periods=40, seed=0):
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01T00:15Z", periods=periods, freq="15min", tz="UTC", name="ts")
    frames = []
    for s in sites:
        for m in meters(s):
            for q in m.quantities:
                v = np.round(rng.random(periods) * 100, 3)  # a meter's resolution
                if q.endswith("_kwh"):
                    v = np.round(np.cumsum(v), 3)
                frames.append(
                    pd.DataFrame({"site": s, "meter": m.meter, "quantity": q, "value": v}, index=ts)
                )
    return pd.concat(frames)


# -- line protocol --------------------------------------------------------------------


def test_escaping():
    assert lineproto.escape_key("a b,c=d\\") == "a\\ b\\,c\\=d\\\\"
    assert lineproto.escape_measurement("a b,c=d") == "a\\ b\\,c=d"
    assert lineproto.escape_string('say "hi" \\ ok') == '"say \\"hi\\" \\\\ ok"'


def test_reading_lines_one_per_meter_and_ts():
    r = readings(sites=("qd",), periods=2)
    m = {(x.site, x.meter): x for x in meters()}
    lines = lineproto.reading_lines(r, m, {"qd": site()})
    assert len(lines) == 4  # 2 meters x 2 timestamps
    first = lines[0]
    assert first.startswith(
        "grid,carrier=electricity,company=Acme\\ Co,group=grp,meter=grid,park=Park\\,\\ East,site=qd "
    )
    fields = first.split(" ")[-2]
    assert [f.split("=")[0] for f in first.rsplit(" ", 2)[1].split(",")] == [
        "export_kwh",
        "import_kwh",
        "power_kw",
    ]
    assert first.endswith(" 1704068100")  # 2024-01-01T00:15Z, seconds
    assert "=" in fields
    # deterministic: the same frame gives the same bytes, so a retry overwrites
    assert lineproto.reading_lines(r.sample(frac=1, random_state=1), m, {"qd": site()}) == lines


def test_reading_lines_repeat_keeps_last_and_exact_floats():
    r = readings(sites=("qd",), periods=1).iloc[:1]
    r2 = pd.concat([r, r.assign(value=0.1 + 0.2)])
    m = {(x.site, x.meter): x for x in meters()}
    (line,) = lineproto.reading_lines(r2, m, {"qd": site()})
    assert "=0.30000000000000004 " in line
    assert float(line.split("=")[-1].split(" ")[0]) == 0.1 + 0.2


def test_reading_lines_need_registered_meters():
    r = readings(sites=("qd",), periods=1)
    with pytest.raises(StoreError, match=r"register_meters.*meter qd/grid"):
        lineproto.reading_lines(r, {}, {"qd": site()})
    m = {(x.site, x.meter): x for x in meters()}
    with pytest.raises(StoreError, match=r"register_sites.*site qd"):
        lineproto.reading_lines(r, m, {})


def test_reading_lines_reject_fractional_seconds():
    r = readings(sites=("qd",), periods=1)
    r.index = r.index + pd.Timedelta("250ms")
    m = {(x.site, x.meter): x for x in meters()}
    with pytest.raises(StoreError, match="whole-second"):
        lineproto.reading_lines(r, m, {"qd": site()})


def test_event_and_meta_lines():
    ev = events_frame(
        [
            {
                "ts": "2024-01-02T03:00Z",
                "site": "qd",
                "kind": "fuel_delivery",
                "subject": "fleet 1",
                "value": 500.0,
                "unit": "kg",
                "detail": {"fuel": "diesel"},
            },
            {
                "ts": "2024-01-02T04:00Z",
                "site": "qd",
                "kind": "outage_start",
                "subject": "",
                "value": float("nan"),
                "unit": "",
                "detail": None,
            },
        ]
    )
    a, b = lineproto.event_lines(ev)
    assert a == (
        'event,kind=fuel_delivery,site=qd,subject=fleet\\ 1 value=500.0,unit="kg",'
        'detail="{\\"fuel\\": \\"diesel\\"}" 1704164400'
    )
    assert b.startswith("event,kind=outage_start,site=qd unit=")  # no empty tag, no NaN field
    (s,) = lineproto.meta_lines(sites=[site()])
    assert s.startswith("meta,entity=site,site=qd json=")
    assert s.endswith(f" {lineproto.META_TS}")


# -- Flux -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "lit"),
    [
        ("qd", '"qd"'),
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ("${secret}", '"\\${secret}"'),
        ('x" or true or "', '"x\\" or true or \\""'),
        ("line\nbreak", '"line\\nbreak"'),
    ],
)
def test_flux_string_escaping(raw, lit):
    assert flux.flux_string(raw) == lit


def test_readings_query():
    q = flux.readings_query(
        "ems",
        start=dt.datetime(2024, 1, 1, 8, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        end=dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        sites=["qd", 'evil" or true or "'],
    )
    assert q.startswith(
        'from(bucket: "ems")\n  |> range(start: 2024-01-01T00:00:00Z, stop: 2024-01-02T00:00:01Z)'
    )
    assert 'r._measurement != "event" and r._measurement != "meta"' in q
    assert 'r.site == "qd" or r.site == "evil\\" or true or \\""' in q
    assert q.endswith('keep(columns: ["_time", "_value", "_field", "site", "meter"])')
    wide = flux.readings_query("ems", wide=True)
    assert "range(start: 1970-01-01T00:00:00Z, stop: 2200-01-01T00:00:00Z)" in wide
    assert 'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")' in wide
    assert "filter(fn: (r) => false)" in flux.readings_query("ems", sites=[])


def test_flux_rejects_bad_input():
    with pytest.raises(StoreError, match="tz-aware"):
        flux.readings_query("ems", start=dt.datetime(2024, 1, 1))
    with pytest.raises(StoreError, match="duration"):
        flux.window_query("ems", every="1 day")
    with pytest.raises(StoreError, match="aggregate"):
        flux.window_query("ems", every="1h", fn="drop_bucket")


def test_window_and_register_queries():
    w = flux.window_query("ems", every="1h", fn="mean", fields=["power_kw"], tz="Asia/Shanghai")
    assert 'option location = timezone.location(name: "Asia/Shanghai")' in w
    assert "aggregateWindow(every: 1h, fn: mean, createEmpty: false)" in w
    assert 'r._field == "power_kw"' in w
    # stage 1 of an InfluxDB store moves only the register fields over the wire
    d = flux.readings_query("ems", sites=['q"d'], fields=flux.REGISTERS)
    assert all(f'r._field == "{f}"' in d for f in flux.REGISTERS) and 'r.site == "q\\"d"' in d
    assert 'r._field == "power_kw"' not in d
    assert "group()" in flux.count_query("ems") and "count()" in flux.count_query("ems")
    assert 'r._measurement == "event"' in flux.events_query("ems")
    assert 'r._measurement == "meta"' in flux.meta_query("ems")


def test_tidy_from_flux():
    raw = pd.DataFrame(
        {
            "result": "_result",
            "table": 0,
            "_time": pd.to_datetime(
                ["2024-01-01T00:30Z", "2024-01-01T00:15Z", "2024-01-01T00:15Z"], utc=True
            ),
            "_value": [2.0, 1.0, 5.0],
            "_field": ["import_kwh", "import_kwh", "power_kw"],
            "site": ["qd", "qd", "ab"],
            "meter": ["grid", "grid", "grid"],
        }
    )
    df = tidy_from_flux(raw)
    assert list(df.columns) == ["site", "meter", "quantity", "value"]
    assert str(df.index.dtype) == "datetime64[ns, UTC]" and df.index.name == "ts"
    assert list(df["site"]) == ["ab", "qd", "qd"]
    assert list(df["value"]) == [5.0, 1.0, 2.0]
    assert isinstance(df["quantity"].dtype, pd.CategoricalDtype)
    assert tidy_from_flux(pd.DataFrame()).empty


# -- token ----------------------------------------------------------------------------


def test_token_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("EMS_INFLUX_TOKEN", raising=False)
    monkeypatch.delenv("EMS_INFLUX_TOKEN_FILE", raising=False)
    with pytest.raises(StoreError, match="EMS_INFLUX_TOKEN or EMS_INFLUX_TOKEN_FILE"):
        read_token()
    f = tmp_path / "token"
    f.write_text(" from-file \n")
    monkeypatch.setenv("EMS_INFLUX_TOKEN_FILE", str(f))
    assert read_token() == "from-file"
    monkeypatch.setenv("EMS_INFLUX_TOKEN", "from-env")
    assert read_token() == "from-env"
    assert read_token("given") == "given"
    monkeypatch.delenv("EMS_INFLUX_TOKEN")
    f.write_text("")
    with pytest.raises(StoreError, match="found it empty"):
        read_token()
    monkeypatch.setenv("EMS_INFLUX_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(StoreError, match="cannot read the token file"):
        read_token()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failed_batches_raise_on_close_and_token_stays_secret(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("EMS_INFLUX_TOKEN", TOKEN)
    port = free_port()  # nothing listens there
    st = open_store(
        f"influx+http://127.0.0.1:{port}?org=o&bucket=b", max_retries=0, timeout_ms=2000
    )
    assert TOKEN not in repr(st)
    st.register_sites([site()])
    st.register_meters(meters())
    st.write_readings(readings(sites=("qd",), periods=3))
    with pytest.raises(StoreError, match=r"failed for good"):
        st.close()
    assert st.stats["failed_batches"] >= 1
    assert "failed for good" in caplog.text
    assert TOKEN not in caplog.text


# -- VictoriaMetrics: a real server speaking the InfluxDB v2 write API ------------------


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    exe = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    port = free_port()
    data = tmp_path_factory.mktemp("vm")
    proc = subprocess.Popen(
        [
            exe,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={data}",
            "-retentionPeriod=100y",
            # InfluxDB overwrites a point with the same series and time; VictoriaMetrics
            # keeps both unless told to de-duplicate samples with identical timestamps
            "-dedup.minScrapeInterval=1ms",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=1).read().strip() == b"OK":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("victoria-metrics did not start")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def export(base: str, match: str) -> list[dict]:
    urllib.request.urlopen(f"{base}/internal/force_flush").read()
    url = f"{base}/api/v1/export?match[]={quote(match)}"
    text = urllib.request.urlopen(url).read().decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def exported_frame(base: str, sites: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for s in export(base, '{__name__=~"(grid|pv)_.+",site=~"' + "|".join(sites) + '"}'):
        m = s["metric"]
        q = m["__name__"].partition("_")[2]
        assert m["site"] in sites and m["carrier"] == "electricity"
        for v, t in zip(s["values"], s["timestamps"], strict=True):
            rows.append((pd.Timestamp(t, unit="ms", tz="UTC"), m["site"], m["meter"], q, float(v)))
    return pd.DataFrame(rows, columns=["ts", "site", "meter", "quantity", "value"])


def queried_frame(base: str, sites: tuple[str, ...]) -> pd.DataFrame:
    """Samples through the query API, which applies -dedup.minScrapeInterval."""
    sel = '{__name__=~"(grid|pv)_.+",site=~"' + "|".join(sites) + '"}[3650d]'
    url = f"{base}/api/v1/query?query={quote(sel)}&time=2030-01-01T00:00:00Z"
    body = json.loads(urllib.request.urlopen(url).read())
    rows = []
    for s in body["data"]["result"]:
        m = s["metric"]
        q = m["__name__"].partition("_")[2]
        for t, v in s["values"]:
            rows.append((pd.Timestamp(t, unit="s", tz="UTC"), m["site"], m["meter"], q, float(v)))
    return pd.DataFrame(rows, columns=["ts", "site", "meter", "quantity", "value"])


def canon(df):
    out = df.reset_index() if "ts" not in df.columns else df.copy()
    out["ts"] = out["ts"].dt.as_unit("ns")
    for c in ("site", "meter", "quantity"):
        out[c] = out[c].astype(str)
    return (
        out[["ts", "site", "meter", "quantity", "value"]]
        .sort_values(["site", "meter", "quantity", "ts"])
        .reset_index(drop=True)
    )


@pytest.mark.service
def test_write_path_against_victoriametrics(vm, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("EMS_INFLUX_TOKEN", TOKEN)
    sites = ("vqd", "vsd")
    r = readings(sites=sites, periods=60)
    url = f"influx+{vm}?org=acme&bucket=ems"
    with open_store(url, batch_size=50, flush_interval_ms=200) as st:
        st.register_sites([site(s) for s in sites])
        st.register_meters([m for s in sites for m in meters(s)])
        assert st.write_readings(r) == len(r)
        st.write_events(
            events_frame(
                [
                    {
                        "ts": "2024-01-01T01:00Z",
                        "site": "vqd",
                        "kind": "fuel_delivery",
                        "subject": "fleet",
                        "value": 500.0,
                        "unit": "kg",
                    }
                ]
            )
        )
        st.flush()
        assert st.stats["failed_batches"] == 0
        assert st.stats["batches"] >= 2  # 120 lines of readings in batches of 50
    got = exported_frame(vm, sites)
    # every written value comes back exactly once
    assert len(got) == len(r)
    pd.testing.assert_frame_equal(canon(got), canon(r))
    ev = export(vm, '{__name__="event_value"}')
    assert [s["values"] for s in ev] == [[500.0]]
    # at-least-once delivery: the same batch again, from a new client, lands on the very
    # same points (series key and source timestamp): InfluxDB overwrites them;
    # VictoriaMetrics, told to (-dedup.minScrapeInterval=1ms), keeps one sample per timestamp
    with open_store(url, batch_size=5000) as st:
        st.register_sites([site(s) for s in sites])
        st.register_meters([m for s in sites for m in meters(s)])
        st.write_readings(r)
        st.write_readings(r.iloc[: len(r) // 3])
    pd.testing.assert_frame_equal(canon(exported_frame(vm, sites)), canon(r))
    pd.testing.assert_frame_equal(canon(queried_frame(vm, sites)), canon(r))
    assert TOKEN not in caplog.text


@pytest.mark.service
def test_rewrite_changed_value_overwrites(vm, monkeypatch):
    monkeypatch.setenv("EMS_INFLUX_TOKEN", TOKEN)
    r = readings(sites=("vow",), periods=4)
    one = r[(r["meter"] == "grid") & (r["quantity"] == "import_kwh")]
    with InfluxStore(vm, org="acme", bucket="ems") as st:
        st.register_sites([site("vow")])
        st.register_meters(meters("vow"))
        st.write_readings(one)
    (series,) = export(vm, '{__name__="grid_import_kwh",site="vow"}')
    assert series["values"] == one["value"].tolist()
    assert series["timestamps"] == (one.index.as_unit("ms").asi8).tolist()


def test_read_only_refuses_writes(monkeypatch):
    monkeypatch.setenv("EMS_INFLUX_TOKEN", TOKEN)
    st = InfluxStore("http://127.0.0.1:9", org="o", bucket="b", read_only=True)
    with pytest.raises(StoreError, match="read-only"):
        st.register_sites([site()])
    st.close()


HOSTILE_NAMES = ["a b", "c,d", "e=f", "g\\h", "q\"r'", "水电 🔥", "end\\", "x\ny"]


@pytest.mark.service
def test_hostile_tag_values_round_trip_through_victoriametrics(vm, monkeypatch):
    """Spaces, commas, equals signs, backslashes, quotes and unicode in site, meter,
    company and group come back as written; a newline (which the line protocol cannot
    carry in a tag) is written as the two characters backslash and n, as ever."""
    monkeypatch.setenv("EMS_INFLUX_TOKEN", TOKEN)
    ids = [f"hx{i}{h}" for i, h in enumerate(HOSTILE_NAMES)]
    sites = [site(s, company=h, group="grp " + h, park="") for s, h in zip(ids, HOSTILE_NAMES, strict=True)]
    ms = [MeterInfo(s, "m" + h, "grid", "electricity", ("power_kw",), 900)
          for s, h in zip(ids, HOSTILE_NAMES, strict=True)]
    ts = pd.DatetimeIndex(["2024-03-01T00:00Z"] * len(ids), name="ts")
    r = pd.DataFrame({"site": ids, "meter": [m.meter for m in ms], "quantity": "power_kw",
                      "value": np.arange(len(ids)) + 0.25}, index=ts)
    with InfluxStore(vm, org="acme", bucket="ems") as st:
        st.register_sites(sites)
        st.register_meters(ms)
        st.write_readings(r)
    got = {s["metric"]["site"]: s for s in export(vm, '{__name__="grid_power_kw",site=~"hx.*"}')}
    wire = {s: s.replace("\n", "\\n") for s in ids}  # a newline cannot be carried: escaped as text
    assert sorted(got) == sorted(wire.values())
    for i, (s, h) in enumerate(zip(ids, HOSTILE_NAMES, strict=True)):
        m = got[wire[s]]
        hw = h.replace("\n", "\\n")
        assert (m["metric"]["meter"], m["metric"]["company"], m["metric"]["group"]) == ("m" + hw, hw, "grp " + hw)
        assert "park" not in m["metric"]  # an empty tag is left out
        assert m["values"] == [i + 0.25]


@pytest.mark.service
def test_writes_wait_for_the_server_beyond_max_pending_batches(vm, monkeypatch):
    """A large write is handed over in bodies of batch_size lines, never more than
    max_pending_batches unanswered at once, and every value arrives."""
    monkeypatch.setenv("EMS_INFLUX_TOKEN", TOKEN)
    r = readings(sites=("vbp",), periods=300)
    with InfluxStore(vm, org="acme", bucket="ems", batch_size=25, max_pending_batches=2) as st:
        st.register_sites([site("vbp")])
        st.register_meters(meters("vbp"))
        seen: list[int] = []
        api = st._write_api
        send = api.write

        def counting(*a, **kw):
            seen.append(st._pending)
            assert kw["record"].count("\n") < 25  # one body of at most batch_size lines
            return send(*a, **kw)

        monkeypatch.setattr(api, "write", counting)
        st.write_readings(r)
        st.flush()
        assert max(seen) <= 2 and len(seen) == 600 // 25
        assert st.stats["batches"] >= 24 and st.stats["failed_batches"] == 0
    pd.testing.assert_frame_equal(canon(exported_frame(vm, ("vbp",))), canon(r))


def test_a_server_that_never_answers_is_reported_not_waited_for(monkeypatch):
    monkeypatch.setenv("EMS_INFLUX_TOKEN", TOKEN)
    st = InfluxStore("http://127.0.0.1:9", org="o", bucket="b", batch_size=2, max_pending_batches=1,
                     max_retries=0, timeout_ms=1000)
    st.register_sites([site()])  # refused, and so answered (as failed)
    st.register_meters(meters())
    monkeypatch.setattr(st._write_api, "write", lambda **kw: None)  # queued, never answered
    st._stall_s = 0.5
    with pytest.raises(StoreError, match=r"expected an answer to one of 1 queued writes within 0.5 s; found none"):
        st.write_readings(readings(sites=("qd",), periods=3))
    with pytest.raises(StoreError, match="failed for good"):  # the refused registrations
        st.close()
