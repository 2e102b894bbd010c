"""Run the reliability and security suite and render its figures into docs/reliability.md.

Each fault test appends one JSON line of figures to the file named by
``EMS_RELIABILITY_FIGURES``; this script sets it, runs the suite (pytest, with a JUnit
XML for the per-test times), and replaces the generated sections of
``docs/reliability.md`` (between ``<!-- figures:begin -->`` and ``<!-- figures:end -->``,
and ``<!-- soak:begin -->`` / ``<!-- soak:end -->`` from ``bench/results/soak.md``,
written by ``bench/bench_soak.py``, and ``<!-- chaos:begin -->`` / ``<!-- chaos:end -->``
from ``bench/results/chaos.md``, written by ``bench/bench_chaos.py``).

    python bench/reliability_report.py            # run the suite, update the doc
    python bench/reliability_report.py --no-run   # re-render from the last figures
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_soak import machine  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
RESULTS = ROOT / "bench" / "results"
SUITE = ["tests/test_reliability_faults.py", "tests/test_security_hostile.py", "tests/test_security_broker.py",
         "tests/test_fuzz_inputs.py", "tests/test_ingest_adversary.py", "tests/test_files_and_http_limits.py",
         "tests/test_chaos.py"]
COLS = ["published", "acknowledged", "stored", "dead_lettered", "lost", "doubled", "peak_rss_mib"]


def run_suite(figs: Path, junit: Path) -> int:
    env = {**os.environ, "EMS_RELIABILITY_FIGURES": str(figs)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *SUITE]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def table(records: list[dict], times: dict[str, float]) -> str:
    out = ["| fault | " + " | ".join(COLS) + " | other figures | time [s] |",
           "| --- | " + " | ".join("---:" for _ in COLS) + " | --- | ---: |"]
    for r in records:
        other = {k: v for k, v in r.items() if k not in (*COLS, "test", "fault", "extra", "poison_missing")
                 and v not in ("", [], {}, None)}
        other_s = ", ".join(f"{k}={v}" for k, v in other.items())
        t = times.get(r["test"])
        out.append(f"| {r['fault']} | " + " | ".join(f"{r.get(c, '')}" for c in COLS)
                   + f" | {other_s} | {'' if t is None else f'{t:.1f}'} |")
    return "\n".join(out)


def times_of(junit: Path) -> tuple[dict[str, float], list[tuple[str, str, float, str]]]:
    times: dict[str, float] = {}
    rows: list[tuple[str, str, float, str]] = []
    if not junit.exists():
        return times, rows
    for tc in ET.parse(junit).getroot().iter("testcase"):
        name, t = tc.get("name", ""), float(tc.get("time", 0))
        times[name] = t
        state = "failed" if tc.find("failure") is not None or tc.find("error") is not None else (
            "skipped" if tc.find("skipped") is not None else "passed")
        rows.append((tc.get("classname", "").rsplit(".", 1)[-1], name, t, state))
    return times, rows


def replace(doc: str, tag: str, body: str) -> str:
    pat = re.compile(rf"(<!-- {tag}:begin -->\n).*?(<!-- {tag}:end -->)", re.S)
    if not pat.search(doc):
        return doc + f"\n<!-- {tag}:begin -->\n{body}\n<!-- {tag}:end -->\n"
    return pat.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), doc, count=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-run", action="store_true", help="render the figures of the last run")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figs = RESULTS / "reliability.jsonl"
    junit = RESULTS / "reliability-junit.xml"
    rc = 0
    run_info = RESULTS / "reliability-run.json"
    if not args.no_run:
        figs.unlink(missing_ok=True)
        load0, t0 = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        rc = run_suite(figs, junit)
        run_info.write_text(json.dumps({"machine": machine(), "when": t0, "load_start": load0,
                                        "load_end": os.getloadavg()}))
    records = [json.loads(line) for line in figs.read_text().splitlines()] if figs.exists() else []
    times, rows = times_of(junit)
    total = sum(t for *_, t, _ in rows)
    passed = sum(1 for *_, s in rows if s == "passed")
    info = json.loads(run_info.read_text()) if run_info.exists() else {}
    where = (f" Run {info['when']} on {info['machine']}; load average (1, 5, 15 min) "
             f"{' '.join(f'{x:.1f}' for x in info['load_start'])} at the start, "
             f"{' '.join(f'{x:.1f}' for x in info['load_end'])} at the end (a machine shared with other work)."
             if info else "")
    body = [table(records, times), "",
            f"Suite: {passed} of {len(rows)} tests passed in {total:.0f} s (sum of test times; `pytest` exit {rc}).{where}",
            "", "| module | test | time [s] | result |", "| --- | --- | ---: | --- |"]
    body += [f"| {m} | {n} | {t:.1f} | {s} |" for m, n, t, s in rows]
    doc = DOC.read_text() if DOC.exists() else "# Reliability and security\n"
    doc = replace(doc, "figures", "\n".join(body))
    soak = RESULTS / "soak.md"
    if soak.exists():
        doc = replace(doc, "soak", soak.read_text().split("\n", 2)[2].strip())
    chaos = RESULTS / "chaos.md"
    if chaos.exists():
        doc = replace(doc, "chaos", chaos.read_text().split("\n", 2)[2].strip())
    DOC.write_text(doc)
    print(f"wrote {DOC} ({len(records)} fault records, {passed}/{len(rows)} passed)")
    sys.exit(rc)


if __name__ == "__main__":
    main()
