"""The Modbus gateway polling 500 simulated meters every second.

Run::

    python bench/bench_gateway.py [--meters 500] [--seconds 30] [--runs 3] [--before before.json]

To compare with other code (the anchor: the gateway before its poll schedule followed the
meters' changes), run the same script with that code first and keep its runs::

    PYTHONPATH=/path/to/old/checkout python bench/bench_gateway.py --save-json before.json --out /tmp/old.md
    python bench/bench_gateway.py --before before.json

``ems modbus`` serves the meters (50 sites x 10 meters, one reading a second of plant time
at ``--speed 60`` with 1-minute intervals; 247 units per port) in one process; ``ems gateway``
polls each meter once a second (ems-em3-float32: one read request a poll) and publishes its
readings to mosquitto (QoS 1) in another. Measured from /proc: the CPU time of each process
over the run, as a share of one core and of the 2-core machine; from the gateway: polls,
readings, and the poll latency (from the poll's due time to its values read) p50 and p99;
from its ledger: readings published per meter against the intervals that passed between
its first and last reading (1.0: no interval lost). Before the gateway starts, the phase
of the meters' changes within the wall-clock second is measured by reading one meter's
clock register every 5 ms (a fixed poll grid loses intervals when the changes fall where
its polls do). The anchor is the poll period (1 s): the ratio p99 / period says how much
of it a poll uses. Writes ``bench/results/gateway.md``; the best run (lowest gateway CPU)
is reported, and every run's readings/intervals.
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


def change_phase(port: int, probe_s: float = 2.5) -> float:
    """Where in the wall-clock second the served meters change interval [s, 0-1): median over the changes seen."""
    from pymodbus.client import ModbusTcpClient

    c = ModbusTcpClient("127.0.0.1", port=port)
    c.connect()
    seen, last = [], None
    end = time.time() + probe_s
    try:
        while time.time() < end:
            rr = c.read_input_registers(0x0200, count=2, device_id=1)
            now = time.time()
            if not rr.isError():
                ts = rr.registers[0] << 16 | rr.registers[1]
                if last is not None and ts != last:
                    seen.append(now % 1.0)
                last = ts
            time.sleep(0.005)
    finally:
        c.close()
    return float(sorted(seen)[len(seen) // 2]) if seen else float("nan")


def from_ledger(path: Path, interval_s: int = 60) -> tuple[int, int]:
    """Readings in the ledger and the intervals between each meter's first and last reading."""
    from ems.telemetry.codec import parse_ts

    meters = json.loads(path.read_text())["meters"].values()
    readings = sum(int(e["readings"]) for e in meters)
    intervals = sum((parse_ts(e["last_ts"]) - parse_ts(e["first_ts"])) // (interval_s * 10**9) + 1
                    for e in meters if e.get("first_ts"))
    return readings, int(intervals)


def gateway_args(tmp: Path) -> list[str]:
    """Options the gateway under test knows: ``--history`` and ``--json`` are newer than the anchor."""
    helptext = subprocess.run([sys.executable, "-m", "ems.cli", "gateway", "--help"], capture_output=True,
                              text=True).stdout
    return ["--history", str(tmp / "history"), "--json"] if "--history" in helptext else []


def start_server(folder: Path, gw_file: Path, env: dict, window: tuple[float, float] | None,
                 tries: int = 12) -> tuple[subprocess.Popen, int, float]:
    """Start ``ems modbus``; with a ``window``, start it again until its changes fall in it (at most ``tries``)."""
    for _ in range(tries):
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "ems.cli", "modbus", str(folder), "--port", str(port),
                                   "--speed", "60", "--gateway", str(gw_file)], stdout=subprocess.DEVNULL, env=env)
        wait_for_port("127.0.0.1", port, 120, server)
        phase = change_phase(port)
        if window is None or window[0] <= phase <= window[1]:
            return server, port, phase
        server.terminate()
        server.wait(10)
    raise SystemExit(f"the meters' changes never fell in {window} s of the second in {tries} starts")


