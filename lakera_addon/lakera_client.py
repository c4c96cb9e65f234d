"""The Lakera Guard v2 call and the classification of its answer (SPEC section 4).

One `aiohttp.ClientSession` per TLS-verification setting, made when mitmproxy is running and
kept for the addon's lifetime: pooled connections, `trust_env=False` so the call never goes
through a proxy (on a developer machine `HTTPS_PROXY` often points at this very mitmproxy), and
one overall deadline per call (connect + send + read) with `asyncio.timeout`.

aiohttp rather than httpx: with 200 calls in flight, an httpx 0.28 call cost 7.8 ms of CPU on
mitmproxy's one event-loop thread against 0.8 ms for aiohttp (measured on loopback; httpcore's
pool walks every connection for every queued request, encode/httpcore#1035), and that CPU is
what serialised a loaded proxy.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import aiohttp

from lakera_addon.configuration import Settings
from lakera_addon.extract import Message
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.failures import lakera_status
from lakera_addon.verdict import Verdict
from lakera_addon.verdict import merge
from lakera_addon.verdict_cache import VerdictCache
from lakera_addon.verdict_cache import cache_key

PARTS_AT_ONCE = 4  # calls of one screen_parts in flight at once


def build_payload(settings: Settings, messages: Sequence[Message]) -> dict[str, Any]:
    payload: dict[str, Any] = {"messages": list(messages), "breakdown": True}
    if settings.project_id:
        payload["project_id"] = settings.project_id
    if settings.masks:
        payload["payload"] = True
    return payload


def _detected(breakdown: object) -> tuple[tuple[dict[str, Any], ...], tuple[str, ...]]:
    if not isinstance(breakdown, list):
        return (), ()
    entries = tuple(e for e in breakdown if isinstance(e, dict))
    types: list[str] = []
    for entry in entries:
        kind = entry.get("detector_type")
        if entry.get("detected") is True and isinstance(kind, str) and kind not in types:
            types.append(kind)
    return entries, tuple(types)


def classify(status: int, body: bytes, latency_ms: float) -> Verdict:
    """Turn Lakera's HTTP answer into a verdict or a failure."""
    if not 200 <= status < 300:
        return Verdict(False, failure=Failure(
            lakera_status(status), f"Lakera Guard returned status {status}"),
            latency_ms=latency_ms)
    try:
        document = json.loads(body)
    except ValueError:
        return Verdict(False, failure=Failure(
            FailureKind.NOT_JSON, "Lakera Guard returned a body that is not JSON"),
                       latency_ms=latency_ms)
    if not isinstance(document, dict):
        return Verdict(False, failure=Failure(
            FailureKind.NOT_JSON, "Lakera Guard returned JSON that is not an object"),
                       latency_ms=latency_ms)
    flagged = document.get("flagged")
    if not isinstance(flagged, bool):
        return Verdict(False, failure=Failure(
            FailureKind.NO_VERDICT, "Lakera Guard answer has no boolean 'flagged'"),
                       latency_ms=latency_ms)
    breakdown, types = _detected(document.get("breakdown"))
    metadata = document.get("metadata")
    uuid = metadata.get("request_uuid") if isinstance(metadata, dict) else None
    spans = document.get("payload")
    return Verdict(
        flagged,
        detector_types=types,
        breakdown=breakdown,
        request_uuid=uuid if isinstance(uuid, str) else None,
        latency_ms=latency_ms,
        payload=tuple(e for e in spans if isinstance(e, dict)) if isinstance(spans, list) else (),
    )


TOOL_SET_SECONDS = 24 * 3600  # a tool set's verdict is kept this long (screen_tool_set)


