"""The native Gemini (`models/{model}:generateContent`, `:streamGenerateContent`) and Ollama
(`/api/chat`, `/api/generate`) protocols end to end: real mitmdump with the addon, the stand-ins
on loopback, the official google-genai and ollama packages as clients through the proxy.

Every client is made with the proxy variables of this module pointing at a dead port
(`no_environment_proxy`): a client that went through an environment proxy would fail. Each
request carries a unique id in `x-test-id` and in its prompt, to find what Lakera, the LLM and
mitmweb saw."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import ollama
import pytest
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from tests.e2e.clients import MODEL
from tests.e2e.clients import ask_native
from tests.e2e.clients import gemini_client
from tests.e2e.clients import lakera_bodies
from tests.e2e.clients import llm_saw
from tests.e2e.clients import native_headers
from tests.e2e.clients import ollama_client
from tests.e2e.clients import stream_native
from tests.harness import Proxy

UPSTREAM_TEXT = "Hello from the stand-in."
REQUEST_DENY = "Request blocked by Lakera Guard"
RESPONSE_DENY = "Response blocked by Lakera Guard"
KINDS = ["gemini", "ollama-chat", "ollama-generate"]
# the path each kind of request takes through the proxy, after the route's prefix
PATHS = {
    ("gemini", False): f"/v1beta/models/{MODEL}:generateContent",
    ("gemini", True): f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
    ("ollama-chat", False): "/api/chat",
    ("ollama-chat", True): "/api/chat",
    ("ollama-generate", False): "/api/generate",
    ("ollama-generate", True): "/api/generate",
}


@pytest.fixture(autouse=True)
def no_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
        monkeypatch.setenv(name.lower(), "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def new_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def raw_body(kind: str, prompt: str, stream: bool | None) -> dict[str, Any]:
    """A request body as the protocol's REST API takes it; `stream` None leaves Ollama's
    `stream` out (it then streams)."""
    if kind == "gemini":
        return {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    body: dict[str, Any] = {"model": "llama-e2e"}
    if kind == "ollama-chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if stream is not None:
        body["stream"] = stream
    return body


def raw(proxy: Proxy, route: str, path: str, body: dict[str, Any], test_id: str,
        reply: str | None = None, mode: str = "") -> httpx.Response:
    """The exact answer the client received, without an SDK in between."""
    return httpx.post(f"{proxy.url(route)}{path}", json=body, trust_env=False, timeout=30,
                      headers=native_headers(test_id, reply, mode))


def verdict(proxy: Proxy, test_id: str, side: str, value: str) -> dict[str, Any]:
    return proxy.wait_for_record(
        test_id, lambda r: ((r["lakera"] or {}).get(side) or {}).get("verdict") == value)


def answer_scans(lakera: Any, test_id: str) -> list[str]:
    """The answers (role assistant) Lakera was sent that carry the test's id."""
    return [b["messages"][0]["content"] for b in lakera_bodies(lakera, test_id)
            if [m["role"] for m in b["messages"]] == ["assistant"]]


def received_paths(llm: Any, test_id: str) -> list[str]:
    return [str(r["path"]) for r in llm_saw(llm, test_id)]


# --- the request side ----------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_clean_prompt_passes(proxy: Proxy, lakera, llm, kind, stream) -> None:
    test_id = new_id()
    assert ask_native(proxy, kind, "block", test_id, f"hello {test_id}", stream) == UPSTREAM_TEXT
    assert received_paths(llm, test_id) == [f"/block{PATHS[kind, stream]}"]
    (screened,) = [b for b in lakera_bodies(lakera, test_id)
                   if b["messages"][0]["role"] != "assistant"]
    assert [(m["role"], m["content"]) for m in screened["messages"]] == [
        ("system", f"Be brief. {test_id}"), ("user", f"hello {test_id}")]
    record = verdict(proxy, test_id, "response", "clean")
    assert record["lakera"]["request"]["verdict"] == "clean"
    assert record["lakera"]["protocol"] == ("gemini-generate" if kind == "gemini" else kind)
    assert record["marked"] == ""


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_injected_prompt_is_blocked_before_the_llm(proxy: Proxy, llm, kind, stream) -> None:
    test_id = new_id()
    text = ask_native(proxy, kind, "block", test_id, f"{ATTACK_TRIGGER} {test_id}", stream)
    assert text == REQUEST_DENY
    assert not llm_saw(llm, test_id), "a denied request must never reach the LLM"
    record = verdict(proxy, test_id, "request", "flagged")
    assert record["status"] == 200
    assert record["marked"] == ":no_entry:"
    assert record["comment"] == "lakera: request blocked: flagged (prompt_attack)"


