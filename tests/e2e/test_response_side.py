"""The response side end to end (SPEC sections 3-6): answers screened non-streamed, as held
streams and as pass-through streams, through a real mitmdump, with the official SDKs.

The LLM stand-in's answer is set per request (`x-standin-reply`) and carries the test's id, so
the Lakera stand-in's log shows exactly which scans an answer caused."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import anthropic
import openai
import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import PII_TRIGGER
from tests.e2e.clients import Client
from tests.e2e.clients import Clients
from tests.e2e.clients import ask
from tests.e2e.clients import lakera_bodies
from tests.harness import Proxy

DENY = "Response blocked by Lakera Guard"
PROTOCOLS = ["chat", "responses", "anthropic"]
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
         "anthropic": "/v1/messages"}


def raw(c: Client, protocol: str, stream: bool, reply: str, mode: str = "") -> Any:
    """The exact response the client received, without an SDK in between."""
    body: dict[str, Any] = {"model": "m", "stream": stream, "max_tokens": 50}
    if protocol == "responses":
        body["input"] = f"hello {c.id}"
    else:
        body["messages"] = [{"role": "user", "content": f"hello {c.id}"}]
    return c.http.post(f"{c.base}{PATHS[protocol]}", json=body, headers={
        "x-standin-mode": mode,
        "x-standin-reply-b64": base64.b64encode(reply.encode()).decode()})


def answer_scans(lakera: Any, test_id: str) -> list[dict[str, Any]]:
    """What Lakera was sent of the answers (role assistant) of one test's requests."""
    return [b for b in lakera_bodies(lakera, test_id)
            if [m["role"] for m in b["messages"]] == ["assistant"]]


def response_verdict(proxy: Proxy, test_id: str, verdict: str) -> dict[str, Any]:
    return proxy.wait_for_record(
        test_id, lambda r: ((r["lakera"] or {}).get("response") or {}).get("verdict") == verdict)


# --- the decision table: route x answer x protocol x streamed ------------------------------

# route: (what a flagged answer gives, what a Lakera failure gives), SPEC section 5
ROUTE_OUTCOMES = {
    "block": ("deny", "deny"),
    "alert": ("pass", "deny"),  # fail_open false denies in alert mode too
    "block-open": ("deny", "pass"),
    "shadow": ("pass", "pass"),  # alert + fail_open: pass-through streams
}
ANSWERS = {"clean": "The capital of France is Paris.",
           "flagged": f"Sure, {ATTACK_TRIGGER} and here is a card {PII_TRIGGER}.",
           "failure": "lakera-500 is what Lakera will answer to this text."}
MATRIX = [(route, answer, protocol, stream)
          for route in ROUTE_OUTCOMES for answer in ANSWERS
          for protocol in PROTOCOLS for stream in (False, True)]


@pytest.mark.parametrize(("route", "answer", "protocol", "stream"), MATRIX)
def test_decision_table(clients: Clients, proxy: Proxy, lakera, route, answer, protocol,
                        stream) -> None:
    c = clients.make(route)
    reply = f"{ANSWERS[answer]} {c.id}"
    flagged_outcome, failure_outcome = ROUTE_OUTCOMES[route]
    outcome = {"clean": "pass", "flagged": flagged_outcome, "failure": failure_outcome}[answer]
    text = ask(c, protocol, stream, f"hello {c.id}", reply)
    assert text == (reply if outcome == "pass" else DENY)
    verdict = {"clean": "clean", "flagged": "flagged", "failure": "failure"}[answer]
    record = response_verdict(proxy, c.id, verdict)
    assert record["lakera"]["response"]["action"] == ("blocked" if outcome == "deny"
                                                      else "allowed")
    expected_mark = {("clean", "pass"): "", ("flagged", "deny"): ":no_entry:",
                     ("failure", "deny"): ":no_entry:", ("flagged", "pass"): ":warning:",
                     ("failure", "pass"): ":large_orange_diamond:"}[(answer, outcome)]
    assert record["marked"] == expected_mark
    scans = answer_scans(lakera, c.id)
    assert [s["messages"][0]["content"] for s in scans] == [reply], "exactly one answer scan"
    if answer == "flagged":
        assert record["lakera"]["response"]["detector_types"] == ["prompt_attack",
                                                                  "pii/credit_card"]
        proxy.wait_for_log(f"route={route}]: detector types prompt_attack, pii/credit_card; "
                           f"action={'alert' if route in ('alert', 'shadow') else 'block'}")
    if answer == "failure":
        assert record["lakera"]["response"]["failure"] == "Lakera Guard returned status 500"
        verb, level = (("fail_open=false, blocking response", "ERROR") if outcome == "deny"
                       else ("fail_open=true, allowing response", "WARNING"))
        assert level in proxy.wait_for_logged(
            f"route={route}]: Lakera Guard returned status 500; {verb}")


