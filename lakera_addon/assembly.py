"""The assistant's text of an LLM answer, streamed or not (SPEC section 3, "Text of a response").

Streamed text is assembled from the deltas themselves, never from usage events or the
"done" summaries:
- openai-chat: `choices[].delta.content`, per choice `index`; terminal `data: [DONE]`.
- anthropic-messages: `content_block_delta` with a `text_delta`, per content block `index`;
  terminal `message_stop`.
- openai-responses: `response.output_text.delta` (and `response.refusal.delta`), per
  `output_index`/`content_index`; terminal `response.completed`, `response.failed` or
  `response.incomplete`.
- gemini-generate (SSE, `?alt=sse`): each event is a GenerateContentResponse chunk;
  `candidates[].content.parts[].text` (not `thought` parts), per candidate `index`. There is no
  terminal event: the stream is complete once every candidate seen has carried a
  `finishReason` (or the prompt was blocked: `promptFeedback.blockReason`).
- ollama-chat / ollama-generate (NDJSON, one JSON object per line): `message.content` /
  `response`; terminal: a line with `"done": true`. An unterminated last line counts only if
  it is a whole JSON document (otherwise it is a line cut short).
Texts of several choices / blocks / parts / candidates are joined with a blank line, in index
order.

An upstream error event ends the stream: it is complete (the error is passed through to the
client verbatim) and the text that came before it is still screened. A stream that cannot be
assembled (no recognisable events, data that is not JSON, no terminal event) is incomplete, with
a short reason that never quotes the content. Nothing here raises, whatever the bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from lakera_addon import protocols
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.ndjson import NDJSONSplitter
from lakera_addon.protocols import Protocol
from lakera_addon.sse_parser import SSEEvent
from lakera_addon.sse_parser import SSEParser

SEPARATOR: Final = "\n\n"

NO_EVENTS: Final = "no recognisable events in the stream"
NOT_TERMINATED: Final = "stream ended before its terminal event"
UNFINISHED: Final = "stream did not end"  # the connection closed (upstream or client) early
NOT_JSON: Final = "event data is not JSON"
NOT_OBJECT: Final = "event data is not a JSON object"
EMBEDDINGS: Final = "embeddings answers do not stream"

_RESPONSES_TERMINAL: Final = frozenset(
    {"response.completed", "response.failed", "response.incomplete"}
)
_RESPONSES_TEXT: Final = frozenset({"response.output_text.delta", "response.refusal.delta"})

Key = tuple[int, int]

# the C scanner json.loads uses (typeshed does not declare the attribute)
_SCAN: Final[Callable[[str, int], tuple[object, int]]] = (
    json.JSONDecoder().scan_once  # type: ignore[attr-defined]
)
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
_SLICE: Final = 64 * 1024  # a whole body is parsed in slices of this size (memory)


def _json(data: str) -> object:
    """`json.loads(data)` without its per-call overhead (a third of it for a small event):
    the same C scanner, the same accepted documents; ValueError for anything else."""
    start = 0 if data.startswith("{") else _WHITESPACE.match(data).end()  # type: ignore[union-attr]
    try:
        document, end = _SCAN(data, start)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(data) and _WHITESPACE.match(data, end).end() != len(data):  # type: ignore[union-attr]
        raise ValueError("extra data after the JSON document")
    return document


@dataclass(frozen=True, slots=True)
class StreamResult:
    """The assembled text of a stream; `failure` says why it is not complete."""

    text: str
    complete: bool
    failure: Failure | None = None

    @property
    def reason(self) -> str | None:
        return self.failure.reason if self.failure else None

    @property
    def ended_early(self) -> bool:
        """Closed (by the upstream or the client) before its end, rather than unreadable."""
        return self.failure is not None and self.failure.kind == FailureKind.STREAM_INCOMPLETE


def incomplete(kind: FailureKind, reason: str) -> StreamResult:
    return StreamResult(text="", complete=False, failure=Failure(kind, reason))


def _index(value: object) -> int:
    """An index field; anything but an int counts as 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 0


def join_pieces(pieces: dict[Key, list[str]]) -> str:
    texts = ("".join(pieces[key]) for key in sorted(pieces))
    return SEPARATOR.join(text for text in texts if text)


