"""Bad and awkward request bodies, and conversations larger than one Lakera call carries
(SPEC sections 2-5; `max_screen_bytes` in lakera_addon.screen_budget)."""

from __future__ import annotations

import base64
import gzip
import json
import re

import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from tests.e2e.clients import Clients
from tests.e2e.clients import lakera_bodies
from tests.e2e.clients import llm_saw
from tests.harness import Proxy

DENY = "Request blocked by Lakera Guard"
UPSTREAM_TEXT = "Hello from the stand-in."


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": []}),
        ("/v1/chat/completions", {"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64",
                                                                      "data": "AAAA"}}]}]}),
        ("/v1/responses", {"model": "m", "input": []}),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "  "}]}),
    ],
    ids=["empty messages", "image only", "anthropic image only", "empty input", "blank text"],
)
def test_nothing_to_screen_passes_without_a_lakera_call(clients: Clients, proxy: Proxy, lakera,
                                                       path, body) -> None:
    c = clients.make("block")
    calls = len(lakera.received)
    response = c.http.post(f"{c.base}{path}", json=body)
    assert response.status_code == 200
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record["lakera"]["request"] == {"verdict": "unscanned", "action": "allowed",
                                           "failure": "no text"}
    # only the answer was screened (direction both), never the request
    assert all(b["messages"][0]["role"] == "assistant" for b in lakera.received[calls:])
    assert record["marked"] == ""


@pytest.mark.parametrize(("body", "reason"), [
    ([1, 2], "request body is not a JSON object"),
    ("not json at all", "request body is not JSON"),
])
@pytest.mark.parametrize("route", ["block", "failmode-error"])
def test_bodies_that_are_no_json_object_follow_fail_mode(clients: Clients, proxy: Proxy, body,
                                                        reason, route) -> None:
    """fail_mode decides only for a body no LLM upstream would take as a request."""
    c = clients.make(route)
    raw = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
    response = c.http.post(f"{c.base}/v1/chat/completions", content=raw,
                           headers={"content-type": "application/json"})
    if route == "failmode-error":
        assert response.status_code == 500
        assert response.json()["error"]["message"] == f"lakera_addon: {reason}"
    else:  # skip: passed on untouched, the upstream answers as it does
        assert response.status_code in (200, 400)
    assert proxy.wait_for_logged(f"route={route}]: {reason} (fail_mode=")


@pytest.mark.parametrize(
    ("path", "body", "how"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": "hello"},
         "not openai-chat; openai-chat body has no 'messages' list"),
        ("/v1/messages", {"model": "m", "messages": {"role": "user", "content": "hello"}},
         "not anthropic-messages"),
        ("/v1/chat/completions", {"model": "m", "prompt": "hello"}, "no known protocol"),
    ],
)
def test_objects_of_the_wrong_or_no_known_shape_are_screened_whole(
        clients: Clients, proxy: Proxy, lakera, path, body, how) -> None:
    """A JSON object an LLM upstream might still take is not left to fail_mode: every string in
    it is screened (and blocked when flagged)."""
    c = clients.make("block")
    body = json.loads(json.dumps(body).replace("hello", f"hello {c.id}"))
    c.http.post(f"{c.base}{path}", json=body)
    (screened,) = lakera_bodies(lakera, c.id)
    assert screened["messages"][0]["role"] == "user"
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record["lakera"]["request"]["verdict"] == "clean"
    assert how in record["lakera"]["request"]["coverage"]
    flagged = clients.make("block")
    body = json.loads(json.dumps(body).replace(c.id, f"{ATTACK_TRIGGER} {flagged.id}"))
    response = flagged.http.post(f"{flagged.base}{path}", json=body)
    assert DENY in response.text


def test_invalid_utf8_and_lone_surrogates_are_screened(clients: Clients, lakera, llm) -> None:
    c = clients.make("block")
    raw = (b'{"model":"m","messages":[{"role":"user","content":"\\ud800 bad \xff\xfe '
           + f'{ATTACK_TRIGGER} {c.id}'.encode() + b'"}]}')
    response = c.http.post(f"{c.base}/v1/chat/completions", content=raw,
                           headers={"content-type": "application/json"})
    # not UTF-8, yet a lenient upstream (Go's decoder) reads it: read the same way, screened
    assert response.json()["choices"][0]["message"]["content"] == DENY
    assert not llm_saw(llm, c.id)
    c2 = clients.make("block")  # JSON may carry a lone surrogate, escaped
    body = {"model": "m", "messages": [
        {"role": "user", "content": f"\ud800 {ATTACK_TRIGGER} {c2.id}"}]}
    response = c2.http.post(f"{c2.base}/v1/chat/completions", content=json.dumps(body),
                            headers={"content-type": "application/json"})
    assert response.json()["choices"][0]["message"]["content"] == DENY
    assert lakera_bodies(lakera, c2.id)[0]["messages"][0]["content"].startswith("\ud800 ")


def conversation(c_id: str, old: str, new: str) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": f"You are terse. {c_id}"}]
    for i in range(8):
        turns.append({"role": "user" if i % 2 == 0 else "assistant",
                      "content": (old if i == 0 else "") + f" turn {i} " + "z" * 900})
    turns.append({"role": "user", "content": f"{new} now {c_id}"})
    return turns


