"""The compose stack and the Grafana dashboards, checked statically.

Docker does not run here, so these tests read the files: docker-compose.yml (services,
health checks, start order, variables, mounts, the ems commands and their options),
the Dockerfile, the Grafana provisioning, and every Flux query of the dashboards
against the measurements, tags and fields the InfluxDB store writes (taken from
``ems.store.lineproto`` itself, not from a copy).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest
import yaml

from ems.readings import METER_KINDS, MeterInfo, SiteInfo, events_frame
from ems.store.lineproto import event_lines, meta_lines, reading_lines

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
BUILTIN_COLUMNS = {"_time", "_value", "_field", "_measurement", "_start", "_stop"}


# ---------------------------------------------------------------- the line-protocol truth


def _split(line: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quotes and backslash escapes."""
    out, cur, quoted, esc = [], [], False, False
    for ch in line:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            cur.append(ch)
            esc = True
        elif ch == '"':
            cur.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_line(line: str) -> tuple[str, set[str], set[str]]:
    """(measurement, tag keys, field keys) of one line of line protocol."""
    key, fields, _ts = _split(line, " ")
    meas, *tags = _split(key, ",")
    return (
        meas,
        {t.split("=", 1)[0] for t in tags},
        {f.split("=", 1)[0] for f in _split(fields, ",")},
    )


@pytest.fixture(scope="module")
def schema() -> dict[str, dict[str, set[str]]]:
    """What the InfluxDB store writes: measurement -> {"tags": ..., "fields": ...}."""
    site = SiteInfo(
        site="s1",
        name="S",
        group="g",
        company="c",
        park="p",
        tz="UTC",
        lat=0.0,
        lon=0.0,
        country="CN",
        grid_region="CN-East",
        factor_set="cn-2023",
    )
    meters, rows = {}, []
    ts = pd.Timestamp("2024-07-01T00:15:00Z")
    for kind, (carrier, qs) in METER_KINDS.items():
        m = MeterInfo("s1", f"m-{kind}", str(kind), str(carrier), qs, 900, {})
        meters[("s1", m.meter)] = m
        rows += [
            {"ts": ts, "site": "s1", "meter": m.meter, "quantity": q, "value": 1.0} for q in qs
        ]
    df = pd.DataFrame(rows).set_index("ts")
    lines = reading_lines(df, meters, {"s1": site})
    events = events_frame(
        [
            {
                "ts": ts,
                "site": "s1",
                "kind": "outage_start",
                "subject": "pv",
                "value": np.nan,
                "unit": "",
                "detail": {},
            },
            {
                "ts": ts,
                "site": "s1",
                "kind": "fuel_delivery",
                "subject": "f",
                "value": 5.0,
                "unit": "kg",
                "detail": {"fuel": "diesel"},
            },
        ]
    )
    lines += event_lines(events)
    lines += meta_lines([site], meters.values())
    out: dict[str, dict[str, set[str]]] = {}
    for line in lines:
        meas, tags, fields = parse_line(line)
        d = out.setdefault(meas, {"tags": set(), "fields": set()})
        d["tags"] |= tags
        d["fields"] |= fields
    return out


def test_schema_is_what_the_store_says(schema):
    assert {str(k) for k in METER_KINDS} <= set(schema)
    assert schema["grid"]["fields"] == {"power_kw", "import_kwh", "export_kwh"}
    assert {"site", "meter", "carrier", "group", "company", "park"} == schema["pv"]["tags"]
    assert {"site", "kind", "subject"} == schema["event"]["tags"]


# ---------------------------------------------------------------- Flux checks


def _filter_bodies(q: str) -> list[str]:
    """Bodies of every ``filter(fn: (r) => ...)`` (balanced parentheses)."""
    out = []
    for m in re.finditer(r"filter\(fn: \(r\) =>", q):
        depth, i = 1, m.end()
        while depth and i < len(q):
            depth += {"(": 1, ")": -1}.get(q[i], 0)
            i += 1
        assert depth == 0, f"unbalanced filter in {q!r}"
        out.append(q[m.end() : i - 1])
    return out


