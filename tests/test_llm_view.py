"""mitmweb's LLM view (lakera_addon/llm_view.py) on real mitmproxy flows: both sides of every
protocol, JSON and streamed, tool calls, attachments, denied and cut answers, and the fallback
to mitmproxy's own views for everything the view does not read. The answers are the LLM
stand-in's, in each provider's real shape."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mitmproxy import contentviews
from mitmproxy import http
from mitmproxy import io as mitmio
from mitmproxy.io import tnetstring
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from lakera_addon import llm_view
from lakera_addon import llm_view_answer
from lakera_addon.cli import web_arguments
from lakera_addon.deny import cut_ending
from lakera_addon.guard_addon import LakeraGuard
from lakera_addon.standins import llm_answers as answers
from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import PII_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin

REPLY = "The weather in Zurich is mild today."
PNG = base64.b64encode(b"\x89PNG" + bytes(3000)).decode()
TOOLS_CHAT = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather of a city.\nSecond line.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
GEMINI_PATH = "/v1beta/models/gemini-x:generateContent"
GEMINI_STREAM_PATH = "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"

# protocol -> (path, request body): a system prompt, a user turn with an image, the model's
# tool call and its result, and the tool's definition, as each protocol writes them
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "openai-chat": ("/v1/chat/completions", {"model": "gpt-x", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is the weather here?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type":
            "function", "function": {"name": "get_weather", "arguments": '{"city":"Zurich"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 degrees, sunny"}],
        "tools": TOOLS_CHAT}),
    "openai-responses": ("/v1/responses", {"model": "gpt-x", "instructions": "You are terse.",
        "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "What is the weather here?"},
                {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city":"Zurich"}'},
            {"type": "function_call_output", "call_id": "call_1",
             "output": "12 degrees, sunny"}],
        "tools": [{"type": "function", "name": "get_weather",
                   "description": "Get the weather of a city.", "parameters": {}}]}),
    "anthropic-messages": ("/v1/messages", {"model": "claude-x", "max_tokens": 50,
        "system": "You are terse.", "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is the weather here?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                               "name": "get_weather",
                                               "input": {"city": "Zurich"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": "12 degrees, sunny"}]}],
        "tools": [{"name": "get_weather", "description": "Get the weather of a city.",
                   "input_schema": {"type": "object"}}]}),
    "gemini-generate": (GEMINI_PATH, {
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "What is the weather here?"},
                                       {"inlineData": {"mimeType": "image/png", "data": PNG}}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather",
                                                          "args": {"city": "Zurich"}}}]},
            {"role": "user", "parts": [{"functionResponse": {
                "name": "get_weather", "response": {"result": "12 degrees, sunny"}}}]}],
        "tools": [{"functionDeclarations": [{"name": "get_weather",
                                             "description": "Get the weather of a city."}]}]}),
    "ollama-chat": ("/api/chat", {"model": "llama-x", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the weather here?", "images": [PNG]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Zurich"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "12 degrees, sunny"}],
        "tools": TOOLS_CHAT}),
    "ollama-generate": ("/api/generate", {"model": "llama-x", "system": "You are terse.",
                                          "prompt": "What is the weather here?",
                                          "images": [PNG]}),
    "openai-embeddings": ("/v1/embeddings", {"model": "emb-x",
                                             "input": ["What is the weather here?", "Zurich"]}),
}
CONVERSATIONS = [p for p in REQUESTS if p not in ("ollama-generate", "openai-embeddings")]
STREAMING = [p for p in REQUESTS if p != "openai-embeddings"]


@pytest.fixture(autouse=True)
def mitmproxy_context() -> Iterator[None]:
    """mitmproxy's options (make_metadata reads one) and the view registered."""
    with taddons.context():  # type: ignore[no-untyped-call]
        llm_view.register()
        yield


def verdict(outcome: str = "clean", action: str = "allowed", **more: Any) -> dict[str, Any]:
    return {"verdict": outcome, "action": action, "detector_types": [],
            "request_uuid": "uuid-1234", "latency_ms": 41.6, **more}


