"""The metrics port (`lakera_metrics_port`, off by default): `/metrics` for Prometheus,
`/healthz` and `/readyz` for probes, served by aiohttp on mitmproxy's event loop.

The socket is bound in `configure` (synchronously, so that a port in use is a one-line option
error, and a change of port is refused while the old server keeps serving), served once the
loop runs, and closed in `done`. While the port is 0 nothing of this runs: no server, and the
Lakera client and the phases are not told to report anything (`MetricsPort.observe`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from mitmproxy import http
from mitmproxy.utils import asyncio_utils

from lakera_addon import readiness
from lakera_addon.configuration import Config
from lakera_addon.decision import Side
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.metrics import Metrics
from lakera_addon.readiness import LakeraHealth
from lakera_addon.readiness import Probe
from lakera_addon.stats import Stats
from lakera_addon.verdict import Verdict
from lakera_addon.verdicts import Verdicts

logger = logging.getLogger("lakera_addon")

Page = Callable[[], tuple[int, str, bytes]]  # (status, content type, body)
# Prometheus's text format, which generate_latest writes (and every Prometheus reads)
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def parse_port(value: str) -> int:
    """`lakera_metrics_port`: 0 (off) or a TCP port; ValueError with what is allowed."""
    try:
        port = int(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a port number (0: off, or 1-65535)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a port number (0: off, or 1-65535)")
    return port


def parse_seconds(value: str) -> int:
    """`lakera_ready_failure_seconds`: a whole number of seconds, 0 or more."""
    try:
        seconds = int(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number of seconds") from None
    if seconds < 0:
        raise ValueError(f"{seconds} is negative")
    return seconds


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (host "" : every address); OSError if it cannot be
    had. (A host name is resolved here, once, when the option is set.)"""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _json(probe: Probe) -> tuple[int, str, bytes]:
    body = json.dumps(probe.body(), separators=(",", ":")).encode() + b"\n"
    return (200 if probe.ok else 503), "application/json", body


class HealthServer:
    """An HTTP server of a few fixed pages on one socket, on the running event loop."""

    def __init__(self, pages: Mapping[str, Page]) -> None:
        self.pages = pages
        self.address: tuple[str, int] | None = None  # where it was asked to listen
        self._sock: socket.socket | None = None  # bound, to be served or served
        self._starting: socket.socket | None = None
        self._serving: tuple[socket.socket, asyncio.Server, web.Server] | None = None

    def listen(self, host: str, port: int) -> None:
        """Serve on host:port from now on (port 0: not at all). OSError if the socket cannot be
        had; the server already running then keeps running."""
        if port == 0:
            self.close()
            return
        if self.address == (host, port):
            return
        if self.address is not None and self.address[1] == port:
            self.close()  # the same port on another host: free it first
        sock = bind(host, port)
        self.close()
        self._sock, self.address = sock, (host, port)
        self.serve()

    def serve(self) -> None:
        """Start serving the bound socket, if the event loop runs (else `running` calls this
        again)."""
        sock = self._sock
        if sock is None or sock is self._starting or (
                self._serving is not None and self._serving[0] is sock):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._starting = sock
        _spawn(self._start(sock), "lakera metrics server start")

    async def _start(self, sock: socket.socket) -> None:
        # a scraper or probe asks and goes: an idle connection is closed after 5 s (aiohttp's
        # default keeps it an hour, holding one of the descriptors the proxy also needs)
        handler = web.Server(self._handle, access_log=None, keepalive_timeout=5.0)
        try:
            if sock is not self._sock:  # closed or replaced before it started
                sock.close()
                return
            server = await asyncio.get_running_loop().create_server(handler, sock=sock)
        except OSError as e:
            logger.error("lakera_metrics_port: cannot serve on %s: %s", self.address, e)
            return
        finally:
            self._starting = None
        if sock is not self._sock:  # closed or replaced while starting
            server.close()
            await handler.shutdown(1.0)
            return
        self._serving = (sock, server, handler)

    def close(self) -> None:
        """Stop listening at once (the port is free when this returns); open connections are
        closed in the background."""
        sock, self._sock, self.address = self._sock, None, None
        serving, self._serving = self._serving, None
        if serving is not None:
            _, server, handler = serving
            server.close()
            _spawn(handler.shutdown(1.0), "lakera metrics server shutdown")
        elif sock is not None and sock is not self._starting:
            sock.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        page = self.pages.get(request.path)
        if page is None or request.method not in ("GET", "HEAD"):
            return web.Response(status=404, text="not found: /metrics, /healthz, /readyz\n")
        status, content_type, body = page()
        return web.Response(status=status, body=body, headers={"content-type": content_type})


