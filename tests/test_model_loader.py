"""Site and scenario loading: located errors, overrides, the reference files."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

import ems
from ems.errors import ConfigError, EmsError, LocatedError
from ems.model.loader import load_scenario, load_scenario_data, load_site, load_site_data
from ems.model.overrides import apply_override
from ems.model.scenario import ResolvedScenario
from ems.model.site import Site
from ems.yamldoc import parse

DATA = Path(__file__).parent / "data" / "model"
ROOT = Path(__file__).parent.parent
MINI = DATA / "site-minimal.yaml"
SITE_FILES = sorted((ROOT / "sites").glob("*.yaml"))
SCENARIO_FILES = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.fixture
def mini_text() -> str:
    return MINI.read_text()


def _sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# ----------------------------------------------------------------- good files


def test_load_minimal_site() -> None:
    site = load_site(MINI)
    assert isinstance(site, Site)
    assert site.id == "mini"
    assert [p.kwp for p in site.pv] == [500, 300]
    assert site.location.tz == "Asia/Shanghai"


def test_load_site_accepts_str_path() -> None:
    assert load_site(str(MINI)).id == "mini"


def test_load_scenario_resolves_sites_relative_to_file() -> None:
    sc = load_scenario(DATA / "scenario-minimal.yaml")
    assert isinstance(sc, ResolvedScenario)
    assert sc.name == "mini-week"
    assert (sc.start, sc.end) == (dt.date(2024, 7, 1), dt.date(2024, 7, 8))
    assert sc.resolution_s == 900
    assert sc.seed == 7
    assert sc.source == str(DATA / "scenario-minimal.yaml")
    (site,) = sc.sites
    assert site.pv[0].kwp == 800  # overridden
    assert site.pv[1].kwp == 300  # untouched
    assert site.grid.contract_kw == 1500


def test_ems_load_scenario_entry_point() -> None:
    sc = ems.load_scenario(str(DATA / "scenario-minimal.yaml"))
    assert sc.sites[0].id == "mini"


@pytest.mark.parametrize(
    ("resolution", "seconds"),
    [("1min", 60), ("5min", 300), ("15min", 900), ("30min", 1800), ("1h", 3600), ("60min", 3600)],
)
def test_resolution_seconds(resolution: str, seconds: int) -> None:
    text = f"name: r\nsites: [site-minimal.yaml]\nperiod: {{year: 2024}}\nresolution: {resolution}\n"
    assert load_scenario_data(text, "r.yaml", base_dir=DATA).resolution_s == seconds


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("{year: 2024}", dt.date(2024, 1, 1), dt.date(2025, 1, 1)),
        ("{start: 2024-03-01, end: 2024-03-02}", dt.date(2024, 3, 1), dt.date(2024, 3, 2)),
        ("\n  start: 2023-12-31\n  end: 2024-01-07", dt.date(2023, 12, 31), dt.date(2024, 1, 7)),
    ],
)
def test_period_forms(period: str, start: dt.date, end: dt.date) -> None:
    text = f"name: p\nsites: [site-minimal.yaml]\nperiod: {period}\n"
    sc = load_scenario_data(text, "p.yaml", base_dir=DATA)
    assert (sc.start, sc.end) == (start, end)


def test_scenario_factor_set_overrides_sites() -> None:
    text = "name: f\nsites: [site-minimal.yaml]\nperiod: {year: 2024}\nfactor_set: cn-2022\n"
    sc = load_scenario_data(text, "f.yaml", base_dir=DATA)
    assert sc.sites[0].factor_set == "cn-2022"
    assert sc.extra["factor_set"] == "cn-2022"


def test_programmatic_overrides_apply_after_file_overrides() -> None:
    sc = load_scenario(DATA / "scenario-minimal.yaml", overrides={"mini": {"pv.0.kwp": 900}})
    assert sc.sites[0].pv[0].kwp == 900


def test_override_replaces_subtree_and_appends() -> None:
    sc = load_scenario(
        DATA / "scenario-minimal.yaml",
        overrides={
            "mini": {
                "batteries": [{"id": "bess", "energy_kwh": 1000, "power_kw": 500}],
                "pv.2": {"id": "pv-c", "kwp": 100},
                "steam.annual_gj": 5000,  # creates 'steam'
                "loads.calendar.holidays": ["2024-07-03"],
            }
        },
    )
    site = sc.sites[0]
    assert [b.id for b in site.batteries] == ["bess"]
    assert [p.id for p in site.pv] == ["pv-a", "pv-b", "pv-c"]
    assert site.steam is not None and site.steam.annual_gj == 5000
    assert site.loads.calendar.holidays == [dt.date(2024, 7, 3)]


def test_apply_override_direct() -> None:
    data = parse(MINI.read_text(), "m.yaml").data
    assert apply_override(data, "pv.1.tilt_deg", 30) == ("pv", 1, "tilt_deg")
    assert data["pv"][1]["tilt_deg"] == 30
    apply_override(data, "grid.tariff.prices.peak", 1.0)
    assert data["grid"]["tariff"] == {"prices": {"peak": 1.0}}


def test_parse_keeps_lines(mini_text: str) -> None:
    doc = parse(mini_text, "m.yaml")
    assert doc.locations[("pv", 1, "kwp")] == ("m.yaml", 20)
    assert doc.locations[("pv", 1)] == ("m.yaml", 19)
    assert doc.locate(("loads", "production", "idle_fraction")) == ("m.yaml", 22)
    assert doc.locate(("nowhere",)) == ("m.yaml", None)


def test_yaml_merge_keys_work() -> None:
    text = "x_anchor: &a {kwp: 1}\n" + MINI.read_text()
    doc = parse(text.replace("  - id: pv-b\n    kwp: 300", "  - <<: *a\n    id: pv-b"), "m.yaml")
    assert doc.data["pv"][1] == {"kwp": 1, "id": "pv-b"}


# ----------------------------------------------------------------- error paths


def test_bad_type_names_line_and_field(mini_text: str) -> None:
    text = _sub(mini_text, "kwp: 300", "kwp: plenty")
    with pytest.raises(LocatedError, match=r"^m\.yaml:20: pv\.1\.kwp: expected a valid number.*found 'plenty'") as ei:
        load_site_data(text, "m.yaml")
    assert (ei.value.file, ei.value.line, ei.value.field) == ("m.yaml", 20, "pv.1.kwp")


def test_negative_value(mini_text: str) -> None:
    with pytest.raises(LocatedError, match=r"m\.yaml:14: grid\.contract_kw: expected greater than 0, found -5"):
        load_site_data(_sub(mini_text, "contract_kw: 1000", "contract_kw: -5"), "m.yaml")


def test_unknown_field_suggests(mini_text: str) -> None:
    text = _sub(mini_text, "    kwp: 300", "    kwp: 300\n    tilt: 20")
    with pytest.raises(LocatedError, match=r"m\.yaml:21: pv\.1\.tilt: .*unknown field 'tilt' \(did you mean 'tilt_deg'\?\)"):
        load_site_data(text, "m.yaml")


def test_unknown_top_level_field(mini_text: str) -> None:
    with pytest.raises(LocatedError, match=r"m\.yaml:25: colour: expected a known field.*allowed fields: id, name"):
        load_site_data(mini_text + "colour: blue\n", "m.yaml")


def test_missing_field_points_at_parent(mini_text: str) -> None:
    text = _sub(mini_text, "  contract_kw: 1000\n", "")
    with pytest.raises(LocatedError, match=r"m\.yaml:13: grid\.contract_kw: expected this required field, found it missing"):
        load_site_data(text, "m.yaml")


def test_missing_top_level_field(mini_text: str) -> None:
    text = _sub(mini_text, "output:\n  annual_rmb: 100000000\n", "")
    with pytest.raises(LocatedError, match=r"m\.yaml: output: expected this required field"):
        load_site_data(text, "m.yaml")


def test_bad_time_zone(mini_text: str) -> None:
    with pytest.raises(LocatedError, match=r"m\.yaml:8: location\.tz: expected an IANA time zone .*found 'Asia/Qingdao'"):
        load_site_data(_sub(mini_text, "Asia/Shanghai", "Asia/Qingdao"), "m.yaml")
    with pytest.raises(LocatedError, match=r"m\.yaml:8: location\.tz: expected an IANA time zone"):
        load_site_data(_sub(mini_text, "Asia/Shanghai", "x" * 300), "m.yaml")  # longer than a file name may be


def test_bad_date(mini_text: str) -> None:
    text = mini_text + "loads2: 1\n"
    text = _sub(text, "  production: {peak_kw: 600}", "  production: {peak_kw: 600}\n  calendar: {holidays: [2024-02-30]}")
    with pytest.raises(LocatedError, match=r"m\.yaml:23: loads\.calendar\.holidays\.0: expected a valid YAML value, found '2024-02-30'"):
        load_site_data(text, "m.yaml")


def test_model_rule_violation(mini_text: str) -> None:
    text = mini_text + "batteries:\n  - {id: b, energy_kwh: 10, power_kw: 5, soc_min: 0.9, soc_max: 0.5}\n"
    with pytest.raises(LocatedError, match=r"m\.yaml:26: batteries\.0: soc_min must be below soc_max"):
        load_site_data(text, "m.yaml")


def test_all_errors_in_one_exception() -> None:
    with pytest.raises(LocatedError) as ei:
        load_site(DATA / "site-bad-values.yaml")
    err = ei.value
    lines = str(err).splitlines()
    name = str(DATA / "site-bad-values.yaml")
    assert lines == [
        f"{name}:7: location.tz: expected an IANA time zone such as 'Asia/Shanghai', found 'Asia/Qingdao'",
        f"{name}:13: grid.contract_kw: expected a valid number, unable to parse string as a number, found 'lots'",
        f"{name}:18: pv.0.tilt: expected a known field, found unknown field 'tilt' (did you mean 'tilt_deg'?); "
        "allowed fields: " + ", ".join(Site.model_fields["pv"].annotation.__args__[0].model_fields),  # type: ignore[union-attr]
    ]
    assert (err.file, err.line, err.field) == (name, 7, "location.tz")


def test_duplicate_key_names_both_lines() -> None:
    with pytest.raises(LocatedError, match=r"site-duplicate-key\.yaml:3: id: duplicate key 'id': first at line 1, again at line 3"):
        load_site(DATA / "site-duplicate-key.yaml")


def test_duplicate_key_nested(mini_text: str) -> None:
    text = _sub(mini_text, "  lon: 120.4\n", "  lon: 120.4\n  lat: 30\n")
    with pytest.raises(LocatedError, match=r"m\.yaml:8: location\.lat: duplicate key 'lat': first at line 6"):
        load_site_data(text, "m.yaml")


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(LocatedError, match=r"site-syntax-error\.yaml:\d+: YAML syntax error") as ei:
        load_site(DATA / "site-syntax-error.yaml")
    assert ei.value.line is not None


def test_tab_indentation_is_a_syntax_error(mini_text: str) -> None:
    with pytest.raises(LocatedError, match=r"m\.yaml:8: YAML syntax error"):
        load_site_data(_sub(mini_text, "  tz: Asia", "\ttz: Asia"), "m.yaml")


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"file not found: expected a YAML file at '.*nope\.yaml'"):
        load_site(missing)
    with pytest.raises(ConfigError, match="file not found"):
        load_scenario(missing)


def test_directory_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="found a directory"):
        load_site(tmp_path)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_empty_file(text: str) -> None:
    with pytest.raises(LocatedError, match=r"e\.yaml:1: expected a mapping of fields, found an empty file"):
        load_site_data(text, "e.yaml")


@pytest.mark.parametrize(
    ("text", "found"), [("- a\n- b\n", "a list"), ("just text\n", "a single value 'just text'")]
)
def test_not_a_mapping(text: str, found: str) -> None:
    with pytest.raises(LocatedError, match=f"expected a mapping of fields .*found {found}"):
        load_site_data(text, "l.yaml")


def test_no_code_execution() -> None:
    with pytest.raises(LocatedError, match=r"x\.yaml:1: id: expected a valid YAML value, found 'x'"):
        load_site_data("id: !!python/name:os.system x\n", "x.yaml")
    text = "id: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(LocatedError, match=r"x\.yaml:1: id: expected plain YAML .*found the tag 'tag:yaml\.org,2002:python/object/apply:os\.system'"):
        load_site_data(text, "x.yaml")


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    with pytest.raises(LocatedError, match=r"at most .* values"):
        parse("\n".join(lines) + "\n", "bomb.yaml")


def test_site_loader_refuses_scenario() -> None:
    with pytest.raises(LocatedError, match="expected a site file, found a scenario file"):
        load_site(DATA / "scenario-minimal.yaml")


def test_scenario_loader_refuses_site() -> None:
    with pytest.raises(LocatedError, match=r"expected a scenario file with 'sites' and 'period', found no 'sites' or 'period'"):
        load_scenario(MINI)


SCEN = "name: s\nsites: [site-minimal.yaml]\nperiod: {year: 2024}\n"


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        ("resolution: 7min\n", r"s\.yaml:4: resolution: expected a resolution from 1min to 1h that divides an hour, found '7min'"),
        ("resolution: 2h\n", r"s\.yaml:4: resolution: expected a resolution from 1min to 1h .*found '2h'"),
        ("resolution: 30s\n", r"s\.yaml:4: resolution: .*found '30s' \(30 s\)"),
        ("resolution: often\n", r"s\.yaml:4: resolution: expected a resolution such as '15min' or '1h', found 'often'"),
        ("seed: many\n", r"s\.yaml:4: seed: expected a valid integer"),
        ("sights: []\n", r"s\.yaml:4: sights: expected a known field, found unknown field 'sights' \(did you mean 'sites'\?\)"),
    ],
)
def test_scenario_field_errors(extra: str, pattern: str) -> None:
    with pytest.raises(LocatedError, match=pattern):
        load_scenario_data(SCEN + extra, "s.yaml", base_dir=DATA)


@pytest.mark.parametrize(
    ("period", "pattern"),
    [
        ("{year: 2024, start: 2024-01-01}", r"period: expected either 'year' or 'start' and 'end', found both"),
        ("{start: 2024-01-01}", r"period: expected 'year', or both 'start' and 'end' \(end exclusive\), found start"),
        ("{}", r"period: expected 'year'.* found none of them"),
        ("{start: 2024-02-01, end: 2024-01-01}", r"period: end must be after start; found start=2024-02-01, end=2024-01-01"),
        ("{year: 1999}", r"period\.year: expected greater than or equal to 2000, found 1999"),
        ("{year: 2024, month: 3}", r"period\.month: expected a known field.*allowed fields: year, start, end"),
        ("2024", r"period: expected a valid dictionary or instance of Period, found 2024"),
    ],
)
def test_period_errors(period: str, pattern: str) -> None:
    text = f"name: s\nsites: [site-minimal.yaml]\nperiod: {period}\n"
    with pytest.raises(LocatedError, match=r"s\.yaml:3: " + pattern):
        load_scenario_data(text, "s.yaml", base_dir=DATA)


def test_missing_site_file_points_at_scenario_line() -> None:
    text = "name: s\nsites:\n  - site-minimal.yaml\n  - nowhere.yaml\nperiod: {year: 2024}\n"
    with pytest.raises(LocatedError, match=r"s\.yaml:4: sites\.1: expected an existing site file, found no file at '.*nowhere\.yaml'"):
        load_scenario_data(text, "s.yaml", base_dir=DATA)


def test_same_site_twice() -> None:
    text = "name: s\nsites: [site-minimal.yaml, ./site-minimal.yaml]\nperiod: {year: 2024}\n"
    with pytest.raises(LocatedError, match=r"sites\.1: expected each site once, found site id 'mini' again"):
        load_scenario_data(text, "s.yaml", base_dir=DATA)


def test_error_in_site_of_scenario_names_site_file(tmp_path: Path) -> None:
    shutil.copy(DATA / "scenario-minimal.yaml", tmp_path / "scen.yaml")
    (tmp_path / "site-minimal.yaml").write_text(_sub(MINI.read_text(), "kwp: 300", "kwp: x"))
    with pytest.raises(LocatedError, match=r"site-minimal\.yaml:20: pv\.1\.kwp: expected a valid number"):
        load_scenario(tmp_path / "scen.yaml")


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("pv.0.kwq: 1", r"s\.yaml:6: overrides\.mini\.pv\.0\.kwq: expected a known field of pv\.0, found unknown field 'kwq' \(did you mean 'kwp'\?\)"),
        ("pv.5.kwp: 1", r"s\.yaml:6: overrides\.mini\.pv\.5\.kwp: expected an index from 0 to 1 in pv \(or 2 to append\), found 5"),
        ("pv.2.kwp: 1", r"overrides\.mini\.pv\.2\.kwp: expected an index from 0 to 1 in pv"),
        ("pv.first.kwp: 1", r"overrides\.mini\.pv\.first\.kwp: expected an index into the list pv, found 'first'"),
        ("grid.0: 1", r"overrides\.mini\.grid\.0: expected a field name in grid, found list index 0"),
        ("name.first: x", r"overrides\.mini\.name\.first: expected the path to end at name \(a single value\), found more: 'first'"),
        ("wings: 2", r"overrides\.mini\.wings: expected a known field of the site, found unknown field 'wings'"),
        ("pv..kwp: 1", r"overrides\.mini\.pv\.\.kwp: expected a dotted path such as 'pv\.0\.kwp'"),
        ("pv.0.kwp: many", r"s\.yaml:6: pv\.0\.kwp: expected a valid number, unable to parse string as a number, found 'many'"),
    ],
)
def test_override_errors_name_scenario_line(override: str, pattern: str) -> None:
    text = SCEN + f"overrides:\n  mini:\n    {override}\n"
    with pytest.raises(LocatedError, match=pattern) as ei:
        load_scenario_data(text, "s.yaml", base_dir=DATA)
    assert ei.value.file == "s.yaml"
    assert ei.value.line == 6


def test_override_subtree_errors_keep_nested_lines() -> None:
    text = SCEN + "overrides:\n  mini:\n    batteries:\n      - id: b\n        energy_kwh: 10\n        power_kw: zero\n"
    with pytest.raises(LocatedError, match=r"s\.yaml:9: batteries\.0\.power_kw: expected a valid number"):
        load_scenario_data(text, "s.yaml", base_dir=DATA)


def test_override_unknown_site() -> None:
    text = SCEN + "overrides:\n  maxi:\n    pv.0.kwp: 1\n"
    with pytest.raises(LocatedError, match=r"s\.yaml:5: overrides\.maxi: expected the id of a site in this scenario \(mini\), found 'maxi'"):
        load_scenario_data(text, "s.yaml", base_dir=DATA)


def test_programmatic_override_errors() -> None:
    path = DATA / "scenario-minimal.yaml"
    with pytest.raises(LocatedError, match=r"scenario-minimal\.yaml: overrides\.maxi: expected the id of a site"):
        load_scenario(path, overrides={"maxi": {"pv.0.kwp": 1}})
    with pytest.raises(LocatedError, match=r"scenario-minimal\.yaml: overrides\.mini\.pv\.0\.kwq: expected a known field"):
        load_scenario(path, overrides={"mini": {"pv.0.kwq": 1}})
    with pytest.raises(LocatedError, match=r"scenario-minimal\.yaml: pv\.0\.kwp: expected a valid number"):
        load_scenario(path, overrides={"mini": {"pv.0.kwp": "x"}})


def test_errors_are_ems_errors() -> None:
    assert issubclass(LocatedError, ConfigError)
    assert issubclass(ConfigError, EmsError)


# ----------------------------------------------------------------- reference files


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda p: p.name)
def test_every_site_file_validates(path: Path) -> None:
    site = load_site(path)
    assert site.id == path.stem
    first = path.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../docs/schema/site.schema.json"


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_every_scenario_file_validates(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.sites
    first = path.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../docs/schema/scenario.schema.json"


def test_there_are_reference_files() -> None:
    assert len(SITE_FILES) >= 10
    assert {p.stem for p in SCENARIO_FILES} >= {"demo", "reference-2024", "qingdao-more-pv"}


def test_demo_scenario_shape() -> None:
    sc = load_scenario(ROOT / "scenarios" / "demo.yaml")
    assert len(sc.sites) == 3
    assert sc.resolution_s == 900
    assert sc.seed == 1
    assert (sc.end - sc.start).days == 7
    assert 6 <= sc.start.month <= 8


def test_reference_scenario_has_all_sites() -> None:
    sc = load_scenario(ROOT / "scenarios" / "reference-2024.yaml")
    assert {s.id for s in sc.sites} == {p.stem for p in SITE_FILES}
    assert (sc.start, sc.end, sc.seed, sc.resolution_s) == (dt.date(2024, 1, 1), dt.date(2025, 1, 1), 2024, 900)


def test_more_pv_scenario_adds_pv_and_storage() -> None:
    base = load_site(ROOT / "sites" / "qingdao.yaml")
    (site,) = load_scenario(ROOT / "scenarios" / "qingdao-more-pv.yaml").sites
    assert sum(p.kwp for p in site.pv) == pytest.approx(sum(p.kwp for p in base.pv) + 20_000)
    assert sum(b.energy_kwh for b in site.batteries) - sum(b.energy_kwh for b in base.batteries) == 10_000


def _yaml_blocks(md: str) -> list[str]:
    blocks: list[str] = []
    cur: list[str] = []
    inside = False
    for line in md.splitlines(keepends=True):
        if line.startswith("```"):
            if inside:
                blocks.append("".join(cur))
                cur = []
            inside = line.strip() == "```yaml"
            continue
        if inside:
            cur.append(line)
    return blocks


def test_docs_examples_validate() -> None:
    site_block, scenario_block, overrides_block, *_ = _yaml_blocks((ROOT / "docs" / "sites.md").read_text())
    assert load_site_data(site_block, "docs-site").id == "jiangmen-tv"
    sc = load_scenario_data(scenario_block, "docs-scenario", base_dir=ROOT / "scenarios")
    assert [s.id for s in sc.sites] == ["qingdao", "shunde-sheet-metal", "velenje"]
    text = "name: o\nsites: [../sites/qingdao.yaml]\nperiod: {year: 2024}\n" + overrides_block
    (site,) = load_scenario_data(text, "docs-overrides", base_dir=ROOT / "scenarios").sites
    assert site.pv[0].kwp == 12000 and site.pv[2].id == "pv-expansion"
    assert site.grid.tariff is not None and site.grid.tariff.prices["peak"] == 1.05


TARIFF = """
  tariff:
    prices: {peak: 1.0, flat: 0.6}
    seasons:
      - months: [1, 2, 3, 4, 5, 6]
        windows: [{period: peak, start_h: 8, end_h: 12}]
      - months: [6, 7, 8, 9, 10, 11, 12]
        windows: [{period: {name}, start_h: 8, end_h: 12}]
