"""The embedded MQTT broker: amqtt (pure Python, MQTT 3.1.1) run as a child process.

``ems broker --port 1883`` runs it in the foreground; :class:`EmbeddedBroker`
starts it as ``python -m ems.telemetry.broker`` and waits until the port accepts.
amqtt 0.12 speaks MQTT 3.1.1 only: clients negotiate (they try MQTT 5 and fall
back to 3.1.1 when it is refused, :func:`ems.telemetry.connection.negotiate`), keep
their sessions with ``clean_session=False``, and shared subscriptions are not
available (``docs/telemetry.md``). Use mosquitto (or another MQTT 5 broker) in
production.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import TracebackType
from typing import Any

from ems.errors import TelemetryError

__all__ = ["EmbeddedBroker", "check_port_free", "free_port", "run_broker", "wait_for_port"]

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(host: str, port: int, what: str, hint: str = "choose another --port") -> None:
    """Fail early, with one line, if ``host:port`` cannot be listened on.

    Called before a command loads data or starts anything, so a busy port costs the
    user nothing and leaves nothing behind. Port 0 (any free port) always passes.

    Parameters
    ----------
    host : str
        Address to listen on.
    port : int
        TCP port; 0 for any.
    what : str
        Who wants it, for the message (``embedded broker``, ``dashboard``).
    hint : str
        What the user can do instead.

    Raises
    ------
    TelemetryError
        The port is taken, or the address is not a local one.
    """
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TelemetryError(
                    f"{what}: port {port} on {host} is already in use (another broker or server?); "
                    f"stop it or {hint}"
                ) from None
            raise TelemetryError(f"{what}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def wait_for_port(host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until ``host:port`` accepts TCP connections.

    Raises
    ------
    TelemetryError
        If it does not within ``timeout`` [s], or ``proc`` exits first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TelemetryError(f"broker process exited with code {proc.returncode} before {host}:{port} accepted")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TelemetryError(f"expected a broker on {host}:{port} within {timeout:g} s; nothing accepted")


def _config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def run_broker(host: str = "127.0.0.1", port: int = 1883) -> None:
    """Run the amqtt broker in this process until SIGINT or SIGTERM.

    Raises
    ------
    TelemetryError
        The port is in use or cannot be listened on (checked before amqtt starts).
    """
    check_port_free(host, port, "embedded broker")
    from amqtt.broker import Broker
    from amqtt.errors import BrokerError

    # the readiness probe (a bare TCP connect) makes amqtt log a traceback: not ours
    logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)

    async def main() -> None:
        broker = Broker(_config(host, port))
        try:
            await broker.start()
        except BrokerError as exc:  # lost a race for the port since the check
            raise TelemetryError(f"embedded broker: cannot listen on {host}:{port}: {exc}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(main())


class EmbeddedBroker:
    """An amqtt broker in a child process, as a context manager.

    Parameters
    ----------
    port : int, optional
        TCP port; a free one if not given.
    host : str
        Address to listen on (loopback by default).

    Examples
    --------
    >>> with EmbeddedBroker() as b:  # doctest: +SKIP
    ...     print(b.url)
    mqtt://127.0.0.1:45321
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Broker URL for ``--broker`` (clients negotiate MQTT 3.1.1 with it)."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        """Start the child process and wait until it accepts connections."""
        cmd = [sys.executable, "-m", "ems.telemetry.broker", "--host", self.host, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=dict(os.environ))
        try:
            wait_for_port(self.host, self.port, timeout, self.proc)
        except TelemetryError:
            self.stop()
            raise
        log.info("embedded broker on %s:%d (pid %d)", self.host, self.port, self.proc.pid)
        return self

    def stop(self) -> None:
        """Stop the child process (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ems.telemetry.broker", description="embedded amqtt broker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        run_broker(a.host, a.port)
    except TelemetryError as exc:  # one line; the parent reports the exit code
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    _main()
