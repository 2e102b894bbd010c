"""Sustained MQTT ingestion: mosquitto, QoS 1, into the embedded store.

Run::

    python bench/bench_mqtt.py [--readings 1000000] [--batch 100]

Measures (1) the publisher alone, (2) ``mosquitto_sub`` receiving the same
stream (the ceiling: a C client that only reads), (3) ``ems`` ingesting it into
the embedded DuckDB store (validated, written, acknowledged). The publisher runs
in its own process. Prints the figures and writes ``bench/results/mqtt.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ems.readings import MeterInfo, ReadingSet, SiteInfo, empty_events  # noqa: E402
from ems.telemetry.broker import free_port, wait_for_port  # noqa: E402

METERS = {
    "grid": ("grid", "electricity", ("power_kw", "import_kwh", "export_kwh")),
    "pv": ("pv", "electricity", ("power_kw", "energy_kwh", "curtailed_kwh")),
    "load": ("load", "electricity", ("power_kw", "energy_kwh")),
    "gas": ("gas", "natural_gas", ("flow_m3h", "volume_m3")),
}


def make_set(total: int, sites: int = 4, meters_per_site: int = 10, interval_s: int = 60) -> ReadingSet:
    """About ``total`` readings: sites x meters at 1 minute."""
    n = max(total // (sites * meters_per_site), 1)
    rng = np.random.default_rng(1)
    ts = pd.date_range(pd.Timestamp("2024-01-01", tz="UTC"), periods=n, freq=f"{interval_s}s", name="ts")
    frames, infos, site_infos = [], [], []
    kinds = list(METERS)
    for s in range(sites):
        site = f"site{s}"
        site_infos.append(SiteInfo(site, site, "g", "c", "p", "UTC", 0.0, 0.0, "CN", "CN-East", "cn-2023"))
        for m in range(meters_per_site):
            kind, carrier, qs = METERS[kinds[m % len(kinds)]]
            meter = f"{kind}{m}"
            infos.append(MeterInfo(site, meter, kind, carrier, qs, interval_s))
            for q in qs:
                v = np.cumsum(rng.random(n)) if q.endswith(("_kwh", "_m3")) else rng.normal(100, 10, n)
                frames.append(pd.DataFrame({"site": site, "meter": meter, "quantity": q, "value": v}, index=ts))
    df = pd.concat(frames)
    for c in ("site", "meter", "quantity"):
        df[c] = df[c].astype("category")
    return ReadingSet(df, empty_events(), infos, site_infos)


def start_mosquitto(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {tmp}/\nmax_queued_messages 0\nmax_inflight_messages 0\n"
        "log_dest none\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)])
    wait_for_port("127.0.0.1", port, 10, proc)
    return proc, port


def publish_child(port: int, readings: int, batch: int, client_prefix: str) -> subprocess.Popen:
    """Start a publisher process; it builds its data, says ``ready``, and publishes on ``go``."""
    cmd = [sys.executable, __file__, "--child", str(port), "--readings", str(readings),
           "--batch", str(batch), "--prefix", client_prefix]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def child(port: int, readings: int, batch: int, prefix: str) -> None:
    from ems.telemetry.connection import BrokerConfig
    from ems.telemetry.publisher import Publisher, PublishOptions

    rs = make_set(readings)
    pub = Publisher(BrokerConfig.from_url(f"mqtt://127.0.0.1:{port}"), rs,
                    PublishOptions(batch=batch, client_id_prefix=prefix, events=False))
    print("ready", flush=True)
    sys.stdin.readline()
    s = pub.run()
    print(json.dumps({"readings": s.readings, "messages": s.messages, "elapsed_s": s.elapsed_s}), flush=True)


def go(p: subprocess.Popen) -> None:
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()


def finish(p: subprocess.Popen) -> dict:
    out, _ = p.communicate(timeout=600)
    return json.loads(out.strip().splitlines()[-1])


def machine() -> dict[str, str]:
    info = {"python": platform.python_version(), "cores": str(os.cpu_count())}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")).split()[1])
        info["ram"] = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    with contextlib.suppress(OSError, IndexError):
        info["mosquitto"] = subprocess.run(["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=100, help="readings per message")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "mqtt.md")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default="bench-pub", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child(a.child, a.readings, a.batch, a.prefix)
        return

    from ems.store import open_store
    from ems.telemetry.connection import BrokerConfig
    from ems.telemetry.ingestor import IngestOptions, Ingestor

    tmp = Path(tempfile.mkdtemp(prefix="ems-bench-mqtt-"))
    broker, port = start_mosquitto(tmp)
    results: dict[str, float] = {}
    try:
        # 1. the publisher alone (nobody subscribed)
        p = publish_child(port, a.readings, a.batch, "bench-pub-alone")
        go(p)
        s = finish(p)
        total, msgs = s["readings"], s["messages"]
        results["publisher readings/s"] = total / s["elapsed_s"]
        print(f"publisher alone: {total:,} readings in {msgs:,} messages, {s['elapsed_s']:.2f} s: "
              f"{results['publisher readings/s']:,.0f} readings/s", flush=True)

        # 2. mosquitto_sub receiving the same stream
        per_meter = a.readings // 40
        expected = 40 * -(-per_meter // a.batch)  # data messages
        p = publish_child(port, a.readings, a.batch, "bench-pub-sub")
        sub = subprocess.Popen(
            ["mosquitto_sub", "-p", str(port), "-q", "1", "-t", "ems/v1/+/+", "-i", "bench-sub", "-F", "%t"],
            stdout=subprocess.PIPE, text=True,
        )
        time.sleep(0.5)
        t0 = time.monotonic()
        go(p)
        n_data = 0
        assert sub.stdout is not None
        for line in sub.stdout:
            if "/_" not in line:
                n_data += 1
                if n_data >= expected:
                    break
        t_sub = time.monotonic() - t0
        sub.kill()
        sub.wait()
        finish(p)
        results["mosquitto_sub readings/s"] = total / t_sub
        print(f"mosquitto_sub: {total:,} readings in {t_sub:.2f} s: {results['mosquitto_sub readings/s']:,.0f} readings/s",
              flush=True)

        # 3. ems ingest into the embedded store
        store = open_store(tmp / "store")
        ing = Ingestor(BrokerConfig.from_url(f"mqtt://127.0.0.1:{port}"), store,
                       IngestOptions(client_id="bench-ingest", deadletter=tmp / "dl.jsonl")).start()
        p = publish_child(port, a.readings, a.batch, "bench-pub-ingest")
        time.sleep(0.3)
        t0 = time.monotonic()
        go(p)
        ok = ing.wait_for(lambda c: c["written"] >= total, 600)
        t_ing = time.monotonic() - t0
        finish(p)
        stats = ing.stats()
        ing.stop()
        stored = store.count()
        store.close()
        results["ems ingest readings/s"] = total / t_ing
        print(f"ems ingest: {stats['written']:,} readings written ({stored:,} rows in the store) in {t_ing:.2f} s: "
              f"{results['ems ingest readings/s']:,.0f} readings/s; complete={ok}; "
              f"rejected={stats['rejected']} duplicates={stats['duplicates']}", flush=True)
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    ratio = results["ems ingest readings/s"] / results["mosquitto_sub readings/s"]
    print(f"ratio ems ingest / mosquitto_sub: {ratio:.2f}")
    m = machine()
    lines = [
        "# MQTT ingestion benchmark",
        "",
        f"`python bench/bench_mqtt.py --readings {a.readings} --batch {a.batch}` on {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "mosquitto on loopback, QoS 1, persistent session, 4 sites x 10 meters at 1 min, "
        f"{a.batch} readings per message (a reading = one meter's 2-3 values at one ts); "
        "publisher in its own process; ingestion into the embedded DuckDB/Parquet store, every message "
        "validated and acknowledged only after the write.",
        "",
        "| what | readings/s |",
        "| --- | ---: |",
        *[f"| {k} | {v:,.0f} |" for k, v in results.items()],
        f"| ratio ems ingest / mosquitto_sub | {ratio:.2f} |",
        "",
        "Target: >= 50,000 readings/s ingested.",
        "",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in m.items()),
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