def make_flow(protocol: str, stream: bool = False, path: str | None = None,
              body: dict[str, Any] | bytes | None = None) -> http.HTTPFlow:
    default_path, default_body = REQUESTS[protocol]
    if protocol == "gemini-generate" and stream:
        default_path = GEMINI_STREAM_PATH
    content = body if isinstance(body, bytes) else json.dumps(
        {**default_body, **({"stream": stream} if "model" in default_body else {}),
         **(body or {})}).encode()
    flow = tflow.tflow(req=http.Request.make(
        "POST", f"http://api.test{path or default_path}", content,
        {"content-type": "application/json"}))
    flow.metadata["lakera"] = {"route": "llm", "protocol": protocol, "request": verdict()}
    return flow


def answer(protocol: str, stream: bool, mode: str = "", text: str = REPLY
           ) -> tuple[str, bytes]:
    """(content type, body) of the LLM stand-in's answer."""
    m = answers.Mode.parse(mode)
    if protocol == "openai-embeddings":
        return "application/json", json.dumps({"object": "list", "data": [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(2)],
            "usage": {"prompt_tokens": 6, "total_tokens": 6}}).encode()
    if not stream:
        document = {
            "openai-chat": lambda: answers.chat_json("m", text, m),
            "openai-responses": lambda: answers.responses_json("m", text, m),
            "anthropic-messages": lambda: answers.anthropic_json("m", text, m),
            "gemini-generate": lambda: answers.gemini_json("m", text, m),
            "ollama-chat": lambda: answers.ollama_json(protocol, "m", text, m),
            "ollama-generate": lambda: answers.ollama_json(protocol, "m", text, m),
        }[protocol]()
        return "application/json", json.dumps(document).encode()
    events: Iterator[bytes] = {
        "openai-chat": lambda: answers.chat_stream("m", text, m, True),
        "openai-responses": lambda: answers.responses_stream("m", text, m),
        "anthropic-messages": lambda: answers.anthropic_stream("m", text, m),
        "gemini-generate": lambda: answers.gemini_stream("m", text, m, True),
        "ollama-chat": lambda: answers.ollama_stream(protocol, "m", text, m),
        "ollama-generate": lambda: answers.ollama_stream(protocol, "m", text, m),
    }[protocol]()
    content_type = "application/x-ndjson" if protocol.startswith("ollama") else (
        "text/event-stream")
    return content_type, b"".join(e for e in events if e != b"TERMINAL")


def respond(flow: http.HTTPFlow, protocol: str, stream: bool, mode: str = "",
            text: str = REPLY) -> http.HTTPFlow:
    content_type, body = answer(protocol, stream, mode, text)
    flow.response = http.Response.make(200, body, {"content-type": content_type})
    flow.metadata["lakera"]["response"] = verdict()
    return flow


def shown(message: http.Message, flow: http.HTTPFlow, view: str = "auto"
          ) -> contentviews.ContentviewResult:
    return contentviews.prettify_message(message, flow, view_name=view)


# --- the request: the conversation as the model reads it --------------------------------------

@pytest.mark.parametrize("protocol", list(REQUESTS))
def test_request_view_is_chosen_and_shows_the_conversation(protocol: str) -> None:
    flow = make_flow(protocol)
    flow.metadata["lakera"]["request"] = verdict("flagged", "blocked",
                                                 detector_types=["prompt_attack"])
    result = shown(flow.request, flow)
    assert result.view_name == "LLM", result.text
    text = result.text
    assert "Lakera Guard · request" in text and "flagged, BLOCKED" in text
    assert "prompt_attack" in text and "uuid-1234" in text and "42 ms" in text
    assert f"{protocol} request" in text
    assert "What is the weather here?" in text
    assert PNG[:100] not in text  # attachments are named, never dumped
    if protocol != "openai-embeddings":
        assert "── system ─" in text and "You are terse." in text
        assert "[image: " in text or "[inline data: image/png" in text
    if protocol in CONVERSATIONS:
        assert "── assistant ─" in text
        assert "→ tool call get_weather" in text and "Zurich" in text
        assert "── tool get_weather" in text and "12 degrees, sunny" in text
        assert "── tool definitions (1) ─" in text
        assert "get_weather — Get the weather of a city." in text
        assert "Second line" not in text
    else:
        assert "→ tool call" not in text
    assert "The addon reads" in text