"""


@pytest.mark.parametrize(
    ("name", "months", "pattern"),
    [
        ("peak", "[6, 7, 8, 9, 10, 11, 12]", r"grid\.tariff: expected each month in one season; found month 6 in seasons 0 and 1"),
        ("peek", "[7, 8, 9, 10, 11, 12]", r"grid\.tariff: expected a price for every tariff period; found no price for \['peek'\]"),
    ],
)
def test_tariff_rules(mini_text: str, name: str, months: str, pattern: str) -> None:
    tariff = TARIFF.replace("{name}", name).replace("[6, 7, 8, 9, 10, 11, 12]", months)
    text = _sub(mini_text, "  region: CN-North\n", "  region: CN-North" + tariff)
    with pytest.raises(LocatedError, match=r"m\.yaml:16: " + pattern):
        load_site_data(text, "m.yaml")


def test_weather_path_relative_to_site_file(tmp_path: Path) -> None:
    sub = tmp_path / "sites"
    sub.mkdir()
    text = _sub(MINI.read_text(), "  source: synthetic\n", "  source: epw\n  path: weather/x.epw\n")
    (sub / "site-minimal.yaml").write_text(text)
    assert load_site(sub / "site-minimal.yaml").weather.path == str((sub / "weather" / "x.epw").resolve())
    (tmp_path / "s.yaml").write_text("name: s\nsites: [sites/site-minimal.yaml]\nperiod: {year: 2024}\n")
    (site,) = load_scenario(tmp_path / "s.yaml").sites
    assert site.weather.path == str((sub / "weather" / "x.epw").resolve())
    assert load_site_data(text, "m.yaml").weather.path == "weather/x.epw"
