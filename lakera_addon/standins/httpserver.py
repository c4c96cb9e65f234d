"""A small threaded HTTP/1.1 server on loopback for the local stand-ins.

The standard library's `ThreadingHTTPServer` is enough here: one thread per connection,
keep-alive, and writes that go straight to the socket (so each SSE event can be its own TCP
write, and a stand-in can trickle a body or cut a connection short). No dependency to add.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Any
from typing import Self


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Writer:
    """How an app answers: a whole body, a chunked body written piece by piece, or a cut."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self._handler = handler
        self.started = False

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.started = True
        self._handler.send_response(status)
        for name, value in headers.items():
            self._handler.send_header(name, value)
        self._handler.end_headers()

    def send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self._head(status, {**headers, "content-length": str(len(body))})
        self._handler.wfile.write(body)

    def send_json(self, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(document).encode()
        self.send(status, {"content-type": "application/json", **(headers or {})}, body)

    def start(self, status: int, headers: dict[str, str]) -> None:
        """Start a chunked body."""
        self._head(status, {**headers, "transfer-encoding": "chunked"})

    def chunk(self, data: bytes) -> None:
        if data:
            self._handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self._handler.wfile.flush()

    def end(self) -> None:
        self._handler.wfile.write(b"0\r\n\r\n")
        self._handler.wfile.flush()

    def raw(self, data: bytes) -> None:
        """Bytes on the socket as they are (a body with content-length written slowly)."""
        self._handler.wfile.write(data)
        self._handler.wfile.flush()

    def abort(self) -> None:
        """Cut the connection now, mid-body: the peer sees it close without an end."""
        self._handler.close_connection = True
        with contextlib.suppress(OSError):
            self._handler.connection.shutdown(socket.SHUT_RDWR)


App = Callable[[Request, Writer], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        # TLS: the listening socket does not handshake on accept, so a slow or failing client
        # handshake happens here, in this connection's thread, not in the accept loop.
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def _dispatch(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Request(self.command, self.path, headers, body)
        writer = Writer(self)
        try:
            self.server.app(request, writer)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a stand-in bug: answer 500 rather than hang the client
            if not writer.started:
                writer.send_json(500, {"error": {"message": f"stand-in error: {e!r}"}})
            self.close_connection = True

    do_GET = _dispatch
    do_POST = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the load tests open hundreds of connections at once

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A connection the stand-in cut on purpose, or the client closed: not worth a traceback.
        if not isinstance(sys.exc_info()[1], OSError | ValueError):
            super().handle_error(request, client_address)


class BackgroundServer:
    """Serves an app on loopback from a background thread; a context manager.

    With `ssl_context` (a server-side context with a certificate loaded) it serves HTTPS; the
    attribute may also be set after construction, as long as it is before `start()`."""

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._server = _Server((host, port), app)
        self._thread: threading.Thread | None = None
        self.ssl_context = ssl_context

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> Self:
        if self.ssl_context is not None and not isinstance(self._server.socket, ssl.SSLSocket):
            self._server.socket = self.ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
