"""`stream_mode: windowed` and `input_mode: parallel` end to end (issue 14): the answer is
released window by window, only text a clean verdict covered, through the relay; every
protocol's official SDK reads the stream, clean and cut; a prompt goes upstream while Lakera is
asked, and no byte of the answer reaches the client before the prompt's verdict."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from tests.e2e.clients import Clients
from tests.e2e.clients import lakera_bodies
from tests.e2e.clients import stream_answer
from tests.e2e.clients import stream_native
from tests.harness import Proxy

PROTOCOLS = ["chat", "responses", "anthropic", "gemini", "ollama-chat", "ollama-generate"]
NORMAL_ENDING = {"chat": "stop", "responses": "completed", "anthropic": "end_turn",
                 "gemini": "STOP", "ollama-chat": "stop", "ollama-generate": "stop"}
CUT_ENDING = {"chat": "content_filter", "responses": "incomplete:content_filter",
              "anthropic": "refusal", "gemini": "SAFETY", "ollama-chat": "content_filter",
              "ollama-generate": "content_filter"}
DENY = "Response blocked by Lakera Guard"
REQUEST_DENY = "Request blocked by Lakera Guard"
TAIL = "TAIL-MARKER-END"


def words(n: int, tag: str) -> str:
    return "".join(f"{tag}{i} " for i in range(n))


def stream(clients: Clients, proxy: Proxy, route: str, protocol: str, reply: str,
           mode: str = "delay-ms=2") -> tuple[str, str, str | None]:
    """(test id, the text the SDK's caller got, how the stream ended)."""
    c = clients.make(route)
    reply = reply.replace("{id}", c.id)
    if protocol in ("chat", "responses", "anthropic"):
        got = stream_answer(c, protocol, reply, mode)
        return c.id, got.text, got.ending
    text, ending, _, _ = stream_native(proxy, protocol, route, c.id, reply, mode)
    return c.id, text, ending


def response_record(proxy: Proxy, test_id: str) -> dict[str, Any]:
    record = proxy.wait_for_record(test_id, lambda r: ((r["lakera"] or {}).get("response") or {})
                                   .get("verdict") not in (None, "pending"))
    return record


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_clean_answer_arrives_whole_with_its_own_ending(clients: Clients, proxy: Proxy,
                                                          lakera, protocol) -> None:
    reply = "{id} " + words(150, "clean") + TAIL  # ~1,300 characters, windows of 200
    test_id, text, ending = stream(clients, proxy, "windowed", protocol, reply)
    assert text == reply.replace("{id}", test_id) and ending == NORMAL_ENDING[protocol]
    record = response_record(proxy, test_id)["lakera"]["response"]
    assert record["verdict"] == "clean" and record["coverage"].startswith("windowed: ")
    scans = [b for b in lakera_bodies(lakera, test_id) if b["messages"][0]["role"] == "assistant"]
    assert 2 <= len(scans) <= math.ceil(len(text) / 200) + 1  # the target: ceil(n / w) + 1
    assert scans[-1]["messages"][0]["content"] == text  # the last scan covers all of it


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_flag_ends_the_stream_after_its_clean_part_only(clients: Clients, proxy: Proxy,
                                                          protocol) -> None:
    reply = "{id} " + words(60, "before") + ATTACK_TRIGGER + " " + words(80, "after") + TAIL
    test_id, text, ending = stream(clients, proxy, "windowed", protocol, reply)
    assert ending == CUT_ENDING[protocol] and text.endswith(DENY)
    assert ATTACK_TRIGGER not in text and "after" not in text and TAIL not in text
    released = text.removesuffix(DENY).rstrip()
    assert reply.replace("{id}", test_id).startswith(released)
    record = response_record(proxy, test_id)["lakera"]["response"]
    assert record["verdict"] == "flagged" and record["action"] == "blocked"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_instant_upstream_leaks_nothing_past_the_last_clean_window(
        clients: Clients, proxy: Proxy, protocol) -> None:
    """The whole answer in one write (a cached answer, a fast provider): the first scan
    covers all of it, and nothing is released before its verdict."""
    reply = "{id} " + words(20, "early") + ATTACK_TRIGGER + " " + words(200, "late") + TAIL
    _, text, ending = stream(clients, proxy, "windowed", protocol, reply, mode="")
    assert ending == CUT_ENDING[protocol]
    assert ATTACK_TRIGGER not in text and "late" not in text and TAIL not in text
    assert text.endswith(DENY)


def test_a_failure_closes_when_failures_deny_and_releases_when_they_pass(
        clients: Clients, proxy: Proxy) -> None:
    reply = "{id} lakera-500 " + words(40, "w") + TAIL
    test_id, text, ending = stream(clients, proxy, "windowed", "chat", reply)
    assert ending == "content_filter" and TAIL not in text
    assert response_record(proxy, test_id)["lakera"]["response"]["verdict"] == "failure"
    test_id, text, ending = stream(clients, proxy, "windowed-open", "chat", reply)
    assert ending == "stop" and text.endswith(TAIL)
    record = response_record(proxy, test_id)
    assert record["lakera"]["response"]["verdict"] == "failure"
    assert record["lakera"]["response"]["action"] == "allowed"


def test_json_answers_on_a_windowed_route_are_held_and_screened(clients: Clients) -> None:
    c = clients.make("windowed")
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"hi {c.id}"}],
        extra_headers={"x-standin-reply": f"{ATTACK_TRIGGER} {c.id}"})
    assert answer.choices[0].message.content == DENY


