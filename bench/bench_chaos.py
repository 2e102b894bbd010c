"""Chaos, long profile: many seeded random fault schedules through real mosquitto and ``ems ingest``.

The same schedules and checks as ``tests/test_chaos.py`` (``tests/chaos_kit.py``), many more
of them, each with up to 6 faults. Writes ``bench/results/chaos.md`` (the counts that
``docs/reliability.md`` quotes: schedules run, faults injected by kind, hostile messages,
lost, doubled, dead-lettered by reason, peak memory) and ``bench/results/chaos.jsonl``
(one line per schedule). A schedule that breaks the invariant is listed with its seed and
faults; the run goes on.

    python bench/bench_chaos.py --schedules 40 --seed 2026
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_soak import machine  # noqa: E402
from chaos_kit import check, run_schedule, schedules  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedules", type=int, default=40)
    ap.add_argument("--max-faults", type=int, default=6)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chaos.md")
    args = ap.parse_args()
    rows: list[dict] = []
    load0 = os.getloadavg()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ems-chaos-") as tmp:

        @seed(args.seed)
        @settings(max_examples=args.schedules, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(schedule=schedules(max_faults=args.max_faults))
        def one(schedule) -> None:
            d = Path(tmp) / f"s{len(rows)}"
            try:
                fig = run_schedule(schedule, d)
                check(fig)
                fig["ok"] = True
            except Exception as exc:  # record it and go on: the long profile reports, it does not stop
                fig = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000], "trace": traceback.format_exc()[-3000:]}
            fig.update(seed=schedule.seed, spool=schedule.spool,
                       faults=[f"{f.kind}@{f.at:.2f}s/{f.duration:.2f}s" for f in schedule.faults])
            rows.append(fig)
            print(f"[{len(rows)}/{args.schedules}] {'ok ' if fig['ok'] else 'FAIL'} {fig['faults']}", flush=True)

        one()
    wall = time.monotonic() - t0
    load1 = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")
    args.out.write_text(render(rows, args, wall, load0, load1))
    print(args.out.read_text())


def render(rows: list[dict], args: argparse.Namespace, wall: float, load0: tuple, load1: tuple) -> str:
    ok = [r for r in rows if r.get("ok")]
    injected: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for r in rows:
        injected.update(r.get("injected", {}))
        reasons.update(r.get("rejected_by_reason", {}))
    total = sum(injected.values())
    s = lambda k: sum(int(r.get(k, 0)) for r in rows)  # noqa: E731
    peak = max((r.get("peak_rss_mib", 0) for r in rows), default=0)
    lines = [
        "# Chaos, long profile (`bench/bench_chaos.py`)", "",
        f"Machine: {machine()}; load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end "
        "(the machine is shared). "
        f"Seed {args.seed}, up to {args.max_faults} faults a schedule; {wall / 60:.1f} min in all.", "",
        "| figure | value |", "| --- | ---: |",
        f"| schedules run | {len(rows)} |",
        f"| schedules keeping the invariant | {len(ok)} |",
        f"| faults injected | {total} |",
        *[f"| - {k} | {v} |" for k, v in sorted(injected.items())],
        f"| readings published (acknowledged by the broker) | {s('acknowledged')} |",
        f"| readings stored | {s('stored')} |",
        f"| lost / doubled (ems reconcile) | {s('lost')} / {s('doubled')} |",
        f"| hostile messages sent | {s('poison')} |",
        f"| - dead-lettered | {s('poison') - s('poison_valid') - s('poison_lost_with_broker') - s('poison_unacknowledged') - sum(len(r.get('poison_missing', [])) for r in rows)} |",
        f"| - valid after all (stored or applied) | {s('poison_valid')} |",
        f"| - lost by mosquitto's SIGKILL before reaching the ingestor | {s('poison_lost_with_broker')} |",
        f"| - never acknowledged by mosquitto (sent while it was down) | {s('poison_unacknowledged')} |",
        f"| - neither stored nor dead-lettered | {sum(len(r.get('poison_missing', [])) for r in rows)} |",
        f"| dead letters written (all reasons, repeats after a kill included) | {sum(reasons.values())} |",
        *[f"| - {k} | {v} |" for k, v in sorted(reasons.items())],
        f"| ingestor restarts after it exited on its own | {s('ingest_restarts')} |",
        f"| readings spooled | {s('spooled')} |",
        f"| peak ingestor RSS [MiB] | {peak} |", "",
    ]
    bad = [r for r in rows if not r.get("ok")]
    if bad:
        lines += ["Schedules that broke the invariant:", ""]
        lines += [f"* seed {r['seed']}, {r['faults']}: {r.get('error', '')[:300]}" for r in bad]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
