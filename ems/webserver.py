"""A small HTTP server that a hostile page or client cannot abuse: the dashboard's and the metrics'.

* **Host allow-list** (against DNS rebinding): a page on ``attacker.example`` whose name
  later resolves to 127.0.0.1 makes the browser send ``Host: attacker.example``; only the
  names the server is bound to (and ``localhost`` when bound to loopback or all addresses),
  names given explicitly, and IP addresses (an address cannot be rebound) are served.
  Any other name gets 421 Misdirected Request.
* **Socket timeouts**: a connection that sends nothing for ``idle_timeout_s`` is closed.
* **A bounded number of connections**: at most ``max_connections`` are served at once;
  one more is answered 503 and closed at once (no thread, no waiting).

:class:`GuardedHTTPServer` does all three for any :class:`GuardedHandler` subclass.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["GuardedHTTPServer", "GuardedHandler", "allowed_hosts"]

log = logging.getLogger(__name__)

_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
         b"Connection: close\r\n\r\n")


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names (lower case, no port) served when listening on ``bound``, plus ``extra``.

    Loopback (or an unspecified address, ``0.0.0.0``/``::``) allows the loopback names;
    any other address allows itself. Names the operator adds (``--allow-host``) come on top.
    """
    names = {bound.lower().strip("[]")}
    try:
        ip = ipaddress.ip_address(bound.strip("[]"))
        if ip.is_loopback or ip.is_unspecified:
            names.update(_LOOPBACK)
    except ValueError:  # a name such as localhost
        if bound.lower() == "localhost":
            names.update(_LOOPBACK)
    names.update(h.lower().strip("[]") for h in extra)
    names.discard("")
    names.discard("0.0.0.0")
    names.discard("::")
    return frozenset(names)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_of(header: str) -> str:
    """The host name of a ``Host`` header value, without the port."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class GuardedHandler(BaseHTTPRequestHandler):
    """A request handler whose requests are checked by :meth:`host_allowed` first (see module docs)."""

    server: GuardedHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout_s)  # an idle client is dropped

    def host_allowed(self) -> bool:
        """True if the ``Host`` header names this server; else answer 421 and return False."""
        host = _host_of(self.headers.get("Host", ""))
        if host in self.server.hosts or _is_ip(host):  # an address, not a name: nothing to rebind
            return True
        body = (f"421 Misdirected Request: this server answers to {', '.join(sorted(self.server.hosts))}, "
                "not to the host name your browser sent (start it with --allow-host NAME to add one)\n").encode()
        self.send_response(421)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True
        return False


class GuardedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with a Host allow-list, idle timeouts and a bounded connection count.

    Parameters
    ----------
    address : (host, port)
    handler : type of GuardedHandler
    allow_hosts : iterable of str
        Host names served besides those of the bound address.
    idle_timeout_s : float [s]
        A connection that sends nothing this long is closed.
    max_connections : int
        Connections served at once; more are answered 503.
    """

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[GuardedHandler], *, allow_hosts: Iterable[str] = (),
                 idle_timeout_s: float = 10.0, max_connections: int = 64) -> None:
        self.hosts = allowed_hosts(address[0], allow_hosts)
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address, exc_info=True)
