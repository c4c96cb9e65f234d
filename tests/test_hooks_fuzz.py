"""Fuzzing the addon's hooks with real mitmproxy flows (mitmproxy.test.taddons/tflow, not a
mock) and the Lakera stand-in on loopback: whatever the request and answer bodies, nothing
raises out of a hook, no internal error is logged, a flow always ends with a decision, and a
pass-through stream function hands every byte on unchanged."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
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
from lakera_addon.live_stream import LiveStream
from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin

PATHS = ["/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/embeddings", "/v1/x",
         "/v1beta/models/g:generateContent", "/v1beta/models/g:streamGenerateContent?alt=sse",
         "/v1beta/models/g:streamGenerateContent", "/api/chat", "/api/generate"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.sampled_from([ATTACK_TRIGGER, "lakera-500", "lakera-notjson"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["role", "content", "type", "text", "messages", "input",
                                       "system", "instructions", "stream", "model",
                                       "tool_result", "output", "choices", "delta",
                                       "contents", "parts", "candidates", "functionResponse",
                                       "finishReason", "prompt", "done", "response", "error"]),
                      children, max_size=5),
    max_leaves=20,
)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer", 7]),
     "content": json_values}), max_size=4)
request_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"model": st.text(max_size=5), "messages": messages,
                           "stream": st.booleans()}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"input": json_values, "instructions": json_values,
                           "stream": st.booleans()}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"contents": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "model", 3]), "parts": json_values}), max_size=3),
        "systemInstruction": json_values}).map(lambda v: json.dumps(v).encode()),
)
sse_events = st.lists(st.tuples(
    st.sampled_from(["", "message_start", "content_block_delta", "message_stop", "error",
                     "response.output_text.delta", "response.completed"]),
    st.one_of(json_values.map(json.dumps), st.just("[DONE]"), st.text(max_size=10)),
), max_size=6).map(lambda events: "".join(
    (f"event: {name}\n" if name else "") + f"data: {data}\n\n" for name, data in events
).encode())
ndjson_lines = st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=10)),
                        max_size=6).map(lambda lines: "".join(f"{line}\n" for line in lines)
                                        .encode())
response_bodies = st.one_of(st.binary(max_size=300), sse_events, ndjson_lines,
                            json_values.map(lambda v: json.dumps(v).encode()))


async def hook(result: Awaitable[None] | None) -> None:
    """Await a hook's result as mitmproxy does: only when it is awaitable."""
    if result is not None:
        await result


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def lakera() -> Iterator[LakeraGuardStandin]:
    with LakeraGuardStandin(api_key="k") as standin:
        yield standin


@pytest.fixture(scope="module")
def configs(lakera: LakeraGuardStandin, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    made = []
    for action, fail_open, mode in (("block", False, "held"), ("alert", True, "held"),
                                    ("alert", False, "held"), ("block", False, "live")):
        path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
        path.write_text(yaml.safe_dump({
            "api_key": "k", "lakera_endpoint": f"{lakera.url}/v2/guard", "timeout": 2000,
            "direction": "both", "action": action, "fail_open": fail_open,
            "stream_mode": mode, "window_chars": 100,
            "max_body_bytes": 4096, "routes": [{"name": "all", "hosts": ["*"]}]}))
        made.append(path)
    return made


async def run_flow(config: Path, path: str, body: bytes, status: int, content_type: str,
                   answer: bytes, chunks: list[int], cut: bool) -> tuple[http.HTTPFlow, bytes]:
    addon = LakeraGuard()
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        tctx.configure(addon, lakera_config=str(config))
        flow = tflow.tflow(req=http.Request.make("POST", f"http://api.test{path}", body))
        await hook(addon.request(flow))
        passed = b""
        if flow.response is None:
            flow.response = http.Response.make(status, b"", {"content-type": content_type})
            # a streamed answer of unknown length, as LLM streams come (chunked or HTTP/2):
            # with a content-length the live configuration would hold it instead
            del flow.response.headers["content-length"]
            addon.responseheaders(flow)
            stream = flow.response.stream
            if callable(stream):
                at = 0
                for size in [*chunks, len(answer)]:
                    piece = answer[at:at + size]
                    at += len(piece)
                    out = stream(piece)
                    assert out != b"" or not piece, "b'' mid-stream ends an HTTP/1.1 body"
                    passed += out if isinstance(out, bytes) else b"".join(out)
                    await asyncio.sleep(0)  # let a window scan start, as between chunks
                    if at >= len(answer):
                        break
                if cut:
                    flow.error = tflow.terr()
                    addon.error(flow)
                else:
                    out = stream(b"")
                    passed += out if isinstance(out, bytes) else b"".join(out)
                    await hook(addon.response(flow))
            else:
                flow.response.content = answer
                await hook(addon.response(flow))
        for _ in range(100):  # let background scans (shadow, pass-through) finish
            if not [t for t in asyncio.all_tasks() if t.get_name().startswith("lakera")]:
                break
            await asyncio.sleep(0.01)
        await addon.lakera.aclose()
        tctx.master._legacy_log_events.uninstall()  # its handler points at this closing loop
        return flow, passed


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(which=st.integers(0, 3), path=st.sampled_from(PATHS), body=request_bodies,
       status=st.sampled_from([200, 204, 302, 400, 500]),
       content_type=st.sampled_from(["application/json", "text/event-stream", "text/plain",
                                     "application/x-ndjson"]),
       answer=response_bodies, chunks=st.lists(st.integers(1, 50), max_size=8),
       cut=st.booleans())
def test_hooks_never_raise(configs, which, path, body, status, content_type, answer, chunks,
                           cut) -> None:
    recorder = Recorder()
    logger = logging.getLogger("lakera_addon")
    logger.addHandler(recorder)
    try:
        flow, passed = asyncio.run(run_flow(configs[which], path, body, status, content_type,
                                            answer, chunks, cut))
    finally:
        logger.removeHandler(recorder)
    messages_logged = [r.getMessage() for r in recorder.records]
    assert not [m for m in messages_logged if "internal error" in m], messages_logged
    entry: dict[str, Any] = flow.metadata.get("lakera") or {}
    assert entry.get("route") == "all"
    request = entry.get("request") or {}
    assert request.get("verdict") in ("clean", "flagged", "failure", "unscanned", None)
    stream = flow.response.stream if flow.response else None
    if callable(stream) and which == 3:  # live: whole events, or cut with the ending
        response = entry.get("response") or {}
        if response.get("action") == "blocked":
            assert b"Response blocked by Lakera Guard" in passed
        else:
            assert passed == answer[:len(passed)] and (cut or passed == answer)
    elif callable(stream):
        assert passed == answer[:len(passed)] and (cut or passed == answer)


def test_the_fuzzed_live_configuration_streams_live(configs) -> None:
    """The fuzz above covers live streams only if its fourth configuration really makes
    them live: a clean SSE answer goes through a LiveStream and arrives whole."""
    body = json.dumps({"model": "m", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    answer = (b'data: {"choices":[{"index":0,"delta":{"content":"Hello there"}}]}\n\n'
              b"data: [DONE]\n\n")
    flow, passed = asyncio.run(run_flow(configs[3], "/v1/chat/completions", body, 200,
                                        "text/event-stream", answer, [10, 20], False))
    assert isinstance(flow.response.stream, LiveStream)
    assert passed == answer
    assert flow.metadata["lakera"]["response"]["verdict"] == "clean"