def test_request_view_shows_the_image_size_and_type() -> None:
    flow = make_flow("anthropic-messages")
    assert "[image: image/png, 3.0 kB]" in shown(flow.request, flow).text


def test_request_roles_as_the_addon_reads_them() -> None:
    flow = make_flow("openai-chat", body={"messages": [
        {"role": "developer", "content": "Rules."}, {"role": "robot", "content": "Hi."}]})
    text = shown(flow.request, flow).text
    assert "── system (as 'developer') ─" in text
    assert "── user (as 'robot') ─" in text


# --- the answer: text, tool calls, finish reason, usage ----------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
@pytest.mark.parametrize("protocol", STREAMING)
def test_answer_view_shows_text_finish_and_usage(protocol: str, stream: bool) -> None:
    flow = respond(make_flow(protocol, stream), protocol, stream)
    result = shown(flow.response, flow)
    assert result.view_name == "LLM", result.text
    text = result.text
    assert "Lakera Guard · response" in text and "clean, allowed" in text
    assert REPLY in text
    assert ("SSE stream" if stream and not protocol.startswith("ollama") else
            "NDJSON stream" if stream else "· JSON") in text
    assert "  finish " in text
    assert "  usage " in text
    assert "the upstream's answer, as the client got it" in text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
@pytest.mark.parametrize("protocol", [p for p in CONVERSATIONS])
def test_answer_view_shows_tool_calls(protocol: str, stream: bool) -> None:
    flow = respond(make_flow(protocol, stream), protocol, stream, mode="tools")
    text = shown(flow.response, flow).text
    assert "→ tool call get_weather" in text, text
    assert '"city":"Zurich"' in text.replace(" ", ""), text


def test_embeddings_answer() -> None:
    flow = respond(make_flow("openai-embeddings"), "openai-embeddings", False)
    text = shown(flow.response, flow).text
    assert "2 vector(s) of 3 dimensions" in text and "prompt_tokens 6" in text


def test_answer_of_a_stream_that_ended_early_shows_what_was_read() -> None:
    flow = respond(make_flow("openai-chat", True), "openai-chat", True)
    assert flow.response is not None
    flow.response.content = (flow.response.content or b"").split(b'"finish_reason":"stop"')[0]
    text = shown(flow.response, flow).text
    assert "stream ended before its terminal event" in text
    assert "The weather" in text


# --- denied and cut answers: what the client got, what the upstream sent -----------------------

def config_file(tmp_path: Path, lakera: LakeraGuardStandin, **settings: Any) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "api_key": "k", "lakera_endpoint": f"{lakera.url}/v2/guard", "direction": "both",
        "routes": [{"name": "all", "hosts": ["*"]}], **settings}))
    return path


async def through_addon(config: Path, protocol: str, stream: bool, reply: str,
                        prompt: str = "What is the weather here?") -> http.HTTPFlow:
    """A flow through the addon's hooks, with the stand-in's answer (a held answer)."""
    addon = LakeraGuard()
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        tctx.configure(addon, lakera_config=str(config))
        path, body = REQUESTS[protocol]
        if protocol == "gemini-generate" and stream:
            path = GEMINI_STREAM_PATH
        content = json.dumps({**body, "stream": stream} if "model" in body else {
            **body, "contents": [{"role": "user", "parts": [{"text": prompt}]}]})
        content = content.replace("What is the weather here?", prompt)
        flow = tflow.tflow(req=http.Request.make("POST", f"http://api.test{path}", content))
        result = addon.request(flow)
        if result is not None:
            await result
        if flow.response is None:
            content_type, answer_body = answer(protocol, stream, text=reply)
            flow.response = http.Response.make(200, answer_body,
                                               {"content-type": content_type})
            addon.responseheaders(flow)
            result = addon.response(flow)
            if result is not None:
                await result
        await addon.lakera.aclose()
        tctx.master._legacy_log_events.uninstall()
        return flow


