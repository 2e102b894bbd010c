"""Benchmark of ``ems sweep`` (a script, not a test).

    python bench/bench_sweep.py            # 100 variants, 1 then 2 workers (~3 minutes)
    python bench/bench_sweep.py --n 20     # fewer variants

100 variants of the Qingdao park (5 PV sizes x 5 storage sizes x 4 certificate
volumes) for calendar year 2024 at hourly resolution, each simulated, accounted
(``ems.accounting.kpis``) and priced on a ``distributed.LocalCluster`` of worker
processes (one thread each). Runs the same sweep with 1 worker and with 2, reports
wall times, the speed-up from the second core and the per-variant cost, and writes
``bench/results/sweep.md``. Target: 100 variants <= 60 s with 2 workers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ems.model.loader import load_scenario  # noqa: E402
from ems.studies.sweep import SweepSpec, run_sweep, variants  # noqa: E402

PARAMETERS = {
    "add_pv.kwp": [0, 5000, 10000, 20000, 30000],
    "add_storage.energy_kwh": [0, 5000, 10000, 20000, 40000],
    "buy_certificates.mwh": [0, 10000, 20000, 40000],
}
TARGET_S = 60.0


def machine() -> str:
    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {ram:.1f} GiB RAM, Python {platform.python_version()}"


def spec(n: int) -> SweepSpec:
    sc = load_scenario(ROOT / "scenarios" / "qingdao-2024-hourly.yaml")
    params = dict(PARAMETERS)
    sample = None if n == 100 else {"n": n, "seed": 1}
    return SweepSpec(scenario=sc, site="qingdao", fixed=[], parameters=params, sample=sample,
                     target={"metric": "green_share", "min": 0.30})


def run(n: int, workers: int) -> tuple[float, int, object]:
    s = spec(n)
    t0 = time.perf_counter()
    res = run_sweep(s, n_workers=workers)
    return time.perf_counter() - t0, len(res.results), res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="variants (100 = the full 5 x 5 x 4 grid)")
    args = ap.parse_args()
    assert len(variants(PARAMETERS)) == 100
    load = os.getloadavg()
    print(f"machine: {machine()}")
    t1, n1, _ = run(args.n, 1)
    print(f"1 worker : {n1} variants in {t1:.1f} s ({t1 / n1:.2f} s/variant)")
    t2, n2, res = run(args.n, 2)
    print(f"2 workers: {n2} variants in {t2:.1f} s ({t2 / n2:.2f} s/variant)")
    speedup = t1 / t2
    print(f"speed-up from the second core: {speedup:.2f} x")
    ok = "PASS" if t2 <= TARGET_S * args.n / 100 else "FAIL"
    best = res.best  # type: ignore[attr-defined]
    front = int(res.results["pareto"].sum())  # type: ignore[attr-defined]
    best_txt = "none" if best is None else (
        f"PV {best['p:add_pv.kwp']:,.0f} kWp, storage {best['p:add_storage.energy_kwh']:,.0f} kWh, "
        f"certificates {best['p:buy_certificates.mwh']:,.0f} MWh (green share {best['green_share']:.1%})")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    md = f"""# Sweep benchmark

Written by `python bench/bench_sweep.py{'' if args.n == 100 else f' --n {args.n}'}` on {now} UTC.

Machine: {machine()}.
Sweep: Qingdao park, calendar year 2024 at 1 h, {args.n} variants of PV (0-30 MWp) x storage
(0-40 MWh, self-consumption) x certificates (0-40,000 MWh); each variant simulated, accounted with
`ems.accounting.kpis` and priced; workers return a small dict, not the readings.
Dask `distributed.LocalCluster(n_workers=N, threads_per_worker=1, processes=True)`; the wall time
includes starting and closing the cluster and the base run.

| measurement | figure | note |
| --- | --- | --- |
| 1 worker | {t1:.1f} s | {t1 / n1:.2f} s per variant |
| 2 workers | {t2:.1f} s | {t2 / n2:.2f} s per variant; target <= {TARGET_S * args.n / 100:.0f} s: {ok} |
| speed-up from the second core | {speedup:.2f} x | ideal 2 x |
| Pareto front (cost vs Scope 1+2) | {front} of {n2} variants | |
| cheapest with green share >= 30 % | {best_txt} | |

Load average (1, 5, 15 min) when the run started: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}
(other work may share the machine).
"""
    out = ROOT / "bench" / "results" / "sweep.md"
    out.write_text(md)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
