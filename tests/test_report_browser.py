"""The HTML report and the compare report in a real headless browser (Debian Chromium, Playwright).

What a person reads must follow the one formatting rule (``ems/formatting.py``): no
``nan``, ``None``, ``<NA>``, no scientific notation, no ``-0.0``, numbers with
separators and fixed decimals, units in the headers, one stylesheet for both pages.
Needs ``/usr/bin/chromium`` and the ``playwright`` package (``ems[browser]``); no
browser is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from dashboard_fixtures import readingset

from ems.cli import cli
from ems.readings import ReadingSet

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install ems[browser]")
pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium not installed (apt-get install chromium)"),
]

FORBIDDEN = re.compile(r"\bnan\b|\bNaN\b|\bNone\b|<NA>|\bNaT\b|\de[+-]\d|-0\.0+\b(?!\d)|\binf\b")
"""What must never show: missing values as Python prints them, exponents, negative zero."""
NUMBER = re.compile(r"^(–|peak|(19|20)\d\d|[+-]?∞|[+-]?\d{1,3}(,\d{3})*(\.\d+)?( [%a-zA-Z][\w/ .]*)?)$")
"""A number cell: '–', a year, or digits with thousands separators; a unit only where rows differ (targets)."""


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=False)
    pg = ctx.new_page()
    yield pg
    ctx.close()


def _folder(tmp: Path, name: str, sites: dict[str, str], *, output: bool = True) -> Path:
    """A readings folder; without ``output`` no production meter (intensities are missing)."""
    rs = readingset(sites, n=3 * 96)
    if not output:
        keep = rs.readings["meter"] != "production"
        rs = ReadingSet(readings=rs.readings[keep], events=rs.events,
                        meters=[m for m in rs.meters if m.meter != "production"], sites=rs.sites)
    return rs.to_parquet(tmp / name)


def _check_page(page, url: str) -> tuple[str, str]:
    page.goto(url)
    text = page.inner_text("body")
    bad = sorted({m.group(0) for m in FORBIDDEN.finditer(text)})
    assert not bad, f"{url}: shows {bad}"
    cells = page.eval_on_selector_all("td.num", "els => els.map(e => e.textContent)")
    assert cells, "no number cells"
    odd = [c for c in cells if not NUMBER.match(c)]
    assert not odd, f"number cells not by the rule: {odd[:10]}"
    align = page.eval_on_selector("td.num", "e => getComputedStyle(e).textAlign")
    assert align == "right"
    # the page does not scroll sideways at 1280 px: wide tables scroll in their own box
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    style = page.eval_on_selector("style", "e => e.textContent")
    return text, style


def test_report_html_reads_as_numbers_for_people(tmp_path, page):
    src = _folder(tmp_path, "readings", {"alpha": "Alpha works", "beta": "Beta park"})
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["report", str(src), "--by", "site", "--period", "day", "--out", str(out),
                                   "--format", "csv,json,html"])
    assert res.exit_code == 0, res.output
    text, _ = _check_page(page, (out / "report.html").as_uri())
    assert "energy [tce]" in text and "green-power share [%]" in text and "[kgce/RMB 10k]" in text
    # machine files: full precision, real nulls, never the strings nan/None
    csv = (out / "kpis.csv").read_text()
    assert not re.search(r",(nan|None|<NA>)(,|$)", csv, re.M)
    assert "NaN" not in (out / "kpis.json").read_text()


def test_report_html_with_missing_values_shows_dashes(tmp_path, page):
    src = _folder(tmp_path, "readings", {"alpha": "Alpha"}, output=False)  # no output value: no intensity
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["report", str(src), "--out", str(out), "--format", "html"])
    assert res.exit_code == 0, res.output
    _check_page(page, (out / "report.html").as_uri())
    kpis = page.locator("table").first
    head = kpis.locator("thead th").all_inner_texts()
    col = next(i for i, h in enumerate(head) if "intensity" in h)
    intensity = kpis.locator("tbody tr").evaluate_all(f"rows => rows.map(r => r.children[{col}].textContent)")
    assert intensity and set(intensity) == {"–"}


def test_compare_html_uses_the_same_rule_and_stylesheet(tmp_path, page):
    a = _folder(tmp_path, "base", {"alpha": "Alpha"})
    b = _folder(tmp_path, "variant", {"alpha": "Alpha", "beta": "Beta"})
    out = tmp_path / "report"
    CliRunner().invoke(cli, ["report", str(a), "--out", str(out), "--format", "html"])
    _, report_style = _check_page(page, (out / "report.html").as_uri())
    res = CliRunner().invoke(cli, ["compare", str(a), str(b), "--html", str(tmp_path / "compare.html")])
    assert res.exit_code == 0, res.output
    text, compare_style = _check_page(page, (tmp_path / "compare.html").as_uri())
    assert compare_style == report_style  # one stylesheet
    assert "Scope 1+2 intensity [kgCO2e/RMB 10k]" in text
    deltas = page.eval_on_selector_all("tbody tr td:last-child", "els => els.map(e => e.textContent)")
    assert any(d.startswith("+") for d in deltas)  # deltas are signed
