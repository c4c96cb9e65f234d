"""The answers the LLM stand-in (llm_upstream.py) sends, in each provider's real shape:
JSON bodies and the events of streamed answers, built from the reply text and the request's
`x-standin-mode` switches."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lakera_addon.standins.httpserver import Request

DEFAULT_REPLY = "Hello from the stand-in."


@dataclass(slots=True)
class Mode:
    tools: bool = False
    usage: bool = False
    truncate: bool = False
    truncate_clean: bool = False
    json: bool = False
    status: int | None = None
    split: bool = False
    crlf: bool = False
    delay_ms: int = 0
    stall_ms: int = 0
    ttfb_ms: int = 0
    repeat: int = 1
    gzip: bool = False
    br: bool = False
    zstd: bool = False
    badutf8: bool = False
    malformed: bool = False
    error_event: bool = False

    @classmethod
    def parse(cls, header: str | None) -> Mode:
        mode = cls()
        for word in (header or "").split(","):
            name, _, value = word.strip().partition("=")
            key = name.replace("-", "_")
            if not key:
                continue
            if key in ("status", "delay_ms", "stall_ms", "ttfb_ms", "repeat"):
                setattr(mode, key, int(value))
            elif hasattr(mode, key):
                setattr(mode, key, True)
        return mode


def reply_text(request: Request, mode: Mode) -> str:
    encoded = request.headers.get("x-standin-reply-b64")
    if encoded:
        text = base64.b64decode(encoded).decode()
    else:
        text = request.headers.get("x-standin-reply") or DEFAULT_REPLY
    return text * max(mode.repeat, 1)


def _pieces(text: str) -> list[str]:
    """The text cut into word-sized deltas (spaces kept), as a model streams it."""
    pieces: list[str] = []
    current = ""
    for ch in text:
        current += ch
        if ch == " " and len(current) > 1:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces or [""]


def _now() -> int:
    return int(time.time())


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


# --- OpenAI chat completions ------------------------------------------------------------

def chat_json(model: str, text: str, mode: Mode) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    finish = "stop"
    if mode.tools:
        message["content"] = None
        message["tool_calls"] = [{"id": "call_standin", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\":\"Zurich\"}"}}]
        finish = "tool_calls"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
        "created": _now(), "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }


def chat_stream(model: str, text: str, mode: Mode, usage: bool) -> Iterator[bytes]:
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
            "created": _now(), "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    if mode.tools:
        yield chunk({"tool_calls": [{"index": 0, "id": "call_standin", "type": "function",
                                     "function": {"name": "get_weather", "arguments": ""}}]})
        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]})
        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Zurich\"}"}}]})
        finish = "tool_calls"
    else:
        for piece in _pieces(text):
            yield chunk({"content": piece})
        finish = "stop"
    if mode.malformed:
        yield b"data: {not json\n\n"
    if mode.error_event:
        yield _sse({"error": {"message": "The server had an error", "type": "server_error"}})
        return
    yield chunk({}, finish)
    if usage:
        yield _sse({**base, "choices": [], "usage": {
            "prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})
    yield b"TERMINAL"
    yield _sse("[DONE]")


# --- OpenAI responses --------------------------------------------------------------------

def responses_json(model: str, text: str, mode: Mode, status: str = "completed") -> dict[str, Any]:
    if mode.tools:
        output: list[dict[str, Any]] = [{
            "type": "function_call", "id": "fc_standin", "call_id": "call_standin",
            "name": "get_weather", "arguments": "{\"city\":\"Zurich\"}", "status": "completed"}]
    else:
        output = [{
            "type": "message", "id": "msg_standin", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}]
    return {
        "id": f"resp_{uuid.uuid4().hex[:24]}", "object": "response", "created_at": _now(),
        "status": status, "model": model, "output": output if status == "completed" else [],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "instructions": None,
        "metadata": {}, "error": None, "incomplete_details": None, "temperature": 1.0,
        "top_p": 1.0,
        "usage": {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": 10},
    }


def responses_stream(model: str, text: str, mode: Mode) -> Iterator[bytes]:
    seq = iter(range(1_000_000))
    final = responses_json(model, text, mode)
    started = {**final, "status": "in_progress", "output": [], "usage": None}

    def event(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": next(seq), **fields}, kind)

    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    if mode.tools:
        item = final["output"][0]
        yield event("response.output_item.added", output_index=0,
                    item={**item, "arguments": "", "status": "in_progress"})
        yield event("response.function_call_arguments.delta", item_id=item["id"],
                    output_index=0, delta=item["arguments"])
        yield event("response.function_call_arguments.done", item_id=item["id"],
                    output_index=0, arguments=item["arguments"])
        yield event("response.output_item.done", output_index=0, item=item)
    else:
        item_id = "msg_standin"
        yield event("response.output_item.added", output_index=0, item={
            "type": "message", "id": item_id, "status": "in_progress", "role": "assistant",
            "content": []})
        yield event("response.content_part.added", item_id=item_id, output_index=0,
                    content_index=0, part={"type": "output_text", "text": "", "annotations": []})
        for piece in _pieces(text):
            yield event("response.output_text.delta", item_id=item_id, output_index=0,
                        content_index=0, delta=piece, logprobs=[])
        if mode.malformed:
            yield b"event: response.output_text.delta\ndata: {not json\n\n"
        if mode.error_event:
            yield event("error", code="server_error", message="The server had an error",
                        param=None)
            return
        yield event("response.output_text.done", item_id=item_id, output_index=0,
                    content_index=0, text=text, logprobs=[])
        yield event("response.content_part.done", item_id=item_id, output_index=0,
                    content_index=0, part={"type": "output_text", "text": text,
                                           "annotations": []})
        yield event("response.output_item.done", output_index=0, item=final["output"][0])
    yield b"TERMINAL"
    yield event("response.completed", response=final)


# --- Anthropic messages -------------------------------------------------------------------

def anthropic_json(model: str, text: str, mode: Mode) -> dict[str, Any]:
    if mode.tools:
        content: list[dict[str, Any]] = [{"type": "tool_use", "id": "toolu_standin",
                                          "name": "get_weather", "input": {"city": "Zurich"}}]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": text}]
        stop = "end_turn"
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
        "model": model, "content": content, "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 5},
    }


def anthropic_stream(model: str, text: str, mode: Mode) -> Iterator[bytes]:
    final = anthropic_json(model, text, mode)

    def event(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, **fields}, kind)

    yield event("message_start", message={**final, "content": [], "stop_reason": None,
                                          "usage": {"input_tokens": 5, "output_tokens": 1}})
    if mode.tools:
        yield event("content_block_start", index=0, content_block={
            "type": "tool_use", "id": "toolu_standin", "name": "get_weather", "input": {}})
        yield event("content_block_delta", index=0, delta={
            "type": "input_json_delta", "partial_json": "{\"city\": \"Zurich\"}"})
    else:
        yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        yield event("ping")
        for piece in _pieces(text):
            yield event("content_block_delta", index=0,
                        delta={"type": "text_delta", "text": piece})
    if mode.malformed:
        yield b"event: content_block_delta\ndata: {not json\n\n"
    if mode.error_event:
        yield event("error", error={"type": "overloaded_error", "message": "Overloaded"})
        return
    yield event("content_block_stop", index=0)
    yield event("message_delta", delta={"stop_reason": final["stop_reason"],
                                        "stop_sequence": None},
                usage={"output_tokens": 5})
    yield b"TERMINAL"
    yield event("message_stop")


# --- Gemini generateContent / streamGenerateContent --------------------------------------

_GEMINI_USAGE = {"promptTokenCount": 5, "candidatesTokenCount": 5, "totalTokenCount": 10}


def _gemini_chunk(model: str, parts: list[dict[str, Any]], finish: str | None = None,
                  usage: bool = False) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    chunk: dict[str, Any] = {"candidates": [candidate]}
    if usage:
        chunk["usageMetadata"] = _GEMINI_USAGE
    chunk.update(modelVersion=model, responseId="standin-" + uuid.uuid4().hex[:12])
    return chunk


def _gemini_call_part() -> dict[str, Any]:
    return {"functionCall": {"name": "get_weather", "args": {"city": "Zurich"}}}


def gemini_json(model: str, text: str, mode: Mode) -> dict[str, Any]:
    parts = [_gemini_call_part()] if mode.tools else [{"text": text}]
    return _gemini_chunk(model, parts, "STOP", usage=True)


def gemini_stream(model: str, text: str, mode: Mode, sse: bool) -> Iterator[bytes]:
    """SSE events, or (without `alt=sse`) the pieces of one JSON array of the same chunks.
    There is no terminal event: the last chunk carries the `finishReason`."""
    count = 0

    def frame(chunk: Any) -> bytes:
        nonlocal count
        count += 1
        if sse:
            return _sse(chunk)
        data = chunk if isinstance(chunk, str) else json.dumps(chunk, separators=(",", ":"))
        return ("[" if count == 1 else ",\r\n").encode() + data.encode()

    if mode.tools:
        yield frame(_gemini_chunk(model, [_gemini_call_part()]))
    else:
        for piece in _pieces(text):
            yield frame(_gemini_chunk(model, [{"text": piece}]))
    if mode.malformed:
        yield frame("{not json")
    if mode.error_event:
        yield frame({"error": {"code": 500, "message": "The server had an error",
                               "status": "INTERNAL"}})
        if not sse:
            yield b"]"
        return
    yield b"TERMINAL"
    yield frame(_gemini_chunk(model, [{"text": ""}], "STOP", usage=True))
    if not sse:
        yield b"]"


# --- Ollama /api/chat and /api/generate ---------------------------------------------------

def _ollama_line(protocol: str, model: str, text: str, done: bool) -> dict[str, Any]:
    line: dict[str, Any] = {"model": model, "created_at": "2025-01-01T00:00:00.000000Z"}
    if protocol == "ollama-chat":
        line["message"] = {"role": "assistant", "content": text}
    else:
        line["response"] = text
    line["done"] = done
    if done:
        line.update(done_reason="stop", total_duration=1000, load_duration=10,
                    prompt_eval_count=5, prompt_eval_duration=100, eval_count=5,
                    eval_duration=500)
        if protocol == "ollama-generate":
            line["context"] = [1, 2, 3]
    return line


def ollama_json(protocol: str, model: str, text: str, mode: Mode) -> dict[str, Any]:
    line = _ollama_line(protocol, model, text, True)
    if mode.tools and protocol == "ollama-chat":
        line["message"] = _OLLAMA_TOOL_CALL
    return line


_OLLAMA_TOOL_CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"function": {"name": "get_weather", "arguments": {"city": "Zurich"}}}]}


def ollama_stream(protocol: str, model: str, text: str, mode: Mode) -> Iterator[bytes]:
    def line(document: dict[str, Any]) -> bytes:
        return json.dumps(document, separators=(",", ":")).encode() + b"\n"

    if mode.tools and protocol == "ollama-chat":
        yield line(_ollama_line(protocol, model, "", False) | {"message": _OLLAMA_TOOL_CALL})
    else:
        for piece in _pieces(text):
            yield line(_ollama_line(protocol, model, piece, False))
    if mode.malformed:
        yield b"{not json\n"
    if mode.error_event:
        yield line({"error": "an error was encountered while running the model"})
        return
    yield b"TERMINAL"
    yield line(_ollama_line(protocol, model, "", True))
