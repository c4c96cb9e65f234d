"""The stand-ins speak what the official SDKs and the addon expect (no proxy in between)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import PII_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_upstream import DEFAULT_REPLY
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