def _spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
    try:
        asyncio_utils.create_task(coro, name=name, keep_ref=True)
    except RuntimeError:  # no running loop: nothing is served then either
        coro.close()


class MetricsPort:
    """The metrics port of one addon instance: the metrics, Lakera's health, the server."""

    def __init__(self, stats: Stats, lakera: LakeraClient, verdicts: Verdicts,
                 flows: Mapping[http.HTTPFlow, object],
                 configuration: Callable[[], Config | None]) -> None:
        self.stats = stats
        self.lakera = lakera
        self.verdicts = verdicts
        self.configuration = configuration  # the one in force
        self.metrics = Metrics(stats, lakera, flows)
        self.lakera_health = LakeraHealth()
        self.ready_failure_seconds = 30
        self.server = HealthServer({"/metrics": self._metrics, "/healthz": self.healthz,
                                    "/readyz": self.readyz})

    def configure(self, host: str, port_option: str, seconds_option: str) -> None:
        """Apply the options (`lakera_metrics_host`, `lakera_metrics_port`,
        `lakera_ready_failure_seconds`); a ValueError naming the option if one is wrong or
        the port cannot be had, and nothing changed then."""
        try:
            port = parse_port(port_option)
        except ValueError as e:
            raise ValueError(f"lakera_metrics_port: {e}") from None
        try:
            seconds = parse_seconds(seconds_option)
        except ValueError as e:
            raise ValueError(f"lakera_ready_failure_seconds: {e}") from None
        try:
            self.server.listen(host, port)
        except OSError as e:
            raise ValueError(f"lakera_metrics_port: cannot listen on {host}:{port}: "
                             f"{e.strerror or e}") from None
        self.ready_failure_seconds = seconds
        self.observe(port != 0)

    def observe(self, on: bool) -> None:
        """Have the Lakera client and the phases report to the metrics, or stop them."""
        self.lakera.on_call = self._lakera_call if on else None
        self.verdicts.on_hold = self._held if on else None

    def serve(self) -> None:
        self.server.serve()

    def close(self) -> None:
        self.observe(False)
        self.server.close()

    # --- what the phases report (never raising: they are on a flow's path) -------------------

    def _lakera_call(self, verdict: Verdict) -> None:
        try:
            self.metrics.lakera_call(verdict)
            self.lakera_health.call(verdict, time.monotonic())
        except Exception:
            logger.exception("lakera_addon could not count a Lakera call")

    def _held(self, side: Side, seconds: float) -> None:
        try:
            self.metrics.added(side, seconds)
        except Exception:
            logger.exception("lakera_addon could not count a flow's wait")

    # --- the pages ---------------------------------------------------------------------------

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, TEXT_FORMAT, self.metrics.render()

    def healthz(self) -> tuple[int, str, bytes]:
        config = self.configuration()
        return _json(readiness.liveness(None if config is None else config.source,
                                        0 if config is None else len(config.routes),
                                        self.stats.config_last_reload_ok))

    def readyz(self) -> tuple[int, str, bytes]:
        return _json(readiness.readiness(self.lakera_health, time.monotonic(),
                                         self.ready_failure_seconds))
