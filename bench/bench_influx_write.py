"""Benchmark: the InfluxDB write path end to end (``InfluxStore.write_readings`` + ``close``) into a real
server speaking the InfluxDB v2 write API (VictoriaMetrics, Debian ``victoria-metrics``).

Run: ``python bench/bench_influx_write.py [--anchor REV] [--days N] [--repeats K]`` (writes
``bench/results/influx_write.md``). The readings are ``bench/bench_rollup.py``'s reference group, the
first ``--days`` days (31 by default), written in slices of ``STORE_SLICE_ROWS`` rows as ``ems run``
does. This code and the anchor (``ems/`` at REV, default the merge base with ``main``) each run in a
subprocess of their own, alternating, so that each has its own peak RSS (``ru_maxrss``, less the RSS
after loading the data) and both see the same load. Every run's samples are counted back from the server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_rollup import _anchor_rev, _machine, make  # type: ignore[import-not-found]  # noqa: E402

from ems.readings import ReadingSet  # noqa: E402

WORKER = """
import json, os, sys, threading, time
from ems.readings import ReadingSet
from ems.store.influx import InfluxStore
rs = ReadingSet.from_parquet(sys.argv[1])
r = rs.readings
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
base, peak, stop = rss(), [0], threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)
threading.Thread(target=watch, daemon=True).start()
os.environ["EMS_INFLUX_TOKEN"] = "bench"
w, c = time.perf_counter(), time.process_time()
st = InfluxStore(sys.argv[2], org="bench", bucket="ems")
st.register_sites(rs.sites)
st.register_meters(rs.meters)
step = int(sys.argv[3])
for i in range(0, len(r), step):
    st.write_readings(r.iloc[i:i + step])
w1, c1 = time.perf_counter() - w, time.process_time() - c
st.close()
w2, c2 = time.perf_counter() - w, time.process_time() - c
stop.set()
print(json.dumps({"queued": [w1, c1], "done": [w2, c2], "rss_mib": (peak[0] - base) / 2**20,
                  "batches": st.stats["batches"], "failed": st.stats["failed_batches"]}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_vm(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    port = _free_port()
    proc = subprocess.Popen([exe, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={data}",
                             "-retentionPeriod=100y", "-dedup.minScrapeInterval=1ms"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{base}/health", timeout=1).read().strip() == b"OK":
                return proc, base
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("victoria-metrics did not start")


def _samples(base: str) -> int:
    """Samples of the readings held by the server (after de-duplication)."""
    urllib.request.urlopen(f"{base}/internal/force_flush").read()
    q = quote('sum(count_over_time({site=~"site.*",__name__!~"meta_.*|event_.*"}[400d]))')
    body = json.loads(urllib.request.urlopen(f"{base}/api/v1/query?query={q}&time=2025-01-15T00:00:00Z").read())
    return int(float(body["data"]["result"][0]["value"][1])) if body["data"]["result"] else 0


def _run(root: Path, data: Path, url: str, step: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(data), url, str(step)], capture_output=True,
                         text=True, env=env, check=True, cwd=str(root))
    res: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    from ems.sim.runner import STORE_SLICE_ROWS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anchor", default=None)
    ap.add_argument("--days", type=int, default=31)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    rev = _anchor_rev(args.anchor)
    rs = make()
    r = rs.readings[rs.readings.index < rs.readings.index[0] + pd.Timedelta(days=args.days)]
    runs: dict[str, list[dict[str, object]]] = {"this code": [], "anchor": []}
    with tempfile.TemporaryDirectory(prefix="bench-influx-") as tmp:
        old_root = Path(tmp) / "anchor"
        old_root.mkdir()
        arch = subprocess.run(["git", "archive", rev, "ems"], capture_output=True, check=True, cwd=REPO).stdout
        subprocess.run(["tar", "-x", "-C", str(old_root)], input=arch, check=True)
        ReadingSet(readings=r, events=rs.events.iloc[:0], meters=rs.meters, sites=rs.sites).to_parquet(Path(tmp) / "rs")
        proc, url = _start_vm(Path(tmp) / "vm")
        try:
            for i in range(args.repeats):
                pair = [("this code", REPO), ("anchor", old_root)]
                for name, root in pair if i % 2 == 0 else pair[::-1]:
                    res = _run(root, Path(tmp) / "rs", url, STORE_SLICE_ROWS)
                    res["samples"] = _samples(url)
                    runs[name].append(res)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    load1 = os.getloadavg()[0]

    def best(name: str, key: str, j: int) -> float:
        return min(float(x[key][j]) for x in runs[name])  # type: ignore[index]

    rows = []
    for name in runs:
        rss = min(float(x["rss_mib"]) for x in runs[name])  # type: ignore[arg-type]
        rows.append(f"| {name} | {best(name, 'queued', 1):.2f} | {best(name, 'done', 0):.2f} | "
                    f"{best(name, 'done', 1):.2f} | {len(r) / best(name, 'done', 0):,.0f} | {rss:,.0f} | "
                    f"{runs[name][-1]['batches']} | {runs[name][-1]['failed']} |")
    ratio = [best("this code", k, j) / best("anchor", k, j) for k, j in (("queued", 1), ("done", 0), ("done", 1))]
    text = "\n".join([
        "# InfluxDB write path benchmark (bench/bench_influx_write.py)", "",
        f"Machine: {_machine()}", "",
        f"Load average (1 min) at start {load0:.1f}, at end {load1:.1f}.", "",
        f"Data: {len(r):,} reading rows, {args.days} days of bench/bench_rollup.py make(); written into "
        f"VictoriaMetrics (InfluxDB v2 write API, loopback) in slices of {STORE_SLICE_ROWS:,} rows; the server "
        f"held {runs['this code'][-1]['samples']:,} samples after this code's last run (every row).", "",
        "| code | CPU until queued [s] | wall until closed (all answered) [s] | CPU until closed [s] | "
        "rows/s (wall) | peak RSS above RSS with the data loaded (5 ms samples) [MiB] | requests | failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        f"| ratio this / anchor `{rev[:10]}` | {ratio[0]:.2f} | {ratio[1]:.2f} | {ratio[2]:.2f} | | | | |",
        "",
        f"Best of {args.repeats} runs each (alternating); the server's own CPU is not counted.", "",
    ])
    (HERE / "results" / "influx_write.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
