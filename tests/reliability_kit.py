"""Helpers for the fault, hostile-input and security tests: processes, figures, VictoriaMetrics.

Every process started here is stopped by PID in a ``finally``/finalizer.
Figures: each fault test appends one JSON line to ``$EMS_RELIABILITY_FIGURES`` (set by
``bench/reliability_report.py``) or to ``reliability.jsonl`` in pytest's base temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import brokers
import pytest

from ems.store.base import Store
from ems.telemetry.broker import free_port, wait_for_port
from ems.telemetry.ledger import Ledger, reconcile

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- figures


def figures_file(base: Path) -> Path:
    env = os.environ.get("EMS_RELIABILITY_FIGURES")
    return Path(env) if env else base / "reliability.jsonl"


@pytest.fixture
def figures(request, tmp_path_factory) -> Callable[..., dict[str, Any]]:
    """``figures(fault=..., published=..., ...)``: append the test's figures as one JSON line."""

    def write(**figs: Any) -> dict[str, Any]:
        rec = {"test": request.node.name, **figs}
        with open(figures_file(tmp_path_factory.getbasetemp()), "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        return rec

    return write


def reconciled(ledger: Path, store: Store) -> dict[str, int]:
    """Totals of :func:`ems.telemetry.ledger.reconcile`: acknowledged, stored, lost, doubled, extra."""
    rows = reconcile(Ledger(ledger), store)
    return {
        "acknowledged": sum(r.published for r in rows),
        "stored": sum(r.stored for r in rows),
        "lost": sum(r.lost for r in rows),
        "doubled": sum(r.doubled for r in rows),
        "extra": sum(r.extra for r in rows),
    }


def poll(pred: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """Call ``pred`` until it returns something truthy or ``timeout`` [s] passes; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


# ---------------------------------------------------------------- mosquitto


def mosquitto_conf(tmp: Path, extra: str = "", port: int | None = None, limits: str | None = None) -> tuple[Path, int]:
    """A mosquitto config on a free loopback port with persistence in ``tmp`` (+ ``extra`` lines).

    ``limits``: the queue and in-flight lines; default the shipped ones (``brokers.shipped_limits``);
    ``""`` for mosquitto's stock defaults (20 in flight, 1,000 queued).
    """
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        + ("allow_anonymous true\n" if "allow_anonymous" not in extra else "")
        + "persistence true\n"
        f"persistence_location {tmp}/\n"
        + (brokers.shipped_limits() if limits is None else limits)
        + ("user root\n" if os.geteuid() == 0 else "")
        + "log_dest stdout\nlog_type error\nlog_type warning\n"
        + extra
    )
    return conf, port


class Mosquitto:
    """A mosquitto subprocess that a test may SIGKILL and start again on the same port."""

    def __init__(self, conf: Path, port: int) -> None:
        if not Path(brokers.MOSQUITTO).exists():
            pytest.skip("mosquitto is not installed")
        self.conf, self.port = conf, port
        self.url = f"mqtt://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = brokers._start_mosquitto(self.conf, self.port)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        brokers.terminate(self.proc, 10)


# ---------------------------------------------------------------- ems subprocesses


def ems_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ems.cli", *args]


class EmsProc:
    """``ems ...`` as a subprocess; stdout/stderr go to files (no pipe can fill and block it)."""

    def __init__(self, args: list[str], log_dir: Path, name: str, env: dict[str, str] | None = None,
                 cmd: list[str] | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out = log_dir / f"{name}.out"
        self.err = log_dir / f"{name}.err"
        with open(self.out, "ab") as o, open(self.err, "ab") as e:
            argv = ems_cmd(*args) if cmd is None else [*cmd, *args]  # cmd: another program taking ems's arguments
            self.proc = subprocess.Popen(argv, stdout=o, stderr=e, cwd=log_dir, env={**os.environ, **(env or {})})
        self.pid = self.proc.pid

    def wait_log(self, text: str, timeout: float = 30.0) -> str:
        def find() -> str | None:
            for line in self.err.read_text(errors="replace").splitlines():
                if text in line:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited {self.proc.returncode}: {self.err.read_text()[-2000:]}")
            return None

        line = poll(find, timeout)
        assert line, f"{text!r} not in the log after {timeout} s: {self.err.read_text()[-2000:]}"
        return str(line)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        brokers.terminate(self.proc, 15)


class IngestProc(EmsProc):
    """``ems ingest`` with a metrics port; :meth:`metrics` reads its counters."""

    def __init__(self, broker_url: str, store: str, log_dir: Path, client_id: str, *extra: str,
                 name: str = "ingest", env: dict[str, str] | None = None, cmd: list[str] | None = None,
                 deadletter: Path | None = None) -> None:
        super().__init__(
            ["ingest", "--broker", broker_url, "--store", store, "--client-id", client_id, "--metrics-port", "0",
             "--deadletter", str(deadletter or log_dir / "deadletter.jsonl"), "--batch-seconds", "0.2", *extra],
            log_dir, name, env, cmd,
        )
        line = self.wait_log("metrics at http://127.0.0.1:")
        self.metrics_url = line.split("metrics at ", 1)[1].strip()

    def metrics(self) -> dict[str, float]:
        try:
            text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def written(self) -> int:
        return int(self.metrics().get("ems_ingest_written_total", 0))


# ---------------------------------------------------------------- VictoriaMetrics


class Victoria:
    """VictoriaMetrics (InfluxDB v2 write API) on a loopback port; can be stopped and started again."""

    def __init__(self, data: Path) -> None:
        self.exe = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
        if not Path(self.exe).exists():
            pytest.skip("victoria-metrics is not installed")
        self.port = free_port()
        self.data = data
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.data}",
             "-retentionPeriod=100y", "-dedup.minScrapeInterval=1ms"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port, 20.0, self.proc)

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"{self.base}/health", timeout=1).read().strip() == b"OK"
            except OSError:
                return False

        assert poll(healthy, 20), "victoria-metrics did not start"

    def stop(self) -> None:
        brokers.terminate(self.proc, 20)

    def samples(self, match: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        urllib.request.urlopen(f"{self.base}/internal/force_flush", timeout=10).read()
        text = urllib.request.urlopen(f"{self.base}/api/v1/export?match[]={quote(match)}", timeout=30).read().decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]
