"""Hourly matching over the reference group's year: what it adds to the group-year rollup.

    python bench/bench_hourly.py [--store DIR] [--runs N]     # writes bench/results/hourly.md

Makes the store with ``ems run scenarios/reference-2024.yaml --store DIR -q`` (10 sites, a
year at 15 min, ~10 M readings) unless ``--store`` names one, then times in one process, best
of N, runs alternating so that both see the same load:

* the anchor, the group-year rollup: ``ems.open_readings(store)`` + ``ems.kpis(by="group",
  period="year")`` (stage 1 from the store's register aggregates, stage 2 in pandas);
* the same plus hourly matching: the hourly series it reads from the aggregates, the hourly grid
  factors (ems's modelled mixes, calibrated to each site's annual factor), instruments on hours,
  battery tracking, matching, hourly Scope 2 and the group-year rollup of the hours;
* each step of hourly matching on its own;
* cold, in a new process each: the first rollup with and without hourly matching (the
  modelled hourly factors are made once per region and year in a process: a new process pays it);
* ``ems report --store DIR --by group --period year --format json`` with and without
  ``--no-hourly`` from the command line.

Wall time and CPU time (``time.process_time``) are both reported: the machine is shared, so
CPU time is what the work costs on a quiet machine. Target: hourly matching adds at most 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "reference-2024.yaml"


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU seconds of one call, and its result."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def alternating(fns: dict[str, Callable[[], Any]], n: int) -> dict[str, tuple[float, float]]:
    """Best wall and best CPU of each function, run in turn ``n`` times."""
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(n):
        for k, fn in fns.items():
            w, c, _ = timed(fn)
            got[k].append((w, c))
    return {k: (min(x[0] for x in v), min(x[1] for x in v)) for k, v in got.items()}


COLD = """
import sys, time
import ems
from ems.accounting.hourly import hourly_of
rs = ems.open_readings(sys.argv[1], store=True)
t0 = time.perf_counter()
r = ems.kpis(rs, by="group", period="year")
if sys.argv[2] == "1":
    hourly_of(r, rs).rollup("group", "year")
