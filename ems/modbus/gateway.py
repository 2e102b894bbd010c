"""A Modbus TCP to MQTT gateway: poll meters, publish readings of contract v1 (``ems gateway``).

Each device of the gateway file is polled on its own schedule in one asyncio loop; devices
with the same host and port share one TCP connection (a Modbus TCP/RTU gateway often
accepts only a few), and its requests go one after another. A poll reads the device's
registers in as few requests as its model allows (:func:`ems.modbus.registers.plan_reads`).

Time stamps are set at the source. A meter with a clock (the ``ts`` register, e.g. ems's
``ems-em3-*`` models) says which interval its registers hold: the gateway publishes a
reading when that interval ends, stamped with its end. A meter without a clock is polled
at the ends of its intervals (multiples of ``interval_s`` since the Unix epoch, UTC) and
each reading is stamped with the end it was polled for.

Nothing is invented. A device that times out, refuses the connection or answers with an
exception code gets no reading: its retained ``ems/v1/{site}/{meter}/_status`` says
``offline`` and why, until a poll succeeds again. A reading whose register went backwards
or is not finite is dead-lettered with its reason (JSONL file and
``ems/v1/_deadletter/{reason}``), as the ingestor would. A lost connection is tried again
after 0.5 s, then twice as long each time up to ``max_backoff_s``.

Publishing follows ``ems stream``: one MQTT connection per site whose last will marks the
site ``offline``, retained registrations and metadata before data, QoS 1 with a bounded
window, a ledger of what the broker acknowledged (``ems reconcile`` reads it) and the
sequence numbers continuing from it after a restart.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ems.errors import MissingExtraError, PayloadError
from ems.modbus.config import GatewaySpec, device_quantities, meter_info, site_info
from ems.modbus.registers import Model, Span, decode_span, plan_reads
from ems.readings import MeterInfo
from ems.telemetry import codec, topics
from ems.telemetry.connection import BrokerConfig, connect_and_wait, make_client
from ems.telemetry.ledger import Ledger

__all__ = ["DeviceOffline", "Gateway", "GatewayOptions", "check_reading"]

log = logging.getLogger(__name__)

_EXCEPTIONS = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
    5: "acknowledge", 6: "server device busy", 8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
"""Modbus exception codes (Modbus application protocol V1.1b3, section 7)."""


class DeviceOffline(Exception):
    """A poll that got no values: ``reason`` is ``timeout``, ``no_connection`` or ``exception_NN``."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass
class GatewayOptions:
    """How to run the gateway.

    Attributes
    ----------
    qos : int
        0 or 1.
    window : int
        Unacknowledged messages allowed per site connection; a full window delays polls.
    ledger : path, optional
        What the broker acknowledged, per meter (``ems reconcile --ledger``); sequence
        numbers continue from it.
    deadletter : path, optional
        JSONL file of dead-lettered readings.
    client_id_prefix : str
        MQTT client ids are ``{prefix}-{site}``.
    min_backoff_s, max_backoff_s : float [s]
        Reconnection delays: the first, and the longest after doubling.
    """

    qos: int = 1
    window: int = 1000
    ledger: Path | None = None
    deadletter: Path | None = None
    client_id_prefix: str = "ems-gw"
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0


def check_reading(info: MeterInfo, values: dict[str, float | None], ts_ns: int,
                  previous: codec.Reading | None, interval_s: float | None = None) -> dict[str, float]:
    """The values of one polled reading, checked like the ingestor checks a payload.

    Not-implemented values (None) are left out.

    Raises
    ------
    PayloadError
        ``non_finite``, ``register_backwards``, ``interval_mismatch`` or ``missing_field``.
    """
    where = topics.data_topic(info.site, info.meter)
    if interval_s is not None and interval_s != info.interval_s:
        raise PayloadError("interval_mismatch",
                           f"{where}: the meter's interval_s register says {interval_s:g}, the gateway file {info.interval_s}")
    out = {q: v for q in info.quantities if (v := values.get(q)) is not None}
    for q, v in out.items():
        if not math.isfinite(v):
            raise PayloadError("non_finite", f"{where}.values.{q}: expected a finite number, found {v!r}")
    if not out:
        raise PayloadError("missing_field", f"{where}: every register read 'not implemented'; nothing to publish")
    codec.check_registers([codec.Reading(0, ts_ns, out)], where, previous)
    return out


