"""The red team's ways for a hostile upstream to get flagged text to the client past the answer
side (/work/redteam/REPORT.md findings 1-4, 8, 9 and the case-variant JSON of 12), each through
a real mitmdump on the blocking, fail-closed, held route `block`, with the official SDK the red
team used as the client: the upstream sends exact bytes (the stand-in's `x-standin-raw-b64`),
and what the SDK hands its caller never holds the flagged phrase: the answer is denied.
docs/security.md lists them with these tests."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable
from typing import Any

import ollama
import pytest
import urllib3
import zstandard
from google import genai
from google.genai import types as genai_types

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from tests.e2e.clients import Client
from tests.e2e.clients import Clients
from tests.harness import Proxy

P = ATTACK_TRIGGER
DENY = "Response blocked by Lakera Guard"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
JSON = "application/json"
GEMINI_MODEL = "gemini-e2e"


@pytest.fixture(autouse=True)
def no_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDKs talk to the proxy's port directly, never through an environment proxy."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def raw(body: bytes, content_type: str = SSE, encoding: str | None = None) -> dict[str, str]:
    """The stand-in's switches for an exact answer."""
    headers = {"x-standin-raw-b64": base64.b64encode(body).decode(),
               "x-standin-raw-type": content_type}
    if encoding:
        headers["x-standin-raw-encoding"] = encoding
    return headers


def ev(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + (data if isinstance(data, str) else json.dumps(data))
            + "\n\n").encode()


# --- openai chat ---------------------------------------------------------------------------


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    return ev({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


def chat_json(message: dict[str, Any]) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop", "message": {
                           "role": "assistant", **message}}]}).encode()


CHAT_CLEAN = chat_chunk({"role": "assistant", "content": "Hi. "}) + chat_chunk({}, "stop")
DONE = b"data: [DONE]\n\n"


def chat_raw_stream(c: Client, headers: dict[str, str]) -> str:
    """`chat.completions.create(stream=True)`: every delta's content and refusal."""
    out = []
    for chunk in c.openai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"hi {c.id}"}], stream=True,
            extra_headers=headers):
        for choice in chunk.choices:
            out.append((choice.delta.content or "") + (choice.delta.refusal or ""))
    return "".join(out)


def chat_helper_stream(c: Client, headers: dict[str, str]) -> str:
    """`chat.completions.stream()`: the deltas, then the final completion."""
    out = []
    with c.openai.chat.completions.stream(
            model="m", messages=[{"role": "user", "content": f"hi {c.id}"}],
            extra_headers=headers) as stream:
        for event in stream:
            if event.type in ("content.delta", "refusal.delta"):
                out.append(event.delta)
        final = stream.get_final_completion().choices[0].message
    return "".join(out) + f" | {final.content} {final.refusal}"


def chat_json_answer(c: Client, headers: dict[str, str]) -> str:
    message = c.openai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"hi {c.id}"}],
        extra_headers=headers).choices[0].message
    return f"{message.content} {message.refusal} {message.model_extra} {message.audio}"


def urllib3_stream(c: Client, headers: dict[str, str]) -> str:
    """urllib3 (and so `requests`) decodes every gzip member."""
    response = urllib3.PoolManager().request(
        "POST", f"{c.base}/v1/chat/completions",
        body=json.dumps({"model": "m", "stream": True, "messages": [
            {"role": "user", "content": f"hi {c.id}"}]}),
        headers={"content-type": "application/json", "accept-encoding": "gzip",
                 "x-test-id": c.id, **headers})
    return response.data.decode("utf-8", "replace")


# --- anthropic -----------------------------------------------------------------------------