class LakeraClient:
    """Screens messages with Lakera Guard; never raises for a Lakera problem."""

    def __init__(self) -> None:
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self.cache = VerdictCache()
        self.tool_sets = VerdictCache()
        # told of every call made to Lakera (not of cached verdicts): the metrics' latency
        # histogram and the readiness probe (health_server.py); None while they are off
        self.on_call: Callable[[Verdict], None] | None = None

    def _session(self, ssl_verify: bool) -> aiohttp.ClientSession:
        session = self._sessions.get(ssl_verify)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=256, ssl=ssl_verify, keepalive_timeout=30
                ),
                trust_env=False,  # never through a proxy, whatever HTTPS_PROXY says
                timeout=aiohttp.ClientTimeout(total=None),  # one deadline around each call
                headers={"user-agent": "lakera_addon"},
            )
            self._sessions[ssl_verify] = session
        return session

    def prepare(self, ssl_verify: set[bool]) -> None:
        """Make the sessions ahead of the first flow (loading CA certificates takes ~0.2 s).
        Called from a hook, on mitmproxy's running event loop."""
        for verify in ssl_verify:
            self._session(verify)

    async def screen(self, settings: Settings, messages: Sequence[Message]) -> Verdict:
        payload = build_payload(settings, messages)
        try:
            body = json.dumps(payload, ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): send it escaped
            body = json.dumps(payload).encode()
        if not settings.verdict_cache_seconds:
            return await self._call(settings, body)
        key = cache_key(settings.lakera_endpoint, settings.api_key, body, settings.ssl_verify)
        return await self.cache.verdict(key, settings.verdict_cache_seconds,
                                        lambda: self._call(settings, body))

    async def _call(self, settings: Settings, body: bytes) -> Verdict:
        verdict = await self._post(settings, body)
        if self.on_call is not None:
            self.on_call(verdict)
        return verdict

    async def _post(self, settings: Settings, body: bytes) -> Verdict:
        headers = {"content-type": "application/json"}
        if settings.api_key:
            headers["authorization"] = f"Bearer {settings.api_key}"
        started = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 1)

        try:
            async with asyncio.timeout(settings.timeout / 1000):
                session = self._session(settings.ssl_verify)
                async with session.post(
                    settings.lakera_endpoint, data=body, headers=headers
                ) as response:
                    status, content = response.status, await response.read()
        except TimeoutError:
            return Verdict(False, failure=Failure(FailureKind.TIMEOUT, (
                f"Lakera Guard did not answer within {settings.timeout} ms")),
                latency_ms=elapsed())
        except aiohttp.ClientError as e:
            return Verdict(False, failure=Failure(FailureKind.UNREACHABLE, (
                f"failed to reach Lakera Guard: {type(e).__name__}")), latency_ms=elapsed())
        except Exception as e:  # never let a Lakera problem skip the decision
            return Verdict(False, failure=Failure(FailureKind.UNREACHABLE, (
                f"cannot call Lakera Guard: {type(e).__name__}")), latency_ms=elapsed())
        return classify(status, content, elapsed())

    async def screen_parts(
        self, settings: Settings, parts: Sequence[Sequence[Message]]
    ) -> Verdict:
        """Screen several message lists (an answer larger than one call may carry), at most
        PARTS_AT_ONCE at a time: one flow's large answer must not take the connections (and,
        with its calls' timeouts counting while they wait, the verdicts) of the others."""
        if len(parts) == 1:
            return await self.screen(settings, parts[0])
        gate = asyncio.Semaphore(PARTS_AT_ONCE)

        async def one(part: Sequence[Message]) -> Verdict:
            async with gate:
                return await self.screen(settings, part)

        return merge(await asyncio.gather(*(one(p) for p in parts)))

    async def screen_tool_set(
        self, settings: Settings, set_key: bytes, parts: Sequence[Sequence[Message]]
    ) -> Verdict:
        """Screen a request's tool definitions once per distinct set (`set_key`, a hash of the
        definitions) and Lakera endpoint, key and project: an agent resends its whole tool list
        every turn, and it changes rarely. Identical sets in flight share one call; failures
        are never kept."""
        key = cache_key(settings.lakera_endpoint, settings.api_key,
                        (settings.project_id or "").encode() + b"\0" + set_key,
                        settings.ssl_verify)
        return await self.tool_sets.verdict(key, TOOL_SET_SECONDS,
                                            lambda: self.screen_parts(settings, parts))

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
