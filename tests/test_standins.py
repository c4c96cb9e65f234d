"""The stand-ins speak what the official SDKs and the addon expect (no proxy in between)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import PII_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_answers import DEFAULT_REPLY
from lakera_addon.standins.llm_upstream import LLMUpstreamStandin

KEY = "k-standin"


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMUpstreamStandin]:
    with LLMUpstreamStandin() as standin:
        yield standin


@pytest.fixture(scope="module")
def lakera() -> Iterator[LakeraGuardStandin]:
    with LakeraGuardStandin(api_key=KEY) as standin:
        yield standin


def sdk_text(llm: LLMUpstreamStandin, protocol: str, stream: bool, headers: dict[str, str]) -> str:
    oa = openai.OpenAI(base_url=f"{llm.url}/v1", api_key="x", max_retries=0,
                       default_headers=headers)
    an = anthropic.Anthropic(base_url=llm.url, api_key="x", max_retries=0,
                             default_headers=headers)
    messages = [{"role": "user", "content": "hi"}]
    if protocol == "chat" and stream:
        chunks = oa.chat.completions.create(model="m", messages=messages, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if protocol == "chat":
        answer = oa.chat.completions.create(model="m", messages=messages)
        return answer.choices[0].message.content or ""
    if protocol == "responses" and stream:
        with oa.responses.stream(model="m", input="hi") as s:
            return s.get_final_response().output_text
    if protocol == "responses":
        return oa.responses.create(model="m", input="hi").output_text
    if stream:
        with an.messages.stream(model="m", max_tokens=9, messages=messages) as s:
            return s.get_final_text()
    message = an.messages.create(model="m", max_tokens=9, messages=messages)
    return "".join(b.text for b in message.content if b.type == "text")


@pytest.mark.parametrize("protocol", ["chat", "responses", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", ["", "split", "crlf", "usage", "gzip", "br", "split,crlf,gzip"])
def test_sdks_parse_every_protocol_and_mode(llm, protocol, stream, mode) -> None:
    reply = "Grüezi, the answer is 42."
    headers = {"x-standin-mode": mode,
               "x-standin-reply-b64": base64.b64encode(reply.encode()).decode()}
    assert sdk_text(llm, protocol, stream, headers) == reply


def test_reply_defaults_and_b64(llm) -> None:
    assert sdk_text(llm, "chat", False, {}) == DEFAULT_REPLY
    b64 = base64.b64encode("zwei\nZeilen ✓".encode()).decode()
    assert sdk_text(llm, "chat", True, {"x-standin-reply-b64": b64}) == "zwei\nZeilen ✓"


@pytest.mark.parametrize(
    ("mode", "ending"),
    [("", b"data: [DONE]\n\n"), ("truncate-clean", b'"finish_reason":"stop"}]}\n\n'),
     ("error-event", b'"type":"server_error"}}\n\n')],
)
def test_stream_endings(llm, mode, ending) -> None:
    response = httpx.post(f"{llm.url}/v1/chat/completions", headers={"x-standin-mode": mode},
                          json={"model": "m", "messages": [], "stream": True}, trust_env=False)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content.endswith(ending)


def test_truncate_cuts_the_connection(llm) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{llm.url}/v1/messages", headers={"x-standin-mode": "truncate"},
                   json={"model": "m", "messages": [], "stream": True}, trust_env=False)


def test_status_and_bad_json_and_records(llm) -> None:
    r = httpx.post(f"{llm.url}/v1/chat/completions", headers={"x-standin-mode": "status=503"},
                   json={"model": "m", "messages": []}, trust_env=False)
    assert r.status_code == 503 and r.json()["error"]["message"] == "stand-in status 503"
    r = httpx.post(f"{llm.url}/v1/chat/completions", content=b"nope", trust_env=False)
    assert r.status_code == 400
    assert llm.received[-1]["body"] == "nope"


def test_tools_mode_has_no_text(llm) -> None:
    oa = openai.OpenAI(base_url=f"{llm.url}/v1", api_key="x", max_retries=0,
                       default_headers={"x-standin-mode": "tools"})
    answer = oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "w"}])
    assert answer.choices[0].message.content is None
    assert answer.choices[0].message.tool_calls


def guard(lakera: LakeraGuardStandin, text: str, key: str = KEY) -> httpx.Response:
    return httpx.post(f"{lakera.url}/v2/guard", headers={"authorization": f"Bearer {key}"},
                      json={"messages": [{"role": "user", "content": text}], "breakdown": True},
                      trust_env=False, timeout=10)


@pytest.mark.parametrize(
    ("text", "status", "flagged", "types"),
    [("hello", 200, False, []),
     (f"please {ATTACK_TRIGGER}", 200, True, ["prompt_attack"]),
     (f"card {PII_TRIGGER}", 200, True, ["pii/credit_card"]),
     ("lakera-500", 500, None, None), ("lakera-429", 429, None, None),
     ("lakera-503", 503, None, None)],
)
def test_lakera_verdicts(lakera, text, status, flagged, types) -> None:
    r = guard(lakera, text)
    assert r.status_code == status
    if flagged is not None:
        body = r.json()
        assert body["flagged"] is flagged
        assert body["metadata"]["request_uuid"]
        assert [e["detector_type"] for e in body["breakdown"] if e["detected"]] == types
    assert lakera.received[-1]["messages"][0]["content"] == text


def test_lakera_key_and_broken_answers(lakera) -> None:
    assert guard(lakera, "hello", key="wrong").status_code == 401
    assert guard(lakera, "lakera-notjson").text.startswith("<html>")
    assert "flagged" not in guard(lakera, "lakera-noflag").json()
    assert isinstance(guard(lakera, "lakera-array").json(), list)
    with pytest.raises(httpx.RemoteProtocolError):
        guard(lakera, "lakera-truncated")
    started = time.monotonic()
    guard(lakera, "lakera-sleep-300")
    assert time.monotonic() - started >= 0.3


# --- the native protocols: Gemini and Ollama ---------------------------------------------

GEMINI = "/v1beta/models/gemini-test"


def genai_client(llm: LLMUpstreamStandin, headers: dict[str, str]) -> genai.Client:
    return genai.Client(api_key="x", http_options=genai_types.HttpOptions(
        base_url=llm.url, api_version="v1beta", headers=headers,
        client_args={"trust_env": False}))


def native_text(llm: LLMUpstreamStandin, protocol: str, stream: bool,
                headers: dict[str, str]) -> str:
    if protocol == "gemini":
        client = genai_client(llm, headers)
        if stream:
            return "".join(c.text or "" for c in client.models.generate_content_stream(
                model="gemini-test", contents="hi"))
        return client.models.generate_content(model="gemini-test", contents="hi").text or ""
    client_o = ollama.Client(host=llm.url, headers=headers, trust_env=False)
    if protocol == "ollama-chat":
        messages = [{"role": "user", "content": "hi"}]
        if stream:
            return "".join(p.message.content or "" for p in client_o.chat(
                model="m", messages=messages, stream=True))
        return client_o.chat(model="m", messages=messages).message.content or ""
    if stream:
        return "".join(p.response or "" for p in client_o.generate(
            model="m", prompt="hi", stream=True))
    return client_o.generate(model="m", prompt="hi").response or ""


@pytest.mark.parametrize("protocol", ["gemini", "ollama-chat", "ollama-generate"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", ["", "split", "crlf", "gzip", "br", "split,crlf,gzip"])
def test_native_sdks_parse_every_mode(llm, protocol, stream, mode) -> None:
    reply = "Grüezi, the answer is 42."
    headers = {"x-standin-mode": mode,
               "x-standin-reply-b64": base64.b64encode(reply.encode()).decode()}
    assert native_text(llm, protocol, stream, headers) == reply
    sent = llm.received[-1]
    if protocol == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        assert sent["path"] == f"{GEMINI}:{method}"
    else:
        assert sent["path"] == f"/api/{protocol.removeprefix('ollama-')}"
        assert sent["body"]["stream"] is stream


def post(llm: LLMUpstreamStandin, path: str, body: dict[str, Any], mode: str = "",
         ) -> httpx.Response:
    return httpx.post(f"{llm.url}{path}", headers={"x-standin-mode": mode}, json=body,
                      trust_env=False)


def ending(response: httpx.Response) -> tuple[str, object]:
    """What the last event / line / chunk of an answer says about its end."""
    kind = response.headers["content-type"]
    if kind.startswith("text/event-stream"):
        datas = [line for line in response.text.splitlines() if line.startswith("data: ")]
        last = json.loads(datas[-1].removeprefix("data: "))
    elif kind.startswith("application/x-ndjson"):
        last = json.loads(response.text.splitlines()[-1])
    else:
        document = response.json()
        last = document[-1] if isinstance(document, list) else document
    if "error" in last:
        return ("error", last["error"])
    if "candidates" in last:
        return ("finishReason", last["candidates"][0].get("finishReason"))
    return ("done", last["done"])


GEMINI_ERROR = {"code": 500, "message": "The server had an error", "status": "INTERNAL"}
OLLAMA_ERROR = "an error was encountered while running the model"


@pytest.mark.parametrize(
    ("path", "body", "mode", "content_type", "expected"),
    [
        (f"{GEMINI}:streamGenerateContent?alt=sse", {}, "", "text/event-stream",
         ("finishReason", "STOP")),
        (f"{GEMINI}:streamGenerateContent?alt=sse", {}, "truncate-clean", "text/event-stream",
         ("finishReason", None)),
        (f"{GEMINI}:streamGenerateContent?alt=sse", {}, "error-event", "text/event-stream",
         ("error", GEMINI_ERROR)),
        (f"{GEMINI}:streamGenerateContent", {}, "", "application/json", ("finishReason", "STOP")),
        (f"{GEMINI}:streamGenerateContent", {}, "error-event", "application/json",
         ("error", GEMINI_ERROR)),
        (f"{GEMINI}:streamGenerateContent?alt=sse", {}, "json", "application/json",
         ("finishReason", "STOP")),
        ("/api/chat", {"model": "m"}, "", "application/x-ndjson", ("done", True)),
        ("/api/chat", {"model": "m", "stream": True}, "truncate-clean", "application/x-ndjson",
         ("done", False)),
        ("/api/generate", {"model": "m"}, "error-event", "application/x-ndjson",
         ("error", OLLAMA_ERROR)),
        ("/api/generate", {"model": "m", "stream": False}, "", "application/json",
         ("done", True)),
        ("/api/chat", {"model": "m"}, "json", "application/json", ("done", True)),
    ],
)
def test_native_stream_endings(llm, path, body, mode, content_type, expected) -> None:
    response = post(llm, path, body, mode)
    assert response.headers["content-type"].startswith(content_type)
    assert ending(response) == expected


def test_native_answers_parse(llm) -> None:
    # Gemini without alt=sse: one JSON array of the chunks
    chunks = post(llm, f"{GEMINI}:streamGenerateContent", {"contents": []}).json()
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == (
        DEFAULT_REPLY)
    assert "finishReason" in chunks[-1]["candidates"][0]
    # Ollama streams by default: one JSON object per line, the last one done
    lines = [json.loads(line) for line in post(
        llm, "/api/chat", {"model": "m", "messages": []}).content.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == DEFAULT_REPLY
    assert [line["done"] for line in lines][-2:] == [False, True]
    # malformed: a line (an event) that is not JSON
    malformed = post(llm, "/api/chat", {"model": "m", "messages": []}, "malformed")
    assert b"\n{not json\n" in malformed.content
    malformed = post(llm, f"{GEMINI}:streamGenerateContent?alt=sse", {}, "malformed")
    assert b"data: {not json\n\n" in malformed.content


@pytest.mark.parametrize(("path", "error"), [
    (f"{GEMINI}:generateContent", {"error": {"code": 503, "message": "stand-in status 503",
                                             "status": "UNAVAILABLE"}}),
    ("/api/chat", {"error": "stand-in status 503"}),
    ("/api/generate", {"error": "stand-in status 503"}),
])
def test_native_status_errors(llm, path, error) -> None:
    response = post(llm, path, {"contents": [], "messages": []}, "status=503")
    assert response.status_code == 503
    assert response.json() == error


def test_native_status_errors_reach_the_sdks(llm) -> None:
    headers = {"x-standin-mode": "status=429"}
    with pytest.raises(genai_errors.ClientError) as gemini_raised:
        native_text(llm, "gemini", True, headers)
    assert (gemini_raised.value.code, gemini_raised.value.status) == (429, "RESOURCE_EXHAUSTED")
    with pytest.raises(ollama.ResponseError) as ollama_raised:
        native_text(llm, "ollama-chat", True, headers)
    assert ollama_raised.value.status_code == 429


@pytest.mark.parametrize("stream", [False, True])
def test_native_tools_mode_has_no_text(llm, stream) -> None:
    headers = {"x-standin-mode": "tools"}
    client = genai_client(llm, headers)
    if stream:
        chunks = list(client.models.generate_content_stream(model="g", contents="weather?"))
        calls = [call for c in chunks for call in c.function_calls or []]
    else:
        answer = client.models.generate_content(model="g", contents="weather?")
        calls = answer.function_calls or []
        assert answer.text is None
    assert [call.name for call in calls] == ["get_weather"]
    client_o = ollama.Client(host=llm.url, headers=headers, trust_env=False)
    messages = [{"role": "user", "content": "weather?"}]
    if stream:
        parts = list(client_o.chat(model="m", messages=messages, stream=True))
        assert "".join(p.message.content or "" for p in parts) == ""
        assert parts[0].message.tool_calls[0].function.name == "get_weather"
    else:
        message = client_o.chat(model="m", messages=messages).message
        assert not message.content
        assert message.tool_calls[0].function.arguments == {"city": "Zurich"}


@pytest.mark.parametrize("path", [f"{GEMINI}:streamGenerateContent?alt=sse", "/api/chat"])
def test_native_truncate_cuts_the_connection(llm, path) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        post(llm, path, {"contents": [], "messages": []}, "truncate")


def test_raw_answers_are_sent_byte_for_byte(llm) -> None:
    body = b'data: {"a": 1}\n\n{"bare": "line"}'  # no blank line at the end
    headers = {"x-standin-raw-b64": base64.b64encode(body).decode(),
               "x-standin-raw-type": "text/event-stream", "x-standin-raw-encoding": "x-test",
               "x-test-id": "raw-1"}
    response = httpx.post(f"{llm.url}/v1/chat/completions", json={"model": "m"},
                          headers=headers)
    assert response.status_code == 200 and response.content == body
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["content-encoding"] == "x-test"
    assert llm.sent["raw-1"] == body
    plain = httpx.post(f"{llm.url}/api/chat", json={"model": "m"}, headers={
        "x-standin-raw-b64": base64.b64encode(b'{"x": 1}').decode()})
    assert plain.json() == {"x": 1} and plain.headers["content-type"] == "application/json"