def a_start(content: list[dict[str, Any]] | None = None) -> bytes:
    return ev({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": content or [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1}}}, "message_start")


def a_block(index: int, text: str) -> bytes:
    return (ev({"type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}}, "content_block_start")
            + a_delta(index, {"type": "text_delta", "text": text})
            + ev({"type": "content_block_stop", "index": index}, "content_block_stop"))


def a_delta(index: int, delta: dict[str, Any]) -> bytes:
    return ev({"type": "content_block_delta", "index": index, "delta": delta},
              "content_block_delta")


A_END = (ev({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                 "stop_sequence": None},
             "usage": {"output_tokens": 2}}, "message_delta")
         + ev({"type": "message_stop"}, "message_stop"))


def anthropic_raw_stream(c: Client, headers: dict[str, str]) -> str:
    out = []
    for event in c.anthropic.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": f"hi {c.id}"}],
            stream=True, extra_headers=headers):
        if event.type == "content_block_delta":
            out.append(getattr(event.delta, "text", None)
                       or getattr(event.delta, "thinking", None) or "")
        elif event.type == "message_start":
            out.append(json.dumps(event.message.model_dump().get("content")))
    return "".join(out)


def anthropic_helper(c: Client, headers: dict[str, str]) -> str:
    with c.anthropic.messages.stream(
            model="m", max_tokens=10, messages=[{"role": "user", "content": f"hi {c.id}"}],
            extra_headers=headers) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    return text + " | " + json.dumps([block.model_dump() for block in final.content])


def anthropic_json(c: Client, headers: dict[str, str]) -> str:
    message = c.anthropic.messages.create(
        model="m", max_tokens=10, messages=[{"role": "user", "content": f"hi {c.id}"}],
        extra_headers=headers)
    return json.dumps([block.model_dump() for block in message.content])


# --- openai responses ----------------------------------------------------------------------


def r_ev(kind: str, **fields: Any) -> bytes:
    return ev({"type": kind, **fields}, kind)


def r_response(status: str = "in_progress", output: list[Any] | None = None) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": status,
            "model": "m", "output": output or [], "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": []}


def r_msg(text: str) -> dict[str, Any]:
    return {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


AT = {"output_index": 0, "content_index": 0, "item_id": "msg_1"}
R_START = (r_ev("response.created", response=r_response(), sequence_number=0)
           + r_ev("response.output_item.added", output_index=0, sequence_number=1,
                  item={**r_msg(""), "content": [], "status": "in_progress"})
           + r_ev("response.content_part.added", **AT, sequence_number=2,
                  part={"type": "output_text", "text": "", "annotations": []}))
R_HI = r_ev("response.output_text.delta", **AT, delta="Hi.", sequence_number=3)


def responses_helper(c: Client, headers: dict[str, str]) -> str:
    deltas = []
    with c.openai.responses.stream(model="m", input=f"hi {c.id}",
                                   extra_headers=headers) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response().output_text
    return "".join(deltas) + " | " + final


def responses_raw_stream(c: Client, headers: dict[str, str]) -> str:
    out = []
    for event in c.openai.responses.create(model="m", input=f"hi {c.id}", stream=True,
                                           extra_headers=headers):
        if event.type == "response.output_text.delta":
            out.append(event.delta)
        elif event.type == "response.output_text.done":
            out.append(f"[text.done:{event.text}]")
        elif event.type == "response.output_item.done":
            out.append(f"[item.done:{json.dumps(event.item.model_dump())}]")
    return "".join(out)


def responses_json(c: Client, headers: dict[str, str]) -> str:
    response = c.openai.responses.create(model="m", input=f"hi {c.id}", extra_headers=headers)
    return response.output_text + json.dumps([item.model_dump() for item in response.output])


# --- ollama and gemini ---------------------------------------------------------------------


def ollama_line(content: str, done: bool = False, **message: Any) -> bytes:
    line: dict[str, Any] = {"model": "l", "created_at": "2025-01-01T00:00:00Z",
                            "message": {"role": "assistant", "content": content, **message},
                            "done": done}
    if done:
        line["done_reason"] = "stop"
    return json.dumps(line).encode() + b"\n"


def ollama_stream(c: Client, headers: dict[str, str]) -> str:
    client = ollama.Client(host=c.base, headers={"x-test-id": c.id, **headers}, timeout=30,
                           trust_env=False)
    out = []
    for part in client.chat(model="l", messages=[{"role": "user", "content": f"hi {c.id}"}],
                            stream=True):
        out.append((part.message.content or "") + (part.message.thinking or ""))
    return "".join(out)


def ollama_httpx_json(c: Client, headers: dict[str, str]) -> str:
    return c.http.post(f"{c.base}/api/chat", headers=headers, json={
        "model": "l", "stream": False,
        "messages": [{"role": "user", "content": f"hi {c.id}"}]}).text


def g_chunk(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]},
                                 "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "modelVersion": "g", **extra}


def gemini_stream(c: Client, headers: dict[str, str]) -> str:
    client = genai.Client(api_key="gemini-provider-key", http_options=genai_types.HttpOptions(
        base_url=c.base, api_version="v1beta", headers={"x-test-id": c.id, **headers},
        timeout=30_000, client_args={"trust_env": False},
        retry_options=genai_types.HttpRetryOptions(attempts=1)))
    out = []
    with client:
        for chunk in client.models.generate_content_stream(model=GEMINI_MODEL,
                                                           contents=f"hi {c.id}"):
            for candidate in chunk.candidates or []:
                for part in (candidate.content.parts or []) if candidate.content else []:
                    out.append(("[thought]" if part.thought else "") + (part.text or ""))
    return "".join(out)


# --- the cases -----------------------------------------------------------------------------

Ask = Callable[[Client, dict[str, str]], str]
ZSTD = zstandard.ZstdCompressor()
CHAT_MORE = chat_chunk({"content": " " + P}) + DONE

CASES: dict[str, tuple[Ask, dict[str, str]]] = {
    # 1. text after the terminal event, or after an "error" the SDK reads on past
    "chat: a chunk with a falsy error ({}), then text": (chat_raw_stream, raw(
        chat_chunk({"role": "assistant", "content": "Hi. "})
        + chat_chunk({"content": ""}, error={}) + chat_chunk({"content": P})
        + chat_chunk({}, "stop") + DONE)),
    "anthropic: a text_delta after message_stop": (anthropic_raw_stream, raw(
        a_start() + a_block(0, "Hi.") + A_END + a_delta(0, {"type": "text_delta",
                                                            "text": " " + P}))),
    "anthropic: a text_delta after message_stop (helper)": (anthropic_helper, raw(
        a_start() + a_block(0, "Hi.") + A_END + a_delta(0, {"type": "text_delta",
                                                            "text": " " + P}))),
    "responses: a delta after response.completed": (responses_raw_stream, raw(
        R_START + R_HI
        + r_ev("response.output_item.done", output_index=0, item=r_msg("Hi."),
               sequence_number=5)
        + r_ev("response.completed", response=r_response("completed", [r_msg("Hi.")]),
               sequence_number=6)
        + r_ev("response.output_text.delta", **AT, delta=P, sequence_number=7))),
    "responses: an event named error with another payload": (responses_raw_stream, raw(
        R_START + ev({"type": "response.in_progress", "response": r_response(),
                      "sequence_number": 3}, "error")
        + r_ev("response.output_text.delta", **AT, delta=P, sequence_number=4)
        + r_ev("response.output_item.done", output_index=0, item=r_msg(P), sequence_number=5)
        + r_ev("response.completed", response=r_response("completed", [r_msg(P)]),
               sequence_number=6))),
    "ollama: lines after done: true": (ollama_stream, raw(
        ollama_line("Hi.") + ollama_line("", True) + ollama_line(P) + ollama_line("", True),
        NDJSON)),
    'ollama: a line with "error": ""': (ollama_stream, raw(
        ollama_line("Hi.") + b'{"error":"","model":"l","created_at":"2025-01-01T00:00:00Z",'
        b'"message":{"role":"assistant","content":""},"done":false}\n' + ollama_line(P)
        + ollama_line("", True), NDJSON)),
    "gemini: a chunk after an error that is not the first key": (gemini_stream, raw(
        ev(g_chunk("Hi.", error={"code": 0})) + ev(g_chunk(P)) + ev(g_chunk("", "STOP")))),
    # 2. snapshot texts the SDK shows but the deltas do not carry
    "responses: done and completed texts differ from the deltas (helper)": (
        responses_helper, raw(
            R_START + R_HI
            + r_ev("response.output_text.done", **AT, text=P, sequence_number=4)
            + r_ev("response.output_item.done", output_index=0, item=r_msg(P),
                   sequence_number=5)
            + r_ev("response.completed", response=r_response("completed", [r_msg(P)]),
                   sequence_number=6))),
    "responses: done and completed texts differ from the deltas (raw)": (
        responses_raw_stream, raw(
            R_START + R_HI
            + r_ev("response.output_text.done", **AT, text=P, sequence_number=4)
            + r_ev("response.output_item.done", output_index=0, item=r_msg(P),
                   sequence_number=5)
            + r_ev("response.completed", response=r_response("completed", [r_msg(P)]),
                   sequence_number=6))),
    "anthropic: text inside message_start (helper)": (anthropic_helper, raw(
        a_start([{"type": "text", "text": P}]) + a_block(1, "Hi.") + A_END)),
    # 3. Gemini framing as google-genai reads it
    "gemini: a JSON line without 'data: '": (gemini_stream, raw(
        ev(g_chunk("Hi.")) + (json.dumps(g_chunk(P)) + "\n\n").encode()
        + ev(g_chunk("", "STOP")))),
    "gemini: a last event without a blank line": (gemini_stream, raw(
        ev(g_chunk("Hi.")) + ev(g_chunk("", "STOP"))
        + ("data: " + json.dumps(g_chunk(P))).encode())),
    # 4. answer text the SDKs expose besides the content
    "chat: a streamed delta.refusal (helper)": (chat_helper_stream, raw(
        chat_chunk({"role": "assistant", "content": "Hi"}) + chat_chunk({"refusal": P})
        + chat_chunk({}, "stop") + DONE)),
    "chat: message.refusal": (chat_json_answer, raw(
        chat_json({"content": None, "refusal": P}), JSON)),
    "chat: message.reasoning_content": (chat_json_answer, raw(
        chat_json({"content": "ok", "reasoning_content": P}), JSON)),
    "chat: message.audio.transcript": (chat_json_answer, raw(chat_json({
        "content": None, "audio": {"id": "a", "data": "", "expires_at": 1, "transcript": P}}),
        JSON)),
    "anthropic: a thinking_delta": (anthropic_raw_stream, raw(
        a_start()
        + ev({"type": "content_block_start", "index": 0, "content_block": {
            "type": "thinking", "thinking": "", "signature": ""}}, "content_block_start")
        + a_delta(0, {"type": "thinking_delta", "thinking": P})
        + ev({"type": "content_block_stop", "index": 0}, "content_block_stop")
        + a_block(1, "Hi.") + A_END)),
    "anthropic: a thinking block (JSON)": (anthropic_json, raw(json.dumps({
        "id": "msg", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "thinking", "thinking": P, "signature": "x"},
                    {"type": "text", "text": "ok"}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}).encode(),
        JSON)),
    "responses: a reasoning summary (JSON)": (responses_json, raw(json.dumps(r_response(
        "completed", [{"type": "reasoning", "id": "rs_1", "summary": [
            {"type": "summary_text", "text": P}]}, r_msg("ok")])).encode(), JSON)),
    "ollama: thinking": (ollama_stream, raw(
        ollama_line("", thinking=P) + ollama_line("Hi.") + ollama_line("", True), NDJSON)),
    "gemini: a thought part": (gemini_stream, raw(
        ev({"candidates": [{"content": {"role": "model", "parts": [
            {"text": P, "thought": True}]}, "index": 0}]}) + ev(g_chunk("Hi.", "STOP")))),
    # 5. several gzip members, several zstd frames
    "chat: two gzip members (urllib3)": (urllib3_stream, raw(
        gzip.compress(CHAT_CLEAN + DONE) + gzip.compress(CHAT_MORE), SSE, "gzip")),
    "chat: two gzip members (openai SDK)": (chat_raw_stream, raw(
        gzip.compress(CHAT_CLEAN + DONE) + gzip.compress(CHAT_MORE), SSE, "gzip")),
    "chat: two zstd frames (openai SDK)": (chat_raw_stream, raw(
        ZSTD.compress(CHAT_CLEAN + DONE) + ZSTD.compress(CHAT_MORE), SSE, "zstd")),
    "chat: two zstd frames, [DONE] only in the second (openai SDK)": (chat_raw_stream, raw(
        ZSTD.compress(chat_chunk({"role": "assistant", "content": "Hi"}) + DONE)
        + ZSTD.compress(CHAT_MORE), SSE, "zstd")),
    # 6. JSON read leniently: Go clients (the ollama CLI) read the last case-variant key
    "ollama: a case-variant CONTENT key (JSON)": (ollama_httpx_json, raw(
        b'{"model":"l","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant",'
        b'"content":"ok","CONTENT":"' + P.encode() + b'"},"done":true}', JSON)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_flagged_answer_text_never_reaches_the_client(clients: Clients, proxy: Proxy,
                                                      name: str) -> None:
    c = clients.make("block")
    ask, headers = CASES[name]
    shown = ask(c, headers)
    assert P not in shown, shown
    assert DENY in shown, shown
    record = proxy.wait_for_record(c.id, lambda r: ((r["lakera"] or {}).get("response") or {})
                                   .get("verdict") not in (None, "pending"))
    response = record["lakera"]["response"]
    assert response["verdict"] == "flagged" and response["action"] == "blocked", response


def test_an_event_named_for_a_delta_with_a_ping_payload_is_not_text(clients: Clients) -> None:
    """The anthropic SDK reads an event by its payload's type: a `ping` under the name
    `content_block_delta` shows nothing, and the answer passes (red team: tried and held)."""
    c = clients.make("block")
    shown = anthropic_raw_stream(c, raw(
        a_start() + a_block(0, "Hi.")
        + ev({"type": "ping", "index": 0, "delta": {"type": "text_delta", "text": P}},
             "content_block_delta") + A_END))
    assert P not in shown and DENY not in shown and "Hi." in shown


def test_a_clean_answer_with_every_kind_of_text_passes(clients: Clients) -> None:
    """Reasoning, snapshots and a second gzip member are screened, not refused."""
    c = clients.make("block")
    body = (R_START + R_HI
            + r_ev("response.output_text.done", **AT, text="Hi.", sequence_number=4)
            + r_ev("response.output_item.done", output_index=0, item=r_msg("Hi."),
                   sequence_number=5)
            + r_ev("response.completed", response=r_response("completed", [r_msg("Hi.")]),
                   sequence_number=6))
    assert responses_helper(c, raw(body)) == "Hi. | Hi."
    answer = chat_json_answer(c, raw(chat_json({"content": "ok", "reasoning_content": "hm"}),
                                     JSON))
    assert answer.startswith("ok None")
    shown = urllib3_stream(c, raw(gzip.compress(CHAT_CLEAN) + gzip.compress(DONE), SSE,
                                  "gzip"))
    assert "Hi. " in shown and DENY not in shown


def test_an_unreadable_member_after_the_first_is_denied(clients: Clients) -> None:
    second = bytearray(gzip.compress(CHAT_MORE))
    second[-8] ^= 0xFF  # its CRC
    c = clients.make("block")
    shown = chat_raw_stream(c, raw(gzip.compress(CHAT_CLEAN + DONE) + bytes(second), SSE,
                                   "gzip"))
    assert P not in shown and DENY in shown