def one_run(tmp: Path, meters: int, seconds: float, window: tuple[float, float] | None = None) -> dict:
    rs = make_set(meters * 3600, sites=meters // 10, meters_per_site=10, interval_s=60)  # an hour of plant
    folder = rs.to_parquet(tmp / "rs")
    mq, mport = start_mosquitto(tmp)
    gw_file = tmp / "gw.yaml"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    server = None
    try:
        server, _, phase = start_server(folder, gw_file, env, window)
        doc = yaml.safe_load(gw_file.read_text())
        for d in doc["devices"]:
            d["poll_s"] = 1.0
        gw_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        t0, s0 = time.monotonic(), cpu_s(server.pid)
        gw = subprocess.Popen([sys.executable, "-m", "ems.cli", "gateway", str(gw_file), "--broker",
                               f"mqtt://127.0.0.1:{mport}", "--duration", str(seconds), "--deadletter", str(tmp / "dl"),
                               "--ledger", str(tmp / "ledger.json"), *gateway_args(tmp)],
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
        if server is not None:
            server.terminate()
            server.wait(10)
        mq.terminate()
        mq.wait(10)
    readings, intervals = from_ledger(tmp / "ledger.json")
    return {"wall_s": wall, "gateway_cpu_s": g_cpu, "server_cpu_s": s_cpu, **stats, "phase_s": phase,
            "ledger_readings": readings, "intervals": intervals}


def ratio(r: dict) -> float:
    """Readings published per interval that passed (1.0: none lost)."""
    return float(r["ledger_readings"] / r["intervals"]) if r.get("intervals") else float("nan")


def table(best: dict, meters: int) -> list[str]:
    share = best["gateway_cpu_s"] / best["wall_s"]
    return [
        f"| meters polled every 1 s | {best['devices']} |",
        f"| polls in {best['wall_s']:.0f} s | {best['polls']:,} ({best['polls'] / best['wall_s']:,.0f}/s) |",
        f"| readings published / intervals passed | {best['ledger_readings']:,} / {best['intervals']:,} = "
        f"{ratio(best):.4f} |",
        f"| retries (polls that came before the change) | {best.get('retries', 'n/a')} |",
        f"| phase of the meters' changes in the wall-clock second | {best['phase_s']:.3f} s |",
        f"| devices offline at the end | {best['offline']} |",
        f"| gateway CPU, share of one core | {share:.2f} |",
        f"| gateway CPU, share of the 2-core machine | {share / 2:.2f} |",
        f"| `ems modbus` CPU, share of one core | {best['server_cpu_s'] / best['wall_s']:.2f} |",
        f"| poll latency p50 (due time to values read) | {best['poll_latency_p50_s'] * 1e3:.1f} ms |",
        f"| poll latency p99 | {best['poll_latency_p99_s'] * 1e3:.1f} ms |",
        f"| ratio p99 / poll period (1 s) | {best['poll_latency_p99_s']:.3f} |",
    ]


def runs_line(runs: list[dict]) -> str:
    return "; ".join(f"CPU {r['gateway_cpu_s'] / r['wall_s']:.2f} core, p99 {r['poll_latency_p99_s'] * 1e3:.0f} ms, "
                     f"readings/intervals {ratio(r):.4f} (phase {r['phase_s']:.2f} s, load {r['load'][0]:.2f})"
                     for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gateway.md")
    ap.add_argument("--save-json", type=Path, default=None, help="Keep the runs (for --before of a later run).")
    ap.add_argument("--before", type=Path, default=None, help="Runs of the anchor code (--save-json) to compare with.")
    ap.add_argument("--phase", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="[s] start the meters again until their changes fall this far into the wall-clock second "
                         "(0.02 0.25: where a fixed one-second poll grid with queued requests straddles them).")
    a = ap.parse_args()
    runs = []
    for _ in range(a.runs):
        load = os.getloadavg()
        with tempfile.TemporaryDirectory() as d:
            r = one_run(Path(d), a.meters, a.seconds, tuple(a.phase) if a.phase else None)
        r["load"] = load
        runs.append(r)
        print(json.dumps(r), flush=True)
    if a.save_json:
        a.save_json.write_text(json.dumps(runs))
    best = min(runs, key=lambda r: r["gateway_cpu_s"] / r["wall_s"])
    before = json.loads(a.before.read_text()) if a.before else None
    lines = [
        "# Modbus gateway benchmark", "",
        f"`python bench/bench_gateway.py --meters {a.meters} --seconds {a.seconds:g} --runs {a.runs}"
        + (f" --phase {a.phase[0]:g} {a.phase[1]:g}" if a.phase else "") + f"` on {time.strftime('%Y-%m-%d')}.", "",
        *([f"The served meters change interval {a.phase[0]:g} to {a.phase[1]:g} s after the wall-clock second "
           "(`ems modbus` started again until they did): where the polls of a fixed one-second grid, queued on "
           "three connections, straddle the change.", ""] if a.phase else []),
        f"`ems modbus` serves {a.meters} meters (ems-em3-float32 map, 247 units per port) in one process; "
        "`ems gateway` polls every meter once a second and publishes each new reading to mosquitto (QoS 1) in "
        "another; one reading per meter and second of wall time (1-min intervals at 60x). Best of the runs by "
        "gateway CPU.", "",
        "| what | value |", "| --- | ---: |", *table(best, a.meters), "",
        "All runs: " + runs_line(runs) + ".", "",
    ]
    if before:
        b = min(before, key=lambda r: r["gateway_cpu_s"] / r["wall_s"])
        lines += [
            "## Before: the anchor", "",
            "The same script with the gateway before its schedule followed the meters' changes (polls at fixed "
            "multiples of the period, no retry, no history): best of its runs by gateway CPU.", "",
            "| what | value |", "| --- | ---: |", *table(b, a.meters), "",
            "All runs: " + runs_line(before) + ".", "",
            f"Ratios now / before (best runs): gateway CPU {best['gateway_cpu_s'] / best['wall_s'] / (b['gateway_cpu_s'] / b['wall_s']):.2f}, "
            f"p99 latency {best['poll_latency_p99_s'] / b['poll_latency_p99_s']:.2f}; readings per interval: worst run "
            f"{min(ratio(r) for r in runs):.4f} now, {min(ratio(r) for r in before):.4f} before.", "",
        ]
    lines.append("Machine: " + "; ".join(f"{k}: {v}" for k, v in machine().items())
                 + " (shared with other work while it ran; load average (1 min) before each run in the runs' lines).")
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