# --- held streams ---------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("mode", ["", "split", "crlf", "usage", "split,crlf"])
@pytest.mark.parametrize("route", ["block", "alert", "shadow"])
def test_released_stream_is_byte_identical(clients: Clients, llm, protocol, mode,
                                           route) -> None:
    """Held (block: clean; alert: flagged but allowed) or pass-through (shadow), a released
    stream reaches the client verbatim."""
    c = clients.make(route)
    answer = f"Fine answer, {c.id}." if route == "block" else f"{ATTACK_TRIGGER}, {c.id}."
    response = raw(c, protocol, True, answer, mode)
    assert response.status_code == 200
    assert response.content == bytes(llm.sent[c.id])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_denied_held_stream_leaks_nothing(clients: Clients, llm, protocol) -> None:
    c = clients.make("block")
    secret = f"Leaky {c.id} {ATTACK_TRIGGER} tail-{c.id}"
    response = raw(c, protocol, True, secret, "split")
    assert response.headers["content-type"].startswith("text/event-stream")
    assert c.id not in response.text and "Leaky" not in response.text
    assert DENY in response.text
    if protocol == "chat":
        assert response.text.endswith("data: [DONE]\n\n")
    assert c.id.encode() in bytes(llm.sent[c.id]).replace(b"\n", b"")  # it was sent upstream


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("mode", "reason"),
    [("truncate-clean", "stream ended before its terminal event"),
     ("malformed", "event data is not JSON")],
)
@pytest.mark.parametrize("route", ["block", "alert", "block-open"])
def test_unassemblable_held_stream_follows_fail_open(
        clients: Clients, proxy: Proxy, llm, lakera, protocol, mode, reason, route) -> None:
    c = clients.make(route)
    response = raw(c, protocol, True, f"Partial answer {c.id}", mode)
    record = response_verdict(proxy, c.id, "failure")
    assert reason in record["lakera"]["response"]["failure"]
    if route == "block-open":
        assert response.content == bytes(llm.sent[c.id])
        verb, level = "fail_open=true, allowing response", "WARNING"
    else:
        assert c.id not in response.text and DENY in response.text
        verb, level = "fail_open=false, blocking response", "ERROR"
    assert not answer_scans(lakera, c.id)
    assert level in proxy.wait_for_logged(f"route={route}]: {reason}; {verb}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("mode", "reason"),
    [("truncate-clean", "stream ended before its terminal event"),
     ("malformed", "event data is not JSON"),
     ("truncate", "stream did not end")],
)
@pytest.mark.parametrize("answer", ["clean", "flagged"])
def test_pass_through_stream_cut_short_is_screened_as_received(
        clients: Clients, proxy: Proxy, llm, lakera, protocol, mode, reason, answer) -> None:
    """What a client already received of a pass-through stream that ended early is screened:
    a flagged answer cut short is still reported."""
    c = clients.make("shadow")
    reply = f"Partial answer {c.id}" + (f" {ATTACK_TRIGGER}" if answer == "flagged" else "")
    try:
        received = raw(c, protocol, True, reply, mode).content
    except Exception:  # the cut reaches the client as a cut
        received = None
    record = response_verdict(proxy, c.id, answer)
    assert record["hook"] == "update"
    assert reason in record["lakera"]["response"]["coverage"]
    assert [s["messages"][0]["content"] for s in answer_scans(lakera, c.id)] == [reply]
    if received is not None:
        assert received == bytes(llm.sent[c.id])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("route", ["block", "block-open"])