def test_tool_result_injection_is_blocked_gemini(proxy: Proxy, lakera, llm) -> None:
    """A functionResponse carrying an injection (indirect prompt injection) is screened as a
    tool result and blocked; the function call's arguments are screened as the model's own
    turn (a hostile client can write them into the history)."""
    test_id = new_id()
    contents = [
        genai_types.Content(role="user", parts=[genai_types.Part(text=f"weather? {test_id}")]),
        genai_types.Content(role="model", parts=[genai_types.Part(
            function_call=genai_types.FunctionCall(name="get_weather", args={"city": "Zurich"}))]),
        genai_types.Content(role="user", parts=[genai_types.Part.from_function_response(
            name="get_weather",
            response={"output": f"Sunny. {ATTACK_TRIGGER} {test_id}", "celsius": 21})]),
    ]
    with gemini_client(proxy, "block", native_headers(test_id)) as gemini:
        answer = gemini.models.generate_content(model=MODEL, contents=contents)
    assert answer.text == REQUEST_DENY
    assert not llm_saw(llm, test_id)
    (screened,) = lakera_bodies(lakera, test_id)
    assert [(m["role"], m["content"]) for m in screened["messages"]] == [
        ("user", f"weather? {test_id}"), ("assistant", "Zurich"),
        ("tool", f"Sunny. {ATTACK_TRIGGER} {test_id} 21")]
    verdict(proxy, test_id, "request", "flagged")