def test_the_flow_shows_its_real_destination(clients: Clients, proxy: Proxy, llm) -> None:
    """mitmweb shows where the answer came from, not the relay inside the addon."""
    test_id, _, _ = stream(clients, proxy, "windowed", "chat", "{id} hello")
    record = proxy.wait_for_record(test_id, lambda r: r["hook"] == "response")
    assert record["destination"] == f"127.0.0.1:{llm.port}" and not record["relay_token"]


# --- input_mode: parallel --------------------------------------------------------------------


@pytest.mark.parametrize("stream_answer_", [False, True])
def test_parallel_denies_a_flagged_prompt_and_the_client_sees_only_the_deny(
        clients: Clients, proxy: Proxy, llm, stream_answer_) -> None:
    c = clients.make("parallel")
    messages: Any = [{"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}]
    if stream_answer_:
        chunks = c.openai.chat.completions.create(model="m", messages=messages, stream=True)
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        text = c.openai.chat.completions.create(
            model="m", messages=messages).choices[0].message.content or ""
    assert text == REQUEST_DENY  # (the upstream may have had it: what parallel costs)
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record["lakera"]["request"]["action"] == "blocked"


def test_parallel_closes_the_upstream_at_once_on_a_deny(clients: Clients) -> None:
    """The upstream takes 3 s to answer; the deny does not wait for it."""
    c = clients.make("parallel")
    started = time.monotonic()
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}],
        extra_headers={"x-standin-mode": "delay-ms=3000"})
    assert answer.choices[0].message.content == REQUEST_DENY
    assert time.monotonic() - started < 2.0


def test_parallel_passes_a_clean_prompt_and_screens_the_answer(clients: Clients, proxy: Proxy
                                                               ) -> None:
    c = clients.make("parallel")
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"hello {c.id}"}])
    assert answer.choices[0].message.content == "Hello from the stand-in."
    flagged = clients.make("parallel")
    answer = flagged.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"hello {flagged.id}"}],
        extra_headers={"x-standin-reply": f"{ATTACK_TRIGGER} {flagged.id}"})
    assert answer.choices[0].message.content == DENY


def test_parallel_and_windowed_together(clients: Clients, proxy: Proxy) -> None:
    reply = "{id} " + words(60, "clean") + TAIL
    test_id, text, ending = stream(clients, proxy, "parallel-windowed", "anthropic", reply)
    assert text == reply.replace("{id}", test_id) and ending == "end_turn"
    c = clients.make("parallel-windowed")
    chunks = c.anthropic.messages.create(
        model="m", max_tokens=9, stream=True,
        messages=[{"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}])
    assert "".join(e.delta.text for e in chunks if e.type == "content_block_delta") == (
        REQUEST_DENY)