@pytest.mark.integration
@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
@pytest.mark.parametrize("protocol", STREAMING)
def test_denied_answer_shows_the_deny_and_what_the_upstream_sent(
        tmp_path: Path, protocol: str, stream: bool) -> None:
    leak = f"Your card is {PII_TRIGGER}, keep it safe."
    with LakeraGuardStandin(api_key="k") as lakera:
        flow = asyncio.run(through_addon(config_file(tmp_path, lakera), protocol, stream, leak))
    assert flow.response is not None
    assert flow.response.headers.get("x-lakera-guard") == "blocked"
    kept = flow.metadata["lakera"][llm_view_answer.KEPT_KEY]
    assert PII_TRIGGER in kept["text"]
    tnetstring.dumps(flow.metadata)  # metadata stays serialisable
    result = shown(flow.response, flow)
    assert result.view_name == "LLM", result.text
    text = result.text
    assert "flagged, BLOCKED" in text and "pii/credit_card" in text
    assert "the addon's deny, in place of the upstream's answer" in text
    assert "Response blocked by Lakera Guard" in text
    upstream = text.split("what the upstream sent", 1)[1]
    assert PII_TRIGGER in upstream and "kept by the addon" in upstream
    assert "  finish " in upstream


@pytest.mark.integration
@pytest.mark.parametrize("protocol", CONVERSATIONS)
def test_blocked_request_shows_the_prompt_and_the_deny(tmp_path: Path, protocol: str) -> None:
    with LakeraGuardStandin(api_key="k") as lakera:
        flow = asyncio.run(through_addon(config_file(tmp_path, lakera), protocol, False, REPLY,
                                         prompt=ATTACK_TRIGGER))
    request_view = shown(flow.request, flow)
    assert request_view.view_name == "LLM"
    assert ATTACK_TRIGGER in request_view.text and "flagged, BLOCKED" in request_view.text
    assert flow.response is not None
    response_view = shown(flow.response, flow)
    assert response_view.view_name == "LLM", response_view.text
    assert "the addon's deny (the request was blocked)" in response_view.text
    assert "Request blocked by Lakera Guard" in response_view.text
    assert "not screened: the request was blocked" in response_view.text


def test_kept_answer_is_bounded() -> None:
    flow = make_flow("openai-chat")
    content_type, body = answer("openai-chat", False, text="x" * 50_000)
    flow.response = http.Response.make(200, body, {"content-type": content_type})
    asyncio.run(llm_view_answer.keep_upstream(flow, "openai-chat", 1, 1 << 20))
    kept = flow.metadata["lakera"][llm_view_answer.KEPT_KEY]
    assert len(kept["text"]) == llm_view_answer.UPSTREAM_TEXT_CHARS
    assert kept["chars"] == 50_000
    assert "Authorization" not in json.dumps(kept)
    flow.response = http.Response.make(200, b"denied", {"x-lakera-guard": "blocked"})
    buffer = io.BytesIO()  # a flow with the kept answer saves and loads
    mitmio.FlowWriter(buffer).add(flow)  # type: ignore[no-untyped-call]
    buffer.seek(0)
    loaded = next(iter(mitmio.FlowReader(buffer).stream()))
    assert loaded.metadata["lakera"][llm_view_answer.KEPT_KEY]["chars"] == 50_000


def test_live_cut_stream_shows_what_the_client_got() -> None:
    content_type, body = answer("openai-chat", True, text="First part. " * 20)
    events = body.split(b"\n\n")
    last = json.loads(events[3][len("data: "):])
    sent = b"\n\n".join(events[:4]) + b"\n\n"
    ending = cut_ending("openai-chat", "Response blocked by Lakera Guard", last, "m",
                        sent_text="First part. First part. ")
    flow = make_flow("openai-chat", True)
    flow.response = http.Response.make(200, sent + ending, {"content-type": content_type})
    flow.metadata["lakera"]["response"] = verdict(
        "flagged", "blocked", detector_types=["pii/credit_card"],
        coverage="live stream cut: the client received 24 characters; the last clean scan "
                 "covered 0, the flagged one 24")
    text = shown(flow.response, flow).text
    assert "the upstream's stream, cut by the addon" in text
    assert "Response blocked by Lakera Guard" in text and "First part." in text
    assert "what the upstream sent after the cut was dropped unread" in text


