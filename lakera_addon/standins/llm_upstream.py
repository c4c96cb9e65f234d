"""A local stand-in for an LLM provider, for tests, the demo and the benchmark.

It speaks OpenAI chat completions, OpenAI responses, Anthropic messages and OpenAI embeddings,
JSON and SSE in the providers' real shapes, chosen by the path's ending; and the native APIs of
Gemini (`.../models/<model>:generateContent`, `:streamGenerateContent` as SSE with `?alt=sse`,
else as one JSON array of the chunks, written chunk by chunk) and Ollama (`/api/chat`,
`/api/generate`: NDJSON streamed unless the body says `"stream": false`). The answer's text is
"Hello from the stand-in." unless the request sets it:

  x-standin-reply: <text>          (or x-standin-reply-b64: <base64 of UTF-8 text>)
  x-standin-mode: <switch>[,<switch>...]
    tools            the answer is a tool call only, no text
    usage            add usage events to a stream
    truncate         close the connection before the stream's terminal event
    truncate-clean   end the body properly, but without the terminal event
    json             answer JSON even to a `stream: true` request
    status=<NNN>     answer that error status with the protocol's JSON error
    split            cut every event across several small TCP writes
    crlf             CRLF line ends in the stream
    delay-ms=<N>     wait N ms before each event
    stall-ms=<N>     wait N ms after the first event
    repeat=<N>       the reply text N times over (long answers)
    gzip / br / zstd encode the body (streams: one compressed stream, flushed per event)
    badutf8          the reply's word BADUTF8 sent as the invalid UTF-8 bytes ff fe
    malformed        a stream event whose data is not JSON (Ollama: a line that is not JSON)
    error-event      a stream that ends with the protocol's error event (Gemini: an event with
                     its error envelope; Ollama: an `{"error": ...}` line)

It records every request in `received` as {method, path, headers, body} (body parsed as JSON
when it is). A request body that is not JSON gets a 400, as a real provider answers.
It is not a model: it never reads the prompt.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import brotli
import zstandard

from lakera_addon.standins.httpserver import BackgroundServer
from lakera_addon.standins.httpserver import Request
from lakera_addon.standins.httpserver import Writer

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
            if key in ("status", "delay_ms", "stall_ms", "repeat"):
                setattr(mode, key, int(value))
            elif hasattr(mode, key):
                setattr(mode, key, True)
        return mode


def _reply_text(request: Request, mode: Mode) -> str:
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


# --- the server ---------------------------------------------------------------------------

_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def _error_body(protocol: str, status: int) -> dict[str, Any]:
    if protocol == "anthropic":
        return {"type": "error", "error": {"type": "api_error",
                                           "message": f"stand-in status {status}"}}
    if protocol == "gemini":
        return {"error": {"code": status, "message": f"stand-in status {status}",
                          "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}}
    if protocol.startswith("ollama"):
        return {"error": f"stand-in status {status}"}
    return {"error": {"message": f"stand-in status {status}", "type": "server_error",
                      "param": None, "code": None}}


class Compressor:
    """A content-coding for the `gzip`/`br`/`zstd` switches, flushed after every chunk so a
    stream stays a stream."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "gzip":
            self._z = zlib.compressobj(wbits=31)
        elif name == "br":
            self._br = brotli.Compressor()
        else:
            self._zstd = zstandard.ZstdCompressor().compressobj()

    @classmethod
    def make(cls, mode: Mode) -> Compressor | None:
        name = "gzip" if mode.gzip else "br" if mode.br else "zstd" if mode.zstd else None
        return cls(name) if name else None

    def chunk(self, data: bytes) -> bytes:
        if self.name == "gzip":
            return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        if self.name == "br":
            return bytes(self._br.process(data)) + bytes(self._br.flush())
        return bytes(self._zstd.compress(data)) + bytes(
            self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))

    def end(self) -> bytes:
        if self.name == "gzip":
            return self._z.flush()
        if self.name == "br":
            return bytes(self._br.finish())
        return bytes(self._zstd.flush())


