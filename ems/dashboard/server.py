"""The dashboard's HTTP server: static page and a read-only JSON API (stdlib only).

Routes (GET and HEAD; any other method gets 405)::

    /                        the page (ems/dashboard/static/index.html)
    /static/<file>           its scripts, styles (package data, no CDN)
    /api/overview            tiles of every site and the group's sums
    /api/site/<site>?range=  one site: day | week | month | year
    /healthz                 ``ok``

Every response carries a strict Content-Security-Policy (scripts only from this
server, no inline script), so even a bug that put data into HTML could not run it;
the page itself writes data only through ``textContent``. The server answers only to
its own host names (a DNS-rebinding page gets 421), closes idle connections and serves
a bounded number at once (:mod:`ems.webserver`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ems.errors import EmsError, ReadingError
from ems.webserver import GuardedHandler, GuardedHTTPServer

from .monitor import Monitor

__all__ = ["DashboardServer", "make_server"]

log = logging.getLogger(__name__)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _static(name: str) -> bytes | None:
    """Bytes of a packaged static file, or None (no path traversal: one plain name)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    f = resources.files("ems.dashboard").joinpath("static", name)
    if not f.is_file():
        return None
    return f.read_bytes()


class _Handler(GuardedHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"
    server_version = "ems-dashboard"

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str,
        head: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, head: bool = False) -> None:
        body = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
        self._send(status, body, "application/json", head)

    def _error(self, status: int, message: str, head: bool = False) -> None:
        self._json(status, {"error": message}, head)

    def _route(self, head: bool) -> None:
        if not self.host_allowed():
            return
        parts = urlsplit(self.path)
        path = parts.path
        query = parse_qs(parts.query)
        mon = self.server.monitor
        try:
            if path in ("/", "/index.html"):
                body = _static("index.html")
                assert body is not None, "index.html is package data"
                self._send(200, body, _TYPES[".html"], head)
            elif path.startswith("/static/"):
                name = path.removeprefix("/static/")
                body = _static(name)
                if body is None:
                    self._error(404, f"no static file {name!r}", head)
                    return
                ext = name[name.rfind(".") :] if "." in name else ""
                self._send(200, body, _TYPES.get(ext, "application/octet-stream"), head)
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon", head)
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8", head)
            elif path == "/api/overview":
                self._json(200, mon.overview(), head)
            elif path.startswith("/api/site/"):
                site = unquote(path.removeprefix("/api/site/"))
                rng = query.get("range", ["day"])[0]
                self._json(200, mon.site_view(site, rng), head)
            else:
                self._error(404, f"no route {path!r}", head)
        except ReadingError as exc:
            self._error(404, str(exc), head)
        except EmsError as exc:
            self._error(400, str(exc), head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("dashboard request %s failed", self.path)
            self._error(500, "internal error (see the server log)", head)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def _not_allowed(self) -> None:
        if not self.host_allowed():
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= 1 << 20:
            self.rfile.read(length)
        body = json.dumps(
            {"error": f"method {self.command} not allowed: the dashboard is read-only"}
        ).encode()
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED, body, "application/json", extra={"Allow": "GET, HEAD"}
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed


class DashboardServer(GuardedHTTPServer):
    """A threading HTTP server bound to a :class:`Monitor` (Host allow-list, timeouts, bounded connections).

    Parameters
    ----------
    address : (host, port)
    monitor : Monitor
    **guard
        ``allow_hosts``, ``idle_timeout_s``, ``max_connections`` (:class:`ems.webserver.GuardedHTTPServer`).
    """

    def __init__(self, address: tuple[str, int], monitor: Monitor, **guard: Any) -> None:
        self.monitor = monitor
        super().__init__(address, _Handler, **guard)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8050``."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> DashboardServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="ems-dashboard-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def make_server(
    monitor: Monitor,
    host: str = "127.0.0.1",
    port: int = 8050,
    *,
    allow_hosts: Iterable[str] = (),
    idle_timeout_s: float = 10.0,
    max_connections: int = 64,
) -> DashboardServer:
    """Create (not start) the dashboard server; port 0 picks a free one.

    ``allow_hosts``: host names served besides the bound address's (behind a reverse proxy,
    its name); ``idle_timeout_s`` [s]: idle connections are closed after it;
    ``max_connections``: served at once, more get 503.

    Raises
    ------
    EmsError
        The address cannot be bound (in use, or not a local address).
    """
    try:
        return DashboardServer((host, port), monitor, allow_hosts=allow_hosts, idle_timeout_s=idle_timeout_s,
                               max_connections=max_connections)
    except OSError as exc:
        raise EmsError(
            f"dashboard: expected to listen on {host}:{port}; found {exc.strerror or exc}"
        ) from exc