def check_flux(q: str, schema: dict[str, dict[str, set[str]]], variables: set[str]) -> list[str]:
    """Problems of one Flux query (empty when it fits what the store writes)."""
    problems = []
    if q.count("(") != q.count(")") or q.count("[") != q.count("]") or q.count("{") != q.count("}"):
        problems.append("unbalanced brackets")
    if "from(bucket:" in q and "range(" not in q:
        problems.append("from() without range()")
    tags = set().union(*(d["tags"] for d in schema.values()))
    fields = set().union(*(d["fields"] for d in schema.values()))
    for body in _filter_bodies(q):
        for meas in re.findall(r'r\._measurement == "([^"]*)"', body):
            if meas not in schema:
                problems.append(f"unknown measurement {meas!r}")
        for fld in re.findall(r'r\._field == "([^"]*)"', body):
            if fld not in fields:
                problems.append(f"unknown field {fld!r}")
        for meas, fld in re.findall(
            r'r\._measurement == "([^"]*)" and r\._field == "([^"]*)"', body
        ):
            if meas in schema and fld not in schema[meas]["fields"]:
                problems.append(f"measurement {meas!r} has no field {fld!r}")
        for name in re.findall(r"\br\.([A-Za-z_][A-Za-z0-9_]*)", body):
            if name not in BUILTIN_COLUMNS and name not in tags:
                problems.append(f"unknown tag {name!r}")
    for tag in re.findall(r'tag: "([^"]*)"', q):
        if tag not in tags:
            problems.append(f"unknown tag {tag!r} in schema.tagValues")
    allowed = tags | BUILTIN_COLUMNS | schema["event"]["fields"]
    for lst in re.findall(r"(?:columns|rowKey|columnKey): \[([^\]]*)\]", q):
        for name in re.findall(r'"([^"]*)"', lst):
            if name not in allowed:
                problems.append(f"unknown column {name!r}")
    for var in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", q):
        if var not in variables:
            problems.append(f"undefined variable ${{{var}}}")
    return problems


def _queries(d: dict) -> list[tuple[str, str]]:
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["query"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            out.append((f"variable {v['name']}", v["query"]))
    for a in d["annotations"]["list"]:
        if "target" in a:
            out.append((f"annotation {a['name']}", a["target"]["query"]))
    return out


def test_there_are_two_dashboards():
    assert [p.name for p in DASHBOARDS] == ["ems-group-overview.json", "ems-site.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_match_the_store(path, schema):
    d = json.loads(path.read_text())
    variables = {v["name"] for v in d["templating"]["list"]}
    queries = _queries(d)
    assert len(queries) >= 8
    problems = [f"{where}: {p}" for where, q in queries for p in check_flux(q, schema, variables)]
    assert not problems, "\n".join(problems)
    uid = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/influxdb.yaml").read_text()
    )["datasources"][0]["uid"]
    for p in d["panels"]:
        assert p["datasource"]["uid"] == uid, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboards_are_what_the_builder_writes(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_dashboards", ROOT / "deploy/grafana/build_dashboards.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "OUT", tmp_path)
    mod.main()
    for p in DASHBOARDS:
        assert (tmp_path / p.name).read_text() == p.read_text(), (
            f"run deploy/grafana/build_dashboards.py ({p.name})"
        )


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        (
            'from(bucket: "b") |> range(start: 0) |> filter(fn: (r) => r._measurement == "meter")',
            "unknown measurement",
        ),
        (
            'from(bucket: "b") |> range(start: 0) |> filter(fn: (r) => r._field == "power")',
            "unknown field",
        ),
        (
            'from(bucket: "b") |> range(start: 0) |> filter(fn: (r) => r._measurement == "pv" and r._field == "import_kwh")',
            "has no field",
        ),
        (
            'from(bucket: "b") |> range(start: 0) |> filter(fn: (r) => r.plant == "x")',
            "unknown tag",
        ),
        ('from(bucket: "b") |> range(start: 0) |> group(columns: ["plant"])', "unknown column"),
        (
            'from(bucket: "b") |> range(start: 0) |> filter(fn: (r) => r.site == "${nope}")',
            "undefined variable",
        ),
        ('from(bucket: "b") |> filter(fn: (r) => r.site == "x")', "without range"),
    ],
)
def test_the_flux_checker_catches_mistakes(schema, query, problem):
    assert any(problem in p for p in check_flux(query, schema, {"site"}))


