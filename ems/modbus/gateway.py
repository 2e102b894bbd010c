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
after 0.5 s, then twice as long each time up to ``max_backoff_s``. A meter's registers
hold its latest interval only: a poll answered after the meter moved on by two intervals
has skipped one, which no later poll can read; it is counted (``intervals_skipped``) and
logged, never filled in. (At real speed a poll has the whole interval; ``ems modbus
--speed 3600`` leaves it 250 ms, which a loaded machine can miss.)

Publishing is ``ems stream``'s (:class:`~ems.telemetry.publisher.SiteConnection`): one MQTT
connection per site whose last will marks the site ``offline``, retained registrations and
metadata before data, QoS 1 with a bounded window, a ledger of what the broker acknowledged
(``ems reconcile`` reads it) and the sequence numbers continuing from it after a restart.
Backfill too: every published message is kept in a bounded, durable
:class:`~ems.telemetry.history.History`; the gateway publishes each site's high-water mark
(``_hwm``) every second and after a reconnect, and answers backfill requests (``_backfill``)
from the history, by the same rule as ``ems stream``
(:func:`ems.telemetry.backfill.answerable`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ems.errors import MissingExtraError, PayloadError
from ems.modbus.config import GatewaySpec, device_quantities, meter_info, site_info
from ems.modbus.registers import Model, Span, decode_span, plan_reads
from ems.modbus.schedule import PollClock
from ems.readings import MeterInfo
from ems.telemetry import backfill, codec, topics
from ems.telemetry.connection import BrokerConfig
from ems.telemetry.deadletter import DeadLetter, DeadLetters, payload_record
from ems.telemetry.history import History
from ems.telemetry.ledger import Ledger
from ems.telemetry.publisher import PublishOptions, SiteConnection

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
        JSONL file of dead-lettered readings (appended and fsynced:
        :class:`~ems.telemetry.deadletter.DeadLetters`); None: only republished.
    client_id_prefix : str
        MQTT client ids are ``{prefix}-{site}``.
    min_backoff_s, max_backoff_s : float [s]
        Reconnection delays: the first, and the longest after doubling.
    history : path, optional
        Directory of the history of published messages (:class:`~ems.telemetry.history.History`)
        that backfill requests are answered from; None: requests are not answered.
    history_limit_bytes : int [B]
        Most disk the history may use (its retention: the oldest messages go first).
    hwm_every_s : float [s]
        How often each site's high-water mark is published (and after a reconnect, and at the end).
    backfill_max : int
        Most readings answered for one backfill request.
    """

    qos: int = 1
    window: int = 1000
    ledger: Path | None = None
    deadletter: Path | None = None
    client_id_prefix: str = "ems-gw"
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    history: Path | None = None
    history_limit_bytes: int = 256 << 20
    hwm_every_s: float = 1.0
    backfill_max: int = 100_000


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


class _Republish:
    """Dead letters republished through a site's connection (:class:`~ems.telemetry.deadletter.Publishes`)."""

    def __init__(self, conn: SiteConnection) -> None:
        self.conn = conn

    def publish(self, topic: str, payload: bytes, on_done: Callable[[bool], None] | None = None, qos: int = 1) -> None:
        self.conn.publish(topic, payload)
        if on_done is not None:  # the gateway acknowledges nothing: the file is what is durable
            on_done(True)


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
        self.sites: dict[str, SiteConnection] = {}
        self.deadletters: dict[str, DeadLetters] = {}
        o = self.opts
        self.history = History(o.history, o.history_limit_bytes) if o.history is not None else None
        self.backfill_requests = 0
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
        o = self.opts
        conn_opts = PublishOptions(qos=o.qos, window=o.window, client_id_prefix=o.client_id_prefix)
        for name in sorted({d.info.site for d in self.devices}):
            conn = SiteConnection(name, self.cfg, conn_opts, self.ledger)
            conn.connect()
            self.sites[name] = conn
            self.deadletters[name] = DeadLetters(o.deadletter, _Republish(conn))
        for s in self.spec.sites:
            if s.site in self.sites:
                self._publish(s.site, topics.site_topic(s.site), codec.encode_site(site_info(s)), retain=True)
        for d in self.devices:
            self._publish(d.info.site, topics.meta_topic(d.info.site, d.info.meter), codec.encode_meta(d.info), retain=True)
        for name in self.sites:
            self._publish(name, topics.status_topic(name), b"online", retain=True)

    def _publish(self, site: str, topic: str, payload: bytes, *, retain: bool = False,
                 meter: str = "", seq: int = 0, ts_ns: int = 0) -> None:
        self.sites[site].publish(topic, payload, retain=retain, meter=meter, last_seq=seq, n=1 if meter else 0,
                                 t0=ts_ns, t1=ts_ns)

    def _drain(self) -> int:
        """Record the acknowledgements received; return the messages still unacknowledged."""
        waiting = 0
        for conn in self.sites.values():
            conn.drain()
            waiting += len(conn.pending)
        return waiting

    async def _room(self, site: str) -> None:
        """Wait while the site's window is full (backpressure on its polls)."""
        conn = self.sites[site]
        while True:
            conn.drain()
            if len(conn.pending) < self.opts.window or self._stop.is_set():
                return
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ backfill

    async def _housekeeping(self, marks_due: bool) -> None:
        """Answer the backfill requests received; publish the high-water marks when due or after a reconnect."""
        for name, conn in self.sites.items():
            while not conn.requests.empty():
                await self._answer(conn, conn.requests.get_nowait())
            if marks_due or conn.reconnected.is_set():
                conn.reconnected.clear()
                conn.publish_hwm(d.info.meter for d in self.devices if d.info.site == name)

    async def _answer(self, conn: SiteConnection, raw: bytes) -> None:
        """Publish again, from the history, what one backfill request asks for (up to what was acknowledged)."""
        self.backfill_requests += 1
        meters = {d.info.meter for d in self.devices if d.info.site == conn.site}

        def acked(meter: str) -> int | None:
            return self.ledger.last_seq(conn.site, meter) if meter in meters else None

        req = backfill.answerable(conn.site, raw, acked, self.opts.backfill_max)
        if req is None:
            return
        if self.history is None:
            log.warning("site %s: backfill of %s seq %d..%d asked for, but the gateway keeps no history (--history)",
                        conn.site, req.meter, req.from_seq, req.to_seq)
            return
        n = 0
        for payload in self.history.payloads(conn.site, req.meter, req.from_seq, req.to_seq):
            await self._room(conn.site)
            conn.publish(topics.data_topic(conn.site, req.meter), payload, backfill=1)
            n += 1
        first = self.history.first_seq(conn.site, req.meter)
        log.info("site %s: backfill of %s seq %d..%d: published %d readings again%s", conn.site, req.meter,
                 req.from_seq, req.to_seq, n, "" if n == req.count else f" (the history holds seq {first} on)")

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
        """Dead-letter one polled reading (the ingestor's durable writer: appended, fsynced, republished)."""
        self.counters["deadlettered"] += 1
        topic = topics.data_topic(dev.info.site, dev.info.meter)
        row = {"seq": dev.seq + 1, "ts": codec.format_ts(ts_ns),
               "values": {q: v for q, v in values.items() if v is not None and q in dev.info.quantities}}
        payload = json.dumps({"v": 1, "site": dev.info.site, "meter": dev.info.meter,
                              "interval_s": dev.info.interval_s, "readings": [row]}).encode()  # NaN kept, as read
        record = payload_record(exc.reason, str(exc), topic, payload, time.time())
        log.warning("dead-lettered a reading of %s/%s: %s", dev.info.site, dev.info.meter, exc)
        try:
            self.deadletters[dev.info.site].write([DeadLetter.of_record(record)])
        except OSError as err:
            self.counters["deadletter_errors"] += 1
            log.error("could not write the dead letter of %s/%s to %s: %s", dev.info.site, dev.info.meter,
                      self.opts.deadletter, err)

    def _reading(self, dev: _Device, values: dict[str, float | None], due_ns: int) -> tuple[str, int]:
        """Turn one poll into a reading: publish it, or dead-letter it, or nothing (same interval).

        Returns ``("new", intervals advanced)`` or ``("old", 0)`` for the poll schedule.
        """
        clock = values.pop("ts", None)
        interval = values.pop("interval_s", None)
        if dev.model.has_clock:
            if not clock:  # the meter has no interval yet
                return "old", 0
            ts_ns = int(clock) * 1_000_000_000
        else:
            ts_ns = due_ns
        if dev.last is not None and ts_ns <= dev.last.ts_ns:
            return "old", 0  # still the interval already published
        step = dev.info.interval_s * 1_000_000_000
        advanced = 1 if dev.last is None else max(round((ts_ns - dev.last.ts_ns) / step), 1)
        try:
            checked = check_reading(dev.info, values, ts_ns, dev.last, interval)
        except PayloadError as exc:
            self._deadletter(dev, exc, ts_ns, values)
            dev.last = codec.Reading(dev.seq, ts_ns, dev.last.values if dev.last else {})  # not this interval again
            return "new", advanced
        dev.seq += 1
        dev.last = codec.Reading(dev.seq, ts_ns, checked)
        payload = codec.encode_data(dev.info.site, dev.info.meter, dev.info.interval_s, [(dev.seq, ts_ns, checked)])
        self._keep(dev, payload)
        self._publish(dev.info.site, topics.data_topic(dev.info.site, dev.info.meter), payload,
                      meter=dev.info.meter, seq=dev.seq, ts_ns=ts_ns)
        self.counters["readings"] += 1
        self.counters["intervals_skipped"] += advanced - 1
        return "new", advanced

    def _keep(self, dev: _Device, payload: bytes) -> None:
        """Add a reading's message to the history (before it is published: the ledger never runs ahead of it)."""
        if self.history is None:
            return
        try:
            self.history.append(dev.info.site, dev.info.meter, dev.seq, payload)
        except OSError as exc:
            self.counters["history_errors"] += 1
            log.error("could not keep %s/%s seq %d in the history %s (%s): a backfill request for it cannot be "
                      "answered", dev.info.site, dev.info.meter, dev.seq, self.history.path, exc)

    async def _run_device(self, dev: _Device) -> None:
        """Poll one device on its schedule (:class:`~ems.modbus.schedule.PollClock`) until stopped."""
        clock = PollClock.start(dev.poll_s, dev.model.has_clock, time.time())
        while not self._stop.is_set():
            if await self._stopped_within(clock.due - time.time()):
                return
            due = clock.due
            dev.polls += 1
            self.counters["polls"] += 1
            self.counters["retries"] += clock.retries > 0
            outcome, advanced = "failed", 0
            try:
                values = await self._poll(dev)
            except DeviceOffline as exc:
                self.counters[f"poll_{exc.reason}"] += 1
                self._set_status(dev, "offline", f"{exc.reason}: {exc.detail}")
            else:
                self.latencies.append(time.time() - due)
                self._set_status(dev, "online")
                await self._room(dev.info.site)
                outcome, advanced = self._reading(dev, values, round(clock.stamp() * 1e9))
                if advanced > 1:
                    self._skipped(dev, advanced - 1, due)
            clock.next(time.time(), outcome, advanced)

    def _skipped(self, dev: _Device, n: int, due: float) -> None:
        """Say that a poll came after the meter had moved on by more than one interval (those are lost at the source)."""
        log.warning("%s/%s: %d interval(s) skipped: the poll due %.3f s ago was answered after the meter's "
                    "registers had moved on (polls late for the interval: poll_s, load, or too many devices on "
                    "one connection); intervals_skipped counts them", dev.info.site, dev.info.meter, n,
                    time.time() - due)

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
        """Every second: acknowledgements, the history then the ledger to disk, backfill and marks."""
        last_marks = 0.0
        while not self._stop.is_set():
            self._drain()
            self._save()
            now = time.monotonic()
            due = now - last_marks >= self.opts.hwm_every_s
            last_marks = now if due else last_marks
            await self._housekeeping(due)
            await self._stopped_within(min(1.0, self.opts.hwm_every_s))

    def _save(self) -> None:
        """The history first (what the ledger counts is on disk), then the ledger."""
        if self.history is not None:
            try:
                self.history.sync()
            except OSError as exc:
                self.counters["history_errors"] += 1
                log.error("could not sync the history %s: %s", self.history.path, exc)
        self.ledger.save()

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
        for name, conn in self.sites.items():
            conn.publish_hwm(d.info.meter for d in self.devices if d.info.site == name)  # the final marks
            conn.finish(5.0)
            conn.close()
        self._save()
        if self.history is not None:
            self.history.close()

    def stats(self) -> dict[str, Any]:
        """Counters, devices offline, and the poll latency percentiles [s] (due time to values read)."""
        lat = np.fromiter(list(self.latencies), dtype="float64")
        p50, p99 = (np.percentile(lat, [50, 99]) if len(lat) else (0.0, 0.0))
        c = self.counters
        return {
            "devices": len(self.devices), "offline": sum(d.status == "offline" for d in self.devices),
            "polls": c["polls"], "readings": c["readings"],
            "acknowledged": sum(conn.readings for conn in self.sites.values()),
            "deadlettered": c["deadlettered"], "backfill_requests": self.backfill_requests,
            "retries": c["retries"], "intervals_skipped": c["intervals_skipped"],
            "backfilled": sum(conn.backfilled for conn in self.sites.values()),
            "poll_errors": {k[5:]: v for k, v in sorted(c.items()) if k.startswith("poll_")},
            "reconnects": sum(max(ep.connects - 1, 0) for ep in self.endpoints.values()),
            "poll_latency_p50_s": round(float(p50), 4), "poll_latency_p99_s": round(float(p99), 4),
        }