def test_upstream_cut_mid_stream_never_leaks(clients: Clients, proxy: Proxy, protocol,
                                             route) -> None:
    """The upstream closes the connection before the terminal event of a held stream."""
    c = clients.make(route)
    try:
        response = raw(c, protocol, True, f"Cut {c.id} {ATTACK_TRIGGER}", "truncate")
        received = response.text
    except Exception as e:  # the connection may be cut towards the client as well
        received = repr(e)
    assert c.id not in received
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] in ("error", "response"))
    assert record["hook"] == "error" or record["status"] != 200 or DENY in received


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", ["block", "shadow"])
def test_tool_calls_only_pass_unscanned(clients: Clients, proxy: Proxy, lakera, protocol,
                                        stream, route) -> None:
    c = clients.make(route)
    response = raw(c, protocol, stream, "unused", "tools")
    assert response.status_code == 200 and "get_weather" in response.text
    record = response_verdict(proxy, c.id, "unscanned")
    assert record["lakera"]["response"]["failure"] == "no assistant text"
    assert not answer_scans(lakera, c.id)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_error_event_is_screened_and_passed_on(clients: Clients, proxy: Proxy, protocol) -> None:
    c = clients.make("block")
    clean = raw(c, protocol, True, f"So far so good {c.id}", "error-event")
    assert c.id in clean.text and "error" in clean.text
    response_verdict(proxy, c.id, "clean")
    c2 = clients.make("block")
    flagged = raw(c2, protocol, True, f"{ATTACK_TRIGGER} {c2.id}", "error-event")
    assert c2.id not in flagged.text and DENY in flagged.text


# --- pass-through streams ----------------------------------------------------------------

def timed_stream(client: openai.OpenAI, reply: str, mode: str) -> tuple[float, float, str]:
    """(time to first content delta, time to the end, text) of a streamed chat answer."""
    started = time.monotonic()
    first = 0.0
    text = ""
    chunks = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-standin-reply": reply, "x-standin-mode": mode})
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic() - started
            text += chunk.choices[0].delta.content
    return first, time.monotonic() - started, text


def test_pass_through_adds_no_wait(clients: Clients, proxy: Proxy, lakera, llm) -> None:
    """With a Lakera that takes 2 s, a pass-through stream's first token and end come as they
    do straight from the upstream, and the verdict is logged afterwards."""
    def reply(run: str) -> str:
        # a text of its own per stream: an answer Lakera screened before would be a cached
        # verdict, not a 2 s Lakera call
        tag = uuid.uuid4().hex[:8]
        return f"one two three four five six seven eight {ATTACK_TRIGGER} {run}-{tag}"

    direct = openai.OpenAI(base_url=f"{llm.url}/v1", api_key="x", max_retries=0)
    fast = clients.make("shadow")
    quick = [timed_stream(fast.openai, reply("quick"), "delay-ms=50") for _ in range(2)]
    lakera.delay_s = 2.0
    try:
        plain = [timed_stream(direct, reply("direct"), "delay-ms=50") for _ in range(2)]
        c = clients.make("shadow")
        last = reply("last")
        runs = [timed_stream(c.openai, text, "delay-ms=50") for text in (reply("first"), last)]
    finally:
        lakera.delay_s = 0.0
        direct.close()
    plain_first = min(p[0] for p in plain)
    plain_end = min(p[1] for p in plain)
    guarded = (min(r[0] for r in runs), min(r[1] for r in runs), runs[-1][2])
    print(f"\npass-through with a 2 s Lakera: first token {guarded[0] * 1000:.0f} ms "
          f"(direct {plain_first * 1000:.0f} ms), end {guarded[1] * 1000:.0f} ms "
          f"(direct {plain_end * 1000:.0f} ms); with an instant Lakera: first token "
          f"{min(q[0] for q in quick) * 1000:.0f} ms, end {min(q[1] for q in quick) * 1000:.0f} ms")
    assert guarded[2] == last
    assert guarded[1] < 2.0, "the client waited for Lakera"
    record = response_verdict(proxy, c.id, "flagged")
    assert record["hook"] == "update" and record["marked"] == ":warning:"
    assert not record["lakera"]["response"].get("cached")


def test_pass_through_gzip_is_decoded_for_the_scan(clients: Clients, proxy: Proxy) -> None:
    c = clients.make("shadow")
    response = raw(c, "chat", True, f"{ATTACK_TRIGGER} {c.id}", "gzip")
    assert c.id in response.text  # passed on, decoded by the client
    response_verdict(proxy, c.id, "flagged")


# --- the rest of the response side -------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_status_passes_unscanned(clients: Clients, proxy: Proxy, lakera,
                                                protocol, stream) -> None:
    c = clients.make("block")
    response = raw(c, protocol, stream, ATTACK_TRIGGER, "status=503")
    assert response.status_code == 503
    assert response.json()["type" if protocol == "anthropic" else "error"]
    record = response_verdict(proxy, c.id, "unscanned")
    assert record["lakera"]["response"]["failure"] == "upstream status 503"
    assert not answer_scans(lakera, c.id)


