"""Seeded random fault schedules through a real mosquitto and a real ``ems ingest``: the chaos test's machinery.

A :class:`Schedule` (drawn by hypothesis, :func:`schedules`) is a good stream of readings
(published by :class:`~ems.telemetry.publisher.Publisher` with a ledger, paced over a few
seconds, lingering to answer backfill requests) and faults at random times during it:

=============== ==========================================================================
``ingest_kill``  SIGKILL ``ems ingest``; start it again after the fault's duration
``ingest_stop``  SIGSTOP it, SIGCONT after the duration
``broker_kill``  SIGKILL mosquitto (persistence, autosave every second); start it again
``broker_stop``  SIGSTOP mosquitto, SIGCONT after the duration
``disk_full``    every write to the ingestor's disk (store, spool when on it, dead letters) fails ENOSPC
``read_only``    the same disk refuses writes, renames and new folders (EROFS)
``poison``       hostile messages drawn by hypothesis, from another client
``replay``       copies of good messages again, in shuffled order (duplicates, reordering)
=============== ==========================================================================

:func:`run_schedule` runs one and checks the invariant afterwards: ``ems reconcile``'s figures
(lost 0, doubled 0 against the publisher's ledger), every hostile message the broker delivered
is in the dead-letter file (or was valid after all, and is stored), and the ingestor stops
cleanly. ``ems ingest`` runs under ``tests/chaos_ingest.py`` (disk faults at the file-write
seam, from a control file); a process that exits is started again, as systemd would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from builders import make_readingset
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from reliability_kit import IngestProc, Mosquitto, mosquitto_conf, poll, reconciled

from ems.errors import PayloadError
from ems.store import open_store
from ems.telemetry import codec
from ems.telemetry.connection import BrokerConfig
from ems.telemetry.decoding import Data, JsonDecoder
from ems.telemetry.publisher import Publisher, PublishOptions, meter_series

HERE = Path(__file__).resolve().parent
FAULTS = ("ingest_kill", "ingest_stop", "broker_kill", "broker_stop", "disk_full", "read_only", "poison", "replay")
METERS = ("grid", "pv1", "gas")
STREAM_S = 3.0
POISON_BURST = 6


@dataclass(frozen=True)
class Fault:
    """One fault: what, when [s after the stream starts], for how long [s]."""

    kind: str
    at: float
    duration: float


@dataclass(frozen=True)
class Schedule:
    """A run: its faults, the hostile messages, where the spool is, and a seed for the rest."""

    faults: tuple[Fault, ...]
    poisons: tuple[tuple[str, bytes], ...]
    spool: str
    seed: int

    def __repr__(self) -> str:  # the poisons can be megabytes
        faults = ", ".join(f"{f.kind}@{f.at:.2f}s/{f.duration:.2f}s" for f in self.faults)
        sizes = [len(p) for _, p in self.poisons]
        return f"Schedule(seed={self.seed}, spool={self.spool!r}, faults=[{faults}], poison bytes={sizes})"


# ---------------------------------------------------------------- hypothesis strategies

_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(10**300, 10**400),
                  st.floats(), st.text(max_size=20))
_value = st.recursive(_leaf, lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=8), k, max_size=3),
                      max_leaves=12)
# timestamps never inside the good stream (2024-07): a valid hostile reading cannot collide with a good one
_ts = st.sampled_from(["2023-03-01T00:15:00Z", "1500-07-01T00:15:00Z", "0001-01-01T00:00:00Z", "2999-01-01T00:00:00Z",
                       "2023-03-01T00:15:00", "2023-13-01T00:00:00Z", "", "2023-03-01T08:15:00+08:00"]) | _value
_reading = st.fixed_dictionaries({}, optional={
    "seq": st.one_of(st.integers(-3, 2**64), _value), "ts": _ts,
    "values": st.one_of(st.dictionaries(st.sampled_from(["power_kw", "import_kwh", "export_kwh", "energy_kwh",
                                                         "volume_m3", "power_w", ""]),
                                        st.one_of(st.floats(), st.integers(-(10**20), 10**400), _value), max_size=3),
                        _value)})


@st.composite
def _data_doc(draw: Any, site: str, meter: str) -> bytes:
    doc = draw(st.fixed_dictionaries({}, optional={
        "v": st.one_of(st.just(1), _value), "site": st.one_of(st.just(site), _value),
        "meter": st.one_of(st.just(meter), _value), "interval_s": st.one_of(st.just(900), _value),
        "readings": st.one_of(st.lists(_reading, max_size=4), _value), "extra": _value}))
    return json.dumps(doc, allow_nan=True).encode()


def _poison() -> st.SearchStrategy[tuple[str, bytes]]:
    data = st.sampled_from([("alpha", m) for m in METERS] + [("alpha", "nosuch"), ("ghost", "grid")]).flatmap(
        lambda sm: _data_doc(*sm).map(lambda p, sm=sm: (f"ems/v1/{sm[0]}/{sm[1]}", p)))
    control = st.tuples(st.sampled_from(["ems/v1/alpha/_events", "ems/v1/alpha/_hwm", "ems/v1/ghost/_site",
                                         "ems/v1/alpha/newmeter/meta", "ems/v2/alpha/grid", "ems/v1/Alpha/grid",
                                         "ems/v1/alpha/_backfill"]),
                        st.one_of(st.binary(max_size=200), _value.map(lambda v: json.dumps(v, allow_nan=True).encode())))
    deep = st.integers(50, 5000).map(lambda n: ("ems/v1/alpha/grid", b"[" * n + b"]" * n))
    big = st.just(("ems/v1/alpha/grid", b'{"v":1,"pad":"' + b"x" * (1 << 20) + b'"}'))
    return st.one_of(data, data, control, deep, big)


@st.composite
def schedules(draw: Any, max_faults: int = 5) -> Schedule:
    """A random schedule (see module docs): hostile messages and replays always, 1 to ``max_faults - 2`` other faults."""
    others = draw(st.lists(st.sampled_from(FAULTS[:6]), min_size=1, max_size=max(max_faults - 2, 1)))
    kinds = ["poison", "replay", *others, *draw(st.lists(st.sampled_from(FAULTS[6:]), max_size=2))]
    faults = tuple(sorted((Fault(k, draw(st.floats(0.0, STREAM_S)), draw(st.floats(0.2, 1.5))) for k in kinds),
                          key=lambda f: f.at))
    n_poison = POISON_BURST * sum(1 for f in faults if f.kind == "poison")
    poisons = tuple(draw(st.lists(_poison(), min_size=n_poison, max_size=n_poison)))
    return Schedule(faults, poisons, draw(st.sampled_from(["same", "other", "none"])), draw(st.integers(0, 2**31)))


# ---------------------------------------------------------------- running one


@dataclass
class _State:
    ingest: IngestProc | None = None
    ingest_alive: bool = True
    ingest_stopped: bool = False
    broker_dead: bool = False
    broker_stopped: bool = False
    exits: int = 0
    peak_rss_kb: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    poison_sent: list[tuple[int, str, bytes]] = field(default_factory=list)
    broker_kills: list[float] = field(default_factory=list)


class ChaosRun:
    """One schedule through mosquitto and ``ems ingest`` (see module docs)."""

    def __init__(self, schedule: Schedule, tmp: Path) -> None:
        self.s = schedule
        self.tmp = tmp
        self.rng = random.Random(schedule.seed)
        self.rs = make_readingset(sites=("alpha",), days=1, meters=METERS, seed=schedule.seed % 1000)
        self.total = len(self.rs.readings.index.unique()) * len(METERS)
        self.disk = tmp / "disk"
        self.disk.mkdir(parents=True)
        self.control = tmp / "disk-mode"
        self.control.write_text("")
        self.ledger = tmp / "ledger.json"
        self.dl = self.disk / "deadletter.jsonl"
        conf, port = mosquitto_conf(tmp / "mq", "autosave_interval 1\nautosave_on_changes false\n")
        self.mq = Mosquitto(conf, port)
        self.cfg = BrokerConfig.from_url(self.mq.url)
        self.state = _State()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._acked: dict[int, float] = {}  # the raw client's PUBACKs: mid -> when

    # ------------------------------------------------------------ the ingestor

    def _start_ingest(self) -> None:
        spool = {"same": ["--spool", str(self.disk / "spool")], "other": ["--spool", str(self.tmp / "spool")],
                 "none": []}[self.s.spool]
        n = self.state.exits + self.state.injected["ingest_kill"]
        self.state.ingest = IngestProc(
            self.mq.url, str(self.disk / "store"), self.tmp / "logs", "chaos", "--unknown-grace", "1", *spool,
            name=f"ingest{n}",
            deadletter=self.dl, cmd=[sys.executable, str(HERE / "chaos_ingest.py"), str(self.disk), str(self.control)])
        self.state.ingest_alive = True

    def _supervise(self) -> None:
        """Restart an ingestor that exited on its own (systemd's Restart=always); sample its memory."""
        while not self._done.is_set():
            with self._lock:
                ing = self.state.ingest
                if ing is not None and self.state.ingest_alive and ing.proc.poll() is not None:
                    self.state.exits += 1
                    time.sleep(0.3)
                    self._start_ingest()
                elif ing is not None and self.state.ingest_alive and not self.state.ingest_stopped:
                    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                        self.state.peak_rss_kb = max(self.state.peak_rss_kb, ing.rss_kb())
            time.sleep(0.1)

    # ------------------------------------------------------------ faults

    def _begin(self, f: Fault, raw: mqtt.Client) -> None:
        st_ = self.state
        st_.injected[f.kind] += 1
        if f.kind == "ingest_kill" and st_.ingest is not None and st_.ingest_alive:
            st_.ingest.signal(signal.SIGKILL)
            st_.ingest.wait(10)
            st_.ingest_alive = False
        elif f.kind == "ingest_stop" and st_.ingest is not None and st_.ingest_alive:
            st_.ingest.signal(signal.SIGSTOP)
            st_.ingest_stopped = True
        elif f.kind == "broker_kill" and not st_.broker_dead:
            if st_.broker_stopped:
                self._signal_broker(signal.SIGCONT)
                st_.broker_stopped = False
            st_.broker_kills.append(time.monotonic())
            self.mq.kill9()
            st_.broker_dead = True
        elif f.kind == "broker_stop" and not st_.broker_dead:
            self._signal_broker(signal.SIGSTOP)
            st_.broker_stopped = True
        elif f.kind in ("disk_full", "read_only"):
            self.control.write_text({"disk_full": "full", "read_only": "read_only"}[f.kind])
        elif f.kind == "poison":
            self._poison(raw)
        elif f.kind == "replay":
            self._replay(raw)

    def _end(self, f: Fault) -> None:
        st_ = self.state
        if f.kind == "ingest_kill" and not st_.ingest_alive:
            self._start_ingest()
        elif f.kind == "ingest_stop" and st_.ingest_stopped and st_.ingest is not None:
            st_.ingest.signal(signal.SIGCONT)
            st_.ingest_stopped = False
        elif f.kind == "broker_kill" and st_.broker_dead:
            self.mq.start()
            st_.broker_dead = False
        elif f.kind == "broker_stop" and st_.broker_stopped:
            self._signal_broker(signal.SIGCONT)
            st_.broker_stopped = False
        elif f.kind in ("disk_full", "read_only"):
            self.control.write_text("")

    def _signal_broker(self, sig: int) -> None:
        if self.mq.proc is not None and self.mq.proc.poll() is None:
            os.kill(self.mq.proc.pid, sig)

    def _poison(self, raw: mqtt.Client) -> None:
        k = len(self.state.poison_sent)
        for topic, payload in self.s.poisons[k : k + POISON_BURST]:
            info = raw.publish(topic, payload, qos=1)
            self.state.poison_sent.append((info.mid, topic, payload))

    def _replay(self, raw: mqtt.Client) -> None:
        series = meter_series(self.rs)
        picks = []
        for _ in range(6):
            s = self.rng.choice(series)
            i = self.rng.randrange(0, len(s.seq) - 4)
            picks.append((f"ems/v1/alpha/{s.info.meter}", s.payload(i, i + self.rng.randint(1, 4))))
        self.rng.shuffle(picks)
        for topic, payload in picks + picks[:2]:  # reordered, and some twice
            raw.publish(topic, payload, qos=1)

    def _timeline(self, raw: mqtt.Client, t0: float) -> None:
        events = sorted([(f.at, 0, i) for i, f in enumerate(self.s.faults)]
                        + [(f.at + f.duration, 1, i) for i, f in enumerate(self.s.faults)])
        for at, end, i in events:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            with self._lock:
                if end:
                    self._end(self.s.faults[i])
                else:
                    self._begin(self.s.faults[i], raw)

    def _heal(self) -> None:
        with self._lock:
            self.control.write_text("")
            if self.state.broker_dead:
                self.mq.start()
                self.state.broker_dead = False
            if self.state.broker_stopped:
                self._signal_broker(signal.SIGCONT)
                self.state.broker_stopped = False
            if self.state.ingest is not None and self.state.ingest_stopped:
                self.state.ingest.signal(signal.SIGCONT)
                self.state.ingest_stopped = False
            if not self.state.ingest_alive:
                self._start_ingest()

    # ------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        """Run the schedule; return its figures (see :func:`check`)."""
        raw = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"chaos-raw-{self.s.seed}",
                          protocol=mqtt.MQTTv5)
        raw.max_inflight_messages_set(0)
        raw.reconnect_delay_set(min_delay=0.2, max_delay=1)
        raw.on_publish = lambda c, u, mid, rc, props: self._acked.setdefault(mid, time.monotonic())
        sup = threading.Thread(target=self._supervise, daemon=True)
        pub_stats: dict[str, Any] = {}
        try:
            self._start_ingest()
            sup.start()
            subscribed = time.time() + 0.3
            snapshot = self.tmp / "mq" / "mosquitto.db"  # the ingestor's session must survive a SIGKILL of mosquitto
            assert poll(lambda: snapshot.exists() and snapshot.stat().st_mtime > subscribed, 10, every=0.05), \
                "mosquitto wrote no persistence snapshot"
            raw.connect("127.0.0.1", self.mq.port)
            raw.loop_start()
            speed = 900 * (len(self.rs.readings.index.unique())) / STREAM_S
            pub = Publisher(self.cfg, self.rs, PublishOptions(ledger=self.ledger, speed=speed, linger_s=4.0))
            t = threading.Thread(target=lambda: pub_stats.update(r=pub.run()), daemon=True)
            t.start()
            # the faults start with the stream (a publisher that cannot connect at all exits, as ems stream does)
            assert poll(lambda: pub.published() > 0, 20), "the publisher did not start"
            self._timeline(raw, time.monotonic())
            self._heal()
            poll(lambda: pub.published() >= self.total or not t.is_alive(), 60)
            store = open_store(self.disk / "store", read_only=True)
            try:  # the publisher lingers meanwhile, answering backfill requests
                poll(lambda: store.count() >= len(self.rs.readings), 40, every=0.3)
                pub.stop()
                t.join(30)
                return self._converge(store)
            finally:
                pub.stop()
                store.close()
        finally:
            self._done.set()
            sup.join(5)
            raw.loop_stop()
            raw.disconnect()
            with self._lock:
                if self.state.ingest is not None:
                    self.state.ingest.signal(signal.SIGCONT)
                    self.state.ingest.stop()
            self._signal_broker(signal.SIGCONT)
            self.mq.stop()

    def _converge(self, store: Any) -> dict[str, Any]:
        """Wait until nothing waits in the ingestor, stop it (SIGTERM), reconcile, check the hostile messages."""
        with self._lock:
            ing = self.state.ingest
            assert ing is not None
        # messages waiting for metadata (unknown sites) are dead-lettered after their grace time
        poll(lambda: (m := ing.metrics()) and m.get("ems_ingest_parked") == 0
             and m.get("ems_ingest_queue_depth") == 0, 20, every=0.3)
        with self._lock:
            m = ing.metrics()
            ing.signal(signal.SIGTERM)
            code = ing.wait(30)
            self.state.ingest_alive = False
        fig = reconciled(self.ledger, store)
        fig.update(self._poison_figures(store))
        rejected = Counter(json.loads(line)["reason"] for line in _lines(self.dl))
        return {**fig, "published": self.total, "dead_lettered": sum(rejected.values()), "exit_code": code,
                "ingest_restarts": self.state.exits, "peak_rss_mib": round(self.state.peak_rss_kb / 1024, 1),
                "injected": dict(self.state.injected), "rejected_by_reason": dict(rejected),
                "spooled": int(m.get("ems_ingest_spooled_total", 0)), "spool": self.s.spool}

    def _poison_figures(self, store: Any) -> dict[str, Any]:
        """Every hostile message the broker delivered is dead-lettered, or was valid and is stored."""
        dl = {json.loads(line)["payload_sha256"] for line in _lines(self.dl)}
        missing, exempt, valid, unacked = [], 0, 0, 0
        for mid, topic, payload in self.state.poison_sent:
            at = self._acked.get(mid)
            if hashlib.sha256(payload).hexdigest() in dl:
                continue
            if at is None:
                unacked += 1  # the broker never acknowledged it (it was down): never delivered
            elif any(k - 2.5 <= at <= k for k in self.state.broker_kills):
                exempt += 1  # acknowledged by mosquitto, then lost in its SIGKILL before the next snapshot
            elif _valid_and_stored(topic, payload, store, self.rs) or _ignored(topic):
                valid += 1
            else:
                missing.append((topic, payload[:200]))
        return {"poison": len(self.state.poison_sent), "poison_missing": missing, "poison_lost_with_broker": exempt,
                "poison_valid": valid, "poison_unacknowledged": unacked}


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith("{")]


