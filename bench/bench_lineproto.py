"""Benchmark: InfluxDB line protocol of readings (``ems.store.lineproto.reading_lines``), the write path.

Run: ``python bench/bench_lineproto.py [--anchor REV] [--days N] [--repeats K] [--year]`` (writes
``bench/results/lineproto.md``). The readings are ``bench/bench_rollup.py``'s reference
group (10 sites at 15 min, ~25 quantities a site), the first ``--days`` days (31 by default),
in the order a store gets them. The anchor is ``ems/store/lineproto.py`` as it is at REV
(default: the merge base with ``main``), loaded beside this code and timed in the same
process, alternating with it run by run so that both see the same load; the result must be
identical, line for line. Peak memory (``tracemalloc``, in a run of its own) is taken of
``reading_lines`` (every line at once) and of ``reading_line_chunks`` consumed a chunk at a
time, as ``InfluxStore`` does; ``--year`` adds the same for the whole year (this code only).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_rollup import _anchor_rev, _machine, make  # type: ignore[import-not-found]  # noqa: E402

from ems.store import lineproto  # noqa: E402


def _anchor_module(rev: str) -> ModuleType:
    """``ems/store/lineproto.py`` at ``rev``, imported as a module of its own."""
    src = subprocess.run(["git", "show", f"{rev}:ems/store/lineproto.py"], capture_output=True, check=True,
                         cwd=REPO).stdout
    with tempfile.NamedTemporaryFile("wb", suffix=".py", delete=False) as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("lineproto_anchor", f.name)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["lineproto_anchor"] = mod
    spec.loader.exec_module(mod)
    os.unlink(f.name)
    return mod


def _cpu(fn: Callable[[], object]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _peak(fn: Callable[[], object]) -> float:
    """Peak memory traced while ``fn`` runs [MiB] (its result dropped at once)."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def _consume(r: pd.DataFrame, meters: dict, sites: dict) -> int:
    """Build every chunk of lines and drop it, as a writer that sends each one does."""
    return sum(len(c) for c in lineproto.reading_line_chunks(r, meters, sites))


def _memory_rows(label: str, r: pd.DataFrame, meters: dict, sites: dict) -> list[str]:
    _w, c = _cpu(lambda: _consume(r, meters, sites))
    return [
        f"| {label}: `reading_lines` (all lines held) | {len(r):,} | "
        f"{_peak(lambda: lineproto.reading_lines(r, meters, sites)):,.0f} | |",
        f"| {label}: `reading_line_chunks`, a chunk at a time | {len(r):,} | "
        f"{_peak(lambda: _consume(r, meters, sites)):,.0f} | {len(r) / c:,.0f} |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anchor", default=None, help="git revision of the anchor (default: merge base with main)")
    ap.add_argument("--days", type=int, default=31)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--year", action="store_true", help="also the whole year's peak memory (this code only)")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    rev = _anchor_rev(args.anchor)
    anchor = _anchor_module(rev)
    rs = make()
    r = rs.readings
    r = r[r.index < r.index[0] + pd.Timedelta(days=args.days)]
    meters = {(m.site, m.meter): m for m in rs.meters}
    sites = {s.site: s for s in rs.sites}
    new_lines = lineproto.reading_lines(r, meters, sites)
    old_lines = anchor.reading_lines(r, meters, sites)
    assert new_lines == old_lines, "the line protocol differs from the anchor's"
    new_t, old_t = [], []
    for i in range(args.repeats):  # alternate (ABBA), so that both see the same load and go first as often
        pair = [(new_t, lineproto), (old_t, anchor)]
        for times, mod in pair if i % 2 == 0 else pair[::-1]:
            times.append(_cpu(lambda mod=mod: mod.reading_lines(r, meters, sites)))
    mem = _memory_rows(f"{args.days} days", r, meters, sites)
    mem.append(f"| {args.days} days: anchor `reading_lines` | {len(r):,} | "
               f"{_peak(lambda: anchor.reading_lines(r, meters, sites)):,.0f} | |")
    if args.year:
        mem += _memory_rows("whole year", rs.readings, meters, sites)
    load1 = os.getloadavg()[0]
    nw, nc = min(t[0] for t in new_t), min(t[1] for t in new_t)
    ow, oc = min(t[0] for t in old_t), min(t[1] for t in old_t)
    text = "\n".join([
        "# Line protocol benchmark (bench/bench_lineproto.py)",
        "",
        f"Machine: {_machine()}",
        "",
        f"Load average (1 min) at start {load0:.1f}, at end {load1:.1f} (a shared machine: wall times are "
        "inflated above ~1; CPU times less so).",
        "",
        f"Data: {len(r):,} reading rows, {args.days} days of bench/bench_rollup.py make() (10 sites at 15 min); "
        f"{len(new_lines):,} lines, identical to the anchor's.",
        "",
        f"| `reading_lines` | best wall of {args.repeats} [s] | best CPU [s] | rows per second (CPU) |",
        "| --- | --- | --- | --- |",
        f"| this code | {nw:.3f} | {nc:.3f} | {len(r) / nc:,.0f} |",
        f"| anchor `{rev[:10]}` | {ow:.3f} | {oc:.3f} | {len(r) / oc:,.0f} |",
        f"| ratio this / anchor | {nw / ow:.2f} | {nc / oc:.2f} | |",
        "",
        f"Peak memory (tracemalloc, Python and NumPy allocations, beyond the input frame); chunks of "
        f"{lineproto.CHUNK_ROWS:,} rows:",
        "",
        "| run | rows | peak [MiB] | rows per second (CPU, one run) |",
        "| --- | --- | --- | --- |",
        *mem,
        "",
    ])
    (HERE / "results" / "lineproto.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
