"""ems modbus -> ems gateway -> mosquitto -> ems ingest, and the gateway's faults, on real servers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import brokers
import numpy as np
import pandas as pd
import pytest
from builders import make_readingset
from modbus_kit import GatewayThread, serve_modbus, start_modbus

from ems.modbus.config import load_gateway_data
from ems.modbus.gateway import Gateway, GatewayOptions
from ems.store import open_store
from ems.telemetry.broker import free_port
from ems.telemetry.connection import BrokerConfig
from ems.telemetry.ingestor import IngestOptions, Ingestor
from ems.telemetry.ledger import Ledger, reconcile

pytest.importorskip("pymodbus")
pytestmark = pytest.mark.service

mosquitto = brokers.mosquitto  # fixture
KEY = ["site", "meter", "quantity"]
SITE = Path(__file__).resolve().parents[1] / "sites" / "qingdao.yaml"


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    out = df.reset_index()
    for c in KEY:
        out[c] = out[c].astype(str)
    return out.sort_values([*KEY, "ts"]).reset_index(drop=True)


def _ingest(cfg, store, tmp_path, **kw) -> Ingestor:
    return Ingestor(cfg, store, IngestOptions(client_id="ing-modbus", batch_s=0.2, deadletter=tmp_path / "dl.jsonl",
                                              **kw)).start()


def test_modbus_gateway_mosquitto_ingest_equals_the_simulator(mosquitto, tmp_path):
    """A simulated day of the Qingdao park: registers within float32, reconcile clean, same KPIs."""
    import ems
    from ems.accounting.kpis import kpis

    scenario = tmp_path / "day.yaml"
    scenario.write_text(f"name: day\nsites: [{SITE}]\nperiod: {{start: 2024-07-15, end: 2024-07-16}}\n"
                        "resolution: 15min\nseed: 1\n")
    sim = ems.simulate(ems.load_scenario(str(scenario)))
    folder = sim.to_parquet(tmp_path / "sim")
    port = free_port()
    gw_file, ledger = tmp_path / "gw.yaml", tmp_path / "ledger.json"
    server = start_modbus(folder, port, 3600, "--gateway", str(gw_file))  # 4 readings a second
    store = open_store(tmp_path / "store")
    ing = _ingest(BrokerConfig.from_url(mosquitto.url), store, tmp_path)
    try:
        res = subprocess.run([sys.executable, "-m", "ems.cli", "gateway", str(gw_file), "--broker", mosquitto.url,
                              "--ledger", str(ledger), "--deadletter", str(tmp_path / "gdl.jsonl"), "--duration", "12",
                              "--history", str(tmp_path / "history"), "--json"],
                             capture_output=True, text=True, timeout=90)
        assert res.returncode == 0, res.stderr
        stats = json.loads(res.stdout.strip().splitlines()[-1])
        assert stats["readings"] > 15 * 30 and stats["deadlettered"] == 0 and stats["offline"] == 0, stats
        assert ing.wait_for(lambda c: c["written"] >= stats["acknowledged"], 30), ing.stats()
    finally:
        ing.stop()
        brokers.terminate(server)
    assert ing.stats()["rejected"] == 0
    assert all(r.ok for r in reconcile(Ledger(ledger), store))
    back = store.read()
    store.close()
    cli = subprocess.run([sys.executable, "-m", "ems.cli", "reconcile", "--ledger", str(ledger), "--store",
                          str(tmp_path / "store")], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "lost 0, doubled 0, extra 0" in cli.stdout, cli.stdout
    got = _tidy(back.readings)
    want = _tidy(sim.readings).merge(got[[*KEY, "ts"]], on=[*KEY, "ts"])
    assert len(want) == len(got)  # every stored reading is one of the simulator's
    # registers within float32 precision: exactly what a float32 register holds
    assert np.array_equal(got["value"].to_numpy(), want["value"].to_numpy(dtype="float32").astype("float64"))
    # a gap in the store is an interval the gateway itself counted as skipped, and logged, and nothing else.
    # (A poll answered after the meter moved on skips one: at --speed 3600 an interval lasts 250 ms of wall
    # time, which a loaded machine can miss; the schedule's tolerance is tested in test_modbus_schedule.py.)
    gaps = 0
    for _, g in got.groupby(["site", "meter"]):
        ts = g["ts"].drop_duplicates().sort_values()
        gaps += int((ts.diff().dropna() // pd.Timedelta("15min") - 1).sum())
    assert gaps == stats["intervals_skipped"], (gaps, stats)
    assert ("interval(s) skipped" in res.stderr) == (gaps > 0), res.stderr[-2000:]
    # the same KPIs as from the simulator's own readings of those intervals, within float32 precision
    sim_part = sim.with_readings(want.set_index("ts")[[*KEY, "value"]]) if hasattr(sim, "with_readings") else None
    if sim_part is None:
        from ems.readings import ReadingSet

        sim_part = ReadingSet(readings=want.set_index("ts")[[*KEY, "value"]].astype({c: "category" for c in KEY}),
                              events=back.events, meters=sim.meters, sites=sim.sites)
    k_got, k_want = kpis(back).kpis, kpis(sim_part).kpis
    pd.testing.assert_frame_equal(k_got, k_want, check_exact=False, rtol=2e-4, atol=0.5)


def _gateway(text: str, cfg, tmp_path, **kw) -> Gateway:
    spec, models = load_gateway_data(text, "gw.yaml")
    kw.setdefault("history", tmp_path / "history")
    return Gateway(spec, models, cfg, GatewayOptions(ledger=tmp_path / "l.json", deadletter=tmp_path / "gdl.jsonl",
                                                     max_backoff_s=1.0, **kw))


def _devices(port: int, meters: dict[str, int], model: str = "ems-em3-float32", poll: float = 0.05) -> str:
    kinds = {"grid": "grid", "gas": "gas", "weather": "weather"}
    return "devices:\n" + "".join(
        f"  - {{site: alpha, meter: {m}, kind: {kinds.get(m, 'grid')}, host: 127.0.0.1, port: {port}, unit: {u}, "
        f"model: {model}, interval_s: 900, poll_s: {poll}}}\n" for m, u in meters.items())


def test_device_killed_mid_poll_goes_offline_invents_nothing_and_comes_back(mosquitto, tmp_path):
    rs = make_readingset(sites=("alpha",), days=2, meters=("grid",))
    folder = rs.to_parquet(tmp_path / "rs")
    port = free_port()
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    ing = _ingest(cfg, store, tmp_path)
    server = start_modbus(folder, port, 3600)
    gw = _gateway(_devices(port, {"grid": 1}), cfg, tmp_path)
    try:
        with GatewayThread(gw) as gt:
            assert ing.wait_for(lambda c: c["written"] >= 4, 20), ing.stats()
            server.send_signal(signal.SIGKILL)  # the device dies between (or during) polls
            server.wait(10)
            assert _until(lambda: gw.stats()["offline"] == 1, 10), gw.stats()
            published = gw.stats()["readings"]
            time.sleep(1.0)
            assert gw.stats()["readings"] == published  # nothing invented while it is away
            assert _until(lambda: ing.meter_status.get(("alpha", "grid"), {}).get("status") == "offline", 10)
            assert ing.meter_status[("alpha", "grid")]["reason"].startswith("no_connection")
            server = start_modbus(folder, port, 3600)  # back: reconnect after the backoff
            assert _until(lambda: gw.stats()["offline"] == 0 and gw.stats()["readings"] > published, 20), gw.stats()
            assert _until(lambda: ing.meter_status[("alpha", "grid")]["status"] == "online", 10)
        stats = gt.result
        assert stats["reconnects"] >= 1 and stats["poll_errors"].get("no_connection", 0) >= 1, stats
        assert ing.wait_for(lambda c: c["written"] >= stats["acknowledged"], 20)
    finally:
        ing.stop()
        brokers.terminate(server)
    back = _tidy(store.read().readings)
    store.close()
    want = _tidy(rs.readings).merge(back[[*KEY, "ts"]], on=[*KEY, "ts"])
    assert len(want) == len(back) and np.array_equal(back["value"], want["value"].astype("float32").astype("float64"))
    assert all(r.ok for r in reconcile(Ledger(tmp_path / "l.json"), open_store(tmp_path / "store", read_only=True)))


def test_exception_codes_mark_the_meter_offline(mosquitto, tmp_path):
    """A unit that is not there (0x0B) and a register that is not there (0x02): offline, no reading."""
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid", "gas"))  # units: gas 1, grid 2
    cfg = BrokerConfig.from_url(mosquitto.url)
    with serve_modbus(rs, tmp_path, 900) as port:
        text = _devices(port, {"grid": 2, "absent": 7}) + (
            f"  - {{site: alpha, meter: wrongmap, kind: grid, host: 127.0.0.1, port: {port}, unit: 1, model: bad, "
            "interval_s: 900, poll_s: 0.1}\n"
            "models:\n  bad:\n    registers:\n"
            "      - {quantity: ts, address: 0x0100, type: uint32, unit: s}\n"
            "      - {quantity: power_kw, address: 0x0102, type: float32, unit: kW}\n")
        gw = _gateway(text, cfg, tmp_path)
        with GatewayThread(gw) as gt:
            assert _until(lambda: gw.stats()["offline"] == 2 and gw.stats()["readings"] >= 1, 15), gw.stats()
        stats = gt.result
    assert stats["poll_errors"]["exception_11"] >= 1 and stats["poll_errors"]["exception_02"] >= 1, stats
    per_meter = Ledger(tmp_path / "l.json").meters
    assert set(per_meter) == {"alpha/grid"}  # the two offline meters published nothing
    statuses = {d.info.meter: d.status for d in gw.devices}
    assert statuses == {"grid": "online", "absent": "offline", "wrongmap": "offline"}


def test_backwards_and_non_finite_registers_are_dead_lettered(mosquitto, tmp_path):
    """A register that goes back, and a float register that reads NaN: dead letters with their reasons."""
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid", "gas"))  # units: gas 1, grid 2
    df = rs.readings
    ts = sorted(df.index.unique())
    imp = ((df["quantity"] == "import_kwh") & (df["meter"] == "grid")).to_numpy()
    at = df.index.to_numpy()
    v = df["value"].to_numpy().copy()
    v[imp & (at == ts[2])] = v[imp & (at == ts[1])][0] - 50.0  # the register goes back at the 3rd interval
    rs.readings["value"] = v
    cfg = BrokerConfig.from_url(mosquitto.url)
    store = open_store(tmp_path / "store")
    ing = _ingest(cfg, store, tmp_path)
    try:
        with serve_modbus(rs, tmp_path, 900) as port:  # one reading a second
            text = _devices(port, {"grid": 2, "gas": 1}, poll=0.1).replace(
                "meter: gas, kind: gas", "meter: gas, kind: gas, quantities: [flow_m3h, volume_m3, heat_gj]")
            gw = _gateway(text, cfg, tmp_path)  # heat_gj: a gas meter's float register reads NaN
            with GatewayThread(gw) as gt:
                assert _until(lambda: gw.stats()["deadlettered"] >= 3 and gw.stats()["readings"] >= 4, 20), gw.stats()
        assert ing.wait_for(lambda c: c["written"] >= gt.result["acknowledged"], 20)
    finally:
        ing.stop()
    lines = [json.loads(x) for x in (tmp_path / "gdl.jsonl").read_text().splitlines()]
    by = {(x["topic"], x["reason"]) for x in lines}
    assert {("ems/v1/alpha/grid", "register_backwards"), ("ems/v1/alpha/gas", "non_finite")} <= by, lines
    back = store.read().readings
    store.close()
    grid_ts = set(back[back["meter"] == "grid"].index)
    assert ts[2] not in grid_ts and ts[3] in grid_ts  # the backwards reading is a dead letter, never stored
    assert (back["meter"] == "gas").sum() == 0  # nothing invented for the NaN register
    assert ing.stats()["rejected"] == 0  # the ingestor never saw them


def _until(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def test_broker_sigkill_mid_stream_gateway_backfills_from_its_history(tmp_path):
    """ems modbus -> gateway -> mosquitto SIGKILLed mid-stream, restarted -> ingestor: backfill heals the loss.

    mosquitto (autosave 1 s) loses what it acknowledged since its last snapshot. So that it
    has something to lose, the ingestor is away for the last 1.5 s before the kill (its
    persistent session queues the gateway's readings at the broker). The gateway's
    high-water marks and the ingestor's gap planner find the loss, and the gateway answers
    from its history. Then a backfill request for readings already stored is answered from
    the history too: the same messages, stored once.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from reliability_kit import Mosquitto, mosquitto_conf, poll, reconciled

    from ems.telemetry import backfill
    from ems.telemetry.backfill import BackfillPolicy

    rs = make_readingset(sites=("alpha", "beta"), days=1)  # 10 meters x 96 readings
    n = 10 * 96
    conf, mport = mosquitto_conf(tmp_path / "mq", "autosave_interval 1\nautosave_on_changes false\n")
    mq = Mosquitto(conf, mport)
    cfg = BrokerConfig.from_url(mq.url)
    store = open_store(tmp_path / "store")
    ledger = tmp_path / "l.json"
    ing = _ingest(cfg, store, tmp_path, backfill=BackfillPolicy(grace_s=1.0, retry_s=3.0))
    time.sleep(1.5)  # the ingestor's session is in a persistence snapshot
    infos = sorted(rs.meters, key=lambda m: (m.site, m.meter))  # ems modbus's unit order
    try:
        with serve_modbus(rs, tmp_path, 900 * 12) as port:  # 12 readings a second: ~8 s
            text = "devices:\n" + "".join(
                f"  - {{site: {m.site}, meter: {m.meter}, kind: {m.kind}, host: 127.0.0.1, port: {port}, "
                f"unit: {k + 1}, model: ems-em3-float32, interval_s: 900, poll_s: 0.02}}\n" for k, m in enumerate(infos))
            gw = _gateway(text, cfg, tmp_path)
            with GatewayThread(gw):
                assert ing.wait_for(lambda c: c["received"] > 60, 30), ing.stats()
                ing.stop()  # its session keeps queueing at the broker
                time.sleep(1.5)
                mq.kill9()  # what came in the last second is gone
                time.sleep(0.3)
                mq.start()
                ing = _ingest(cfg, store, tmp_path, backfill=BackfillPolicy(grace_s=1.0, retry_s=3.0))
                assert poll(lambda: gw.stats()["readings"] >= n - 20, 60), gw.stats()
                time.sleep(1.0)
                healed = poll(lambda: reconciled(ledger, store)["lost"] == 0, 40, every=0.5)
                after_kill = ing.stats()["backfill_requests"], gw.stats()["backfilled"]
                # a request for stored readings: answered from the history, stored once
                c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="asker")
                c.connect("127.0.0.1", mport)
                c.loop_start()
                req = backfill.encode_request(backfill.BackfillRequest("alpha", "grid", 1, 5))
                before = ing.stats()["readings_received"]
                c.publish(topics_backfill("alpha"), req, qos=1).wait_for_publish(5)
                assert poll(lambda: gw.stats()["backfilled"] >= 5, 20), gw.stats()
                c.loop_stop()
                c.disconnect()
                assert ing.wait_for(lambda k: k["readings_received"] >= before + 5, 20), ing.stats()
        assert healed, reconciled(ledger, store)
    finally:
        ing.stop()
        mq.stop()
    fig = reconciled(ledger, store)
    store.close()
    assert fig["lost"] == 0 and fig["doubled"] == 0 and fig["acknowledged"] >= n - 20, fig
    cli = subprocess.run([sys.executable, "-m", "ems.cli", "reconcile", "--ledger", str(ledger), "--store",
                          str(tmp_path / "store")], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "lost 0, doubled 0" in cli.stdout, cli.stdout
    assert after_kill[0] >= 1 and after_kill[1] >= 1, after_kill  # the kill lost readings; backfill brought them


def topics_backfill(site: str) -> str:
    from ems.telemetry import topics

    return topics.backfill_topic(site)
