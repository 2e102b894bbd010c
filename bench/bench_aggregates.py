"""What keeping the register aggregates up to date costs a writer (a script, not a test).

    python bench/bench_aggregates.py                    # writes bench/results/aggregates.md
    python bench/bench_aggregates.py --before DIR       # also the code exported in DIR

``ems run`` delivers each simulated site into the embedded store (``ems.sim.runner._deliver``:
registrations, the readings in slices, the events). This times that delivery alone, in
one process, for sites simulated beforehand (so the simulation is not in the figure):

* the reference group's year at 15 minutes (10 sites, ~10.15 M readings);
* one site of it (Qingdao) for a year at one minute (~15 M readings);

each into a new store with the register aggregates kept up to date and without them
(``DuckDBStore(aggregates=False)``), CPU and wall time, best of N. With ``--before DIR``
(an export of other code, e.g. ``git archive main | tar -x -C DIR``) the same runs of
that code, in the same sitting, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, os, pickle, shutil, sys, time
from ems.sim.runner import _deliver
from ems.store.duckdb_store import DuckDBStore

parts = pickle.load(open(sys.argv[1], "rb"))
runs, tmp = int(sys.argv[2]), sys.argv[3]
out = {}
for agg in (True, False):
    cpu, wall = [], []
    for _ in range(runs):
        shutil.rmtree(tmp, ignore_errors=True)
        st = DuckDBStore(tmp, aggregates=agg)
        c, t = time.process_time(), time.perf_counter()
        for p in parts:
            _deliver(p, st, None)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
        st.close()
    out["on" if agg else "off"] = {"cpu": min(cpu), "wall": min(wall)}
print(json.dumps(out))
"""


def simulated(tmp: Path, one_minute: bool) -> Path:
    """Simulate the sites once (this code) and pickle them for every measurement."""
    import pickle

    import ems
    from ems.sim.engine import simulate_site

    text = (ROOT / "scenarios" / "reference-2024.yaml").read_text().replace("../sites/", f"{ROOT}/sites/")
    if one_minute:
        text = text.replace("resolution: 15min", "resolution: 1min")
    path = tmp / ("ref-1min.yaml" if one_minute else "ref.yaml")
    path.write_text(text)
    sc = ems.load_scenario(str(path))
    wanted = [i for i, s in enumerate(sc.sites) if not one_minute or s.id == "qingdao"]
    parts = [simulate_site(sc, i, base_dir=str(ROOT / "scenarios")) for i in wanted]
    out = tmp / ("parts-1min.pkl" if one_minute else "parts-15min.pkl")
    out.write_bytes(pickle.dumps(parts))
    return out


def measure(parts: Path, runs: int, tmp: Path, code: Path | None) -> dict[str, dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=str(code)) if code is not None else None
    got = subprocess.run([sys.executable, "-c", MEASURE, str(parts), str(runs), str(tmp / "store")],
                         check=True, capture_output=True, text=True, env=env, cwd=code or ROOT)
    result: dict[str, dict[str, float]] = json.loads(got.stdout)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before", type=Path, help="an export of other code to time beside this one")
    ap.add_argument("--before-label", default=None, help="what --before is, for the table")
    args = ap.parse_args()
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for label, one_minute in (("reference year @ 15 min, 10 sites", False), ("Qingdao @ 1 min, a year", True)):
            parts = simulated(tmp, one_minute)
            now = before = None
            for _ in range(2):  # alternate, keep the best
                got = measure(parts, args.runs, tmp, None)
                now = got if now is None else {k: {m: min(v[m], now[k][m]) for m in v} for k, v in got.items()}
                if args.before is not None:
                    old = measure(parts, args.runs, tmp, args.before)
                    before = old if before is None else {
                        k: {m: min(v[m], before[k][m]) for m in v} for k, v in old.items()}
            rows.append((label, now, before))
    load1 = os.getloadavg()
    lines = [
        "# Register aggregates: what their upkeep costs a writer (bench/bench_aggregates.py)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average (1, 5, 15 min) {' '.join(f'{x:.1f}' for x in load0)} at start, "
        f"{' '.join(f'{x:.1f}' for x in load1)} at end (the machine is shared: best of {args.runs} x 2).",
        "",
        "Delivering simulated sites into a new embedded store in one process, as `ems run` does",
        "(`ems.sim.runner._deliver`), with the register aggregates kept up to date and without them.",
        "",
        "| data | aggregates | CPU [s] | wall [s] | upkeep CPU [s] |" + (" before: CPU [s] | before: upkeep CPU [s] |"
                                                                        if args.before else ""),
        "| --- | --- | --- | --- | --- |" + (" --- | --- |" if args.before else ""),
    ]
    for label, now, before in rows:
        assert now is not None
        for key in ("on", "off"):
            extra = ""
            if before is not None:
                up = f"{before['on']['cpu'] - before['off']['cpu']:.2f}" if key == "on" else ""
                extra = f" {before[key]['cpu']:.2f} | {up} |"
            up_now = f"{now['on']['cpu'] - now['off']['cpu']:.2f}" if key == "on" else ""
            lines.append(f"| {label} | {key} | {now[key]['cpu']:.2f} | {now[key]['wall']:.2f} | {up_now} |{extra}")
    if args.before is not None:
        what = args.before_label or f"the code in `{args.before.name}`"
        lines += ["", f"'before': {what}, on the same simulated sites, runs alternating."]
    out = ROOT / "bench" / "results" / "aggregates.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