def _gemini_texts(parts: object) -> list[str]:
    """Texts of a Gemini `Content`'s parts, without the model's thoughts (`thought: true`)."""
    if not isinstance(parts, list):
        return []
    return [part["text"] for part in parts if isinstance(part, dict)
            and isinstance(part.get("text"), str) and part.get("thought") is not True]


def gemini_chunk(pieces: dict[Key, list[str]], chunk: object) -> tuple[set[int], set[int]]:
    """Add a GenerateContentResponse's texts to `pieces`, per candidate; (indices of the
    candidates it carries, indices of those with a finishReason)."""
    seen: set[int] = set()
    finished: set[int] = set()
    candidates = chunk.get("candidates") if isinstance(chunk, dict) else None
    for candidate in candidates if isinstance(candidates, list) else []:
        if not isinstance(candidate, dict):
            continue
        index = _index(candidate.get("index"))  # omitted when 0 (proto3 JSON)
        seen.add(index)
        content = candidate.get("content")
        if isinstance(content, dict):
            texts = _gemini_texts(content.get("parts"))
            if texts:
                pieces.setdefault((index, 0), []).extend(texts)
        reason = candidate.get("finishReason")
        if isinstance(reason, str) and reason:
            finished.add(index)
    return seen, finished


class StreamAssembler:
    """Feed the decoded bytes of a streamed answer (SSE, or NDJSON for Ollama's native API) in
    chunks; `finish()` gives its text."""

    def __init__(self, protocol: Protocol, candidates: int = 1) -> None:
        self._protocol = protocol
        self._parser = SSEParser()
        self._lines = NDJSONSplitter() if protocol in protocols.NDJSON else None
        # gemini-generate: how many candidates the request asked for (candidateCount), those
        # seen without a finishReason yet, those finished, and whether the prompt was blocked
        self._gemini_candidates = candidates
        self._gemini_open: set[int] = set()
        self._gemini_finished: set[int] = set()
        self._gemini_blocked = False
        self._pieces: dict[Key, list[str]] = {}
        self._recognised = False
        self._terminated = False
        self._errored = False
        self._failure: str | None = None
        self.chars = 0  # length of the text assembled so far, kept as it grows
        # the payload of the last event that added text (ids and indices for a cut's ending)
        self.last_text_event: dict[str, object] | None = None

    @property
    def text(self) -> str:
        """The text assembled so far."""
        return join_pieces(self._pieces)

    @property
    def terminated(self) -> bool:
        """The protocol's terminal event (or an error event) was seen; for Gemini, which has
        none, as many candidates as the request asked for have finished and none is still
        open (or the prompt was blocked)."""
        return self._terminated or self._gemini_blocked or (
            not self._gemini_open and len(self._gemini_finished) >= self._gemini_candidates)

    @property
    def errored(self) -> bool:
        """The stream ended with the upstream's error event."""
        return self._errored

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Parse one chunk of the (already content-decoded) body."""
        if self._protocol == protocols.OPENAI_EMBEDDINGS:
            return
        if self._lines is not None:
            for line in self._lines.feed(data):
                if self._terminated or self._failure is not None:
                    continue  # after the end, or once the stream cannot be assembled
                payload = self._payload(line)
                if payload is not None:
                    self._handle(payload, "")
            return
        for event in self._parser.feed(data):
            if self._terminated or self._failure is not None:
                continue  # after the end, or once the stream cannot be assembled
            self._event(event)

    def finish(self) -> StreamResult:
        """End of stream: the result, complete only if the stream reached its end."""
        if self._protocol == protocols.OPENAI_EMBEDDINGS:
            return incomplete(FailureKind.STREAM_UNREADABLE, EMBEDDINGS)
        self._parser.finish()
        if self._lines is not None:
            for line in self._lines.finish():  # the last line, without its line end
                self._last_line(line)
        if self._failure is not None:
            return incomplete(FailureKind.STREAM_UNREADABLE, self._failure)
        if not self._recognised:
            return incomplete(FailureKind.STREAM_UNREADABLE, NO_EVENTS)
        if not self.terminated:
            return incomplete(FailureKind.STREAM_INCOMPLETE, NOT_TERMINATED)
        return StreamResult(text=self.text, complete=True)

    def _add(self, key: Key, text: object) -> None:
        if isinstance(text, str) and text:
            self._pieces.setdefault(key, []).append(text)
            self.chars += len(text)

    def _event(self, event: SSEEvent) -> None:
        data = event.data
        if (self._protocol == protocols.OPENAI_CHAT and not data.startswith("{")
                and data.strip() == "[DONE]"):
            self._recognised = True
            self._terminated = True
            return
        payload = self._payload(data)
        if payload is not None:
            self._handle(payload, event.event)

    def _payload(self, data: str) -> dict[str, object] | None:
        """An event's (or line's) JSON object; None, with the failure noted, if it is not one."""
        try:
            payload = _json(data)
        except (ValueError, RecursionError):
            self._failure = NOT_JSON
            return None
        if not isinstance(payload, dict):
            self._failure = NOT_OBJECT
            return None
        return payload

    def _last_line(self, line: str) -> None:
        """An NDJSON stream's last line, which had no line end: a line cut short is not an
        event (like an unfinished SSE event), a whole JSON document is."""
        if self._terminated or self._failure is not None:
            return
        try:
            payload = _json(line)
        except (ValueError, RecursionError):
            return
        if not isinstance(payload, dict):
            self._failure = NOT_OBJECT
            return
        self._handle(payload, "")

    def _handle(self, payload: dict[str, object], name: str) -> None:
        self._recognised = True
        before = self.chars
        if self._protocol == protocols.OPENAI_CHAT:
            self._openai_chat(payload)
        elif self._protocol == protocols.ANTHROPIC_MESSAGES:
            self._anthropic(payload, name)
        elif self._protocol == protocols.OPENAI_RESPONSES:
            self._responses(payload, name)
        elif self._protocol == protocols.GEMINI_GENERATE:
            self._gemini(payload)
        else:
            self._ollama(payload)
        if self.chars != before:
            self.last_text_event = payload

    def _error(self) -> None:
        self._terminated = True
        self._errored = True

    def _openai_chat(self, chunk: dict[str, object]) -> None:
        if chunk.get("error") is not None:
            self._error()
            return
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._add((_index(choice.get("index")), 0), delta.get("content"))

    def _anthropic(self, payload: dict[str, object], name: str) -> None:
        kind = payload.get("type")
        if not isinstance(kind, str):
            kind = name
        if kind == "error":
            self._error()
        elif kind == "message_stop":
            self._terminated = True
        elif kind == "content_block_start":
            block = payload.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text":
                self._add((_index(payload.get("index")), 0), block.get("text"))
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                self._add((_index(payload.get("index")), 0), delta.get("text"))

    def _responses(self, payload: dict[str, object], name: str) -> None:
        kind = payload.get("type")
        if not isinstance(kind, str):
            kind = name
        if kind == "error" or name == "error":
            self._error()
        elif kind in _RESPONSES_TERMINAL:
            self._terminated = True
        elif kind in _RESPONSES_TEXT:
            key = (_index(payload.get("output_index")), _index(payload.get("content_index")))
            self._add(key, payload.get("delta"))

    def _gemini(self, chunk: dict[str, object]) -> None:
        if chunk.get("error") is not None:  # Gemini's error envelope, sent as an event
            self._error()
            return
        pieces: dict[Key, list[str]] = {}
        seen, finished = gemini_chunk(pieces, chunk)
        for key in sorted(pieces):
            for text in pieces[key]:
                self._add(key, text)
        self._gemini_finished |= finished
        self._gemini_open = (self._gemini_open | seen) - self._gemini_finished
        feedback = chunk.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self._gemini_blocked = True

    def _ollama(self, payload: dict[str, object]) -> None:
        if payload.get("error") is not None:
            self._error()
            return
        if self._protocol == protocols.OLLAMA_CHAT:
            message = payload.get("message")
            if isinstance(message, dict):
                self._add((0, 0), message.get("content"))
        else:
            self._add((0, 0), payload.get("response"))
        if payload.get("done") is True:
            self._terminated = True


def assemble(protocol: Protocol, body: bytes, candidates: int = 1) -> StreamResult:
    """The assembled text of a whole streamed body. Fed in slices, so that the decoded text, its
    lines and its events exist for one slice at a time, not for the whole body at once."""
    assembler = StreamAssembler(protocol, candidates)
    view = memoryview(body)
    for at in range(0, len(body), _SLICE):
        assembler.feed(view[at : at + _SLICE])
    return assembler.finish()