def test_long_conversation_sends_system_and_recent_turns_then_the_rest(
        clients: Clients, proxy: Proxy, lakera, llm) -> None:
    """A conversation larger than one call: the system prompt and the most recent turns in one
    call, the older turns in calls of their own: a client can write any history, and a flag in
    an old turn still blocks (issue 13)."""
    c = clients.make("budget")
    messages = conversation(c.id, ATTACK_TRIGGER, "")
    answer = c.openai.chat.completions.create(model="m", messages=messages)
    assert answer.choices[0].message.content == DENY and not llm_saw(llm, c.id)
    bodies = lakera_bodies(lakera, c.id)
    sent = bodies[0]["messages"]
    assert sent[0] == messages[0] and sent[-1] == messages[-1]
    assert sum(len(m["content"].encode()) for m in sent) <= 4096
    assert [m["content"] for m in sent[1:]] == [m["content"] for m in messages[-len(sent) + 1:]]
    older = [m for b in lakera.received if b is not bodies[0] for m in b["messages"]
             if m["content"] in {x["content"] for x in messages[1:-len(sent) + 1]}]
    assert len(older) == len(messages) - len(sent)  # every older turn screened too
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record["lakera"]["request"]["coverage"].startswith(
        f"{len(messages) - len(sent)} older of {len(messages)} messages screened in ")
    assert proxy.wait_for_logged("request screened in part [POST 127.0.0.1/budget/")


def test_long_conversation_still_blocks_the_new_turn(clients: Clients, llm) -> None:
    c = clients.make("budget")
    answer = c.openai.chat.completions.create(
        model="m", messages=conversation(c.id, "", ATTACK_TRIGGER))
    assert answer.choices[0].message.content == DENY
    assert not llm_saw(llm, c.id)


def test_newest_turn_larger_than_a_call_follows_fail_open(clients: Clients, proxy: Proxy,
                                                          llm) -> None:
    c = clients.make("budget")
    answer = c.openai.chat.completions.create(model="m", messages=[
        {"role": "user", "content": f"{c.id} " + "w" * 5000}])
    assert answer.choices[0].message.content == DENY
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record["lakera"]["request"]["failure"] == (
        "the system prompt and the newest message alone exceed max_screen_bytes (4096)")
    assert not llm_saw(llm, c.id)


@pytest.mark.parametrize("stream", [False, True])
def test_long_answer_is_screened_whole_in_parts(clients: Clients, proxy: Proxy, lakera,
                                                stream) -> None:
    c = clients.make("budget")
    reply = f"{c.id} " + "v " * 6000 + ATTACK_TRIGGER  # flagged phrase only in the last part
    headers = {"x-standin-reply-b64": base64.b64encode(reply.encode()).decode()}
    if stream:
        chunks = c.openai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers=headers)
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        text = c.openai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}],
            extra_headers=headers).choices[0].message.content or ""
    assert text == "Response blocked by Lakera Guard"
    record = proxy.wait_for_record(
        c.id, lambda r: ((r["lakera"] or {}).get("response") or {}).get("verdict") == "flagged")
    assert re.fullmatch(r"answer screened in \d+ overlapping parts of at most "
                        r"max_screen_bytes \(4096\)", record["lakera"]["response"]["coverage"])
    parts = [b for b in lakera.received
             if b["messages"][0]["role"] == "assistant" and "v v v" in b["messages"][0]["content"]
             and b["messages"][0]["content"].endswith(ATTACK_TRIGGER)]
    assert parts


def test_deeply_nested_json_is_a_failure_not_a_skip(clients: Clients, proxy: Proxy,
                                                    llm) -> None:
    """Valid JSON that Python's parser cannot nest into may still be accepted upstream: it must
    not pass as "unreadable" (fail_mode skip), but fail closed."""
    c = clients.make("block")
    deep = "[" * 20000 + "]" * 20000
    body = ('{"model":"m","metadata":' + deep + ',"messages":[{"role":"user","content":"'
            + f'{ATTACK_TRIGGER} {c.id}"' + '}]}')
    response = c.http.post(f"{c.base}/v1/chat/completions", content=body.encode(),
                           headers={"content-type": "application/json"})
    assert response.json()["choices"][0]["message"]["content"] == DENY
    assert not llm_saw(llm, c.id)
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record["lakera"]["request"]["failure"] == (
        "request body nests too deeply to be screened")


def test_compressed_request_bodies_are_screened_and_bounded(clients: Clients, proxy: Proxy,
                                                            llm) -> None:
    c = clients.make("block")
    body = json.dumps({"model": "m", "messages": [
        {"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}]}).encode()
    response = c.http.post(f"{c.base}/v1/chat/completions", content=gzip.compress(body),
                           headers={"content-type": "application/json",
                                    "content-encoding": "gzip"})
    assert response.json()["choices"][0]["message"]["content"] == DENY
    c2 = clients.make("block")  # 200 MiB of zeros in ~200 kB: never decoded whole
    bomb = gzip.compress(b'{"model":"m","messages":[],"x":"' + b"0" * (200 << 20) + b'"}')
    response = c2.http.post(f"{c2.base}/v1/chat/completions", content=bomb,
                            headers={"content-type": "application/json",
                                     "content-encoding": "gzip"})
    assert response.json()["choices"][0]["message"]["content"] == DENY
    record = proxy.wait_for_record(c2.id, lambda r: r["hook"] == "response")
    assert record["lakera"]["request"]["failure"] == (
        "request body larger than max_body_bytes (8388608 bytes) once decoded")
    assert not llm_saw(llm, c2.id)


def test_oversized_request_deny_streams_when_asked(clients: Clients) -> None:
    c = clients.make("small")
    chunks = c.openai.chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "q" * 5000}])
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == DENY


def test_oversized_request_let_through_still_has_its_answer_screened(clients: Clients,
                                                                     proxy: Proxy) -> None:
    c = clients.make("small-open")
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "q" * 5000}],
        extra_headers={"x-standin-reply": ATTACK_TRIGGER, "x-test-id": c.id})
    assert answer.choices[0].message.content == "Response blocked by Lakera Guard"
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record["lakera"]["request"]["verdict"] == "failure"
    assert record["lakera"]["response"]["verdict"] == "flagged"