def test_windowed_cut_keeps_the_text_the_client_never_got() -> None:
    flow = make_flow("anthropic-messages", True)
    llm_view_answer.keep_text(flow, "anthropic-messages", f"Clean part. Then {PII_TRIGGER}.",
                              "the client received 12 of these 40 characters, then the cut "
                              "ending")
    content_type, body = answer("anthropic-messages", True, text="Clean part.")
    flow.response = http.Response.make(200, body, {"content-type": content_type})
    flow.metadata["lakera"]["response"] = verdict(
        "flagged", "blocked", coverage="windowed: 2 scan(s); the client received 12 of 40 "
                                       "characters")
    text = shown(flow.response, flow).text
    assert "cut by the addon" in text
    upstream = text.split("what the upstream sent", 1)[1]
    assert PII_TRIGGER in upstream and "the client received 12 of these 40" in upstream


def test_a_windowed_stream_released_whole_is_the_upstreams_answer() -> None:
    flow = respond(make_flow("openai-chat", True), "openai-chat", True)
    flow.metadata["lakera"]["response"] = verdict(
        coverage="windowed: 3 scan(s); the client received 36 of 36 characters")
    text = shown(flow.response, flow).text
    assert "the upstream's answer, as the client got it" in text
    assert "what the upstream sent" not in text


# --- everything else keeps mitmproxy's own views; never an error page --------------------------

def test_flows_on_no_route_keep_mitmproxy_views() -> None:
    flow = make_flow("openai-chat", True)
    del flow.metadata["lakera"]
    respond_flow = respond(make_flow("openai-chat", True), "openai-chat", True)
    del respond_flow.metadata["lakera"]
    assert shown(flow.request, flow).view_name == "JSON"
    assert shown(respond_flow.response, respond_flow).view_name == "Raw"
    assert llm_view.VIEW.render_priority(b"{}", contentviews.Metadata(flow=flow)) < 0


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2, 3]", b'{"model": "m", "messages": "nope"}', b"\xff\xfe{",
    b'{"a": ' * 50_000, b'{"model": "m"}',
], ids=["text", "array", "wrong-shape", "bytes", "deep", "no-messages"])
def test_unreadable_request_falls_back_without_an_error(body: bytes) -> None:
    flow = make_flow("openai-chat", body=body)
    flow.metadata["lakera"]["protocol"] = None
    result = shown(flow.request, flow)
    assert result.view_name != "LLM", result.text
    assert "as LLM" not in result.description  # (mitmproxy's JSON view may fail on its own)
    picked = shown(flow.request, flow, view="LLM")  # chosen by hand: a note, no traceback
    assert "Traceback" not in picked.text and picked.syntax_highlight != "error"


@pytest.mark.parametrize("body,content_type", [
    (b"<html>busy</html>", "text/html"), (b'{"unrelated": true}', "application/json"),
    (b"data: hello\n\n", "text/event-stream"), (b"\x00\x01", "application/x-ndjson"),
    (b'{"choices": "x", "usage": 5}', "application/json"),
])
def test_unreadable_answer_falls_back_without_an_error(body: bytes, content_type: str) -> None:
    flow = make_flow("openai-chat")
    flow.response = http.Response.make(200, body, {"content-type": content_type})
    result = shown(flow.response, flow)
    assert result.view_name != "LLM", result.text
    assert "as LLM" not in result.description
    picked = shown(flow.response, flow, view="LLM")
    assert "cannot read this body" in picked.text and "Lakera Guard · response" in picked.text


