"""Issue 17's cases 12 (site and scenario files) and 13 (the dashboard's HTTP server), as real processes.

Case 12: ``ems validate`` in a subprocess with a 2 GiB address-space limit and a time limit, so
a loader that hangs or balloons fails the test instead of the machine. Case 13: ``ems dashboard``
as a subprocess, attacked over real sockets: a DNS-rebinding ``Host``, 400 idle connections.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from builders import make_readingset
from reliability_kit import EmsProc, figures, poll  # noqa: F401 (fixture)

from ems.store import open_store
from ems.telemetry.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
SECRET = "TOP-SECRET-LINE-1f9a"


def _validate(*paths: Path, env: dict[str, str] | None = None, timeout: float = 20.0) -> tuple[int, str]:
    """``ems validate PATHS`` with at most 2 GiB of address space and ``timeout`` [s]; (exit code, output)."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    try:
        r = subprocess.run([sys.executable, "-m", "ems.cli", "validate", *map(str, paths)], capture_output=True,
                           text=True, timeout=timeout, preexec_fn=limits, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"ems validate {paths} did not finish within {timeout} s")
    return r.returncode, r.stdout + r.stderr


MINI = ROOT / "tests" / "data" / "model" / "site-minimal.yaml"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder: scenarios/ and sites/ side by side (as in this repository), and a secret beside it."""
    (tmp_path / "proj" / "scenarios").mkdir(parents=True)
    (tmp_path / "proj" / "sites").mkdir()
    (tmp_path / "proj" / "sites" / "m.yaml").write_text(MINI.read_text())
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.yaml").write_text(f"id: {SECRET}\nnote: {SECRET}\n")
    return tmp_path / "proj"


def _scenario(project: Path, *sites: str) -> Path:
    p = project / "scenarios" / "s.yaml"
    p.write_text("name: s\nsites: [" + ", ".join(sites) + "]\nperiod: {year: 2024}\n")
    return p


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("deep", lambda p: p.write_text("id: x\na: " + "[" * 900 + "]" * 900 + "\n"), r"nested"),
        ("deep-block", lambda p: p.write_text("id: x\n" + "".join("  " * i + f"k{i}:\n" for i in range(900))
                                              + "  " * 900 + "v: 1\n"), r"nested"),
        ("alias", lambda p: p.write_text("id: x\na: &x [*x]\n"), r"alias"),
        ("big", lambda p: p.write_bytes(b"# " + b"x" * (100 << 20) + b"\n"), r"at most 10 MiB"),
        ("zero", lambda p: p.symlink_to("/dev/zero"), r"regular file"),
        ("fifo", lambda p: os.mkfifo(p), r"regular file"),
    ],
)
def test_case12_hostile_site_files_fail_fast_with_a_clear_error(figures, tmp_path, name, make, expected):  # noqa: F811
    import re

    f = tmp_path / f"{name}.yaml"
    make(f)
    t0 = time.monotonic()
    code, out = _validate(f)
    assert code == 1, out
    assert "Traceback" not in out and "RecursionError" not in out and "MemoryError" not in out, out[-3000:]
    assert str(f) in out and re.search(expected, out), out[-3000:]
    figures(fault=f"case 12: site file {name!r}", result=out.strip().splitlines()[0].replace(str(tmp_path) + "/", "")[-160:],
            seconds=round(time.monotonic() - t0, 2))


def test_case12_scenarios_read_only_inside_their_folder_tree(figures, project, tmp_path, monkeypatch):  # noqa: F811
    """``sites: [/etc/shadow]``, a YAML secret outside the project, a weather file outside it: refused, never echoed."""
    from click.testing import CliRunner

    from ems.cli import cli

    def validate(path: Path) -> tuple[int, str]:
        res = CliRunner().invoke(cli, ["validate", str(path)])
        return res.exit_code, res.output

    monkeypatch.chdir(tmp_path / "proj" / "sites")  # the working directory is a root too: not the secret's
    secret = tmp_path / "outside" / "secret.yaml"
    for site in ("/etc/shadow", str(secret), "../../outside/secret.yaml"):
        code, out = validate(_scenario(project, site))
        assert code == 1, out
        assert "outside them" in out and "EMS_FILE_ROOTS" in out, out
        assert SECRET not in out and "root:" not in out, out
    code, out = validate(_scenario(project, "../sites/m.yaml"))  # the usual layout is fine
    assert code == 0, out
    site = project / "sites" / "w.yaml"
    site.write_text(MINI.read_text().replace("  source: synthetic\n", f"  source: epw\n  path: {secret}\n"))
    code, out = validate(_scenario(project, "../sites/w.yaml"))
    assert code == 1 and "weather.path" in out and "outside them" in out and SECRET not in out, out
    figures(fault="case 12: sites: [/etc/shadow], a YAML secret outside the project, a weather file outside it",
            result="refused, naming the file, the field and $EMS_FILE_ROOTS; no content echoed")
    monkeypatch.setenv("EMS_FILE_ROOTS", str(secret.parent))
    code, out = validate(_scenario(project, str(secret)))
    assert code == 1 and "outside them" not in out, out  # asked explicitly: read, and judged as a site file


# ---------------------------------------------------------------- case 13: the dashboard


@pytest.fixture
def dashboard(tmp_path):
    store = open_store(tmp_path / "store")
    rs = make_readingset(sites=("alpha",), days=1, meters=("grid",))
    store.register_sites(rs.sites)
    store.register_meters(rs.meters)
    store.write_readings(rs.readings)
    store.close()
    port = free_port()
    proc = EmsProc(["dashboard", "--store", str(tmp_path / "store"), "--port", str(port), "--idle-timeout", "1",
                    "--max-connections", "32"], tmp_path / "logs", "dash")
    try:
        proc.wait_log("dashboard at")
        yield port, proc
    finally:
        proc.stop()


def _get(port: int, host: str, path: str = "/api/overview") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_case13_dashboard_serves_only_its_own_host_names(figures, dashboard):  # noqa: F811
    """A DNS-rebinding page makes the browser send ``Host: attacker.example``: refused."""
    port, _ = dashboard
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io", ""):
        status, body = _get(port, host)
        assert status == 421 and b"alpha" not in body, (host, body[:300])
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        status, body = _get(port, host)
        assert status == 200 and b"alpha" in body, (host, body[:300])
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).status == 200
    figures(fault="case 13: Host attacker.example (DNS rebinding) against ems dashboard", result="421, no data")


def test_case13_idle_connections_time_out_and_are_bounded(figures, dashboard):  # noqa: F811
    """400 idle connections: the server holds at most its bound, closes idle ones, and still answers."""
    port, proc = dashboard

    def threads() -> int:
        text = Path(f"/proc/{proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in text.splitlines() if line.startswith("Threads:")))

    base = threads()
    idle = []
    try:
        for _ in range(400):
            s = socket.socket()
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            idle.append(s)
        peak = max(threads() for _ in range(5))
        figures(fault="case 13: 400 idle connections to ems dashboard (--max-connections 32, --idle-timeout 1)",
                threads_before=base, peak_threads=peak, peak_rss_mib=round(proc.rss_kb() / 1024, 1))
        assert peak <= base + 32 + 2, (base, peak)  # one thread per connection served, at most 32
        assert poll(lambda: _get(port, f"127.0.0.1:{port}")[0] == 200, 15), "the dashboard stopped answering"
        for s in idle[:50]:  # each is closed by the server (after its idle timeout, or at once when over the bound)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    finally:
        for s in idle:
            s.close()
