"""Simulated meters as Modbus TCP devices (``ems modbus``).

Every meter of a ReadingSet becomes one Modbus unit (unit ids 1-247 on a port, the next
port after that) serving ems's register map (``ems/data/modbus/ems-em3.yaml``: SDM630
addresses plus the float32, int32 and int64 blocks with the meter's clock). The
registers hold the meter's latest reading and change when the next one's time comes,
paced like ``ems stream`` (:func:`ems.telemetry.pacing.run_paced`). Registers are filled
on demand, when a request reads them, in the server's event loop: a read never sees half
of one reading and half of the next.

Built on pymodbus's server (``SimDevice``/``SimData``, its datastore since 3.10), imported
lazily: ``pip install 'ems[plant]'``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ems.errors import MissingExtraError, TelemetryError
from ems.modbus.config import builtin_models
from ems.modbus.registers import Register, encode
from ems.readings import ReadingSet
from ems.telemetry.pacing import run_paced
from ems.telemetry.publisher import MeterSeries, meter_series

__all__ = ["MAX_UNITS", "MeterServer", "ServedMeter", "assign_units", "served_registers"]

log = logging.getLogger(__name__)

MAX_UNITS = 247
"""Unit ids per port: 1-247 (Modbus over serial line 2.2; 0 is broadcast, 248-255 reserved)."""


def served_registers() -> tuple[Register, ...]:
    """Every register of ems's map (all built-in models), by address."""
    regs = {r.address: r for m in builtin_models().values() for r in m.registers}
    return tuple(regs[a] for a in sorted(regs))


def _ranges(regs: tuple[Register, ...]) -> list[tuple[int, int]]:
    """Contiguous address ranges ``(start, count)`` the registers cover."""
    out: list[list[int]] = []
    for r in regs:
        if out and out[-1][0] + out[-1][1] == r.address:
            out[-1][1] += r.words
        else:
            out.append([r.address, r.words])
    return [(a, n) for a, n in out]


