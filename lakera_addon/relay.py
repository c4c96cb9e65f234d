"""The relay: an upstream under the addon's control, for what mitmproxy's stream functions
cannot do (SPEC section 5, `stream_mode: windowed` and `input_mode: parallel`).

A mitmproxy stream function is called synchronously, only when the upstream sends bytes, and
the last chunk must go out at the end of the upstream's body: it cannot wait for a verdict
before the end (mitmproxy-addon-notes section 9). So a flow that needs to is sent, in the
request hook, to this small HTTP server on 127.0.0.1 inside the mitmproxy process (the flow's
destination is rewritten, with a one-time token). The relay makes the upstream request itself
and answers mitmproxy, which streams the relay's answer to the client as it comes:

- `input_mode: parallel`: the request goes upstream at once while Lakera is asked; nothing of
  the answer goes to mitmproxy before the request's verdict; on a deny the upstream connection
  is closed (the provider stops generating) and the answer is the protocol's deny, with its
  status (`deny_code`).
- `stream_mode: windowed`: a streamed answer is released window by window (windowed.py).

Everything else passes through unchanged (mitmproxy's own hooks then screen it as usual). The
relay talks to the upstream over HTTP/1.1 with aiohttp, directly: mitmproxy's upstream-proxy
mode does not apply to relayed flows, and the upstream's certificate is checked as mitmproxy
would (`ssl_insecure`, `ssl_verify_upstream_trusted_ca`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web
from mitmproxy import http
from mitmproxy.utils import asyncio_utils
from multidict import CIMultiDict
from yarl import URL

from lakera_addon import routing
from lakera_addon.decision import Decision
from lakera_addon.decision import decide_failure
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.flow_state import FlowState
from lakera_addon.verdicts import Verdicts
from lakera_addon.windowed import WindowedRelease

logger = logging.getLogger("lakera_addon")

TOKEN_HEADER: Final = "x-lakera-relay"
_HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length", TOKEN_HEADER})
_CHUNK: Final = 64 * 1024
_NO_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_QUIET = logging.getLogger("lakera_addon.relay.http")  # never printed: it quotes headers
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


@dataclass(slots=True)
class Job:
    """A relayed flow: where it was going, and the request's verdict in parallel mode."""

    flow: http.HTTPFlow
    state: FlowState
    scheme: str
    host: str
    port: int
    host_header: str | None
    sni: str | None  # the TLS server name mitmproxy would have sent (transparent modes)
    verdict: Awaitable[Decision] | None  # input_mode: parallel; None: screened already