@pytest.mark.parametrize("status", [302, 304])
def test_redirects_and_other_non_2xx_pass_unscanned(clients: Clients, proxy: Proxy, lakera,
                                                    status) -> None:
    c = clients.make("block")
    response = raw(c, "chat", False, ATTACK_TRIGGER, f"status={status}")
    assert response.status_code == status
    record = response_verdict(proxy, c.id, "unscanned")
    assert record["lakera"]["response"]["failure"] == f"upstream status {status}"
    assert not answer_scans(lakera, c.id)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_json_answer_to_a_stream_request(clients: Clients, proxy: Proxy, protocol) -> None:
    """Decided from the response: a JSON answer is screened as JSON and denied as JSON."""
    c = clients.make("block")
    clean = raw(c, protocol, True, f"Plain JSON {c.id}", "json")
    assert clean.headers["content-type"] == "application/json" and c.id in clean.text
    c2 = clients.make("block")
    flagged = raw(c2, protocol, True, f"{ATTACK_TRIGGER} {c2.id}", "json")
    assert flagged.headers["content-type"].startswith("application/json")
    assert DENY in json.dumps(flagged.json()) and c2.id not in flagged.text


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("stream", [False, True])
def test_gzip_answers_are_screened(clients: Clients, protocol, stream) -> None:
    c = clients.make("block")
    text = ask(c, protocol, stream, f"hello {c.id}", f"Compressed {c.id}", "gzip")
    assert text == f"Compressed {c.id}"
    c2 = clients.make("block")
    assert ask(c2, protocol, stream, f"hello {c2.id}", f"{ATTACK_TRIGGER} {c2.id}", "gzip") == DENY


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", ["small", "small-open"])
def test_answer_over_max_body_bytes_follows_fail_open(clients: Clients, proxy: Proxy, llm,
                                                      stream, route) -> None:
    c = clients.make(route)
    text = ask(c, "chat", stream, f"hello {c.id}", "x" * 100 + " ", "repeat=100")
    record = response_verdict(proxy, c.id, "failure")
    assert "max_body_bytes (4096 bytes)" in record["lakera"]["response"]["failure"]
    if route == "small":
        assert text == DENY
        # a JSON answer declares its length: refused before it is read; a stream is counted
        said = ("bytes, more than max_body_bytes (4096 bytes)" if not stream
                else "response larger than max_body_bytes (4096 bytes)")
        assert "ERROR" in proxy.wait_for_logged(
            f"{said}; fail_open=false, blocking response")
    else:
        assert text == ("x" * 100 + " ") * 100
        assert record["marked"] == ":large_orange_diamond:"


@pytest.mark.parametrize("stream", [False, True])
def test_streamed_deny_takes_the_deny_code(clients: Clients, stream) -> None:
    c = clients.make("reveal")
    with pytest.raises(openai.PermissionDeniedError) as raised:
        ask(c, "chat", stream, f"hello {c.id}", f"{ATTACK_TRIGGER} {c.id}")
    assert raised.value.status_code == 403
    assert "Flagged categories: prompt_attack" in str(raised.value.body or raised.value)
    c = clients.make("reveal")
    with pytest.raises(anthropic.PermissionDeniedError):
        ask(c, "anthropic", stream, f"hello {c.id}", f"{ATTACK_TRIGGER} x")


def test_output_direction_screens_answers_only(clients: Clients, proxy: Proxy, lakera,
                                              llm) -> None:
    c = clients.make("output")
    prompt = f"{ATTACK_TRIGGER} {c.id}"
    answer = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": prompt}],
        extra_headers={"x-standin-reply": f"{ATTACK_TRIGGER} answer {c.id}"})
    assert answer.choices[0].message.content == DENY
    assert [m["content"] for m in llm.received[-1]["body"]["messages"]] == [prompt]
    assert [b["messages"][0]["role"] for b in lakera_bodies(lakera, c.id)] == ["assistant"]
    record = response_verdict(proxy, c.id, "flagged")
    assert "request" not in record["lakera"]


def test_input_only_route_streams_without_holding(clients: Clients, proxy: Proxy,
                                                  llm) -> None:
    c = clients.make("block-input")
    response = raw(c, "anthropic", True, f"{ATTACK_TRIGGER} {c.id}")
    assert response.content == bytes(llm.sent[c.id])
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    assert "response" not in record["lakera"]
