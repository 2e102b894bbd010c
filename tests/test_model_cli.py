"""``ems validate`` and ``ems schema`` through click's runner and once as a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from ems.cli import cli
from ems.model.commands import json_schemas
from ems.model.scenario import ScenarioFile
from ems.model.site import Site

DATA = Path(__file__).parent / "data" / "model"
ROOT = Path(__file__).parent.parent


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_validate_good_site(runner: CliRunner) -> None:
    path = str(DATA / "site-minimal.yaml")
    res = runner.invoke(cli, ["validate", path])
    assert res.exit_code == 0, res.output
    assert res.stdout == f"ok {path} (site)\n"


def test_validate_detects_scenario(runner: CliRunner) -> None:
    path = str(DATA / "scenario-minimal.yaml")
    res = runner.invoke(cli, ["validate", path])
    assert res.exit_code == 0, res.output
    assert res.stdout == f"ok {path} (scenario)\n"


def test_validate_bad_file_prints_located_errors(runner: CliRunner) -> None:
    good = str(DATA / "site-minimal.yaml")
    bad = str(DATA / "site-bad-values.yaml")
    res = runner.invoke(cli, ["validate", good, bad])
    assert res.exit_code == 1
    out = res.stdout.splitlines()
    assert out[0] == f"ok {good} (site)"
    assert out[1].startswith(f"{bad}:7: location.tz: expected an IANA time zone")
    assert any(line.startswith(f"{bad}:13: grid.contract_kw:") for line in out)
    assert "1 ok, 1 bad" in res.stderr


def test_validate_quiet(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["validate", "-q", str(DATA / "site-minimal.yaml")])
    assert res.exit_code == 0
    assert res.stdout == ""


def test_validate_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["validate", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 1
    assert "file not found: expected a YAML file at" in res.stdout


def test_validate_directory(runner: CliRunner, tmp_path: Path) -> None:
    shutil.copy(DATA / "site-minimal.yaml", tmp_path / "a.yaml")
    shutil.copy(DATA / "scenario-minimal.yaml", tmp_path / "b.yml")
    shutil.copy(DATA / "site-minimal.yaml", tmp_path / "site-minimal.yaml")
    (tmp_path / "notes.txt").write_text("not yaml")
    res = runner.invoke(cli, ["validate", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("ok ") == 3
    assert "3 ok, 0 bad" in res.stderr


def test_validate_empty_directory(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["validate", str(tmp_path)])
    assert res.exit_code == 1
    assert "no .yaml or .yml files found" in res.output


def test_validate_all_reference_files(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["validate", str(ROOT / "sites"), str(ROOT / "scenarios")])
    assert res.exit_code == 0, res.output
    assert "0 bad" in res.stderr


def test_schema_to_stdout(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["schema"])
    assert res.exit_code == 0
    both = json.loads(res.stdout)
    assert set(both) == {"site.schema.json", "scenario.schema.json"}
    assert both["site.schema.json"]["title"] == "Site"


@pytest.mark.parametrize(("kind", "model"), [("site", Site), ("scenario", ScenarioFile)])
def test_schema_one_kind(runner: CliRunner, kind: str, model: type[BaseModel]) -> None:
    res = runner.invoke(cli, ["schema", kind])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["$schema"].startswith("https://json-schema.org/")
    assert set(doc["properties"]) == set(model.model_fields)
    assert doc["additionalProperties"] is False


def test_schema_out_dir(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "schema"
    res = runner.invoke(cli, ["schema", "--out", str(out)])
    assert res.exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["scenario.schema.json", "site.schema.json"]


def test_committed_schemas_are_current() -> None:
    for name, text in json_schemas().items():
        committed = (ROOT / "docs" / "schema" / name).read_text(encoding="utf-8")
        assert committed == text, (
            f"docs/schema/{name} is out of date with the models; run: ems schema --out docs/schema"
        )


def test_validate_as_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    good = subprocess.run(
        [sys.executable, "-m", "ems.cli", "validate", "scenarios/demo.yaml", "sites/velenje.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines() == ["ok scenarios/demo.yaml (scenario)", "ok sites/velenje.yaml (site)"]
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("id: x\nid: y\n")
    bad = subprocess.run(
        [sys.executable, "-m", "ems.cli", "validate", str(bad_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert bad.returncode == 1
    assert f"{bad_file}:2: id: duplicate key 'id': first at line 1" in bad.stdout
    assert "Traceback" not in bad.stderr


def test_help_lists_every_command_without_importing_them():
    import importlib
    import subprocess
    import sys

    from ems.cli import COMMANDS, SUMMARIES

    for name, target in COMMANDS.items():
        mod, attr = target.split(":")
        cmd = getattr(importlib.import_module(mod), attr)
        assert SUMMARIES.get(name, cmd.help.split("\n\n")[0].replace("\n", " ")) == cmd.help.split("\n\n")[0].replace(
            "\n", " "), name
    out = subprocess.run([sys.executable, "-c", "import sys\nfrom ems.cli import main\ntry:\n    main(['--help'])\n"
                          "finally:\n    print(sorted(m for m in sys.modules if m.startswith(('pandas', 'ems.'))))"],
                         capture_output=True, text=True, check=True).stdout
    assert "report" in out and "pandas" not in out.splitlines()[-1]
