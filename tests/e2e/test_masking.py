"""`detector_actions` and masking end to end: personal data is replaced by placeholders in
what the LLM receives and in what the client receives, prompt attacks still block, and a span
that cannot be trusted never lets unmasked text pass as masked."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import PII_TRIGGER
from lakera_addon.standins.lakera_guard import PROFANITY_TRIGGER
from tests.e2e.clients import Clients
from tests.e2e.clients import ask
from tests.e2e.clients import lakera_bodies
from tests.e2e.clients import llm_saw
from tests.harness import Proxy

EMAIL = "jane.doe@example.com"
REQUEST_DENY = "Request blocked by Lakera Guard"


def sent_upstream(llm: Any, test_id: str) -> str:
    seen = llm_saw(llm, test_id)
    assert len(seen) == 1
    return str(seen[0]["body"])


def request_record(proxy: Proxy, test_id: str) -> dict[str, Any]:
    record: dict[str, Any] = proxy.wait_for_record(
        test_id, lambda r: r["hook"] == "response")["lakera"]["request"]
    return record


@pytest.mark.parametrize("protocol", ["chat", "responses", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_prompt_pii_is_masked_before_the_llm(clients: Clients, proxy: Proxy, llm, protocol,
                                             stream) -> None:
    c = clients.make("mask")
    prompt = f"Write to {EMAIL} about card {PII_TRIGGER} ({c.id})"
    assert ask(c, protocol, stream, prompt) == "Hello from the stand-in."
    upstream = sent_upstream(llm, c.id)
    assert "[EMAIL]" in upstream and "[CREDIT_CARD]" in upstream
    assert EMAIL not in upstream and PII_TRIGGER not in upstream
    record = request_record(proxy, c.id)
    assert record["action"] == "masked"
    assert record["masked"] == {"[EMAIL]": 1, "[CREDIT_CARD]": 1}
    log = proxy.wait_for_log("masking request: [CREDIT_CARD]×1, [EMAIL]×1")
    assert EMAIL not in proxy.log() and all(EMAIL not in line for line in log)
    record_flow = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record_flow["marked"] == ":mask:"
    assert record_flow["comment"].startswith(
        "lakera: request masked: flagged (pii/credit_card, pii/email) [CREDIT_CARD]×1, [EMAIL]×1")


@pytest.mark.parametrize("units", ["utf16", "bytes", "inclusive"])
def test_offsets_in_other_units_after_multibyte_text(clients: Clients, llm, units) -> None:
    c = clients.make("mask")
    prompt = f"Grüße 😀 — écris à {EMAIL} lakera-span-{units} {c.id}"
    assert ask(c, "chat", False, prompt) == "Hello from the stand-in."
    assert f"Grüße 😀 — écris à [EMAIL] lakera-span-{units}" in sent_upstream(llm, c.id)


def test_spans_in_several_messages_and_overlaps(clients: Clients, llm) -> None:
    c = clients.make("mask")
    messages = [
        {"role": "system", "content": f"Support inbox: {EMAIL}"},
        {"role": "user", "content": [{"type": "text", "text": f"I am {EMAIL}"},
                                     {"type": "text", "text": f"{c.id} and a.b@c.org too"}]},
    ]
    c.openai.chat.completions.create(model="m", messages=messages)
    body = llm_saw(llm, c.id)[0]["body"]
    assert body["messages"][0]["content"] == "Support inbox: [EMAIL]"
    assert body["messages"][1]["content"][0]["text"] == "I am [EMAIL]"
    assert body["messages"][1]["content"][1]["text"] == f"{c.id} and [EMAIL] too"


@pytest.mark.parametrize("switch", ["lakera-span-wrong", "lakera-span-none"])
@pytest.mark.parametrize("route", ["mask", "mask-open"])
def test_untrustworthy_spans_are_a_failure(clients: Clients, proxy: Proxy, llm, switch,
                                           route) -> None:
    c = clients.make(route)
    text = ask(c, "chat", False, f"mail {EMAIL} {switch} {c.id}")
    record = request_record(proxy, c.id)
    assert record["verdict"] == "failure" and record["failure"].startswith("cannot mask: ")
    if route == "mask":
        assert text == REQUEST_DENY and not llm_saw(llm, c.id)
    else:  # fail_open: forwarded, unmasked, and not called masked
        assert text == "Hello from the stand-in." and EMAIL in sent_upstream(llm, c.id)
        assert record["action"] == "allowed" and "masked" not in record


@pytest.mark.parametrize(
    ("extra", "outcome"),
    [(ATTACK_TRIGGER, "blocked"), (PROFANITY_TRIGGER, "masked")],
    ids=["attack blocks over mask", "mask over alert"],
)
def test_strictest_action_wins(clients: Clients, proxy: Proxy, llm, extra, outcome) -> None:
    c = clients.make("mask")
    text = ask(c, "chat", False, f"{extra} mail {EMAIL} {c.id}")
    assert (text == REQUEST_DENY) is (outcome == "blocked")
    assert request_record(proxy, c.id)["action"] == outcome


@pytest.mark.parametrize("protocol", ["chat", "responses", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_answer_pii_is_masked_for_the_client(clients: Clients, proxy: Proxy, protocol,
                                             stream) -> None:
    c = clients.make("mask")
    reply = f"Sure: reach her at {EMAIL}, ✓ {c.id}"
    c.openai = c.openai.with_options(default_headers={
        "x-test-id": c.id, "x-standin-reply-b64": base64.b64encode(reply.encode()).decode()})
    c.anthropic = c.anthropic.with_options(default_headers={
        "x-test-id": c.id, "x-standin-reply-b64": base64.b64encode(reply.encode()).decode()})
    assert ask(c, protocol, stream, "hi") == f"Sure: reach her at [EMAIL], ✓ {c.id}"
    record = proxy.wait_for_record(
        c.id, lambda r: ((r["lakera"] or {}).get("response") or {}).get("action") == "masked")
    assert record["lakera"]["response"]["masked"] == {"[EMAIL]": 1}
    assert record["marked"] == ":mask:"


def test_lakera_is_asked_for_the_payload_only_when_masking(clients: Clients, lakera) -> None:
    masked = clients.make("mask")
    ask(masked, "chat", False, f"hello {masked.id}")
    plain = clients.make("block")
    ask(plain, "chat", False, f"hello {plain.id}")
    assert lakera_bodies(lakera, masked.id)[0].get("payload") is True
    assert "payload" not in lakera_bodies(lakera, plain.id)[0]


def test_pii_everywhere_in_the_body_is_masked(clients: Clients, proxy: Proxy, llm) -> None:
    """The address Lakera found is masked wherever else it occurs: in a tool call's arguments,
    in an older turn left out of the call by max_screen_bytes (screened in a call of its own),
    and an address only in that older turn too."""
    c = clients.make("mask-budget")
    old_only = "old.friend@example.org"
    messages = [
        {"role": "system", "content": f"Assistant for {c.id}"},
        {"role": "user", "content": f"I am {EMAIL}, my friend is {old_only} " + "x " * 1500},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "send", "arguments": f'{{"to": "{EMAIL}"}}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sent"},
        {"role": "user", "content": f"now write to {EMAIL} again " + "y " * 700},
    ]
    c.openai.chat.completions.create(model="m", messages=messages)
    assert proxy.wait_for_log("route=mask-budget]: 1 older of 5 messages screened in")
    body = json.dumps(llm_saw(llm, c.id)[0]["body"])
    assert EMAIL not in body and old_only not in body
    assert body.count("[EMAIL]") == 4


def test_masked_json_answer_keeps_everything_else(clients: Clients, llm) -> None:
    c = clients.make("mask")
    reply = f"Contact {EMAIL} for {c.id}"
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-standin-reply": reply})
    original = json.loads(bytes(llm.sent[c.id]))
    assert answer.choices[0].message.content == f"Contact [EMAIL] for {c.id}"
    assert answer.id == original["id"] and answer.usage.total_tokens == 10
