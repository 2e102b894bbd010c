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

import pandas as pd
import pytest
from builders import plant
from click.testing import CliRunner

from ems.cli import cli
from ems.readings import ReadingSet, events_frame

ROOT = Path(__file__).resolve().parents[1]
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
    rs = plant(sites, n=3 * 96)
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


def _reference_folder(tmp: Path) -> Path:
    """Three days of the reference group (ten parks, provincial grid factors, gases, EUR in Velenje), plus
    certificates retired at Qingdao: one counted, one out of the RE100 vintage window, one retired twice."""
    import ems

    text = (ROOT / "scenarios" / "reference-2024.yaml").read_text()
    text = text.replace("../sites/", f"{ROOT / 'sites'}/").replace(
        "period: {year: 2024}", "period: {start: 2024-03-01, end: 2024-03-04}")
    (tmp / "ref.yaml").write_text(text)
    rs = ems.simulate(ems.load_scenario(str(tmp / "ref.yaml")))
    gec = {"id": "gec-test", "technology": "wind", "vintage": 2024, "market_boundary": "CN",
           "plant_commissioned": "2019-12-31",
           "serials": {"prefix": "GEC-2024-T", "first": 1, "last": 100}}
    extra = events_frame([
        {"ts": "2024-03-02T04:00Z", "site": "qingdao", "kind": "certificate", "subject": "GEC", "value": 100.0,
         "detail": gec},
        {"ts": "2024-03-02T05:00Z", "site": "qingdao", "kind": "certificate", "subject": "GEC", "value": 100.0,
         "detail": {**gec, "id": "gec-again"}},
        {"ts": "2024-03-02T06:00Z", "site": "qingdao", "kind": "certificate", "subject": "GEC", "value": 50.0,
         "detail": {"id": "gec-2020", "vintage": 2020}},
    ])
    rs.events = pd.concat([rs.events, extra]).sort_index(kind="stable")
    return rs.to_parquet(tmp / "reference")


def test_report_html_of_the_reference_group_shows_its_carbon_accounting_by_the_rule(tmp_path, page):
    """issue 11's sections (grid factor per site, Scope 1 by gas, instruments, exchange rates) by issue 15's rule."""
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["report", str(_reference_folder(tmp_path)), "--by", "site", "--period", "day",
                                   "--tce-method", "coal_equivalent", "--out", str(out), "--format", "csv,json,html"])
    assert res.exit_code == 0, res.output
    text, _ = _check_page(page, (out / "report.html").as_uri())
    for title in ("Grid factor per site", "Scope 1 by gas", "Certificates and contracts: counted or refused",
                  "Exchange rates used (to CNY)", "Progress against targets"):
        assert title in text, title
    assert "province" in text and "CN-SD" in text and "[kgCO2/kWh]" in text  # most local factor, per site
    assert "HCFC-141b" in text and "amount [kg]" in text and "CO2e [tCO2e]" in text  # a memo gas, in kg
    assert "EUR/CNY" in text and "7.8218" in text
    inst = page.locator("table", has=page.locator("th", has_text="counted [MWh]"))
    rows = inst.locator("tbody tr").all_inner_texts()
    assert any(r.startswith("GEC gec-test") and "counted" in r for r in rows)
    assert sum("refused" in r for r in rows) == 2  # out of the vintage window; retired twice
    assert "outside the RE100 window" in text and "double retirement" in text
    # costs of Velenje are in EUR: the cost column has no unit of its own, a currency column says it
    kpis = page.locator("table").first.locator("thead th").all_inner_texts()
    assert "energy cost" in kpis and "currency" in kpis
    # the chart names the chosen tce method (issue 11) and its axis has separators (issue 15)
    html = (out / "report.html").read_text()
    assert "GB/T 2589-2020, coal equivalent" in html
    for name in ("gases", "instruments", "fx_used", "targets", "factors_used"):
        csv = (out / f"{name}.csv").read_text()
        assert not re.search(r"(^|,)(nan|None|<NA>|NaN)(,|$)", csv, re.M), name
        assert "NaN" not in (out / f"{name}.json").read_text(), name
    assert "none" in (out / "gases.csv").read_text()  # a gas outside any basket: the word, not a null