print(time.perf_counter() - t0)
"""


def cold(store: str, hourly: bool) -> float:
    """Seconds of the first rollup in a new process (imports excluded)."""
    p = subprocess.run([sys.executable, "-c", COLD, store, "1" if hourly else "0"], check=True, capture_output=True,
                       text=True, cwd=ROOT)
    return float(p.stdout.strip().splitlines()[-1])


def cli(*args: str) -> Callable[[], None]:
    exe = [sys.executable, "-m", "ems.cli", *args]
    return lambda: subprocess.run(exe, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def steps(store: str, n: int) -> tuple[list[str], dict[str, Any]]:
    import ems
    from ems.accounting.hourly import annual_factors, flow_series, hourly_kpis, hourly_of

    rs = ems.open_readings(store, store=True)
    res = ems.kpis(rs, by="group", period="year")
    rows = rs.hourly(flow_series(rs.meters))
    hourly = hourly_kpis(rows, rs.meters, rs.sites, annual_factors(res.factor_sets), res.instruments)

    def anchor() -> Any:
        return ems.kpis(rs, by="group", period="year")

    def with_hourly() -> Any:
        r = ems.kpis(rs, by="group", period="year")
        return hourly_of(r, rs).rollup("group", "year")

    main = alternating({"anchor": anchor, "with": with_hourly}, n)
    parts = alternating({
        "read": lambda: rs.hourly(flow_series(rs.meters)),
        "match": lambda: hourly_kpis(rows, rs.meters, rs.sites, annual_factors(res.factor_sets), res.instruments),
        "rollup": lambda: hourly.rollup("group", "year"),
    }, n)
    g = hourly.rollup("group", "year").iloc[0]
    facts = {"rows": len(rows), "cfe": float(g["cfe"]), "annual": float(res.kpis["green_share"].iloc[0]),
             "hours": sum(len(h) for h in hourly.hours.values())}
    (aw, ac), (ww, wc) = main["anchor"], main["with"]
    lines = [
        "| what | best wall [s] | best CPU [s] |",
        "| --- | --- | --- |",
        f"| anchor: group-year rollup (`ems.kpis(store readings, by='group', period='year')`) | {aw:.3f} | {ac:.3f} |",
        f"| the same plus hourly matching and its group-year rollup | {ww:.3f} | {wc:.3f} |",
        f"| **added by hourly matching** (target <= 0.2 s) | **{ww - aw:.3f}** | **{wc - ac:.3f}** |",
        f"| **ratio to the rollup without it** | **{ww / aw:.2f}** | **{wc / ac:.2f}** |",
        f"| step: the hourly series matching reads, from the register aggregates ({facts['rows']:,} rows) | "
        f"{parts['read'][0]:.3f} | {parts['read'][1]:.3f} |",
        f"| step: factors, instruments, batteries, matching, Scope 2 ({facts['hours']:,} site-hours) | "
        f"{parts['match'][0]:.3f} | {parts['match'][1]:.3f} |",
        f"| step: group-year rollup of the matched hours | {parts['rollup'][0]:.3f} | {parts['rollup'][1]:.3f} |",
    ]
    rs.close()
    return lines, facts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", help="an existing store of the reference group (default: make one)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "hourly.md"))
    args = ap.parse_args()
    tmp = None
    store = args.store
    if store is None:
        tmp = tempfile.mkdtemp(prefix="ems-bench-hourly-")
        store = str(Path(tmp) / "store")
        subprocess.run([sys.executable, "-m", "ems.cli", "run", str(SCENARIO), "--store", store, "-q"], check=True, cwd=ROOT)
    load0 = os.getloadavg()
    try:
        lines, facts = steps(store, args.runs)
        report = cli("report", "--store", store, "--by", "group", "--period", "year", "--format", "json")
        plain = cli("report", "--store", store, "--by", "group", "--period", "year", "--format", "json", "--no-hourly")
        cl = alternating({"hourly": report, "plain": plain}, max(3, args.runs // 2))
        firsts = [(cold(store, True), cold(store, False)) for _ in range(max(3, args.runs // 2))]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    text = "\n".join([
        "# Hourly matching benchmark (bench/bench_hourly.py)",
        "",
        f"Machine: {machine()}; load average (1, 5, 15 min) {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} at start, "
        f"{load1[0]:.1f} at end: the machine is shared, so wall times are inflated; CPU time is what the work costs.",
        "",
        "Data: `ems run scenarios/reference-2024.yaml --store DIR -q` (10 sites, a year at 15 min). Best of "
        f"{args.runs}, the anchor and the run with hourly matching alternating.",
        "",
        *lines,
        f"| cold, a new process: first group-year rollup with hourly matching (best of {len(firsts)}) | "
        f"{min(a for a, _ in firsts):.3f} | |",
        f"| cold, a new process: the same without it | {min(b for _, b in firsts):.3f} | |",
        f"| **added cold** (the modelled hourly factors made in the process) | "
        f"**{min(a for a, _ in firsts) - min(b for _, b in firsts):.3f}** | |",
        f"| `ems report --store DIR --by group --period year --format json` (best of {max(3, args.runs // 2)}) | "
        f"{cl['hourly'][0]:.2f} | |",
        f"| the same with `--no-hourly` | {cl['plain'][0]:.2f} | |",
        "",
        f"Group 2024: green-power share {facts['annual']:.1%} annual, {facts['cfe']:.1%} hourly-matched (CFE).",
        "",
        "Hourly matching reads only the hourly series it needs (grid import and export, PV, CHP, battery, the PV "
        "share of export) from the store's register aggregates (`DuckDBStore.hourly`), keeps the modelled hourly "
        "factors per region and year, and works on arrays per site: the battery's colours are the only loop "
        "over hours.",
        "",
    ])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