class LLMUpstreamStandin(BackgroundServer):
    """An LLM provider stand-in on loopback."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(self._app, port=port)
        self.received: list[dict[str, Any]] = []
        # the exact body bytes sent for each request with an `x-test-id` header
        self.sent: dict[str, bytearray] = {}

    def _app(self, request: Request, out: Writer) -> None:
        path = request.path.split("?", 1)[0].rstrip("/")
        try:
            body: Any = request.json() if request.body else {}
        except ValueError:
            body = None
        self.received.append({"method": request.method, "path": request.path,
                               "headers": request.headers,
                               "body": body if body is not None else request.body.decode(
                                   "utf-8", "replace")})
        protocol = next((p for suffix, p in (
            ("/chat/completions", "chat"), ("/responses", "responses"),
            ("/messages", "anthropic"), ("/embeddings", "embeddings"),
            ("/api/chat", "ollama-chat"), ("/api/generate", "ollama-generate"))
            if path.endswith(suffix)), None)
        gemini_model, _, gemini_method = path.rsplit("/", 1)[-1].rpartition(":")
        if gemini_model and gemini_method in ("generateContent", "streamGenerateContent"):
            protocol = "gemini"
        if request.method != "POST" or protocol is None:
            out.send_json(404, {"error": {"message": "no such endpoint", "type": "not_found"}})
            return
        if not isinstance(body, dict):
            out.send_json(400, _error_body(protocol, 400))
            return
        mode = Mode.parse(request.headers.get("x-standin-mode"))
        sent = bytearray()
        test_id = request.headers.get("x-test-id")
        if test_id:
            self.sent[test_id] = sent  # filled as it is sent
        if mode.status:
            out.send_json(mode.status, _error_body(protocol, mode.status))
            return
        model = str(body.get("model") or gemini_model or "standin-model")
        text = _reply_text(request, mode)
        if protocol == "gemini":
            if gemini_method == "generateContent" or mode.json:
                self._send(out, mode, sent, gemini_json(model, text, mode))
                return
            sse = "alt=sse" in request.path.partition("?")[2].split("&")
            self._stream(out, mode, sent, gemini_stream(model, text, mode, sse),
                         None if sse else "application/json")
            return
        if protocol.startswith("ollama"):
            if body.get("stream") is False or mode.json:
                self._send(out, mode, sent, ollama_json(protocol, model, text, mode))
                return
            self._stream(out, mode, sent, ollama_stream(protocol, model, text, mode),
                         "application/x-ndjson")
            return
        if protocol == "embeddings":
            inputs = body.get("input")
            count = len(inputs) if isinstance(inputs, list) else 1
            self._send(out, mode, sent, {
                "object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                         for i in range(count)],
                "usage": {"prompt_tokens": 1, "total_tokens": 1}})
            return
        if not body.get("stream") or mode.json:
            document = {"chat": chat_json, "responses": responses_json,
                        "anthropic": anthropic_json}[protocol](model, text, mode)
            self._send(out, mode, sent, document)
            return
        if protocol == "chat":
            options = body.get("stream_options")
            usage = mode.usage or (isinstance(options, dict) and bool(options.get("include_usage")))
            events = chat_stream(model, text, mode, usage)
        elif protocol == "responses":
            events = responses_stream(model, text, mode)
        else:
            events = anthropic_stream(model, text, mode)
        self._stream(out, mode, sent, events)

    @staticmethod
    def _send(out: Writer, mode: Mode, sent: bytearray, document: Any) -> None:
        body = json.dumps(document).encode()
        if mode.badutf8:
            body = body.replace(b"BADUTF8", b"\xff\xfe")
        headers = {"content-type": "application/json"}
        compressor = Compressor.make(mode)
        if compressor:
            body = compressor.chunk(body) + compressor.end()
            headers["content-encoding"] = compressor.name
        sent += body
        out.send(200, headers, body)

    @staticmethod
    def _stream(out: Writer, mode: Mode, sent: bytearray, events: Iterator[bytes],
                content_type: str | None = None) -> None:
        headers = {"content-type": content_type or "text/event-stream; charset=utf-8",
                   "cache-control": "no-cache"}
        compressor = Compressor.make(mode)
        if compressor:
            headers["content-encoding"] = compressor.name
        out.start(200, headers)

        def write(data: bytes) -> None:
            if mode.badutf8:
                data = data.replace(b"BADUTF8", b"\xff\xfe")
            if mode.crlf:
                data = data.replace(b"\n", b"\r\n")
            if compressor:
                data = compressor.chunk(data)
            sent.extend(data)
            if mode.split:
                for at in range(0, len(data), 7):
                    out.chunk(data[at:at + 7])
                    time.sleep(0.001)
            else:
                out.chunk(data)

        first = True
        for data in events:
            if data == b"TERMINAL":  # the point where the terminal event comes next
                if mode.truncate:
                    out.abort()
                    return
                if mode.truncate_clean:
                    break
                continue
            if mode.delay_ms:
                time.sleep(mode.delay_ms / 1000)
            write(data)
            if first and mode.stall_ms:
                time.sleep(mode.stall_ms / 1000)
            first = False
        if compressor:
            tail = compressor.end()
            sent.extend(tail)
            out.chunk(tail)
        out.end()