def _ignored(topic: str) -> bool:
    """Topics the ingestor takes without a dead letter (its own requests) or never gets (not subscribed)."""
    subscribed = any(mqtt.topic_matches_sub(f, topic) for f, _ in JsonDecoder().subscriptions(None))
    return topic.endswith("/_backfill") or not subscribed


def _valid_and_stored(topic: str, payload: bytes, store: Any, rs: Any) -> bool:
    """A 'hostile' message that is valid after all: a good control message, or readings that are now stored."""
    dec = JsonDecoder()
    try:
        route = dec.route(topic)
        decoded = dec.decode(route, payload, now_ns=time.time_ns(), max_future_s=300.0)
        if isinstance(decoded, Data):
            meters = {(m.site, m.meter): m for m in rs.meters}
            codec.decode_data(route.site, route.meter, payload, meters, now_ns=time.time_ns())
    except PayloadError:
        return False
    if not isinstance(decoded, Data):
        return True
    back = store.read(sites=[route.site]).readings
    stored = set(back.index.asi8[back["meter"].astype(str) == route.meter])
    return all(r.ts_ns in stored for r in decoded.message.readings)


def run_schedule(schedule: Schedule, tmp: Path) -> dict[str, Any]:
    """Run ``schedule`` in ``tmp``; return its figures."""
    return ChaosRun(schedule, tmp).run()


def check(fig: dict[str, Any]) -> None:
    """The invariant, as the figures show it."""
    assert fig["lost"] == 0 and fig["doubled"] == 0 and fig["stored"] == fig["published"], fig
    assert fig["poison_missing"] == [], fig["poison_missing"]
    assert fig["exit_code"] == 0, fig
