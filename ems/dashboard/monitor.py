"""The dashboard's model: poll a store, keep the latest values and each site's KPIs.

A :class:`Monitor` works with any :class:`~ems.store.base.Store`: a background thread reads
each site's new readings (from a cursor just before the newest reading seen) and keeps the
latest value of every meter. KPIs come from an incremental daily frame per site
(:class:`ems.accounting.incremental.DailyFrame`):

* at the first poll, the finished days come from the store's stage 1
  (:meth:`~ems.store.base.Store.stage1`, the register aggregates of an embedded store) and
  the open day (today: the local day of the site's newest reading; for a replayed scenario
  that is the scenario's day, not the wall clock's) from its readings;
* new readings update today's rows (at most every ``today_every_s``); a new day closes the
  finished one; every ``year_every_s`` with new data the year is computed again (late
  readings, certificates that span the year).

The year's and today's KPIs are :func:`ems.accounting.kpis.rollup` of those daily rows
(cheap: a few hundred rows). Hourly matching (:mod:`ems.accounting.hourly`) gives today's
hourly-matched green share (CFE) from the stage-1 hours of the open days, and the current
grid intensity (the factor of the newest hour); the year's CFE is computed again with the
year, from the store's hourly aggregates. Contracts and certificates settle after the fact,
so today's CFE counts on-site PV and storage; the year's counts every instrument settled.
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

from ems.accounting.incremental import DailyFrame
from ems.errors import EmsError, ReadingError
from ems.readings import MeterInfo, SiteInfo
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
    frame: DailyFrame | None = None  # the site's incremental daily frame
    fresh: list[pd.DataFrame] = field(default_factory=list)  # readings polled since the frame was updated
    year_computed_wall: float = 0.0
    today_computed_wall: float = 0.0
    dirty_today: bool = False
    dirty_year: bool = False
    stale_summary: bool = False  # KPIs below not yet computed from the frame
    kpi_today: dict[str, Any] = field(default_factory=dict)
    kpi_year: dict[str, Any] = field(default_factory=dict)
    closed_sums: tuple[int, float, float] | None = None  # (frame.closed_version, matched, use) of the year's closed days
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
        st.fresh.append(r)
        st.dirty_today = st.dirty_year = True
        self.version += 1

    # ------------------------------------------------------------------ KPIs
    def _start_frame(self, st: SiteState, today: pd.Timestamp) -> DailyFrame:
        """The site's daily frame: finished days from the store's stage 1, today from readings."""
        t0 = time.monotonic()
        site = st.info.site
        head = self.store.read(sites=[site], readings=False)
        frame = DailyFrame(st.info, st.meters or head.meters, head.events)
        closed = self.store.stage1(sites=[site])
        start = (today - pd.Timedelta(days=2)).tz_convert("UTC").to_pydatetime()
        open_from = int(today.tz_convert("UTC").value)
        frame.reset(closed.energy, open_from, self.store.read(sites=[site], start=start).readings,
                    _hours_between(closed.hourly, today.replace(month=1, day=1), open_from))
        st.fresh.clear()
        log.info("site %s: daily frame of %d days in %.2f s", site, len(frame.daily), time.monotonic() - t0)
        return frame

    def _kpis_site(self, st: SiteState) -> None:
        if st.last_ts is None:
            return
        now = time.monotonic()
        # the interval ending at local midnight belongs to the day before: use ts - 1 ns
        today = (st.last_ts - pd.Timedelta(1, "ns")).tz_convert(st.info.tz).normalize()
        year_due = st.dirty_year and now - st.year_computed_wall >= self.year_every_s
        if st.frame is None or year_due or (st.today is not None and today.year != st.today.year):
            st.frame = self._start_frame(st, today)
            st.year_computed_wall = now
            st.dirty_year = False
        elif st.fresh and (st.dirty_today and now - st.today_computed_wall >= self.today_every_s):
            fresh = pd.concat(st.fresh) if len(st.fresh) > 1 else st.fresh[0]
            st.fresh.clear()
            st.frame.add(fresh)
        else:
            return
        st.today = today
        st.today_computed_wall = now
        st.dirty_today = False
        st.stale_summary = True  # stage 2 and the rollups: when a view asks (see _summaries)
        self.version += 1

    def _summaries(self) -> None:
        """Compute the KPIs of the sites whose daily frame changed (hold the lock)."""
        for st in self.sites.values():
            if st.stale_summary:
                st.stale_summary = False
                try:
                    self._summarise(st)
                except EmsError as exc:
                    st.error = str(exc)
                    log.warning("site %s: %s", st.info.site, exc)

    def _summarise(self, st: SiteState) -> None:
        from ems.accounting.kpis import rollup
        from ems.accounting.targets import progress

        assert st.frame is not None and st.today is not None
        today = st.frame.today
        today = today[_date_between(today, st.today, st.today + pd.Timedelta(days=1))] if len(today) else today
        st.kpi_today = _pick(rollup(today, by="site", period="day")) if len(today) else {}
        hourly_today, open_year = _hourly(st, st.frame.today_hourly, st.today)
        st.kpi_today.update(hourly_today)
        if st.closed_sums is None or st.closed_sums[0] != st.frame.closed_version:
            st.closed_sums = (st.frame.closed_version, *_hourly(st, st.frame.closed_hourly, st.today)[1])
        matched, use = st.closed_sums[1] + open_year[0], st.closed_sums[2] + open_year[1]
        daily = st.frame.daily
        if len(daily):
            daily = daily[_date_between(daily, st.today.replace(month=1, day=1), st.today + pd.Timedelta(days=1))]
        if not len(daily):
            st.kpi_year = {}
            return
        yearly = rollup(daily, by="site", period="year")
        st.kpi_year = {**_pick(yearly), "cfe": matched / use if use > 0 else None}
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
            self._summaries()
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
            if st.frame is not None and st.today is not None and len(st.frame.daily):
                d = st.frame.daily
                parts.append(d[_date_between(d, st.today.replace(month=1, day=1), st.today + pd.Timedelta(days=1))])
        parts = [p for p in parts if len(p)]
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
            self._summaries()
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
                series = self._series(st, range_name, points)
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


    def _series(self, st: SiteState, range_name: str, points: int) -> dict[str, Any]:
        """Power and energy series and events of a site over a range ending at its newest reading."""
        site = st.info.site
        end = st.last_ts if st.last_ts is not None else pd.Timestamp.now(tz="UTC").floor("s")
        range_s = views.RANGES[range_name]
        bucket = views.bucket_seconds(range_s, st.interval_s, points)
        start = end - pd.Timedelta(seconds=range_s)
        # one interval more at the start: the baseline of the registers
        rs = self.store.read(sites=[site], start=(start - pd.Timedelta(seconds=st.interval_s)).to_pydatetime(),
                             end=end.to_pydatetime())
        meters = st.meters or [m for m in rs.meters if m.site == site]
        ev = rs.events
        if len(ev):
            ev = ev[pd.DatetimeIndex(ev.index) > start]
        out: dict[str, Any] = views.jsonable({
            "range": range_name,
            "bucket_s": bucket,
            "start_ms": int(start.value // 1_000_000),
            "end_ms": int(end.value // 1_000_000),
            "meters": [m.to_dict() for m in meters],
            "power": views.power_series(rs.readings, meters, start, end, bucket),
            "energy": views.energy_series(rs.readings, meters, start, end, bucket),
            "events": views.event_list(ev),
        })
        return out


def _hours_between(hourly: pd.DataFrame, first: pd.Timestamp, open_from: int | None) -> pd.DataFrame:
    """Stage-1 hours from local midnight ``first`` to ``open_from`` [ns] (read now: the store's
    aggregate files may be merged by later writes)."""
    if not len(hourly) or open_from is None:
        return pd.DataFrame()
    t = pd.DatetimeIndex(hourly["hour"]).as_unit("ns").asi8
    return hourly[(t >= first.tz_convert("UTC").value) & (t < open_from)].reset_index(drop=True)


def _hourly(st: SiteState, hours: pd.DataFrame, today: pd.Timestamp) -> tuple[dict[str, Any], tuple[float, float]]:
    """Hourly matching of some of a site's hours: today's ``cfe`` and the grid intensity of the
    newest hour (``grid_intensity_kg_per_kwh``, ``grid_intensity_method``), and the matched and
    used kWh of this year's hours among them (the year's CFE adds them up over closed and open days)."""
    from ems.accounting.hourly import annual_factors, hourly_kpis

    if not len(hours) or st.frame is None:
        return {}, (0.0, 0.0)
    try:
        res = hourly_kpis(hours, st.meters, [st.info], annual_factors(st.frame.factor_sets))
    except EmsError as exc:
        log.debug("site %s: no hourly matching: %s", st.info.site, exc)
        return {}, (0.0, 0.0)
    days = res.rollup("site", "day").set_index("period")
    day = today.strftime("%Y-%m-%d")
    year = days[days.index.str.startswith(today.strftime("%Y"))]
    out: dict[str, Any] = {"cfe": float(days.at[day, "cfe"]) if day in days.index and pd.notna(days.at[day, "cfe"]) else None}
    h = res.hours.get(st.info.site)
    if h is not None and len(h):
        out["grid_intensity_kg_per_kwh"] = float(h["average_kg_per_kwh"].iloc[-1])
        out["grid_intensity_method"] = str(res.intensity["method"].iloc[0])
    return out, (float(year["matched_kwh"].sum()), float(year["use_kwh"].sum()))


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