class _Endpoint:
    """One TCP connection (host, port), shared by its devices, with reconnection backoff."""

    def __init__(self, host: str, port: int, opts: GatewayOptions) -> None:
        self.host, self.port, self.opts = host, port, opts
        self.client: Any = None
        self.lock = asyncio.Lock()
        self.retry_at = 0.0
        self.delay = opts.min_backoff_s
        self.connects = 0

    async def _connect(self, timeout: float) -> Any:
        from pymodbus.client import AsyncModbusTcpClient

        now = time.monotonic()
        if self.client is not None and self.client.connected:
            return self.client
        if now < self.retry_at:
            raise DeviceOffline("no_connection", f"{self.host}:{self.port} unreachable; next try in {self.retry_at - now:.1f} s")
        if self.client is not None:
            self.client.close()
        self.client = AsyncModbusTcpClient(self.host, port=self.port, timeout=timeout, retries=0, reconnect_delay=0)
        if not await self.client.connect():
            self.retry_at = time.monotonic() + self.delay
            self.delay = min(2 * self.delay, self.opts.max_backoff_s)
            raise DeviceOffline("no_connection", f"cannot connect to {self.host}:{self.port}")
        self.delay = self.opts.min_backoff_s
        self.connects += 1
        return self.client

    async def read(self, unit: int, function: str, span: Span, timeout: float) -> list[int]:
        """Read one span; raise :class:`DeviceOffline` on a timeout, a lost connection or an exception code."""
        from pymodbus.exceptions import ModbusException

        async with self.lock:
            client = await self._connect(timeout)
            fn = client.read_input_registers if function == "input" else client.read_holding_registers
            try:
                rr = await asyncio.wait_for(fn(span.address, count=span.count, device_id=unit), timeout + 0.5)
            except (TimeoutError, ModbusException, OSError) as exc:
                if not client.connected:
                    self.retry_at = time.monotonic() + self.delay
                    self.delay = min(2 * self.delay, self.opts.max_backoff_s)
                    raise DeviceOffline("no_connection", f"{self.host}:{self.port}: {exc}") from None
                raise DeviceOffline("timeout", f"unit {unit} at {self.host}:{self.port}: no answer in {timeout:g} s ({exc})") from None
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0))
            raise DeviceOffline(f"exception_{code:02d}", f"unit {unit} at {self.host}:{self.port} answered exception "
                                f"{code:#04x} ({_EXCEPTIONS.get(code, 'unknown')}) to a read of {span.count} at {span.address:#06x}")
        return list(rr.registers)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


@dataclass
class _Device:
    info: MeterInfo
    model: Model
    unit: int
    endpoint: _Endpoint
    spans: list[Span]
    poll_s: float
    timeout_s: float
    seq: int = 0
    last: codec.Reading | None = None
    status: str = ""
    polls: int = 0


@dataclass
class _Site:
    """One site's MQTT connection, its window of unacknowledged messages and the ledger."""

    name: str
    client: Any
    acks: queue.SimpleQueue[int] = field(default_factory=queue.SimpleQueue)
    pending: dict[int, tuple[str, list[Any], int]] = field(default_factory=dict)


