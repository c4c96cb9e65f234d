"""Verdicts by content hash, so that an identical Lakera call is not made twice.

Clients retry: the SDKs on a timeout or a 5xx, a coding agent after an error, a user pressing
"regenerate". Each retry resends the same messages to the same endpoint, and Lakera's answer to
the same messages is the same. The key is a SHA-256 of everything the call depends on: the
endpoint, the key (hashed with the rest, never stored), and the exact request body Lakera would
receive (messages, project_id, breakdown/payload flags). Only real verdicts are kept, never a
failure (a timeout now says nothing about a minute later). A call whose twin is still in flight
waits for that one instead of making its own (a retry sent while the first attempt is still
being screened). Bounded: the least recently used entries go first.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from lakera_addon.verdict import Verdict

MAX_ENTRIES: Final = 4096


def cache_key(endpoint: str, api_key: str | None, body: bytes, ssl_verify: bool = True
              ) -> bytes:
    """The key of a call: where it goes, with which key and certificate check (a verdict got
    without checking Lakera's certificate is not reused once a reloaded configuration checks
    it), and what it sends."""
    digest = hashlib.sha256()
    for part in (endpoint.encode(), (api_key or "").encode(), b"1" if ssl_verify else b"0",
                 body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class VerdictCache:
    def __init__(self, max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[bytes, tuple[float, Verdict]] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Future[Verdict]] = {}
        self._max_entries = max_entries
        self._clock = clock
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Verdict | None:
        """A kept verdict for `key` that has not expired, marked as cached."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, verdict = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return replace(verdict, cached=True, latency_ms=0.0)

    def put(self, key: bytes, verdict: Verdict, ttl_seconds: float) -> None:
        if verdict.failure is not None or ttl_seconds <= 0:
            return
        self._entries[key] = (self._clock() + ttl_seconds, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def verdict(
        self, key: bytes, ttl_seconds: float, call: Callable[[], Awaitable[Verdict]]
    ) -> Verdict:
        """The cached verdict, the verdict of an identical call in flight, or `call()`'s."""
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        twin = self._in_flight.get(key)
        if twin is not None:
            await asyncio.wait({twin})  # raises only if this caller itself is cancelled
            if not twin.cancelled() and twin.exception() is None:
                self.hits += 1
                verdict = twin.result()
                return verdict if verdict.failure is not None else replace(
                    verdict, cached=True, latency_ms=0.0)
            return await call()  # the twin's caller went away: make the call after all
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            verdict = await call()
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(verdict)
            self.put(key, verdict, ttl_seconds)
            return verdict
        finally:
            del self._in_flight[key]
