"""The invariant as a property (SPEC section 5): on a route with `action: block` and
`fail_open: false`, a flagged phrase placed in any text-bearing field of a request of any
protocol never reaches the upstream, however the request is mutated (unknown keys and part
types, lone surrogates, invalid bytes, deep nesting, huge numbers, duplicate and case-variant
keys, BOMs, other encodings, trailing data, compression, odd paths and Host headers); and a
flagged phrase in an answer never reaches the client of a held route, however the answer is
framed, split or cut. Run against the real hooks (mitmproxy's own test master and flows, not a
mock) with the Lakera stand-in on loopback, which flags the phrase. The record matches the
outcome: a denied flow is recorded as blocked.

The default run makes a bounded number of examples; a longer run:
    LAKERA_INVARIANT_EXAMPLES=5000 .venv/bin/pytest tests/test_invariant.py
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import random
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from lakera_addon.guard_addon import LakeraGuard
from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("LAKERA_INVARIANT_EXAMPLES", "150"))
PHRASE = ATTACK_TRIGGER
STRICT_HOST = "strict.test"
WEAK_HOST = "weak.test"

# --- where the phrase goes: (protocol path, body builder) ------------------------------------

Builder = Callable[[str], dict[str, Any]]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


PLACEMENTS: dict[str, tuple[str, Builder]] = {
    "chat: user text": ("/v1/chat/completions", lambda p: {
        "model": "m", "messages": [{"role": "user", "content": p}]}),
    "chat: system": ("/v1/chat/completions", lambda p: {
        "model": "m", "messages": [{"role": "system", "content": p},
                                   {"role": "user", "content": "hi"}]}),
    "chat: text part": ("/v1/chat/completions", lambda p: {
        "model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
            {"type": "text", "text": p}]}]}),
    "chat: tool result": ("/v1/chat/completions", lambda p: {
        "model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
                "name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": p}]}),
    "chat: developer": ("/v1/chat/completions", lambda p: {
        "model": "m", "messages": [{"role": "developer", "content": p}]}),
    "responses: input": ("/v1/responses", lambda p: {"model": "m", "input": p}),
    "responses: instructions": ("/v1/responses", lambda p: {
        "model": "m", "instructions": p, "input": "hi"}),
    "responses: function output": ("/v1/responses", lambda p: {
        "model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": p}]}),
    "responses: mcp_call output": ("/v1/responses", lambda p: {
        "model": "m", "input": [{"type": "mcp_call", "id": "m1", "server_label": "s",
                                 "name": "t", "arguments": "{}", "output": p}]}),
    "anthropic: system": ("/v1/messages", lambda p: {
        "model": "m", "max_tokens": 5, "system": p,
        "messages": [{"role": "user", "content": "hi"}]}),
    "anthropic: text block": ("/v1/messages", lambda p: {
        "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "text", "text": p}]}]}),
    "anthropic: tool_result": ("/v1/messages", lambda p: {
        "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text",
                                                                     "text": p}]}]}]}),
    "anthropic: document text source": ("/v1/messages", lambda p: {
        "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": p}}]}]}),
    "anthropic: search_result in tool_result": ("/v1/messages", lambda p: {
        "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "search_result", "source": "https://x", "title": "t",
                 "content": [{"type": "text", "text": p}]}]}]}]}),
    "gemini: text part": ("/v1beta/models/g:generateContent", lambda p: {
        "contents": [{"role": "user", "parts": [{"text": p}]}]}),
    "gemini: system instruction": ("/v1beta/models/g:generateContent", lambda p: {
        "systemInstruction": {"parts": [{"text": p}]},
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
    "gemini: function response": ("/v1beta/models/g:generateContent", lambda p: {
        "contents": [{"role": "user", "parts": [{"functionResponse": {
            "name": "f", "response": {"result": p}}}]}]}),
    "gemini: text/plain inlineData": ("/v1beta/models/g:generateContent", lambda p: {
        "contents": [{"role": "user", "parts": [{"inlineData": {
            "mimeType": "text/plain", "data": _b64(p)}}]}]}),
    "ollama-chat: message": ("/api/chat", lambda p: {
        "model": "llama", "messages": [{"role": "user", "content": p}]}),
    "ollama-generate: prompt": ("/api/generate", lambda p: {"model": "llama", "prompt": p}),
    "ollama-generate: system": ("/api/generate", lambda p: {
        "model": "llama", "prompt": "hi", "system": p}),
    "embeddings: input": ("/v1/embeddings", lambda p: {"model": "m", "input": [p]}),
    "legacy completions: prompt": ("/v1/completions", lambda p: {"model": "m", "prompt": p}),
}

# --- mutations -----------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for item in node:
            yield from _objects(item)


def _lists(node: Any) -> Iterator[list[Any]]:
    if isinstance(node, list):
        yield node
        for item in node:
            yield from _lists(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _lists(value)


@st.composite
def mutated_body(draw: st.DrawFn, build: Builder) -> dict[str, Any]:
    body = build(PHRASE)
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(0, 3))):  # unknown keys anywhere
        objects = list(_objects(body))
        rng.choice(objects)[draw(st.sampled_from(["x_extra", "cache_control", "meta",
                                                  "unknown"]))] = draw(json_values)
    if draw(st.booleans()):  # an unknown part type in some list
        lists = list(_lists(body))
        if lists:
            rng.choice(lists).append({"type": "future_block", "data": draw(json_values)})
    if draw(st.booleans()):  # deep nesting elsewhere
        deep: Any = "leaf"
        for _ in range(draw(st.integers(1, 60))):
            deep = [deep]
        body["metadata_x"] = deep
    if draw(st.booleans()):  # a lone surrogate elsewhere
        body["user"] = "\ud800 surrogate"
    return body


@st.composite
def request_bytes(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    name = draw(st.sampled_from(sorted(PLACEMENTS)))
    path, build = PLACEMENTS[name]
    body = draw(mutated_body(build))
    raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    headers: dict[str, str] = {"content-type": "application/json"}
    mutations = set(draw(st.lists(st.sampled_from(
        ["trailing", "duplicate", "huge", "invalid", "case", "bom", "utf16", "gzip",
         "gzip-lie"]), max_size=4, unique=True)))
    if raw.startswith(b"{"):  # in the JSON text
        if "duplicate" in mutations:
            raw = b'{"model": "dup", ' + raw[1:]
        if "huge" in mutations:
            raw = b'{"seed": ' + b"9" * 5000 + b", " + raw[1:]
        if "invalid" in mutations:
            raw = b'{"junk": "\xff\xfe", ' + raw[1:]
    if "case" in mutations:
        raw = raw.replace(b'"messages"', b'"Messages"', 1)
    if "trailing" in mutations:
        raw += b' {"garbage": '
    if "utf16" in mutations and "invalid" not in mutations:  # an encoding, or a BOM
        raw = raw.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
    elif "bom" in mutations:
        raw = b"\xef\xbb\xbf" + raw
    if "gzip" in mutations:  # then a Content-Encoding, true or not
        raw = gzip.compress(raw)
        headers["content-encoding"] = "gzip"
    elif "gzip-lie" in mutations:  # says gzip, is not: servers that ignore it read it
        headers["content-encoding"] = "gzip"
    path = draw(st.sampled_from([
        path, path.upper() if "models/" not in path else path, path.replace("/", "//", 1),
        path + "/", path.replace("/v1", "/v1/.", 1), path.replace("v", "%76", 1),
        path + "?x=1"]))
    return name, path, raw, headers


# --- the test bed --------------------------------------------------------------------------


async def _hook(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


@pytest.fixture(scope="module")
def lakera() -> Iterator[LakeraGuardStandin]:
    with LakeraGuardStandin(api_key="k") as standin:
        yield standin


@pytest.fixture(scope="module")
def config(lakera: LakeraGuardStandin, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("invariant") / "c.yaml"
    path.write_text(yaml.safe_dump({
        "api_key": "k", "lakera_endpoint": f"{lakera.url}/v2/guard", "timeout": 3000,
        "direction": "both", "verdict_cache_seconds": 0, "max_body_bytes": 65536,
        "routes": [
            {"name": "weak", "hosts": [WEAK_HOST], "action": "alert", "fail_open": True},
            {"name": "strict", "hosts": [STRICT_HOST], "action": "block", "fail_open": False,
             "paths": ["/v1/*", "/v1beta/*", "/api/*"]},
        ]}))
    return path


async def _run(config: Path, make: Callable[[LakeraGuard], Awaitable[http.HTTPFlow]]
               ) -> http.HTTPFlow:
    addon = LakeraGuard()
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        tctx.configure(addon, lakera_config=str(config))
        flow = await make(addon)
        await addon.lakera.aclose()
        tctx.master._legacy_log_events.uninstall()
        return flow


def _request(path: str, raw: bytes, headers: dict[str, str], host_header: str) -> http.HTTPFlow:
    request = http.Request.make("POST", f"http://{STRICT_HOST}{path}", b"",
                                {**headers, "host": host_header})
    request.raw_content = raw  # the bytes as sent (make would encode them again)
    return tflow.tflow(req=request)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(case=request_bytes(), host_header=st.sampled_from([STRICT_HOST, WEAK_HOST]))
def test_a_flagged_phrase_in_any_request_never_reaches_the_upstream(
        config: Path, case: tuple[str, str, bytes, dict[str, str]], host_header: str) -> None:
    name, path, raw, headers = case

    async def make(addon: LakeraGuard) -> http.HTTPFlow:
        flow = _request(path, raw, headers, host_header)
        await _hook(addon.request(flow))
        return flow

    flow = asyncio.run(_run(config, make))
    assert flow.response is not None, f"{name}: forwarded to the upstream ({path})"
    denied = (flow.response.headers.get("x-lakera-guard") == "blocked"
              or flow.response.status_code == 500)  # (fail_mode error would say so)
    assert denied, f"{name}: not the addon's deny"
    record = flow.metadata["lakera"]["request"]
    assert record["action"] == "blocked", record


# --- answers: held routes ------------------------------------------------------------------

SSE_CHAT = "/v1/chat/completions"


def _chat_events(text: str, ids: str) -> list[bytes]:
    words = [w + " " for w in text.split(" ")]
    events = [json.dumps({"id": ids, "choices": [{"index": 0, "delta": {"content": w}}]})
              for w in words]
    return [f"data: {e}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


def _ollama_lines(text: str, ids: str) -> list[bytes]:
    lines = [json.dumps({"model": ids, "message": {"role": "assistant", "content": w + " "},
                         "done": False}) for w in text.split(" ")]
    return [(line + "\n").encode() for line in lines] + [
        (json.dumps({"model": ids, "done": True}) + "\n").encode()]


@st.composite
def answers(draw: st.DrawFn) -> tuple[str, bytes, str, bytes]:
    """(path, request body, answer content type, answer body)."""
    ids = draw(st.sampled_from(["chatcmpl-1", "\ud800", "x" * 300]))
    text = f"Sure. {PHRASE} and more"
    kind = draw(st.sampled_from(["sse", "ndjson", "json"]))
    if kind == "ndjson":
        path = "/api/chat"
        request: dict[str, Any] = {"model": "llama",
                                   "messages": [{"role": "user", "content": "hi"}]}
        events, content_type = _ollama_lines(text, ids), "application/x-ndjson"
    else:
        path = SSE_CHAT
        request = {"model": "m", "stream": kind == "sse",
                   "messages": [{"role": "user", "content": "hi"}]}
        events = _chat_events(text, ids) if kind == "sse" else [json.dumps(
            {"id": ids, "choices": [{"index": 0, "message": {"role": "assistant",
                                                             "content": text}}]}).encode()]
        content_type = "text/event-stream" if kind == "sse" else "application/json"
    if kind != "json" and draw(st.booleans()):
        events = events[:-1]  # cut short: no terminal event
    body = b"".join(events)
    if draw(st.booleans()):
        body = body.replace(b"\n", b"\r\n")
    if draw(st.integers(0, 9)) == 0:
        body += b"pad" * 30000  # past max_body_bytes
    return path, json.dumps(request).encode(), content_type, body


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=answers())
def test_a_flagged_phrase_in_any_held_answer_never_reaches_the_client(
        config: Path, case: tuple[str, bytes, str, bytes]) -> None:
    path, request, content_type, body = case

    async def make(addon: LakeraGuard) -> http.HTTPFlow:
        flow = _request(path, request, {"content-type": "application/json"}, STRICT_HOST)
        await _hook(addon.request(flow))
        assert flow.response is None, "a clean prompt was denied"
        flow.response = http.Response.make(200, body, {"content-type": content_type})
        addon.responseheaders(flow)
        stream = flow.response.stream
        if callable(stream):  # decided before reading (declared too large)
            out = stream(body)
            sent = out if isinstance(out, bytes) else b"".join(out)
            end = stream(b"")
            sent += end if isinstance(end, bytes) else b"".join(end)
            flow.metadata["sent"] = sent
        else:
            await _hook(addon.response(flow))
        return flow

    flow = asyncio.run(_run(config, make))
    assert flow.response is not None
    sent = flow.metadata.get("sent", flow.response.content or b"")
    assert PHRASE.encode() not in sent, "the flagged answer reached the client"
    assert flow.metadata["lakera"]["response"]["action"] == "blocked"
