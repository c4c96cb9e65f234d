"""The verdict cache: what is reused, for how long, and what never is."""

from __future__ import annotations

import asyncio

import pytest

from lakera_addon.configuration import Settings
from lakera_addon.failures import Failure
from lakera_addon.failures import lakera_status
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.verdict import Verdict
from lakera_addon.verdict_cache import VerdictCache
from lakera_addon.verdict_cache import cache_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CLEAN = Verdict(False, latency_ms=12.0)
FAILED = Verdict(False, failure=Failure(lakera_status(500), "Lakera Guard returned status 500"),
                 latency_ms=3.0)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (("https://e/v2/guard", "k1", b"{}"), ("https://e/v2/guard", "k1", b"{}"), True),
        (("https://e/v2/guard", "k1", b"{}"), ("https://e/v2/guard", "k2", b"{}"), False),
        (("https://e/v2/guard", "k1", b"{}"), ("https://f/v2/guard", "k1", b"{}"), False),
        (("https://e/v2/guard", "k1", b"{}"), ("https://e/v2/guard", "k1", b"{ }"), False),
        (("https://e/v2/guard", None, b"{}"), ("https://e/v2/guard", "", b"{}"), True),
        # a boundary between parts cannot move unnoticed
        (("ab", "c", b""), ("a", "bc", b""), False),
        # a verdict got without checking Lakera's certificate is not one got with it
        (("https://e/v2/guard", "k1", b"{}", False), ("https://e/v2/guard", "k1", b"{}"), False),
    ],
)
def test_key_covers_endpoint_key_and_body(a, b, same) -> None:
    assert (cache_key(*a) == cache_key(*b)) is same


def test_kept_until_it_expires_and_marked_cached() -> None:
    clock = Clock()
    cache = VerdictCache(clock=clock)
    cache.put(b"k", CLEAN, 60)
    clock.now = 59.9
    hit = cache.get(b"k")
    assert hit is not None and hit.cached and hit.latency_ms == 0.0 and not hit.flagged
    clock.now = 60.0
    assert cache.get(b"k") is None and len(cache) == 0


def test_failures_and_ttl_zero_are_never_kept() -> None:
    cache = VerdictCache()
    cache.put(b"a", FAILED, 60)
    cache.put(b"b", CLEAN, 0)
    assert cache.get(b"a") is None and cache.get(b"b") is None


def test_least_recently_used_goes_first() -> None:
    cache = VerdictCache(max_entries=2)
    cache.put(b"a", CLEAN, 60)
    cache.put(b"b", CLEAN, 60)
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"c", CLEAN, 60)
    assert cache.get(b"b") is None
    assert cache.get(b"a") is not None and cache.get(b"c") is not None


async def test_an_identical_call_in_flight_is_shared() -> None:
    cache = VerdictCache()
    calls = 0

    async def call() -> Verdict:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return CLEAN

    first, second = await asyncio.gather(cache.verdict(b"k", 60, call),
                                         cache.verdict(b"k", 60, call))
    assert calls == 1
    assert not first.cached and second.cached
    assert (await cache.verdict(b"k", 60, call)).cached and calls == 1


async def test_a_failed_twin_is_passed_on_but_not_kept() -> None:
    cache = VerdictCache()
    calls = 0

    async def call() -> Verdict:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return FAILED

    results = await asyncio.gather(cache.verdict(b"k", 60, call), cache.verdict(b"k", 60, call))
    assert calls == 1 and all(r.failure for r in results)
    await cache.verdict(b"k", 60, call)
    assert calls == 2


async def test_a_cancelled_twin_makes_the_waiter_call_itself() -> None:
    cache = VerdictCache()

    async def slow() -> Verdict:
        await asyncio.sleep(10)
        return CLEAN

    async def fast() -> Verdict:
        return Verdict(True, detector_types=("prompt_attack",))

    first = asyncio.create_task(cache.verdict(b"k", 60, slow))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.verdict(b"k", 60, fast))
    await asyncio.sleep(0)
    first.cancel()
    verdict = await second
    assert verdict.flagged and not verdict.cached


async def test_client_asks_lakera_once_for_identical_messages() -> None:
    with LakeraGuardStandin(api_key="k") as lakera:
        client = LakeraClient()
        settings = Settings(api_key="k", lakera_endpoint=f"{lakera.url}/v2/guard")
        off = Settings(api_key="k", lakera_endpoint=f"{lakera.url}/v2/guard",
                       verdict_cache_seconds=0)
        try:
            attack = [{"role": "user", "content": ATTACK_TRIGGER}]
            verdicts = [await client.screen(settings, attack) for _ in range(3)]
            assert [v.cached for v in verdicts] == [False, True, True]
            assert all(v.flagged for v in verdicts)
            assert len(lakera.received) == 1
            other = await client.screen(settings, [{"role": "user", "content": "hello"}])
            assert not other.cached and len(lakera.received) == 2
            again = await client.screen(off, attack)  # cache off: Lakera is asked
            assert not again.cached and len(lakera.received) == 3
        finally:
            await client.aclose()
