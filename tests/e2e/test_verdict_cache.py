"""The verdict cache end to end (`verdict_cache_seconds`, on by default for 300 s): identical
requests (client retries) are not screened twice; failures are never reused."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from tests.e2e.clients import Clients
from tests.e2e.clients import lakera_bodies
from tests.e2e.clients import llm_saw
from tests.harness import Proxy

DENY = "Request blocked by Lakera Guard"


def request_records(proxy: Proxy, test_id: str) -> list[dict[str, Any]]:
    return [r["lakera"]["request"] for r in proxy.records(test_id)
            if r["hook"] == "response" and (r["lakera"] or {}).get("request")]


def test_sdk_retries_are_screened_once(clients: Clients, proxy: Proxy, lakera, llm) -> None:
    c = clients.make("block", max_retries=2)
    with pytest.raises(openai.InternalServerError):
        c.openai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"hello {c.id}"}],
            extra_headers={"x-standin-mode": "status=500"})
    assert len(llm_saw(llm, c.id)) == 3, "the SDK sent the request three times"
    assert len(lakera_bodies(lakera, c.id)) == 1, "Lakera was asked once"
    proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    records = request_records(proxy, c.id)
    assert [r.get("cached", False) for r in records] == [False, True, True]
    assert all(r["verdict"] == "clean" for r in records)
    assert proxy.wait_for_logged("request clean [POST 127.0.0.1/block/v1/chat/completions "
                                 "route=block] (cached verdict of an identical call)")


def test_a_cached_flag_still_blocks(clients: Clients, lakera, llm) -> None:
    c = clients.make("block")
    prompt = [{"role": "user", "content": f"{c.id} {ATTACK_TRIGGER}"}]
    for _ in range(2):
        answer = c.openai.chat.completions.create(model="m", messages=prompt)
        assert answer.choices[0].message.content == DENY
    assert len(lakera_bodies(lakera, c.id)) == 1
    assert not llm_saw(llm, c.id)


def test_failures_are_never_reused(clients: Clients, lakera) -> None:
    c = clients.make("block-open")
    prompt = [{"role": "user", "content": f"{c.id} lakera-500"}]
    for _ in range(2):
        c.openai.chat.completions.create(model="m", messages=prompt)
    assert len(lakera_bodies(lakera, c.id)) == 2


def test_a_changed_conversation_is_screened_again(clients: Clients, lakera) -> None:
    c = clients.make("block")
    first: list[Any] = [{"role": "user", "content": f"hello {c.id}"}]
    c.openai.chat.completions.create(model="m", messages=first)
    c.openai.chat.completions.create(model="m", messages=[*first, {
        "role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}])
    assert len(lakera_bodies(lakera, c.id)) == 2