# ---------------------------------------------------------------- docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_compose_services(compose):
    assert set(compose["services"]) == {
        "mosquitto-auth",
        "mosquitto",
        "influxdb",
        "grafana",
        "ingest",
        "stream",
        "dashboard",
    }
    s = compose["services"]
    assert s["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert s["influxdb"]["image"] == "influxdb:2"
    assert s["grafana"]["image"].startswith("grafana/grafana")
    for name in ("ingest", "stream", "dashboard"):
        assert s[name]["build"] == "."


def test_compose_health_and_start_order(compose):
    s = compose["services"]
    jobs = {"mosquitto-auth"}  # run once and exit: waited for with service_completed_successfully
    for name, svc in s.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in s, f"{name} depends on unknown {dep}"
            if dep in jobs:
                assert cond == {"condition": "service_completed_successfully"}, f"{name} -> {dep}: {cond}"
                assert s[dep]["restart"] == "no"
                continue
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}: {cond}"
            assert "healthcheck" in s[dep], f"{dep} needs a healthcheck ({name} waits for it)"
    assert set(s["mosquitto"]["depends_on"]) == jobs
    for name, svc in s.items():
        if name != "stream" and name not in jobs:  # a replay ends; nothing waits for it
            hc = svc["healthcheck"]
            assert hc["test"][0] in ("CMD", "CMD-SHELL"), name
    assert set(s["ingest"]["depends_on"]) == {"mosquitto", "influxdb"}
    assert set(s["stream"]["depends_on"]) == {"mosquitto", "ingest"}, (
        "the ingestor subscribes before the replay"
    )
    assert set(s["grafana"]["depends_on"]) == {"influxdb"}
    # no cycles: a topological order exists
    order: list[str] = []
    pending = dict(s)
    while pending:
        ready = [n for n, v in pending.items() if set(v.get("depends_on") or {}) <= set(order)]
        assert ready, f"dependency cycle among {sorted(pending)}"
        for n in sorted(ready):
            order.append(n)
            del pending[n]
    assert order.index("stream") > order.index("ingest") > order.index("mosquitto")