def test_odd_metadata_never_breaks_the_view() -> None:
    flow = respond(make_flow("openai-chat"), "openai-chat", False)
    for odd in ({"route": "r"}, {"route": "r", "protocol": "nonsense", "request": "x"},
                {"route": "r", "response": {"verdict": None, "latency_ms": "slow",
                                            "masked": [1], llm_view_answer.KEPT_KEY: 5}},
                {"route": "r", "protocol": "openai-chat", llm_view_answer.KEPT_KEY: {"x": 1}}):
        flow.metadata["lakera"] = odd
        for message in (flow.request, flow.response):
            result = shown(message, flow)
            assert "as LLM" not in result.description
            metadata = contentviews.Metadata(flow=flow, http_message=message,
                                             content_type="application/json")
            llm_view.render(message.content or b"", metadata)  # (no exception to catch)


def test_masked_counts_and_cached_verdict_in_the_header() -> None:
    flow = make_flow("openai-chat")
    flow.metadata["lakera"]["request"] = verdict(
        "flagged", "masked", detector_types=["pii/email"], masked={"[EMAIL]": 2}, cached=True,
        coverage="read leniently: 1 value(s) under duplicate or case-variant keys")
    text = shown(flow.request, flow).text
    assert "flagged, MASKED" in text and "[EMAIL]×2" in text
    assert "yes: an identical call's verdict" in text and "read leniently" in text


def test_failure_reason_in_the_header() -> None:
    flow = make_flow("openai-chat")
    flow.metadata["lakera"]["request"] = {"verdict": "failure", "action": "blocked",
                                          "failure": "Lakera Guard returned status 500"}
    text = shown(flow.request, flow).text
    assert "failure, BLOCKED" in text and "Lakera Guard returned status 500" in text


def test_the_addon_registers_the_view() -> None:
    addon = LakeraGuard()
    with taddons.context(addon):  # type: ignore[no-untyped-call]
        assert "llm" in contentviews.registry


def test_lakera_mitmweb_keeps_streamed_bodies_unless_told_otherwise() -> None:
    assert web_arguments(["--mode", "reverse:http://x"])[:2] == [
        "--set", "store_streamed_bodies=true"]
    assert web_arguments(["--set", "store_streamed_bodies=false"]) == [
        "--set", "store_streamed_bodies=false"]
    assert web_arguments(["--no-store-streamed-bodies"]) == ["--no-store-streamed-bodies"]


def _paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list) else []
    for key, child in children:
        yield from _paths(child, (*at, key))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


ODD = [None, 7, True, "", "text", [], [None, 3], {}, {"type": "text"}]


@pytest.mark.parametrize("protocol", list(REQUESTS))
def test_request_view_never_raises_on_odd_shapes(protocol: str) -> None:
    """Every value of the request body in turn replaced by values of other types: the view
    renders or declines, and never raises (checked without the view's own safety net)."""
    _path, body = REQUESTS[protocol]
    for where in _paths(body):
        for odd in ODD:
            flow = make_flow(protocol, body=json.dumps(_replaced(body, where, odd)).encode())
            metadata = contentviews.Metadata(flow=flow, http_message=flow.request,
                                             content_type="application/json")
            llm_view.render(flow.request.content or b"", metadata)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
@pytest.mark.parametrize("protocol", STREAMING)
def test_answer_view_never_raises_on_odd_shapes(protocol: str, stream: bool) -> None:
    content_type, body = answer(protocol, stream, mode="tools")
    ndjson = protocol.startswith("ollama")
    frames = body.split(b"\n" if ndjson else b"\n\n")
    for n, frame in enumerate(frames):
        head, _, data = frame.rpartition(b"data: ") if not ndjson else (b"", b"", frame)
        try:
            document = json.loads(data)
        except ValueError:
            continue
        for where in _paths(document):
            for odd in ODD:
                changed = json.dumps(_replaced(document, where, odd)).encode()
                frame_out = (head + b"data: " + changed) if not ndjson else changed
                joined = (b"\n" if ndjson else b"\n\n").join(
                    [*frames[:n], frame_out, *frames[n + 1:]])
                flow = make_flow(protocol, stream)
                flow.response = http.Response.make(200, joined, {"content-type": content_type})
                metadata = contentviews.Metadata(flow=flow, http_message=flow.response,
                                                 content_type=content_type)
                llm_view.render(joined, metadata)
