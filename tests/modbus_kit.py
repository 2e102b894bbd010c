"""Modbus helpers for tests: ``ems modbus`` as a real subprocess, the gateway in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from brokers import terminate

from ems.modbus.gateway import Gateway
from ems.readings import ReadingSet
from ems.telemetry.broker import free_port, wait_for_port


def start_modbus(folder: Path, port: int, speed: float, *extra: str) -> subprocess.Popen:
    """Start ``ems modbus FOLDER`` on ``port``; return once it listens."""
    with open(folder.parent / f"modbus-{port}.log", "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "ems.cli", "modbus", str(folder), "--port", str(port),
                                 "--speed", str(speed), *extra], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", port, 30.0, proc)
    return proc


@contextlib.contextmanager
def serve_modbus(rs: ReadingSet, tmp: Path, speed: float, *extra: str) -> Iterator[int]:
    """Serve ``rs`` with ``ems modbus`` on a free port for the block; yield the port."""
    folder = rs.to_parquet(tmp / "served")
    port = free_port()
    proc = start_modbus(folder, port, speed, *extra)
    try:
        yield port
    finally:
        terminate(proc)


class GatewayThread:
    """Run a :class:`Gateway` in its own thread and event loop."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.loop = asyncio.new_event_loop()
        self.result: dict | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.result = self.loop.run_until_complete(self.gw.run())

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.gw.stop)
        self.thread.join(30)
        self.loop.close()
