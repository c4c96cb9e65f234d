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
    ttfb-ms=<N>      wait N ms before answering at all (the model's time to first byte)
    repeat=<N>       the reply text N times over (long answers)
    gzip / br / zstd encode the body (streams: one compressed stream, flushed per event)
    badutf8          the reply's word BADUTF8 sent as the invalid UTF-8 bytes ff fe
    malformed        a stream event whose data is not JSON (Ollama: a line that is not JSON)
    error-event      a stream that ends with the protocol's error event (Gemini: an event with
                     its error envelope; Ollama: an `{"error": ...}` line)

An exact answer, whatever the protocol (a hostile upstream's bytes, for the tests):

  x-standin-raw-b64: <base64 of the whole body>   sent as it is, chunked, status 200
  x-standin-raw-type: <content type>              (default application/json)
  x-standin-raw-pace-ms: <N>                      one event or line per write, N ms apart
  x-standin-raw-encoding: <content coding>        a Content-Encoding header for it (the body
                                                  is sent as given: encode it yourself)

It records every request in `received` as {method, path, headers, body} (body parsed as JSON
when it is). A request body that is not JSON gets a 400, as a real provider answers.
It is not a model: it never reads the prompt.
"""

from __future__ import annotations

import base64
import json
import re
import time
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
import zstandard

from lakera_addon.standins.httpserver import BackgroundServer
from lakera_addon.standins.httpserver import Request
from lakera_addon.standins.httpserver import Writer
from lakera_addon.standins.llm_answers import Mode
from lakera_addon.standins.llm_answers import anthropic_json
from lakera_addon.standins.llm_answers import anthropic_stream
from lakera_addon.standins.llm_answers import chat_json
from lakera_addon.standins.llm_answers import chat_stream
from lakera_addon.standins.llm_answers import gemini_json
from lakera_addon.standins.llm_answers import gemini_stream
from lakera_addon.standins.llm_answers import ollama_json
from lakera_addon.standins.llm_answers import ollama_stream
from lakera_addon.standins.llm_answers import reply_text
from lakera_addon.standins.llm_answers import responses_json
from lakera_addon.standins.llm_answers import responses_stream

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
        raw = request.headers.get("x-standin-raw-b64")
        if raw is not None:
            self._raw(out, request, base64.b64decode(raw))
            return
        if not isinstance(body, dict):
            out.send_json(400, _error_body(protocol, 400))
            return
        mode = Mode.parse(request.headers.get("x-standin-mode"))
        if mode.ttfb_ms:  # the model's time to its first byte
            time.sleep(mode.ttfb_ms / 1000)
        sent = bytearray()
        test_id = request.headers.get("x-test-id")
        if test_id:
            self.sent[test_id] = sent  # filled as it is sent
        if mode.status:
            out.send_json(mode.status, _error_body(protocol, mode.status))
            return
        model = str(body.get("model") or gemini_model or "standin-model")
        text = reply_text(request, mode)
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

    def _raw(self, out: Writer, request: Request, body: bytes) -> None:
        """The exact answer a test asked for (`x-standin-raw-b64`)."""
        headers = {"content-type": request.headers.get("x-standin-raw-type")
                   or "application/json"}
        encoding = request.headers.get("x-standin-raw-encoding")
        if encoding:
            headers["content-encoding"] = encoding
        test_id = request.headers.get("x-test-id")
        if test_id:
            self.sent[test_id] = bytearray(body)
        out.start(200, headers)
        pace = request.headers.get("x-standin-raw-pace-ms")
        if pace:  # one event (SSE) or line (NDJSON) per write, `pace` ms apart
            for piece in re.split(rb"(?<=\n\n)" if b"\n\n" in body else rb"(?<=\n)", body):
                if piece:
                    time.sleep(int(pace) / 1000)
                    out.chunk(piece)
        elif body:
            out.chunk(body)
        out.end()

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
