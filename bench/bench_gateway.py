"""The Modbus gateway polling 500 simulated meters every second.

Run::

    python bench/bench_gateway.py [--meters 500] [--seconds 30] [--runs 3]

``ems modbus`` serves the meters (50 sites x 10 meters, one reading a second of plant time
at ``--speed 60`` with 1-minute intervals; 247 units per port) in one process; ``ems gateway``
polls each meter once a second (ems-em3-float32: one read request a poll) and publishes its
readings to mosquitto (QoS 1) in another. Measured from /proc: the CPU time of each process
over the run, as a share of one core and of the 2-core machine; from the gateway: polls,
readings, and the poll latency (from the poll's due time to its values read) p50 and p99.
The anchor is the poll period (1 s): the ratio p99 / period says how much of it a poll uses.
Writes ``bench/results/gateway.md``; the best run (lowest gateway CPU) is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_mqtt import machine, make_set, start_mosquitto  # noqa: E402

from ems.telemetry.broker import free_port, wait_for_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU time of a process [s]."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def one_run(tmp: Path, meters: int, seconds: float) -> dict:
    rs = make_set(meters * 3600, sites=meters // 10, meters_per_site=10, interval_s=60)  # an hour of plant
    folder = rs.to_parquet(tmp / "rs")
    mq, mport = start_mosquitto(tmp)
    port = free_port()
    gw_file = tmp / "gw.yaml"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    server = subprocess.Popen([sys.executable, "-m", "ems.cli", "modbus", str(folder), "--port", str(port),
                               "--speed", "60", "--gateway", str(gw_file)], stdout=subprocess.DEVNULL, env=env)
    try:
        wait_for_port("127.0.0.1", port, 120, server)
        doc = yaml.safe_load(gw_file.read_text())
        for d in doc["devices"]:
            d["poll_s"] = 1.0
        gw_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        t0, s0 = time.monotonic(), cpu_s(server.pid)
        gw = subprocess.Popen([sys.executable, "-m", "ems.cli", "gateway", str(gw_file), "--broker",
                               f"mqtt://127.0.0.1:{mport}", "--duration", str(seconds), "--deadletter", str(tmp / "dl"),
                               "--history", str(tmp / "history"), "--json"],
                              stdout=subprocess.PIPE, text=True, env=env)
        g_cpu = 0.0
        while gw.poll() is None:
            g_cpu = max(g_cpu, cpu_s(gw.pid))
            time.sleep(0.2)
        wall = time.monotonic() - t0
        s_cpu = cpu_s(server.pid) - s0
        out = gw.stdout.read() if gw.stdout else ""
        stats = json.loads(out.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(10)
        mq.terminate()
        mq.wait(10)
    return {"wall_s": wall, "gateway_cpu_s": g_cpu, "server_cpu_s": s_cpu, **stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gateway.md")
    a = ap.parse_args()
    runs = []
    for _ in range(a.runs):
        load = os.getloadavg()
        with tempfile.TemporaryDirectory() as d:
            r = one_run(Path(d), a.meters, a.seconds)
        r["load"] = load
        runs.append(r)
        print(json.dumps(r), flush=True)
    best = min(runs, key=lambda r: r["gateway_cpu_s"] / r["wall_s"])
    share = best["gateway_cpu_s"] / best["wall_s"]
    lines = [
        "# Modbus gateway benchmark", "",
        f"`python bench/bench_gateway.py --meters {a.meters} --seconds {a.seconds:g} --runs {a.runs}` on "
        f"{time.strftime('%Y-%m-%d')}.", "",
        f"`ems modbus` serves {a.meters} meters (ems-em3-float32 map, 247 units per port) in one process; "
        "`ems gateway` polls every meter once a second and publishes each new reading to mosquitto (QoS 1) in "
        "another; one reading per meter and second of wall time (1-min intervals at 60x). Best of the runs by "
        "gateway CPU.", "",
        "| what | value |", "| --- | ---: |",
        f"| meters polled every 1 s | {best['devices']} |",
        f"| polls in {best['wall_s']:.0f} s | {best['polls']:,} ({best['polls'] / best['wall_s']:,.0f}/s) |",
        f"| readings published | {best['readings']:,} |",
        f"| devices offline at the end | {best['offline']} |",
        f"| gateway CPU, share of one core | {share:.2f} |",
        f"| gateway CPU, share of the 2-core machine | {share / 2:.2f} |",
        f"| `ems modbus` CPU, share of one core | {best['server_cpu_s'] / best['wall_s']:.2f} |",
        f"| poll latency p50 (due time to values read) | {best['poll_latency_p50_s'] * 1e3:.1f} ms |",
        f"| poll latency p99 | {best['poll_latency_p99_s'] * 1e3:.1f} ms |",
        f"| ratio p99 / poll period (1 s) | {best['poll_latency_p99_s']:.3f} |", "",
        "Load average (1, 5, 15 min) before each run: "
        + "; ".join(f"{r['load'][0]:.2f} {r['load'][1]:.2f} {r['load'][2]:.2f}" for r in runs) + ".", "",
        "All runs: " + "; ".join(f"CPU {r['gateway_cpu_s'] / r['wall_s']:.2f} core, p99 {r['poll_latency_p99_s'] * 1e3:.0f} ms"
                                 for r in runs) + ".", "",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in machine().items()) + " (shared with other work while it ran).",
    ]
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
