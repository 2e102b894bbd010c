"""Stage 1 of the rollup: register readings to energy per hour, local day and tariff period.

Definition (the one contract the in-memory path and every store push-down follow)
----------------------------------------------------------------------------------
Input: the tidy readings frame; only *register* quantities
(``QUANTITIES[q].kind == "register"``) take part. For every series
(site, meter, quantity), ordered by ``ts``:

1. ``delta_i = value_i - value_{i-1}``; the first reading of a series is its
   baseline (the interval ending at it is not counted).
2. **Reset / rollover**: if ``delta_i < 0`` the register went down. If the meter's
   ``attrs["rollover_at"]`` [register unit] is set, ``delta_i += rollover_at``
   (rollover); otherwise the post-reset value is energy since the reset
   (``delta_i = value_i``). Either way the event is listed in the anomalies table,
   never turned into negative energy.
3. **Gaps**: ``n_i = max(1, round((ts_i - ts_{i-1}) / interval_s))``. A delta
   spanning ``n_i`` intervals (lost messages) is split pro rata in time into
   ``n_i`` equal *parts* whose intervals start at ``ts_i - (n_i - k) * interval_s``,
   ``k = 0 .. n_i - 1``, so energy crossing a day or tariff-period boundary is
   shared by time. A lost message therefore loses no energy.
4. **Attribution**: each part belongs to the local clock hour, local calendar day
   (site ``tz``) and tariff period containing its *start*. Tariff periods
   (:func:`ems.readings.tou_periods` on ``SiteInfo.attrs["tariff"]``) are resolved
   for the grid meter's ``import_kwh``/``export_kwh`` only (other rows have
   ``period == ""``), at the start of the part's interval on the epoch-aligned grid
   of the grid meters' interval (exact for interval-aligned readings).
5. **Derived series** ``meter == "_site"``, ``quantity == "pv_exported_kwh"``: per
   interval start (epoch-aligned grid of the export and PV meters' interval),
   ``min(sum of grid export parts, sum of PV energy parts)`` of the site (the PV
   share of the export: PV is taken as exported first), attributed like a part.
6. **Hourly rows** per (site, meter, quantity, hour, period): ``value`` = sum of the
   parts in time order [register unit], ``n`` = number of parts, ``max_rate`` = max of
   ``part * 3600 / interval_s`` [kW] for ``import_kwh``/``export_kwh`` (NaN otherwise).
   ``hour`` is the UTC start of the local clock hour.
7. **Daily rows** per (site, meter, quantity, date, period): sums of the hourly rows
   in hour order (``n`` summed, ``max_rate`` the maximum).

Because every sum is taken over the parts of one hour in time order, and every daily
sum over the hours of one day in hour order, stage 1 of any set of whole local days
gives the same numbers, bit for bit, whatever the row order of the readings and
whatever else is computed beside them. This is what lets a store keep the rows of
finished days (:mod:`ems.store.rollups`) and compute only the rest from raw readings:
the result equals :func:`stage1` of everything.

In SQL terms, steps 1-3 are ``LAG(value) OVER (PARTITION BY site, meter, quantity
ORDER BY ts)`` with ``generate_series`` for gaps, step 4 a ``date_trunc`` of ``ts -
interval`` in the site's zone and a tariff join, steps 6-7 two ``GROUP BY``.

Modules: :mod:`~ems.accounting.energy.layout` (where each series is in the rows),
:mod:`~ems.accounting.energy.series` (steps 1-3 and the anomalies),
:mod:`~ems.accounting.energy.attribution` (steps 4-6), :mod:`~ems.accounting.energy.frames`
(step 7 and the output frames), :mod:`~ems.accounting.energy.stage1` (the entry points);
this package exports their public names.
"""

from __future__ import annotations

from ems.accounting.energy.frames import HOURLY_COLUMNS, STAGE1_COLUMNS, daily_from_hourly
from ems.accounting.energy.layout import SeriesKey, View, register_series
from ems.accounting.energy.series import ANOMALY_COLUMNS, empty_anomalies
from ems.accounting.energy.stage1 import Stage1, Stage1Source, stage1, stage1_series

__all__ = [
    "ANOMALY_COLUMNS",
    "HOURLY_COLUMNS",
    "STAGE1_COLUMNS",
    "SeriesKey",
    "Stage1",
    "Stage1Source",
    "View",
    "daily_from_hourly",
    "empty_anomalies",
    "register_series",
    "stage1",
    "stage1_series",
]