@dataclass
class ServedMeter:
    """One meter served as a Modbus unit.

    Attributes
    ----------
    port : int
    unit : int
        Modbus unit id.
    series : MeterSeries
        The meter's readings.
    """

    port: int
    unit: int
    series: MeterSeries
    shown: int = -2  # index of the reading the registers hold (-2: never filled)
    _columns: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._columns = {q: k for k, q in enumerate(self.series.quantities)}

    def index_at(self, t_ns: int) -> int:
        """Index of the latest reading at plant time ``t_ns`` (-1: none yet)."""
        return int(np.searchsorted(self.series.ts, t_ns, side="right")) - 1

    def values(self, i: int) -> dict[str, float]:
        """Register values of reading ``i``: the clock, then each quantity (NaN: not implemented)."""
        s = self.series
        if i < 0:
            return {"ts": 0.0, "interval_s": float(s.info.interval_s)}
        row = s.values[i]
        out = {"ts": float(int(s.ts[i]) // 1_000_000_000), "interval_s": float(s.info.interval_s)}
        out.update({q: float(row[k]) for q, k in self._columns.items()})
        return out

    def fill(self, i: int, regs: tuple[Register, ...], words: list[int], start: int) -> None:
        """Write reading ``i`` into ``words`` (the unit's register block starting at ``start``)."""
        vals = self.values(i)
        for r in regs:
            off = r.address - start
            words[off : off + r.words] = encode(r, vals.get(r.quantity, math.nan))
        self.shown = i


def assign_units(rs: ReadingSet, port: int, per_port: int = MAX_UNITS) -> list[ServedMeter]:
    """Give every meter a port and unit id: 1..per_port on ``port``, then on ``port + 1``, ..."""
    if not 1 <= per_port <= MAX_UNITS:
        raise TelemetryError(f"units per port must be 1 to {MAX_UNITS}, found {per_port}")
    out = []
    for k, s in enumerate(meter_series(rs)):
        out.append(ServedMeter(port + k // per_port, 1 + k % per_port, s))
    if out and out[-1].port > 65535:
        raise TelemetryError(f"{len(out)} meters need ports {port}..{out[-1].port}; the last is above 65535")
    return out


class MeterServer:
    """Serve a ReadingSet's meters over Modbus TCP, advancing in scaled real time.

    Parameters
    ----------
    readings : ReadingSet
    host : str
        Address to listen on.
    port : int
        First port; more meters than ``per_port`` continue on the next ports.
    speed : float
        Plant seconds per real second.
    per_port : int
        Unit ids per port (at most 247).
    """

    def __init__(self, readings: ReadingSet, *, host: str = "127.0.0.1", port: int = 5020,
                 speed: float = 1.0, per_port: int = MAX_UNITS) -> None:
        if not speed > 0:
            raise TelemetryError(f"speed must be > 0, found {speed}")
        self.host = host
        self.speed = speed
        self.meters = assign_units(readings, port, per_port)
        self.sites = list(readings.sites)
        self.regs = served_registers()
        self.now_ns = -1
        self.done = threading.Event()
        self.stop_event = threading.Event()
        self._servers: list[Any] = []
        self._times = np.unique(np.concatenate([m.series.ts for m in self.meters])) if self.meters else np.array([])

    @property
    def ports(self) -> list[int]:
        """The ports served."""
        return sorted({m.port for m in self.meters})

    def _device(self, m: ServedMeter) -> Any:
        from pymodbus.constants import ExcCodes
        from pymodbus.simulator import DataType, SimData, SimDevice

        regs = self.regs

        async def action(fc: int, start: int, address: int, count: int, words: list[int],
                         values: list[int] | list[bool] | None) -> Any:
            if values is not None:
                return ExcCodes.ILLEGAL_FUNCTION  # a meter's registers are read-only
            i = m.index_at(self.now_ns)
            if i != m.shown:
                m.fill(i, regs, words, start)
            return None

        blocks = [SimData(a, count=n, values=0, datatype=DataType.REGISTERS) for a, n in _ranges(regs)]
        return SimDevice(m.unit, simdata=blocks, action=action)

    @staticmethod
    def _absent() -> Any:
        """Unit id 0 of pymodbus: every unit id without a meter answers exception 0x0B."""
        from pymodbus.constants import ExcCodes
        from pymodbus.simulator import DataType, SimData, SimDevice

        async def action(*args: Any) -> Any:
            return ExcCodes.GATEWAY_NO_RESPONSE  # "gateway target device failed to respond"

        return SimDevice(0, simdata=[SimData(0, count=65536, values=0, datatype=DataType.REGISTERS)], action=action)

    async def start(self) -> None:
        """Listen on every port (in the running event loop)."""
        try:
            from pymodbus.server import ModbusTcpServer
        except ImportError as exc:
            raise MissingExtraError("pymodbus", "plant") from exc
        self.now_ns = int(self._times[0]) if len(self._times) else -1
        for port in self.ports:
            devices = [self._device(m) for m in self.meters if m.port == port] + [self._absent()]
            server = ModbusTcpServer(devices, address=(self.host, port))
            try:
                await server.serve_forever(background=True)
            except (OSError, RuntimeError) as exc:
                raise TelemetryError(f"cannot listen on {self.host}:{port}: {exc}") from None
            self._servers.append(server)

    def advance(self, loop: asyncio.AbstractEventLoop) -> None:
        """Play the readings' times in scaled real time (blocking: run it in a thread)."""

        def step(t: int) -> None:
            loop.call_soon_threadsafe(setattr, self, "now_ns", t)

        try:
            run_paced(self._times, self.speed, step, stop=self.stop_event)
        finally:
            self.done.set()

    async def serve(self, stop: asyncio.Event) -> None:
        """Start, advance the plant in a thread until the end, serve until ``stop`` is set."""
        await self.start()
        loop = asyncio.get_running_loop()
        pacer = threading.Thread(target=self.advance, args=(loop,), name="ems-modbus-pacer", daemon=True)
        pacer.start()
        try:
            await stop.wait()
        finally:
            self.stop_event.set()
            await self.close()
            pacer.join(5)

    async def close(self) -> None:
        """Stop listening."""
        for server in self._servers:
            await server.shutdown()
        self._servers.clear()
