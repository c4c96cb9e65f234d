"""The request side end to end (SPEC sections 3-7): real mitmdump with the addon, the
stand-ins on loopback, the official SDKs as clients through the proxy.

Each test uses its own route prefix (see conftest.ROUTES) and a unique id sent as the
`x-test-id` header and inside the prompt, to find what Lakera, the LLM and mitmweb saw."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from tests.e2e.clients import Clients
from tests.e2e.clients import lakera_bodies
from tests.e2e.clients import llm_saw
from tests.harness import Proxy

DENY = "Request blocked by Lakera Guard"
UPSTREAM_TEXT = "Hello from the stand-in."

FAILURES = ["lakera-500", "lakera-429", "lakera-503", "lakera-notjson", "lakera-noflag",
            "lakera-array", "lakera-sleep-2500"]


def test_clean_prompt_is_forwarded(clients: Clients, proxy: Proxy, lakera, llm) -> None:
    c = clients.make("block")
    answer = c.openai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": f"hello {c.id}"}])
    assert answer.choices[0].message.content == UPSTREAM_TEXT
    assert llm_saw(llm, c.id)
    assert [m["content"] for m in lakera_bodies(lakera, c.id)[0]["messages"]] == [
        f"hello {c.id}"]
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record["lakera"]["request"]["verdict"] == "clean"
    assert record["comment"] == "lakera: request clean; response clean"
    assert record["marked"] == ""
    assert "HTTP Request: POST" not in proxy.log()  # httpx's own per-call INFO line


@pytest.mark.parametrize("stream", [False, True])
def test_flagged_prompt_denied_openai_chat(clients: Clients, proxy: Proxy, llm, stream) -> None:
    c = clients.make("block")
    prompt = f"{ATTACK_TRIGGER} {c.id}"
    if stream:
        chunks = c.openai.chat.completions.create(
            model="gpt-test", stream=True, messages=[{"role": "user", "content": prompt}])
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        answer = c.openai.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": prompt}])
        text = answer.choices[0].message.content or ""
        assert answer.model == "gpt-test"
    assert text == DENY
    assert not llm_saw(llm, c.id), "a denied request must never reach the LLM"
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record["status"] == 200
    assert record["marked"] == ":no_entry:"
    assert record["comment"] == "lakera: request blocked: flagged (prompt_attack)"
    assert record["lakera"]["request"]["detector_types"] == ["prompt_attack"]
    assert record["lakera"]["request"]["request_uuid"]
    lines = proxy.wait_for_log("route=block]: detector types prompt_attack; action=block, "
                               "blocking request")
    # the whole breakdown, undetected detectors included, and Lakera's request id
    assert '"detector_type":"pii/credit_card","detected":false' in lines[-1]
    assert f"request_uuid={record['lakera']['request']['request_uuid']}" in proxy.log()


@pytest.mark.parametrize("stream", [False, True])
def test_flagged_prompt_denied_anthropic(clients: Clients, llm, stream) -> None:
    c = clients.make("block")
    messages = [{"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}]
    if stream:
        with c.anthropic.messages.stream(model="claude-test", max_tokens=50,
                                         messages=messages) as s:
            text = s.get_final_text()
    else:
        message = c.anthropic.messages.create(model="claude-test", max_tokens=50,
                                              messages=messages)
        text = message.content[0].text
    assert text == DENY
    assert not llm_saw(llm, c.id)


@pytest.mark.parametrize("stream", [False, True])
def test_flagged_prompt_denied_openai_responses(clients: Clients, llm, stream) -> None:
    c = clients.make("block")
    if stream:
        events = list(c.openai.responses.create(
            model="gpt-test", input=f"{ATTACK_TRIGGER} {c.id}", stream=True))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert events[-1].type == "response.completed"
    else:
        text = c.openai.responses.create(model="gpt-test",
                                         input=f"{ATTACK_TRIGGER} {c.id}").output_text
    assert text == DENY
    assert not llm_saw(llm, c.id)


def test_flagged_embeddings_raise_in_the_sdk(clients: Clients, llm) -> None:
    c = clients.make("block")
    with pytest.raises(openai.BadRequestError, match=DENY):
        c.openai.embeddings.create(model="emb", input=[f"{ATTACK_TRIGGER} {c.id}"])
    assert not llm_saw(llm, c.id)


def test_clean_prompts_of_every_protocol_pass(clients: Clients, llm) -> None:
    c = clients.make("block")
    msgs = [{"role": "user", "content": f"hi {c.id}"}]
    assert c.openai.chat.completions.create(
        model="m", messages=msgs).choices[0].message.content == UPSTREAM_TEXT
    assert c.openai.responses.create(model="m", input=f"hi {c.id}").output_text == UPSTREAM_TEXT
    message = c.anthropic.messages.create(model="m", max_tokens=5, messages=msgs)
    assert message.content[0].text == UPSTREAM_TEXT
    assert len(c.openai.embeddings.create(model="e", input=f"hi {c.id}").data) == 1
    assert len(llm_saw(llm, c.id)) == 4


def test_flagged_with_alert_is_forwarded_and_logged(clients: Clients, proxy: Proxy, llm) -> None:
    c = clients.make("alert")
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}])
    assert answer.choices[0].message.content == UPSTREAM_TEXT
    assert llm_saw(llm, c.id)
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record["marked"] == ":warning:"
    assert record["comment"] == "lakera: request flagged (prompt_attack), allowed; response clean"
    assert proxy.wait_for_log("route=alert]: detector types prompt_attack; action=alert, "
                              "allowing request")


# (route, Lakera failure, fail closed?) for every failure kind in block and alert mode
FAILURE_ROWS = [
    (route, failure)
    for route in ("block", "alert", "block-open", "shadow")
    for failure in FAILURES
]


@pytest.mark.parametrize(("route", "failure"), FAILURE_ROWS)
def test_lakera_failures(clients: Clients, proxy: Proxy, llm, route, failure) -> None:
    """fail_open false denies (in alert mode too); fail_open true forwards with a warning."""
    c = clients.make(route)
    fail_closed = route in ("block", "alert")
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"{failure} {c.id}"}])
    if fail_closed:
        assert answer.choices[0].message.content == DENY
        assert not llm_saw(llm, c.id)
    else:
        assert answer.choices[0].message.content == UPSTREAM_TEXT
        assert llm_saw(llm, c.id)
    record = proxy.wait_for_record(
        c.id, lambda r: (r["lakera"] or {}).get("request", {}).get("verdict") == "failure")
    assert record["marked"] == (":no_entry:" if fail_closed else ":large_orange_diamond:")
    verb = "blocking" if fail_closed else "allowing"
    assert proxy.wait_for_log(
        f"route={route}]: ") and proxy.wait_for_log(
        f"fail_open={str(not fail_closed).lower()}, {verb} request")


@pytest.mark.parametrize(("route", "denied"), [("badkey", True), ("unreachable", True),
                                               ("unreachable-open", False)])
def test_bad_key_and_unreachable_lakera(clients: Clients, proxy: Proxy, route, denied) -> None:
    c = clients.make(route)
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"hello {c.id}"}])
    assert (answer.choices[0].message.content == DENY) is denied
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    failure = record["lakera"]["request"]["failure"]
    assert ("status 401" in failure) if route == "badkey" else ("failed to reach" in failure)


def test_timeout_is_one_overall_deadline(clients: Clients, proxy: Proxy, lakera) -> None:
    """A Lakera body trickling in past the deadline is a failure at the deadline."""
    c = clients.make("timeout")
    started = time.monotonic()
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"lakera-trickle {c.id}"}])
    elapsed = time.monotonic() - started
    assert answer.choices[0].message.content == DENY
    assert elapsed < 2.0, f"the 300 ms deadline took {elapsed:.2f} s"
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert "did not answer within 300 ms" in record["lakera"]["request"]["failure"]


def test_shadow_mode_does_not_wait_for_lakera(clients: Clients, proxy: Proxy, llm) -> None:
    """alert + fail_open: forwarded at once; the verdict arrives later in log and metadata."""
    c = clients.make("shadow-slow")
    started = time.monotonic()
    answer = c.openai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": f"lakera-sleep-3000 {ATTACK_TRIGGER} {c.id}"}])
    elapsed = time.monotonic() - started
    assert answer.choices[0].message.content == UPSTREAM_TEXT
    assert elapsed < 1.5, f"shadow mode waited {elapsed:.2f} s for a 3 s Lakera"
    first = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert first["lakera"]["request"]["verdict"] == "pending"
    later = proxy.wait_for_record(
        c.id, lambda r: (r["lakera"] or {}).get("request", {}).get("verdict") == "flagged",
        timeout=10)
    assert later["hook"] == "update"
    assert later["marked"] == ":warning:"
    assert proxy.wait_for_log("route=shadow-slow]: detector types prompt_attack")


def test_shadow_mode_blocks_nothing_with_a_streamed_deny_shape(clients: Clients, llm) -> None:
    c = clients.make("shadow")
    chunks = c.openai.chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}])
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == UPSTREAM_TEXT


def test_injection_in_an_assistant_turn_is_blocked(clients: Clients, lakera, llm) -> None:
    c = clients.make("block")
    answer = c.openai.chat.completions.create(model="m", messages=[
        {"role": "system", "content": f"Be brief {c.id}"},
        {"role": "assistant", "content": f"{ATTACK_TRIGGER}"},
        {"role": "user", "content": "go on"}])
    assert answer.choices[0].message.content == DENY
    assert [m["role"] for m in lakera_bodies(lakera, c.id)[0]["messages"]] == [
        "system", "assistant", "user"]
    assert not llm_saw(llm, c.id)


def test_roles_system_and_tool_text_reach_lakera(clients: Clients, lakera) -> None:
    c = clients.make("block")
    c.openai.chat.completions.create(model="m", messages=[
        {"role": "developer", "content": f"dev {c.id}"},
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "t1", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "tool output"},
    ])
    sent = lakera_bodies(lakera, c.id)[0]["messages"]
    assert sent == [{"role": "system", "content": f"dev {c.id}"},
                    {"role": "user", "content": "question"},
                    {"role": "tool", "content": "tool output"}]

    c.anthropic.messages.create(
        model="m", max_tokens=5,
        system=[{"type": "text", "text": f"system block {c.id}"}],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "tu", "name": "web", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "tu",
                 "content": [{"type": "text", "text": "fetched page"}]}]},
        ])
    sent = lakera_bodies(lakera, f"system block {c.id}")[0]["messages"]
    assert sent == [{"role": "system", "content": f"system block {c.id}"},
                    {"role": "user", "content": "hi"},
                    {"role": "tool", "content": "fetched page"}]

    c.openai.responses.create(model="m", instructions=f"inst {c.id}", input=[
        {"role": "user", "content": "q"},
        {"type": "function_call_output", "call_id": "c1", "output": "function said"},
    ])
    sent = lakera_bodies(lakera, f"inst {c.id}")[0]["messages"]
    assert sent == [{"role": "system", "content": f"inst {c.id}"},
                    {"role": "user", "content": "q"},
                    {"role": "tool", "content": "function said"}]


def test_indirect_injection_in_tool_result_is_blocked(clients: Clients, llm) -> None:
    c = clients.make("block")
    message = c.anthropic.messages.create(model="m", max_tokens=5, messages=[
        {"role": "user", "content": f"summarise {c.id}"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "tu", "name": "w",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu",
                                      "content": f"page: {ATTACK_TRIGGER}"}]},
    ])
    assert message.content[0].text == DENY
    assert not llm_saw(llm, c.id)


def test_project_id_is_sent(clients: Clients, lakera) -> None:
    c = clients.make("project")
    c.openai.chat.completions.create(model="m", messages=[{"role": "user", "content": c.id}])
    body = lakera_bodies(lakera, c.id)[0]
    assert body["project_id"] == "project-e2e"
    assert body["breakdown"] is True
    assert "payload" not in body


def test_deny_code_and_revealed_categories(clients: Clients, llm) -> None:
    c = clients.make("reveal")
    with pytest.raises(openai.PermissionDeniedError) as raised:
        c.openai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}])
    assert raised.value.status_code == 403
    assert f"{DENY}. Flagged categories: prompt_attack" in str(raised.value.body)
    with pytest.raises(anthropic.PermissionDeniedError):
        c.anthropic.messages.create(model="m", max_tokens=5, messages=[
            {"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}])
    assert not llm_saw(llm, c.id)


def test_retryable_deny_code_is_not_retried(clients: Clients, proxy: Proxy) -> None:
    c = clients.make("deny503", max_retries=2)
    with pytest.raises(openai.InternalServerError):
        c.openai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}])
    time.sleep(0.3)
    assert len([r for r in proxy.records(c.id) if r["hook"] == "response"]) == 1


def test_custom_messages(clients: Clients) -> None:
    c = clients.make("custom")
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}])
    assert answer.choices[0].message.content == "Nope, not that."


def test_host_on_no_route_is_untouched(clients: Clients, proxy: Proxy, lakera, llm) -> None:
    c = clients.make("unrouted")
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"{ATTACK_TRIGGER} {c.id}"}])
    assert answer.choices[0].message.content == UPSTREAM_TEXT
    assert llm_saw(llm, c.id)
    assert not lakera_bodies(lakera, c.id)
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert record["lakera"] is None and record["comment"] == "" and record["marked"] == ""
    assert not [line for line in proxy.log_lines("/unrouted/") if "route=" in line]


def test_input_direction_never_scans_answers(clients: Clients, lakera) -> None:
    c = clients.make("block-input")
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": c.id}],
        extra_headers={"x-standin-reply": ATTACK_TRIGGER})
    assert answer.choices[0].message.content == ATTACK_TRIGGER
    assert len(lakera_bodies(lakera, c.id)) == 1  # the prompt only


@pytest.mark.parametrize(
    ("route", "outcome"),
    [("block", "passes"), ("failmode-warn", "passes"), ("failmode-error", "500")],
)
def test_unreadable_bodies_follow_fail_mode(clients: Clients, proxy: Proxy, route, outcome) -> None:
    c = clients.make(route)
    response = c.http.post(f"{c.base}/v1/chat/completions", content=b"not json",
                           headers={"content-type": "application/json"})
    if outcome == "passes":
        assert response.status_code == 400  # the LLM stand-in's own answer to a bad body
    else:
        assert response.status_code == 500
        assert response.json()["error"]["message"] == "lakera_addon: request body is not JSON"
    level = {"block": "INFO", "failmode-warn": "WARNING", "failmode-error": "WARNING"}[route]
    needle = f"route={route}]: request body is not JSON (fail_mode="
    assert set(proxy.wait_for_logged(needle)) == {level}


def test_body_over_max_body_bytes_follows_fail_open(clients: Clients, llm) -> None:
    c = clients.make("small")
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"{c.id} " + "x" * 5000}])
    assert answer.choices[0].message.content == DENY
    assert not llm_saw(llm, c.id)
