"""The dashboard in a real headless browser (Debian Chromium driven by Playwright).

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the ``playwright``
package (``ems[browser]``); Playwright's own browser download is not used.
The screenshots in ``docs/`` come from ``tests/dashboard_screenshots.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from builders import HOSTILE, plant, plant_readings, write

from ems.dashboard.monitor import Monitor
from ems.dashboard.server import make_server
from ems.store import open_store

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install ems[browser]")
pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Chromium not installed (apt-get install chromium)"
    ),
]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def live_site(tmp_path):
    """A store with three sites (one with a hostile name) and a running dashboard."""
    store = open_store(tmp_path / "store")
    rs = plant({"alpha": "Alpha works", "beta": HOSTILE, "gamma": "Gamma park"}, n=2 * 96)
    write(store, rs)
    mon = Monitor(store, poll_s=0.2, today_every_s=0.2).start()
    srv = make_server(mon, port=0).start()
    yield srv, store
    srv.stop()
    mon.stop()
    with mon.lock:
        store.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    errors: list[str] = []
    dialogs: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.errors, pg.dialogs = errors, dialogs
    yield pg
    ctx.close()


def test_overview_updates_without_reload(live_site, page):
    srv, store = live_site
    page.goto(srv.url + "/")
    tile = page.locator('.tile[data-site="alpha"]')
    sync_api.expect(tile.locator(".v-load")).to_have_text("1,000", timeout=10_000)
    sync_api.expect(page.locator(".tile")).to_have_count(3)
    sync_api.expect(tile.locator(".pill")).to_have_text(re.compile("^(fresh|stale)$"))
    # the grid's intensity now and today's hourly-matched green share
    sync_api.expect(tile.locator(".v-intensity")).to_have_text(re.compile(r"^0\.\d{3}$"))
    sync_api.expect(tile.locator("tr.k-cfe td.today")).to_have_text(re.compile(r"^\d+\.\d %$"))
    before_today = tile.locator("tr.k-total_tce td.today").inner_text()
    page.evaluate("window.__marker = 'same page'")
    # new readings arrive: a new day with a higher load
    _, reg = plant_readings("alpha", "2024-07-01", 2 * 96)
    more, _ = plant_readings("alpha", "2024-07-01", 12, offset=2 * 96, base=reg, load_kw=7777.0)
    store.write_readings(more)
    sync_api.expect(tile.locator(".v-load")).to_have_text("7,777", timeout=10_000)
    sync_api.expect(tile.locator("tr.k-total_tce td.today")).not_to_have_text(
        before_today, timeout=10_000
    )
    assert page.evaluate("window.__marker") == "same page", "the page was reloaded"
    assert not page.errors
    assert not page.dialogs


def test_hostile_site_name_is_text(live_site, page):
    srv, _ = live_site
    page.goto(srv.url + "/")
    tile = page.locator('.tile[data-site="beta"]')
    sync_api.expect(tile.locator(".tile-name")).to_have_text(HOSTILE, timeout=10_000)
    assert page.locator("img").count() == 0
    page.goto(srv.url + "/#/site/beta")
    sync_api.expect(page.locator("#site-name")).to_have_text(HOSTILE, timeout=10_000)
    sync_api.expect(page.locator("#crumbs")).to_contain_text(HOSTILE)
    assert page.locator("img").count() == 0
    assert not page.dialogs
    assert not page.errors


def test_site_view_renders_chart_flows_and_events(live_site, page):
    srv, _ = live_site
    page.goto(srv.url + "/")
    page.locator('.tile[data-site="alpha"]').click()
    page.wait_for_url(re.compile(r".*#/site/alpha$"))
    sync_api.expect(page.locator("#site-name")).to_have_text("Alpha works", timeout=10_000)
    sync_api.expect(page.locator("#power-chart path.s-load")).to_have_count(1)
    sync_api.expect(page.locator("#energy-chart g.s-grid_import rect").first).to_be_visible()
    sync_api.expect(page.locator("#flow .n-pv")).to_have_count(1)
    sync_api.expect(page.locator("#flow line.e-load")).to_have_count(1)
    sync_api.expect(page.locator("#flow .n-battery .node-sub")).to_contain_text("% SOC")
    sync_api.expect(page.locator("#power-chart .event")).to_have_count(2)
    sync_api.expect(page.locator("#events tr.ev")).to_have_count(2)
    # times in the site's zone: the last reading 2024-07-03 00:00 UTC is 08:00 in Asia/Shanghai
    sync_api.expect(page.locator("#site-last")).to_contain_text("08:00")
    page.locator('#ranges button[data-range="week"]').click()
    sync_api.expect(page.locator('#ranges button[data-range="week"]')).to_have_class(
        re.compile("on")
    )
    sync_api.expect(page.locator("body")).to_have_attribute(
        "data-site-rendered", re.compile(":week:")
    )
    page.locator('#carriers button[data-carrier="heat"]').click()
    sync_api.expect(page.locator("#energy-chart g.s-steam rect").first).to_be_visible()
    assert not page.errors


def test_unknown_site_shows_an_error(live_site, page):
    srv, _ = live_site
    page.goto(srv.url + "/#/site/nope")
    sync_api.expect(page.locator("#conn")).to_contain_text("unknown site", timeout=10_000)