class Gateway:
    """Poll Modbus TCP devices and publish their readings over MQTT.

    Parameters
    ----------
    spec : GatewaySpec
        The checked gateway file.
    models : dict of str to Model
        The models its devices use (:func:`ems.modbus.config.load_gateway`).
    cfg : BrokerConfig
    options : GatewayOptions
    """

    def __init__(self, spec: GatewaySpec, models: dict[str, Model], cfg: BrokerConfig,
                 options: GatewayOptions | None = None) -> None:
        self.spec = spec
        self.cfg = cfg
        self.opts = options or GatewayOptions()
        self.ledger = Ledger(self.opts.ledger)
        self.endpoints: dict[tuple[str, int], _Endpoint] = {}
        self.devices = [self._device(d, models[d.model]) for d in spec.devices]
        self.sites: dict[str, _Site] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=100_000)
        self._stop = asyncio.Event()

    def _device(self, d: Any, model: Model) -> _Device:
        ep = self.endpoints.setdefault((d.host, d.port), _Endpoint(d.host, d.port, self.opts))
        info = meter_info(d, model)
        wanted = set(device_quantities(d, model)) | {"ts", "interval_s"}
        regs = [r for r in model.registers if r.quantity in wanted]
        poll_s = d.poll_s or (min(1.0, float(d.interval_s)) if model.has_clock else float(d.interval_s))
        dev = _Device(info, model, d.unit, ep, plan_reads(regs, model.max_gap), poll_s, d.timeout_s)
        dev.seq = self.ledger.last_seq(info.site, info.meter)
        last_ts = self.ledger.meters.get(Ledger.key(info.site, info.meter), {}).get("last_ts")
        if last_ts:  # continue after what the broker acknowledged: never the same interval twice
            dev.last = codec.Reading(dev.seq, codec.parse_ts(last_ts), {})
        return dev

    # ------------------------------------------------------------------ MQTT

    def _connect_sites(self) -> None:
        for name in sorted({d.info.site for d in self.devices}):
            client = make_client(self.cfg, f"{self.opts.client_id_prefix}-{name}"[:64],
                                 will=(topics.status_topic(name), b"offline"))
            client.max_inflight_messages_set(max(self.opts.window, 20))
            site = _Site(name, client)
            client.on_publish = lambda c, u, mid, rc, props, s=site: s.acks.put(mid)
            connect_and_wait(client, self.cfg)
            self.sites[name] = site
        for s in self.spec.sites:
            if s.site in self.sites:
                self._publish(s.site, topics.site_topic(s.site), codec.encode_site(site_info(s)), retain=True)
        for d in self.devices:
            self._publish(d.info.site, topics.meta_topic(d.info.site, d.info.meter), codec.encode_meta(d.info), retain=True)
        for name in self.sites:
            self._publish(name, topics.status_topic(name), b"online", retain=True)

    def _publish(self, site: str, topic: str, payload: bytes, *, retain: bool = False,
                 meter: str = "", seq: int = 0, ts_ns: int = 0) -> None:
        s = self.sites[site]
        info = s.client.publish(topic, payload, qos=self.opts.qos, retain=retain)
        token = self.ledger.sent(site, meter, seq) if meter else []
        if self.opts.qos == 0:
            if meter:
                self.ledger.acked(site, meter, token, 1, ts_ns, ts_ns)
            return
        s.pending[info.mid] = (meter, token, ts_ns)

    def _drain(self) -> int:
        """Record the acknowledgements received; return the messages still unacknowledged."""
        waiting = 0
        for s in self.sites.values():
            while True:
                try:
                    mid = s.acks.get_nowait()
                except queue.Empty:
                    break
                entry = s.pending.pop(mid, None)
                if entry is not None and entry[0]:
                    meter, token, ts = entry
                    self.ledger.acked(s.name, meter, token, 1, ts, ts)
                    self.counters["acknowledged"] += 1
            waiting += len(s.pending)
        return waiting

    async def _room(self, site: str) -> None:
        """Wait while the site's window is full (backpressure on its polls)."""
        while True:
            self._drain()
            if len(self.sites[site].pending) < self.opts.window or self._stop.is_set():
                return
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ polling

    async def _poll(self, dev: _Device) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for span in dev.spans:
            words = await dev.endpoint.read(dev.unit, dev.model.function, span, dev.timeout_s)
            values.update(decode_span(span, words))
        return values

    def _set_status(self, dev: _Device, status: str, reason: str = "") -> None:
        if dev.status == status:
            return
        dev.status = status
        site, meter = dev.info.site, dev.info.meter
        (log.warning if status == "offline" else log.info)("%s/%s is %s%s", site, meter, status, f": {reason}" if reason else "")
        self.counters[f"went_{status}"] += 1
        self._publish(site, topics.meter_status_topic(site, meter),
                      codec.meter_status(site, meter, status, reason, time.time_ns()), retain=True)

    def _deadletter(self, dev: _Device, exc: PayloadError, ts_ns: int, values: dict[str, float | None]) -> None:
        self.counters["deadlettered"] += 1
        topic = topics.data_topic(dev.info.site, dev.info.meter)
        row = {"seq": dev.seq + 1, "ts": codec.format_ts(ts_ns),
               "values": {q: v for q, v in values.items() if v is not None and q in dev.info.quantities}}
        payload = json.dumps({"v": 1, "site": dev.info.site, "meter": dev.info.meter,
                              "interval_s": dev.info.interval_s, "readings": [row]}).encode()  # NaN kept, as read
        record = codec.deadletter_record(exc.reason, str(exc), topic, payload, time.time())
        log.warning("dead-lettered a reading of %s/%s: %s", dev.info.site, dev.info.meter, exc)
        line = json.dumps(record)
        if self.opts.deadletter is not None:
            with open(self.opts.deadletter, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        self._publish(dev.info.site, topics.deadletter_topic(exc.reason), line.encode())

    def _reading(self, dev: _Device, values: dict[str, float | None], due_ns: int) -> None:
        """Turn one poll into a reading: publish it, or dead-letter it, or nothing (same interval)."""
        clock = values.pop("ts", None)
        interval = values.pop("interval_s", None)
        if dev.model.has_clock:
            if not clock:  # the meter has no interval yet
                return
            ts_ns = int(clock) * 1_000_000_000
        else:
            ts_ns = due_ns
        if dev.last is not None and ts_ns <= dev.last.ts_ns:
            return  # still the interval already published
        try:
            checked = check_reading(dev.info, values, ts_ns, dev.last, interval)
        except PayloadError as exc:
            self._deadletter(dev, exc, ts_ns, values)
            dev.last = codec.Reading(dev.seq, ts_ns, dev.last.values if dev.last else {})  # not this interval again
            return
        dev.seq += 1
        dev.last = codec.Reading(dev.seq, ts_ns, checked)
        payload = codec.encode_data(dev.info.site, dev.info.meter, dev.info.interval_s, [(dev.seq, ts_ns, checked)])
        self._publish(dev.info.site, topics.data_topic(dev.info.site, dev.info.meter), payload,
                      meter=dev.info.meter, seq=dev.seq, ts_ns=ts_ns)
        self.counters["readings"] += 1

    async def _run_device(self, dev: _Device) -> None:
        period = dev.poll_s
        due = math.floor(time.time() / period) * period + period  # aligned: interval ends for a meter without clock
        while not self._stop.is_set():
            if await self._stopped_within(due - time.time()):
                return
            dev.polls += 1
            self.counters["polls"] += 1
            try:
                values = await self._poll(dev)
            except DeviceOffline as exc:
                self.counters[f"poll_{exc.reason}"] += 1
                self._set_status(dev, "offline", f"{exc.reason}: {exc.detail}")
            else:
                self.latencies.append(time.time() - due)
                self._set_status(dev, "online")
                await self._room(dev.info.site)
                self._reading(dev, values, round(due * 1e9))
            due += period
            if due < time.time():  # fell behind: skip the missed polls, keep the alignment
                due += math.ceil((time.time() - due) / period) * period

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask :meth:`run` to finish (from the loop's thread)."""
        self._stop.set()

    async def run(self, duration_s: float | None = None) -> dict[str, Any]:
        """Connect, poll every device until :meth:`stop` (or ``duration_s``), then disconnect; return the stats."""
        try:
            import pymodbus  # noqa: F401
        except ImportError as exc:
            raise MissingExtraError("pymodbus", "plant") from exc
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._connect_sites)
        tasks = [asyncio.create_task(self._run_device(d), name=f"poll-{d.info.site}-{d.info.meter}") for d in self.devices]
        saver = asyncio.create_task(self._save_loop())
        try:
            await self._stopped_within(duration_s)
        finally:
            self._stop.set()
            await asyncio.gather(*tasks, saver, return_exceptions=True)
            await loop.run_in_executor(None, self._close)
        return self.stats()

    async def _save_loop(self) -> None:
        while not self._stop.is_set():
            self._drain()
            self.ledger.save()
            await self._stopped_within(1.0)

    async def _stopped_within(self, delay_s: float | None) -> bool:
        """Wait up to ``delay_s`` [s] (None: forever) for :meth:`stop`; return whether it came."""
        if delay_s is not None and delay_s <= 0:
            return self._stop.is_set()
        try:
            await asyncio.wait_for(self._stop.wait(), delay_s)
        except TimeoutError:
            return False
        return True

    def _close(self) -> None:
        deadline = time.monotonic() + 10
        while self._drain() and time.monotonic() < deadline:
            time.sleep(0.05)
        for ep in self.endpoints.values():
            ep.close()
        for name, s in self.sites.items():
            s.client.publish(topics.status_topic(name), b"offline", qos=1, retain=True).wait_for_publish(5)
            s.client.disconnect()
            s.client.loop_stop()
        self.ledger.save()

    def stats(self) -> dict[str, Any]:
        """Counters, devices offline, and the poll latency percentiles [s] (due time to values read)."""
        lat = np.fromiter(list(self.latencies), dtype="float64")
        p50, p99 = (np.percentile(lat, [50, 99]) if len(lat) else (0.0, 0.0))
        c = self.counters
        return {
            "devices": len(self.devices), "offline": sum(d.status == "offline" for d in self.devices),
            "polls": c["polls"], "readings": c["readings"], "acknowledged": c["acknowledged"],
            "deadlettered": c["deadlettered"],
            "poll_errors": {k[5:]: v for k, v in sorted(c.items()) if k.startswith("poll_")},
            "reconnects": sum(max(ep.connects - 1, 0) for ep in self.endpoints.values()),
            "poll_latency_p50_s": round(float(p50), 4), "poll_latency_p99_s": round(float(p99), 4),
        }
