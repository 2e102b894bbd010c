"""The dashboard's model: poll a store, keep the latest values, cache KPIs per site.

A :class:`Monitor` works with any :class:`~ems.store.base.Store` through its
``read``: a background thread reads each site's new readings (from a cursor just
before the newest reading seen) and keeps the latest value of every meter. KPIs
come from :func:`ems.accounting.kpis` and are cached per site so that a year of
data stays cheap:

* the year's finished local days are computed once (``daily`` frame of the
  accounting) and extended by one day when a day ends;
* today (the local day of the site's newest reading: for a replayed scenario that
  is the scenario's day, not the wall clock's) is recomputed when new readings
  arrived, at most every ``today_every_s``;
* the whole year is recomputed every ``year_every_s`` when new data arrived (late
  readings, certificates that span the year).

The year's and today's KPIs are then :func:`ems.accounting.kpis.rollup` of those
daily rows (cheap: a few hundred rows).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ems.errors import EmsError, ReadingError
from ems.readings import MeterInfo, ReadingSet, SiteInfo
from ems.store.base import Store

from . import views

__all__ = ["KPI_FIELDS", "Monitor", "SiteState"]

log = logging.getLogger(__name__)

KPI_FIELDS = (
    "electricity_consumed_kwh",
    "grid_import_kwh",
    "pv_generated_kwh",
    "steam_gj",
    "natural_gas_m3",
    "output_rmb",
    "total_tce",
    "tce_per_10k_rmb",
    "green_share",
    "scope1_t",
    "scope2_market_t",
    "scope12_market_t",
    "scope12_location_t",
    "scope12_market_intensity_t_per_10k_rmb",
)
"""KPI columns (``docs/kpis.md``) the dashboard shows for today and the year."""

StatusFn = Callable[[], Mapping[str, str]]


@dataclass
class SiteState:
    """What the monitor holds for one site."""

    info: SiteInfo
    meters: list[MeterInfo] = field(default_factory=list)
    latest: pd.DataFrame | None = None  # newest row per (meter, quantity)
    last_ts: pd.Timestamp | None = None
    last_new_wall: float = 0.0  # time.time() when readings last advanced
    fingerprint: tuple[int, int] = (0, 0)
    flows: dict[str, Any] = field(default_factory=dict)
    today: pd.Timestamp | None = None  # local midnight (tz-aware) of the newest reading's day
    year_daily: pd.DataFrame | None = None  # finished days of the year
    year_daily_until: pd.Timestamp | None = None  # local midnight up to which year_daily holds
    year_computed_wall: float = 0.0
    today_daily: pd.DataFrame | None = None
    today_computed_wall: float = 0.0
    dirty_today: bool = False
    dirty_year: bool = False
    kpi_today: dict[str, Any] = field(default_factory=dict)
    kpi_year: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    @property
    def interval_s(self) -> int:
        """Shortest meter interval of the site [s] (900 if no meter is known)."""
        return min((m.interval_s for m in self.meters), default=900)


class Monitor:
    """Poll a store and serve the dashboard's views.

    Parameters
    ----------
    store : Store
        Opened by the caller (read-only is enough); the monitor serialises its calls.
    status : callable, optional
        Returns ``{site: "online" | "offline"}`` from the MQTT site status topics
        (e.g. ``Ingestor.status``); without it the status is fresh or stale from
        the age of the newest reading.
    poll_s : float [s]
        How often the background thread reads new data.
    today_every_s, year_every_s : float [s]
        Least time between KPI recomputations of today and of the whole year.
    targets : dict, optional
        Targets (:func:`ems.accounting.load_targets`); default the built-in ``group``.
    """

    def __init__(
        self,
        store: Store,
        *,
        status: StatusFn | None = None,
        poll_s: float = 1.0,
        today_every_s: float = 2.0,
        year_every_s: float = 300.0,
        targets: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.status_fn = status
        self.poll_s = poll_s
        self.today_every_s = today_every_s
        self.year_every_s = year_every_s
        self._targets = targets
        self.sites: dict[str, SiteState] = {}
        self.lock = threading.RLock()  # guards the store and self.sites
        self.version = 0  # bumps when anything shown changed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cache: dict[tuple[str, str], tuple[float, int, dict[str, Any]]] = {}
        self._group_cache: tuple[int, dict[str, Any]] | None = None
        self.polls = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Monitor:
        """Start the background polling thread."""
        self._thread = threading.Thread(target=self._run, name="ems-dashboard-poll", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.refresh()
            except Exception:  # keep serving the last good state
                log.exception("dashboard refresh failed")
            self._stop.wait(max(0.05, self.poll_s - (time.monotonic() - t0)))

    # ------------------------------------------------------------------ polling
    def _metadata(self) -> None:
        """Pick up sites and meters registered since the last poll."""
        sites_fn = getattr(self.store, "sites", None)
        meters_fn = getattr(self.store, "meters", None)
        if callable(sites_fn) and callable(meters_fn):
            sites, meters = list(sites_fn()), list(meters_fn())
        else:  # any Store: an empty window still carries the metadata
            now = pd.Timestamp.now(tz="UTC")
            rs = self.store.read(start=now, end=now)
            sites, meters = rs.sites, rs.meters
        for s in sites:
            st = self.sites.get(s.site)
            if st is None:
                self.sites[s.site] = SiteState(info=s)
                self.version += 1
            elif st.info != s:
                st.info = s
                self.version += 1
        by_site: dict[str, list[MeterInfo]] = {}
        for m in meters:
            by_site.setdefault(m.site, []).append(m)
        for site, ms in by_site.items():
            st = self.sites.get(site)
            if st is not None and st.meters != ms:
                st.meters = ms

    def refresh(self) -> None:
        """Read new readings of every site and recompute what is due."""
        with self.lock:
            self._metadata()
            states = list(self.sites.values())
        for st in states:
            with self.lock:  # per site, so requests are served in between
                try:
                    self._poll_site(st)
                    self._kpis_site(st)
                    st.error = ""
                except EmsError as exc:
                    st.error = str(exc)
                    log.warning("site %s: %s", st.info.site, exc)
        self.polls += 1

    def _poll_site(self, st: SiteState) -> None:
        site = st.info.site
        start = None
        if st.last_ts is not None:
            start = (st.last_ts - pd.Timedelta(seconds=st.interval_s)).to_pydatetime()
        rs = self.store.read(sites=[site], start=start)
        r = rs.readings
        if r.empty:
            return
        t = pd.DatetimeIndex(r.index).as_unit("ns").asi8
        tmax = int(t.max())
        # the same window the next poll reads: unchanged data gives the same fingerprint
        fp = (tmax, int((t >= tmax - st.interval_s * 1_000_000_000).sum()))
        if fp == st.fingerprint:
            return
        st.fingerprint = fp
        fresh = pd.DataFrame(
            {
                "t": t,
                "meter": r["meter"].astype(str).to_numpy(),
                "quantity": r["quantity"].astype(str).to_numpy(),
                "value": r["value"].to_numpy(dtype="float64"),
            }
        )
        both = fresh if st.latest is None else pd.concat([st.latest, fresh], ignore_index=True)
        st.latest = (
            both.sort_values("t", kind="stable")
            .groupby(["meter", "quantity"], as_index=False)
            .last()
        )
        new_last = pd.Timestamp(int(t.max()), tz="UTC")
        if st.last_ts is not None and new_last > st.last_ts:
            # readings advanced while we watched (what was there at the first poll is history)
            st.last_new_wall = time.time()
        st.last_ts = new_last if st.last_ts is None else max(st.last_ts, new_last)
        tidy = pd.DataFrame(
            {
                "site": site,
                "meter": st.latest["meter"].to_numpy(),
                "quantity": st.latest["quantity"].to_numpy(),
                "value": st.latest["value"].to_numpy(),
            },
            index=pd.DatetimeIndex(pd.to_datetime(st.latest["t"].to_numpy(), utc=True), name="ts"),
        )
        st.flows = views.latest_flows(tidy, st.meters)
        st.dirty_today = st.dirty_year = True
        self.version += 1

    # ------------------------------------------------------------------ KPIs
    def _read(self, site: str, start: pd.Timestamp, end: pd.Timestamp | None) -> ReadingSet:
        return self.store.read(
            sites=[site],
            start=start.tz_convert("UTC").to_pydatetime(),
            end=None if end is None else end.tz_convert("UTC").to_pydatetime(),
        )

    @staticmethod
    def _daily(rs: ReadingSet) -> pd.DataFrame | None:
        from ems.accounting import kpis

        if rs.readings.empty:
            return None
        return kpis(rs, by="site", period="day").daily

    def _kpis_site(self, st: SiteState) -> None:
        if st.last_ts is None:
            return
        tz = st.info.tz
        now = time.monotonic()
        # the interval ending at local midnight belongs to the day before: use ts - 1 ns
        local_last = (st.last_ts - pd.Timedelta(1, "ns")).tz_convert(tz)
        today = local_last.normalize()
        year_start = today.replace(month=1, day=1)
        changed = False
        if st.today is None or today != st.today or st.year_daily_until is None:
            # a new day (or year, or the first poll): extend or recompute the finished days
            if (
                st.year_daily is not None
                and st.year_daily_until is not None
                and st.year_daily_until >= year_start
                and today - st.year_daily_until <= pd.Timedelta(days=2)
            ):
                rs = self._read(st.info.site, st.year_daily_until, today)
                add = self._daily(rs)
                if add is not None:
                    add = add[_date_between(add, st.year_daily_until, today)]
                    st.year_daily = pd.concat([st.year_daily, add], ignore_index=True)
            else:
                st.year_daily = self._full_year(st, year_start, today)
                st.year_computed_wall = now
            st.year_daily_until = today
            st.today = today
            st.dirty_today = True
            changed = True
        elif st.dirty_year and now - st.year_computed_wall >= self.year_every_s:
            st.year_daily = self._full_year(st, year_start, today)
            st.year_computed_wall = now
            st.dirty_year = False
            changed = True
        if st.dirty_today and (changed or now - st.today_computed_wall >= self.today_every_s):
            rs = self._read(st.info.site, today, None)
            d = self._daily(rs)
            st.today_daily = (
                None if d is None else d[_date_between(d, today, today + pd.Timedelta(days=1))]
            )
            st.today_computed_wall = now
            st.dirty_today = False
            changed = True
        if changed:
            self._summarise(st)
            self.version += 1

    def _full_year(
        self, st: SiteState, year_start: pd.Timestamp, today: pd.Timestamp
    ) -> pd.DataFrame | None:
        t0 = time.monotonic()
        rs = self._read(st.info.site, year_start, today)
        d = self._daily(rs)
        log.info(
            "site %s: year KPIs from %d readings in %.2f s",
            st.info.site,
            len(rs.readings),
            time.monotonic() - t0,
        )
        if d is None:
            return None
        out: pd.DataFrame = d[_date_between(d, year_start, today)]
        return out

    def _summarise(self, st: SiteState) -> None:
        from ems.accounting.kpis import rollup
        from ems.accounting.targets import progress

        parts = [d for d in (st.year_daily, st.today_daily) if d is not None and len(d)]
        st.kpi_today = (
            _pick(rollup(st.today_daily, by="site", period="day"))
            if (st.today_daily is not None and len(st.today_daily))
            else {}
        )
        if not parts:
            st.kpi_year = {}
            return
        daily = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        yearly = rollup(daily, by="site", period="year")
        st.kpi_year = _pick(yearly)
        try:
            prog = progress(yearly.tail(1), self._load_targets())
        except EmsError as exc:
            st.targets = []
            log.debug("targets: %s", exc)
            return
        st.targets = [
            views.jsonable(
                {
                    k: r[k]
                    for k in (
                        "target",
                        "metric",
                        "kind",
                        "target_year",
                        "target_value",
                        "value",
                        "change_vs_base",
                        "met",
                        "note",
                    )
                }
            )
            for r in prog.to_dict("records")
        ]
        for r in st.targets:
            if r["met"] is not None:
                r["met"] = bool(r["met"])

    def _load_targets(self) -> dict[str, Any]:
        if self._targets is None:
            from ems.accounting.targets import load_targets

            self._targets = load_targets()
        return self._targets

    # ------------------------------------------------------------------ views
    def status(self, st: SiteState, now: float | None = None) -> dict[str, Any]:
        """Online/offline from MQTT, else fresh/stale from the age of the newest reading."""
        now = time.time() if now is None else now
        mqtt = dict(self.status_fn()) if self.status_fn is not None else {}
        if st.info.site in mqtt:
            state = mqtt[st.info.site]
            return {"state": state, "source": "mqtt"}
        if st.last_ts is None:
            return {"state": "no data", "source": "store"}
        age = now - st.last_ts.timestamp()
        limit = 2 * st.interval_s + 60
        if age <= limit:
            return {"state": "fresh", "source": "store", "age_s": age}
        if now - st.last_new_wall <= max(10.0, 5 * self.poll_s):
            # a replay (readings stamped in the past, arriving now)
            return {"state": "fresh", "source": "store", "age_s": now - st.last_new_wall}
        return {"state": "stale", "source": "store", "age_s": age}

    def overview(self) -> dict[str, Any]:
        """The group overview: one tile per site and the group's sums."""
        with self.lock:
            tiles = []
            for site in sorted(self.sites):
                st = self.sites[site]
                tiles.append(
                    {
                        "site": site,
                        "name": st.info.name,
                        "group": st.info.group,
                        "company": st.info.company,
                        "park": st.info.park,
                        "tz": st.info.tz,
                        "interval_s": st.interval_s,
                        "status": self.status(st),
                        "flows": st.flows,
                        "today_date": None if st.today is None else st.today.strftime("%Y-%m-%d"),
                        "today": st.kpi_today,
                        "year": st.kpi_year,
                        "targets": st.targets,
                        "error": st.error,
                    }
                )
            out: dict[str, Any] = views.jsonable(
                {
                    "version": self.version,
                    "server_ms": int(time.time() * 1000),
                    "group": self._group(),
                    "sites": tiles,
                }
            )
            return out

    def _group(self) -> dict[str, Any]:
        if self._group_cache is not None and self._group_cache[0] == self.version:
            return self._group_cache[1]
        out = self._group_kpis()
        self._group_cache = (self.version, out)
        return out

    def _group_kpis(self) -> dict[str, Any]:
        from ems.accounting.kpis import rollup

        parts = []
        for st in self.sites.values():
            parts += [d for d in (st.year_daily, st.today_daily) if d is not None and len(d)]
        if not parts:
            return {}
        daily = pd.concat(parts, ignore_index=True)
        # sites may be in different years: take each site's latest year
        yearly = rollup(daily, by="group", period="year")
        yearly = yearly.sort_values("period").groupby("key", as_index=False).last()
        return {str(r["key"]): _pick(pd.DataFrame([r])) for r in yearly.to_dict("records")}

    def site_view(self, site: str, range_name: str = "day", points: int = 300) -> dict[str, Any]:
        """One site: series over a time range ending at its newest reading, flows, events.

        The series are cached per (site, range): reused while no new reading arrived,
        and otherwise for a time growing with the range (1 s for a day, 30 s for a
        year), so a year's view does not re-read a year at every poll of a live replay.
        """
        if range_name not in views.RANGES:
            raise EmsError(f"range: expected one of {list(views.RANGES)}; found {range_name!r}")
        with self.lock:
            st = self.sites.get(site)
            if st is None:
                raise ReadingError(f"unknown site {site!r}; known: {sorted(self.sites)}")
            fp = st.fingerprint[0]
            key = (site, range_name)
            ttl = {"day": 1.0, "week": 3.0, "month": 10.0, "year": 30.0}[range_name]
            hit = self._cache.get(key)
            if hit is not None and (hit[1] == fp or time.monotonic() - hit[0] < ttl):
                series = hit[2]
            else:
                end = (
                    st.last_ts if st.last_ts is not None else pd.Timestamp.now(tz="UTC").floor("s")
                )
                range_s = views.RANGES[range_name]
                bucket = views.bucket_seconds(range_s, st.interval_s, points)
                start = end - pd.Timedelta(seconds=range_s)
                # one interval more at the start: the baseline of the registers
                rs = self.store.read(
                    sites=[site],
                    start=(start - pd.Timedelta(seconds=st.interval_s)).to_pydatetime(),
                    end=end.to_pydatetime(),
                )
                meters = st.meters or [m for m in rs.meters if m.site == site]
                ev = rs.events
                if len(ev):
                    ev = ev[pd.DatetimeIndex(ev.index) > start]
                series = views.jsonable(
                    {
                        "range": range_name,
                        "bucket_s": bucket,
                        "start_ms": int(start.value // 1_000_000),
                        "end_ms": int(end.value // 1_000_000),
                        "meters": [m.to_dict() for m in meters],
                        "power": views.power_series(rs.readings, meters, start, end, bucket),
                        "energy": views.energy_series(rs.readings, meters, start, end, bucket),
                        "events": views.event_list(ev),
                    }
                )
                self._cache[key] = (time.monotonic(), fp, series)
            out: dict[str, Any] = views.jsonable(
                {
                    "site": st.info.to_dict(),
                    "status": self.status(st),
                    "flows": st.flows,
                    "today": st.kpi_today,
                    "year": st.kpi_year,
                    "targets": st.targets,
                }
            )
            out.update(series)
            return out


def _date_between(daily: pd.DataFrame, lo: pd.Timestamp, hi: pd.Timestamp) -> np.ndarray:
    """Mask of daily rows with ``lo <= date < hi`` (local midnights; ``date`` is naive)."""
    d = pd.DatetimeIndex(daily["date"])
    lo_n = np.datetime64(lo.tz_localize(None).to_datetime64(), "ns")
    hi_n = np.datetime64(hi.tz_localize(None).to_datetime64(), "ns")
    out: np.ndarray = (d.to_numpy() >= lo_n) & (d.to_numpy() < hi_n)
    return out


def _pick(kpi: pd.DataFrame) -> dict[str, Any]:
    """The shown KPI fields of the last row of a KPI frame (period label included)."""
    if kpi.empty:
        return {}
    row = kpi.iloc[-1]
    out: dict[str, Any] = {"period": str(row.get("period", ""))}
    for k in KPI_FIELDS:
        if k in row.index:
            v = row[k]
            out[k] = float(v) if v is not None and not pd.isna(v) else None
    return out


def utc(t: dt.datetime | pd.Timestamp) -> pd.Timestamp:
    """A tz-aware UTC Timestamp (naive input is refused)."""
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        raise EmsError(f"expected a tz-aware time; found naive {ts}")
    return ts.tz_convert("UTC")
