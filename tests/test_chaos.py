"""Chaos: seeded random schedules of faults and hostile messages through real mosquitto and ``ems ingest``.

The fast profile (here, in CI): a few schedules drawn by hypothesis with a fixed seed. The
long profile is ``bench/bench_chaos.py`` (more schedules; its counts go to
``docs/reliability.md``). See ``tests/chaos_kit.py`` for the faults and the checks.
"""

from __future__ import annotations

import os

import pytest
from chaos_kit import check, run_schedule, schedules
from hypothesis import HealthCheck, Phase, given, seed, settings
from reliability_kit import figures  # noqa: F401  (fixture)

pytestmark = pytest.mark.service

FAST = int(os.environ.get("EMS_CHAOS_SCHEDULES", "3"))


@seed(17)
@settings(max_examples=FAST, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(schedule=schedules(max_faults=4))
def test_chaos_schedules_keep_the_invariant(schedule, tmp_path_factory, figures):  # noqa: F811
    fig = run_schedule(schedule, tmp_path_factory.mktemp("chaos"))
    figures(fault=f"chaos schedule (seed {schedule.seed}): " + ", ".join(
        f"{f.kind}@{f.at:.1f}s/{f.duration:.1f}s" for f in schedule.faults), **fig)
    check(fig)
