"""Soak: several sites at one-minute resolution, paced at a high speed-up, for a bounded time.

Starts mosquitto (loopback, free port), ``ems ingest`` and ``ems stream --speed`` as
subprocesses, samples the ingestor's RSS (/proc/PID/status VmRSS) and its counters
(metrics endpoint) every second, stops the stream with SIGTERM after ``--seconds``,
waits for the ingestor to drain, reconciles, and writes the figures to
``bench/results/soak.md`` (and, with ``--docs``, into docs/reliability.md).

    python bench/bench_soak.py --sites 5 --seconds 60 --speed 36000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from builders import make_readingset  # noqa: E402
from reliability_kit import EmsProc, IngestProc, Mosquitto, mosquitto_conf, poll  # noqa: E402

from ems.store import open_store  # noqa: E402
from ems.telemetry.ledger import Ledger, reconcile  # noqa: E402


def machine() -> str:
    model = cores = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("CPU(s):"):
                cores = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // (1024 * 1024)
    return f"{model}, {cores} cores, {mem} GiB RAM, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--speed", type=float, default=36_000.0, help="plant seconds per real second")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.md")
    args = ap.parse_args()

    sites = tuple(f"site{i}" for i in range(args.sites))
    days = args.seconds * args.speed / 86400 * 1.2
    rs = make_readingset(sites=sites, days=days, interval_s=60)
    n_meters = len(rs.meters)
    tmp = Path(tempfile.mkdtemp(prefix="ems-soak-"))
    folder = rs.to_parquet(tmp / "readings")
    conf, port = mosquitto_conf(tmp / "mq")
    mq = Mosquitto(conf, port)
    ing = pub = None
    rss: list[int] = []
    samples: list[dict[str, float]] = []
    try:
        ing = IngestProc(mq.url, str(tmp / "store"), tmp / "logs", "soak", "--meta", str(folder))
        rss.append(ing.rss_kb())
        pub = EmsProc(["stream", str(folder), "--broker", mq.url, "--ledger", str(tmp / "ledger.json"),
                       "--speed", str(args.speed)], tmp / "logs", "stream")
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds and pub.proc.poll() is None:
            time.sleep(1.0)
            rss.append(ing.rss_kb())
            m = ing.metrics()
            m["t"] = time.monotonic() - t0
            samples.append(m)
        pub.signal(signal.SIGTERM)
        pub.wait(60)
        elapsed = time.monotonic() - t0
        acked = Ledger(tmp / "ledger.json").total()
        poll(lambda: ing.written() >= acked, 60, every=0.5)
        drained = time.monotonic() - t0
        final = ing.metrics()
        rss.append(ing.rss_kb())
        ing.signal(signal.SIGTERM)
        ing.wait(60)
    finally:
        for p in (pub, ing):
            if p is not None:
                p.stop()
        mq.stop()
    store = open_store(tmp / "store", read_only=True)
    rows = reconcile(Ledger(tmp / "ledger.json"), store)
    store.close()
    lost = sum(r.lost for r in rows)
    doubled = sum(r.doubled for r in rows)
    written = int(final.get("ems_ingest_written_total", 0))
    rates = np.diff([0.0] + [s.get("ems_ingest_written_total", 0.0) for s in samples])
    target = n_meters * args.speed / 60
    lines = [
        "# Soak benchmark",
        "",
        f"Machine: {machine()}. Loopback only; mosquitto, `ems ingest` (embedded store) and "
        f"`ems stream --speed {args.speed:g}` as subprocesses.",
        "",
        f"Load: {args.sites} sites, {n_meters} meters at 1 min, paced at {args.speed:g} plant s per s "
        f"(target {target:,.0f} readings/s), stopped with SIGTERM after {elapsed:.0f} s.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| readings acknowledged by the broker (ledger) | {acked:,} |",
        f"| readings written by the ingestor | {written:,} |",
        f"| lost / doubled (reconcile) | {lost} / {doubled} |",
        f"| mean throughput while streaming [readings/s] | {acked / elapsed:,.0f} |",
        f"| ingest rate per second: median / max [readings/s] | {np.median(rates):,.0f} / {rates.max():,.0f} |",
        f"| drained after the stream stopped [s] | {drained - elapsed:.1f} |",
        f"| receipt -> durable write latency p50 / p95 / p99 [s] | "
        f"{final.get('ems_ingest_write_latency_p50_s', 0):.3f} / {final.get('ems_ingest_write_latency_p95_s', 0):.3f}"
        f" / {final.get('ems_ingest_write_latency_p99_s', 0):.3f} |",
        f"| ingestor RSS first / last / max [MiB] | {rss[0] / 1024:.0f} / {rss[-1] / 1024:.0f} / {max(rss) / 1024:.0f} |",
        f"| ingestor RSS at 10 s / at the end of the stream [MiB] | "
        f"{rss[min(10, len(rss) - 1)] / 1024:.0f} / {rss[-2] / 1024:.0f} |",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    (args.out.with_suffix(".json")).write_text(json.dumps({"rss_kb": rss, "samples": samples}, default=float))
    print("\n".join(lines))
    os.environ.pop("EMS_RELIABILITY_FIGURES", None)


if __name__ == "__main__":
    main()