def test_compose_variables_are_in_env_example(compose):
    text = COMPOSE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    env = _env_example()
    missing = used - set(env)
    assert not missing, f".env.example lacks {sorted(missing)}"
    assert {
        "DOCKER_INFLUXDB_INIT_ORG",
        "DOCKER_INFLUXDB_INIT_BUCKET",
        "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN",
        "DOCKER_INFLUXDB_INIT_USERNAME",
        "DOCKER_INFLUXDB_INIT_PASSWORD",
    } <= used
    assert compose["services"]["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert len(env["DOCKER_INFLUXDB_INIT_PASSWORD"]) >= 8  # influx setup refuses shorter passwords
    assert (ROOT / env["EMS_SCENARIO"]).is_file()


def test_compose_mounts_exist_and_ports_are_local(compose):
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"
            else:
                assert src in compose["volumes"], f"{name}: undeclared volume {src}"
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_grafana_provisioning(compose):
    g = compose["services"]["grafana"]
    ds = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/influxdb.yaml").read_text()
    )
    src = ds["datasources"][0]
    assert src["type"] == "influxdb" and src["jsonData"]["version"] == "Flux"
    assert src["url"] == "http://influxdb:8086"
    raw = (ROOT / "deploy/grafana/provisioning/datasources/influxdb.yaml").read_text()
    for var in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", raw):
        assert var in g["environment"], f"grafana needs {var} in its environment"
    prov = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/ems.yaml").read_text())
    path = prov["providers"][0]["options"]["path"]
    targets = {v.split(":")[1]: v.split(":")[0] for v in g["volumes"]}
    assert targets[path] == "./deploy/grafana/dashboards"
    home = g["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "deploy/grafana/dashboards" / Path(home).name).is_file()


def test_mosquitto_config(compose):
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()
    assert "listener 1883" in conf  # mosquitto 2 listens on localhost only without it
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf
    assert "persistence true" in conf
    # the password file and the ACL: where the mosquitto-auth job writes them, in a volume mosquitto mounts
    files = dict(ln.split(" ", 1) for ln in conf if ln.startswith(("password_file ", "acl_file ")))
    s = compose["services"]
    auth_mount = next(v for v in s["mosquitto"]["volumes"] if v.startswith("mosquitto-auth:"))
    target = auth_mount.split(":")[1]
    assert files == {"password_file": f"{target}/passwd", "acl_file": f"{target}/acl"}
    assert any(v.startswith("mosquitto-auth:" + target) for v in s["mosquitto-auth"]["volumes"])
    assert "./deploy/mosquitto/acl:/deploy/acl:ro" in s["mosquitto-auth"]["volumes"]


def test_every_ems_service_logs_in_as_its_role(compose):
    """The role names of the ACL, and each service's password from .env by the name the auth job reads."""
    acl_users = set(re.findall(r"^user (\S+)$", (ROOT / "deploy/mosquitto/acl").read_text(), re.M))
    script = (ROOT / "deploy/mosquitto/make-auth.sh").read_text()
    roles = set(re.search(r"for role in ([a-z ]+);", script).group(1).split())
    s = compose["services"]
    for service, role in (("ingest", "ingest"), ("stream", "stream"), ("dashboard", "dashboard")):
        cmd = s[service]["command"]
        assert cmd[cmd.index("--username") + 1] == role and role in acl_users and role in roles
        var = f"EMS_MQTT_{role.upper()}_PASSWORD"
        assert s[service]["environment"]["EMS_MQTT_PASSWORD"] == "${" + var + "}"
        assert s["mosquitto-auth"]["environment"][var] == "${" + var + "}"
    assert "-u dashboard" in s["mosquitto"]["healthcheck"]["test"][1]


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in getattr(p, "opts", [])}


@pytest.mark.parametrize(
    ("service", "module", "name"),
    [
        ("ingest", "ems.telemetry.commands", "ingest"),
        ("stream", "ems.telemetry.commands", "stream"),
        ("dashboard", "ems.dashboard.commands", "dashboard"),
    ],
)
def test_compose_ems_commands_exist(compose, service, module, name):
    import importlib

    from ems.cli import COMMANDS

    cmd = compose["services"][service]["command"]
    assert cmd[:2] == ["ems", name]
    assert COMMANDS[name] == f"{module}:{name}"
    click_cmd = getattr(importlib.import_module(module), name)
    used = {a for a in cmd[2:] if a.startswith("--")}
    assert used <= _options(click_cmd), f"unknown options {used - _options(click_cmd)}"
    for a in cmd:
        if "influx+http" in a:
            assert (
                "org=${DOCKER_INFLUXDB_INIT_ORG}" in a
                and "bucket=${DOCKER_INFLUXDB_INIT_BUCKET}" in a
            )
            assert "token" not in a
    if service != "stream":
        assert "EMS_INFLUX_TOKEN" in compose["services"][service]["environment"]


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert 'pip install ".[influx]"' in text
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for f in src.split():
            assert (ROOT / f).exists(), f"COPY of missing {f}"
    assert re.search(r"^USER (?!root)", text, re.M), "run as an unprivileged user"