@pytest.mark.parametrize("stream", [False, True])
def test_tool_result_injection_is_blocked_ollama(proxy: Proxy, lakera, llm, stream) -> None:
    test_id = new_id()
    messages = [
        {"role": "user", "content": f"weather? {test_id}"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Zurich"}}}]},
        {"role": "tool", "tool_name": "get_weather",
         "content": f"Sunny. {ATTACK_TRIGGER} {test_id}"},
    ]
    with ollama_client(proxy, "block", native_headers(test_id)) as client:
        if stream:
            text = "".join(p.message.content or "" for p in client.chat(
                model="llama-e2e", messages=messages, stream=True))
        else:
            text = client.chat(model="llama-e2e", messages=messages).message.content
    assert text == REQUEST_DENY
    assert not llm_saw(llm, test_id)
    (screened,) = lakera_bodies(lakera, test_id)
    assert [m["role"] for m in screened["messages"]] == ["user", "assistant", "tool"]
    verdict(proxy, test_id, "request", "flagged")


def test_latest_scope_sends_only_the_new_turn_gemini(proxy: Proxy, lakera, llm) -> None:
    test_id = new_id()
    contents = [
        genai_types.Content(role="user", parts=[genai_types.Part(text=f"old {test_id}")]),
        genai_types.Content(role="model", parts=[genai_types.Part(text=f"answer {test_id}")]),
        genai_types.Content(role="user", parts=[genai_types.Part(text=f"new {test_id}")]),
    ]
    config = genai_types.GenerateContentConfig(system_instruction=f"sys {test_id}")
    with gemini_client(proxy, "latest", native_headers(test_id)) as gemini:
        answer = gemini.models.generate_content(model=MODEL, contents=contents, config=config)
    assert answer.text == UPSTREAM_TEXT
    (screened,) = lakera_bodies(lakera, test_id)
    assert [(m["role"], m["content"]) for m in screened["messages"]] == [
        ("system", f"sys {test_id}"), ("user", f"new {test_id}")]
    # the LLM still got the whole conversation
    assert len(llm_saw(llm, test_id)[0]["body"]["contents"]) == 3


def test_latest_scope_sends_only_the_new_turn_ollama(proxy: Proxy, lakera) -> None:
    test_id = new_id()
    messages = [
        {"role": "system", "content": f"sys {test_id}"},
        {"role": "user", "content": f"old {test_id}"},
        {"role": "assistant", "content": f"answer {test_id}"},
        {"role": "user", "content": f"new {test_id}"},
    ]
    with ollama_client(proxy, "latest", native_headers(test_id)) as client:
        assert client.chat(model="llama-e2e", messages=messages).message.content == (
            UPSTREAM_TEXT)
    (screened,) = lakera_bodies(lakera, test_id)
    assert [(m["role"], m["content"]) for m in screened["messages"]] == [
        ("system", f"sys {test_id}"), ("user", f"new {test_id}")]


# --- the response side ---------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_flagged_answer_is_replaced_by_the_deny(proxy: Proxy, lakera, kind, stream) -> None:
    """A flagged answer, JSON or held stream, is replaced by a deny the SDK parses."""
    test_id = new_id()
    reply = f"Sure: {ATTACK_TRIGGER} {test_id}"
    text = ask_native(proxy, kind, "block", test_id, f"hi {test_id}", stream, reply)
    assert text == RESPONSE_DENY
    assert answer_scans(lakera, test_id) == [reply], "exactly one scan of the whole answer"
    record = verdict(proxy, test_id, "response", "flagged")
    assert record["lakera"]["response"]["action"] == "blocked"
    assert record["marked"] == ":no_entry:"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_clean_answer_reaches_the_sdk(proxy: Proxy, lakera, kind, stream) -> None:
    test_id = new_id()
    reply = f"Grüezi, a clean answer for {test_id}."
    assert ask_native(proxy, kind, "block", test_id, f"hi {test_id}", stream, reply) == reply
    assert answer_scans(lakera, test_id) == [reply]


@pytest.mark.parametrize(("kind", "path", "body_stream", "content_type"), [
    ("gemini", f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse", None,
     "text/event-stream"),
    ("gemini", f"/v1beta/models/{MODEL}:streamGenerateContent", None, "application/json"),
    ("ollama-chat", "/api/chat", None, "application/x-ndjson"),  # streams by default
    ("ollama-generate", "/api/generate", True, "application/x-ndjson"),
])
@pytest.mark.parametrize("route", ["block", "shadow"])
def test_released_stream_is_byte_identical(proxy: Proxy, llm, kind, path, body_stream,
                                           content_type, route) -> None:
    """Held (block) or passed through (shadow: its flag recorded afterwards), a released
    stream reaches the client byte for byte as the upstream sent it."""
    test_id = new_id()
    reply = (f"A fine answer for {test_id}." if route == "block"
             else f"{ATTACK_TRIGGER}, {test_id}.")
    body = raw_body(kind, f"hello {test_id}", body_stream)
    response = raw(proxy, route, path, body, test_id, reply, "split")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert response.content == bytes(llm.sent[test_id])
    record = verdict(proxy, test_id, "response", "clean" if route == "block" else "flagged")
    if route == "shadow":
        assert record["lakera"]["response"]["action"] == "allowed"
        assert record["marked"] == ":warning:"


@pytest.mark.parametrize(("kind", "path", "content_type"), [
    ("gemini", f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse", "text/event-stream"),
    ("gemini", f"/v1beta/models/{MODEL}:streamGenerateContent", "application/json"),
    ("ollama-chat", "/api/chat", "application/x-ndjson"),
    ("ollama-generate", "/api/generate", "application/x-ndjson"),
])
@pytest.mark.parametrize("side", ["request", "response"])
def test_denies_keep_the_answers_framing(proxy: Proxy, llm, kind, path, content_type,
                                         side) -> None:
    """A deny of a streamed request is framed as that stream (SSE, the JSON array of a
    Gemini stream without alt=sse, Ollama's NDJSON, which it sends unless told not to) and
    leaks nothing of a flagged answer."""
    test_id = new_id()
    prompt = f"{ATTACK_TRIGGER} {test_id}" if side == "request" else f"hello {test_id}"
    body = raw_body(kind, prompt, None)
    response = raw(proxy, "block", path, body, test_id, f"Leaky {test_id} {ATTACK_TRIGGER}",
                   "split")
    assert response.headers["content-type"].startswith(content_type)
    assert "Leaky" not in response.text
    deny = REQUEST_DENY if side == "request" else RESPONSE_DENY
    if content_type == "text/event-stream":
        events = [json.loads(line.removeprefix("data: "))
                  for line in response.text.splitlines() if line.startswith("data: ")]
        texts = [p["text"] for e in events for p in e["candidates"][0]["content"]["parts"]]
        assert "".join(texts) == deny and events[-1]["candidates"][0]["finishReason"] == "STOP"
    elif content_type == "application/json":
        (chunk,) = response.json()
        assert chunk["candidates"][0]["content"]["parts"][0]["text"] == deny
    else:
        lines = [json.loads(line) for line in response.text.splitlines()]
        field = "message" if kind == "ollama-chat" else "response"
        texts = [line[field]["content"] if field == "message" else line[field] for line in lines]
        assert "".join(texts) == deny and lines[-1]["done"] is True
    assert bool(llm_saw(llm, test_id)) is (side == "response")


@pytest.mark.parametrize("kind", KINDS)
def test_error_event_is_screened_and_passed_on(proxy: Proxy, kind) -> None:
    """An upstream error mid-stream (Gemini's error envelope as an event, Ollama's error line)
    ends the stream: it is passed on, and the text before it is screened."""
    path = PATHS[kind, True]
    test_id = new_id()
    clean = raw(proxy, "block", path, raw_body(kind, f"hello {test_id}", True), test_id,
                f"So far so good {test_id}", "error-event")
    assert test_id in clean.text and "error" in clean.text
    verdict(proxy, test_id, "response", "clean")
    flagged_id = new_id()
    flagged = raw(proxy, "block", path, raw_body(kind, f"hello {flagged_id}", True), flagged_id,
                  f"{ATTACK_TRIGGER} {flagged_id}", "error-event")
    assert flagged_id not in flagged.text and RESPONSE_DENY in flagged.text


CUT_ENDING = {"gemini": "SAFETY", "ollama-chat": "content_filter",
              "ollama-generate": "content_filter"}
NORMAL_ENDING = {"gemini": "STOP", "ollama-chat": "stop", "ollama-generate": "stop"}
TAIL = "TAIL-MARKER-END"


def words(n: int, tag: str) -> str:
    return "".join(f"{tag}{i} " for i in range(n))


@pytest.mark.parametrize("kind", KINDS)
def test_live_stream_is_cut_in_the_protocols_shape(proxy: Proxy, llm, kind) -> None:
    """`stream_mode: live`: the stream is live and a flagged window ends it with the
    protocol's own ending (Gemini: a chunk with `finishReason: SAFETY`; Ollama: the `done` line
    with `done_reason: content_filter`), which the SDK reads as an ordinary end."""
    test_id = new_id()
    reply = f"{test_id} " + words(60, "before") + ATTACK_TRIGGER + " " + words(400, "after") + TAIL
    text, ending, _, _ = stream_native(proxy, kind, "live", test_id, reply, "delay-ms=5")
    assert ending == CUT_ENDING[kind]
    assert text.endswith("\n\n" + RESPONSE_DENY) and TAIL not in text
    leaked = text[: -len(RESPONSE_DENY) - 2]
    assert leaked.startswith(f"{test_id} before0 ") and reply.startswith(leaked)
    assert len(leaked) < len(reply) / 2
    assert TAIL.encode() in bytes(llm.sent[test_id])  # the upstream did send it all
    record = verdict(proxy, test_id, "response", "flagged")
    assert record["lakera"]["response"]["action"] == "blocked"
    assert "live stream cut" in record["lakera"]["response"]["coverage"]
    assert record["marked"] == ":no_entry:"


@pytest.mark.parametrize("kind", KINDS)
def test_live_clean_stream_is_live_and_whole(proxy: Proxy, lakera, kind) -> None:
    test_id = new_id()
    reply = f"{test_id} " + words(80, "w") + TAIL
    text, ending, first, ended = stream_native(proxy, kind, "live", test_id, reply,
                                             "delay-ms=20")  # ~1.6 s of streaming
    assert text == reply and ending == NORMAL_ENDING[kind]
    assert first is not None and first < ended / 3, "the first text came long before the end"
    record = verdict(proxy, test_id, "response", "clean")
    assert record["marked"] in ("", None)
    scans = answer_scans(lakera, test_id)
    assert len(scans) >= 2 and scans[-1] == reply  # windows, then the whole answer


@pytest.mark.parametrize(("mode", "reason"), [
    ("truncate-clean", "stream ended before its terminal event"),
    ("malformed", "event data is not JSON"),
])
@pytest.mark.parametrize("kind", KINDS)
def test_unassemblable_held_stream_is_a_failure(proxy: Proxy, kind, mode, reason) -> None:
    """A Gemini stream without a finishReason, an Ollama stream without its done line, or one
    with an event that is not JSON cannot be screened: fail_open (false here) denies it."""
    test_id = new_id()
    body = raw_body(kind, f"hello {test_id}", True)
    response = raw(proxy, "block", PATHS[kind, True], body, test_id, f"Partial answer {test_id}",
                   mode)
    assert test_id not in response.text and RESPONSE_DENY in response.text
    record = verdict(proxy, test_id, "response", "failure")
    assert reason in record["lakera"]["response"]["failure"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", ["gemini", "ollama-chat"])
def test_tool_calls_only_pass_unscanned(proxy: Proxy, lakera, kind, stream) -> None:
    test_id = new_id()
    response = raw(proxy, "block", PATHS[kind, stream], raw_body(kind, f"hello {test_id}", stream),
                   test_id, mode="tools")
    assert response.status_code == 200 and "get_weather" in response.text
    record = verdict(proxy, test_id, "response", "unscanned")
    assert record["lakera"]["response"]["failure"] == "no assistant text"
    assert not answer_scans(lakera, test_id)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_upstream_error_reaches_the_sdk_unscanned(proxy: Proxy, kind, stream) -> None:
    test_id = new_id()
    with pytest.raises((genai_errors.APIError, ollama.ResponseError)) as raised:
        ask_native(proxy, kind, "block", test_id, f"hi {test_id}", stream, mode="status=503")
    assert "stand-in status 503" in str(raised.value)
    record = verdict(proxy, test_id, "response", "unscanned")
    assert record["lakera"]["response"]["failure"] == "upstream status 503"


# --- a deny with another status ------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("side", ["request", "response"])
@pytest.mark.parametrize("kind", KINDS)
def test_deny_code_403_raises_the_sdks_error(proxy: Proxy, kind, side, stream) -> None:
    """`deny_code: 403` (with the flagged categories revealed): google-genai raises its
    ClientError, ollama its ResponseError, each carrying the deny text."""
    test_id = new_id()
    prompt = f"{ATTACK_TRIGGER} {test_id}" if side == "request" else f"hi {test_id}"
    reply = f"{ATTACK_TRIGGER} {test_id}" if side == "response" else None
    deny = REQUEST_DENY if side == "request" else RESPONSE_DENY
    expected = f"{deny}. Flagged categories: prompt_attack"
    if kind == "gemini":
        with pytest.raises(genai_errors.ClientError) as gemini_raised:
            ask_native(proxy, kind, "reveal", test_id, prompt, stream, reply)
        assert gemini_raised.value.code == 403
        assert gemini_raised.value.status == "PERMISSION_DENIED"
        assert gemini_raised.value.message == expected
    else:
        with pytest.raises(ollama.ResponseError) as ollama_raised:
            ask_native(proxy, kind, "reveal", test_id, prompt, stream, reply)
        assert ollama_raised.value.status_code == 403
        assert ollama_raised.value.error == expected
    record = verdict(proxy, test_id, side, "flagged")
    assert record["status"] == 403

