"""Sparkplug B ingestion beside the JSON contract's, through mosquitto into the embedded store.

Run::

    python bench/bench_sparkplug.py [--readings 300000] [--batch 100] [--runs 3]

For each encoding the same readings (4 sites x 10 meters at 1 min, ``--batch`` readings per
message) are published as fast as mosquitto acknowledges (QoS 1) by a child process, and
``ems ingest``'s Ingestor (in this process) decodes, checks, writes them to the embedded
DuckDB/Parquet store and acknowledges. Readings/s = readings written / time from the first
message to the last write. The encodings alternate run by run; the best run of each is
reported, with the ratio Sparkplug / JSON (the anchor). Writes ``bench/results/sparkplug.md``.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_mqtt import machine, make_set, start_mosquitto  # noqa: E402


def child(port: int, readings: int, batch: int, encoding: str) -> None:
    from ems.telemetry.connection import BrokerConfig
    from ems.telemetry.publisher import Publisher, PublishOptions

    rs = make_set(readings)
    pub = Publisher(BrokerConfig.from_url(f"mqtt://127.0.0.1:{port}"), rs,
                    PublishOptions(batch=batch, client_id_prefix=f"bench-{encoding}", events=False, encoding=encoding))
    print("ready", flush=True)
    sys.stdin.readline()
    s = pub.run()
    print(json.dumps({"readings": s.readings, "elapsed_s": s.elapsed_s}), flush=True)


def one_run(tmp: Path, encoding: str, readings: int, batch: int) -> dict:
    from ems.store import open_store
    from ems.telemetry.connection import BrokerConfig
    from ems.telemetry.ingestor import IngestOptions, Ingestor

    mq, port = start_mosquitto(tmp)
    store = open_store(tmp / "store")
    ing = Ingestor(BrokerConfig.from_url(f"mqtt://127.0.0.1:{port}"), store,
                   IngestOptions(client_id=f"bench-ing-{encoding}", encoding=encoding)).start()
    pub = subprocess.Popen([sys.executable, __file__, "--child", str(port), "--readings", str(readings),
                            "--batch", str(batch), "--encoding", encoding],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert pub.stdout is not None and pub.stdin is not None and pub.stdout.readline().strip() == "ready"
        base = ing.counters["written"]
        pub.stdin.write("go\n")
        pub.stdin.flush()
        t0 = time.monotonic()
        out, _ = pub.communicate(timeout=900)
        sent = json.loads(out.strip().splitlines()[-1])["readings"]
        ing.wait_for(lambda c: c["written"] - base >= sent, 600)
        elapsed = time.monotonic() - t0
        written = ing.counters["written"] - base
    finally:
        ing.stop()
        store.close()
        mq.terminate()
        mq.wait(10)
    return {"encoding": encoding, "readings": written, "elapsed_s": elapsed, "rate": written / elapsed,
            "rejected": ing.counters["rejected"], "load": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "sparkplug.md")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--encoding", default="json", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child(a.child, a.readings, a.batch, a.encoding)
        return
    runs = []
    for _ in range(a.runs):
        for enc in ("json", "sparkplug"):
            with tempfile.TemporaryDirectory() as d:
                r = one_run(Path(d), enc, a.readings, a.batch)
            runs.append(r)
            print(json.dumps(r), flush=True)
    best = {enc: max((r for r in runs if r["encoding"] == enc), key=lambda r: r["rate"]) for enc in ("json", "sparkplug")}
    lines = [
        "# Sparkplug B ingestion benchmark", "",
        f"`python bench/bench_sparkplug.py --readings {a.readings} --batch {a.batch} --runs {a.runs}` on "
        f"{time.strftime('%Y-%m-%d')}.", "",
        "mosquitto on loopback, QoS 1, 4 sites x 10 meters at 1 min, "
        f"{a.batch} readings per message, publisher in its own process, ingestion into the embedded store "
        "(decoded, checked, written, acknowledged after the write). Best run of each encoding.", "",
        "| encoding | readings written | readings/s |", "| --- | ---: | ---: |",
        *[f"| {enc} | {best[enc]['readings']:,} | {best[enc]['rate']:,.0f} |" for enc in ("json", "sparkplug")],
        f"| ratio sparkplug / json | | {best['sparkplug']['rate'] / best['json']['rate']:.2f} |", "",
        "All runs: " + "; ".join(f"{r['encoding']} {r['rate']:,.0f}/s (load {r['load'][0]:.2f})" for r in runs) + ".", "",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in machine().items()) + " (shared with other work while it ran).",
    ]
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
