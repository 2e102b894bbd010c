"""Refresh docs/dashboard.png and docs/dashboard-site.png from a running dashboard.

    ems live scenarios/demo.yaml --speed 10000 --port 8050 &
    sleep 25 && python tests/dashboard_screenshots.py http://127.0.0.1:8050

Uses Debian's Chromium (/usr/bin/chromium) through Playwright, as the browser tests do.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

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
DOCS = Path(__file__).resolve().parent.parent / "docs"


def main(url: str, site: str = "shunde-sheet-metal") -> None:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        pg = b.new_page(viewport={"width": 1280, "height": 820})
        pg.goto(url + "/")
        pg.wait_for_selector(".tile .v-load")
        pg.wait_for_timeout(1500)
        pg.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
        pg.goto(f"{url}/#/site/{site}")
        pg.wait_for_selector("#power-chart path.series")
        pg.click("button[data-range=week]")
        pg.wait_for_timeout(2500)
        pg.screenshot(path=str(DOCS / "dashboard-site.png"), full_page=True)
        b.close()


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"), *sys.argv[2:])