class Relay:
    def __init__(self, verdicts: Verdicts) -> None:
        self.verdicts = verdicts
        self.port = 0
        self._upstream_ssl: ssl.SSLContext | bool = True
        self._jobs: dict[str, Job] = {}
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._starting: asyncio.Lock | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1 (once; later calls return at once)."""
        if self._runner is not None:
            return
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self._runner is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(256)
            listener.setblocking(False)
            # handler_cancellation: a client that goes away cancels its relay (and so closes
            # the upstream); a logger of its own: aiohttp's errors quote request headers
            server = web.Server(self._handle, access_log=None, handler_cancellation=True,
                                logger=_QUIET, max_line_size=65536, max_field_size=65536)
            runner = web.ServerRunner(server, handle_signals=False)
            await runner.setup()
            await web.SockSite(runner, listener).start()
            self.port = listener.getsockname()[1]
            self._runner = runner

    @property
    def upstream_ssl(self) -> ssl.SSLContext | bool:
        return self._upstream_ssl

    @upstream_ssl.setter
    def upstream_ssl(self, value: ssl.SSLContext | bool) -> None:
        """How upstream certificates are checked; a change applies to the next flows."""
        self._upstream_ssl = value
        session, self._session = self._session, None
        if session is not None:  # (it exists only once a flow was relayed: the loop runs)
            asyncio_utils.create_task(session.close(), name="lakera relay session close",
                                      keep_ref=True)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=self._upstream_ssl),
                trust_env=False, auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
        return self._session

    async def close(self) -> None:
        runner, session, self._runner, self._session = (self._runner, self._session, None,
                                                        None)
        if session is not None:
            await session.close()
        if runner is not None:
            await runner.cleanup()

    # --- sending a flow through the relay ----------------------------------------------------

    def send(self, flow: http.HTTPFlow, state: FlowState,
             verdict: Awaitable[Decision] | None = None) -> None:
        """Send `flow` to the relay instead of its upstream (call it from the request hook,
        after `start`)."""
        request = flow.request
        token = secrets.token_urlsafe(18)
        sni = flow.server_conn.sni or flow.client_conn.sni
        self._jobs[token] = Job(flow, state, request.scheme, request.host, request.port,
                                request.host_header, sni if isinstance(sni, str) else None,
                                verdict)
        state.relay_token = token
        request.scheme, request.host, request.port = "http", "127.0.0.1", self.port
        request.headers[TOKEN_HEADER] = token

    def finish(self, flow: http.HTTPFlow, token: str) -> None:
        """A relayed flow has ended (answered, or failed): its token is no longer valid, and the
        flow shows its real destination. (The relay removes a job when it takes it; this
        removes one it never took: a request its HTTP parser refused, a client gone first.)"""
        job = self._jobs.pop(token, None)
        if job is not None:
            self.restore(flow, job)

    @staticmethod
    def restore(flow: http.HTTPFlow, job: Job) -> None:
        """Show the flow with its real destination again (mitmweb), after the relay."""
        request = flow.request
        request.scheme, request.host, request.port = job.scheme, job.host, job.port
        if job.host_header is not None:
            request.host_header = job.host_header
        request.headers.pop(TOKEN_HEADER, None)

    # --- the relay's side --------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        job = self._jobs.pop(request.headers.get(TOKEN_HEADER, ""), None)
        if job is None:  # only mitmproxy, with a token it was given, may use the relay
            return web.Response(status=403, text="lakera_addon relay: no such flow\n")
        # at once, not when the answer is written: mitmproxy's response hook (and mitmweb)
        # may see the flow before this task resumes
        self.restore(job.flow, job)
        body = await request.content.read()  # (held by mitmproxy already: no size limit)
        return await self._relay(job, request, body)

    async def _relay(self, job: Job, request: web.BaseRequest,
                     body: bytes) -> web.StreamResponse:
        session = self._client()
        # the path and query as sent (encoded: not normalised again), every header as sent
        # (duplicates too) but hop-by-hop ones, and none that aiohttp would add of its own
        url = URL(f"{job.scheme}://{_authority(job)}{request.raw_path}", encoded=True)
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in _HOP_BY_HOP)
        if job.host_header:
            headers["Host"] = job.host_header
        upstream = asyncio.ensure_future(session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            server_hostname=job.sni if job.scheme == "https" and job.sni else None))
        try:
            if job.verdict is not None:  # parallel: the answer waits for the prompt's verdict
                decision = await job.verdict
                if decision.deny or job.state.denied:
                    return self._deny(job, upstream)
            try:
                answer = await upstream
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                logger.warning("lakera_addon relay could not reach %s: %s", _authority(job),
                               type(e).__name__)
                return web.json_response({"error": {"message": "lakera_addon relay: upstream "
                                                    f"unreachable ({type(e).__name__})"}},
                                         status=502)
            async with answer:
                return await self._answer(job, request, answer)
        finally:
            if not upstream.done():
                upstream.cancel()

    def _deny(self, job: Job, upstream: asyncio.Future[aiohttp.ClientResponse]
              ) -> web.Response:
        """The prompt was denied while the upstream was asked: close that (the provider stops
        generating) and answer with the deny."""
        upstream.cancel()
        if upstream.done() and not upstream.cancelled() and upstream.exception() is None:
            upstream.result().close()
        deny = self.verdicts.deny_response(job.state, "request", job.state.streams)
        return web.Response(status=deny.status, body=deny.body, headers=deny.headers)

    async def _answer(self, job: Job, request: web.BaseRequest,
                      answer: aiohttp.ClientResponse) -> web.StreamResponse:
        state = job.state
        content_type = answer.headers.get("content-type")
        windowed = (state.settings.windowed and state.settings.scans_output
                    and not state.generic  # (no known protocol: mitmproxy holds it whole)
                    and 200 <= answer.status < 300 and routing.is_streamed_answer(content_type))
        out = web.StreamResponse(status=answer.status, reason=answer.reason)
        for key, value in answer.headers.items():
            if key.lower() not in _HOP_BY_HOP and not (
                    windowed and key.lower() == "content-encoding"):
                out.headers.add(key, value)
        if not windowed and "content-length" in answer.headers:
            out.content_length = int(answer.headers["content-length"])
        if windowed:
            try:
                release = WindowedRelease(job.flow, state, self.verdicts,
                                          answer.headers.get("content-encoding"))
            except ValueError:  # a coding it cannot read: mitmproxy holds it instead
                windowed = False
        state.relay_screened = windowed  # (the response hooks read it: nothing left to do)
        await out.prepare(request)
        if not windowed:
            async for chunk in answer.content.iter_chunked(_CHUNK):
                await out.write(chunk)
            await out.write_eof()
            return out
        try:
            decision = await release.run(_chunks(answer), out.write)
        except (ConnectionError, asyncio.CancelledError):
            raise  # the client went away: the upstream is closed with the answer
        except Exception as e:  # a bug: end the stream (mitmproxy closes the client's)
            logger.error("lakera_addon internal error in a windowed stream [%s]: %s",
                         _authority(job), type(e).__name__, exc_info=e)
            failure = Failure(FailureKind.INTERNAL, f"internal error ({type(e).__name__})")
            release.record(decide_failure(failure, state.settings))
            raise
        if decision.deny:
            answer.close()  # the provider stops generating
        release.record(decision)
        with contextlib.suppress(ConnectionError):
            await out.write_eof()
        return out


def _authority(job: Job) -> str:
    default = {"http": 80, "https": 443}.get(job.scheme)
    host = f"[{job.host}]" if ":" in job.host else job.host
    return host if job.port == default else f"{host}:{job.port}"


async def _chunks(answer: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in answer.content.iter_any():
        yield chunk


def upstream_ssl(insecure: bool, trusted_ca: str | None) -> ssl.SSLContext | bool:
    """How the relay checks upstream certificates, as mitmproxy's options say."""
    if insecure:
        return False
    if trusted_ca:
        return ssl.create_default_context(cafile=trusted_ca)
    return True

