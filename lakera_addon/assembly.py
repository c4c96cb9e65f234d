"""The assistant's text of a streamed answer (SPEC section 3, "Text of a response"; section 5,
held streams): the stream framed into events here, each event's text and end read by
stream_events.py (answer_fields.py has the fields).

Framing, as each protocol's official SDK reads it:
- openai-chat, anthropic-messages, openai-responses: SSE (sse_parser.SSEParser, the WHATWG
  rules the openai and anthropic SDKs follow); openai-chat's terminal event is `data: [DONE]`,
  which the openai SDK also stops at in a Responses stream (there it is no terminal event).
- gemini-generate (`?alt=sse`): google-genai's own reading (sse_parser.GeminiChunks): a bare
  JSON line is a chunk, and a last event needs no blank line after it.
- ollama-chat / ollama-generate: NDJSON, one JSON object per line. An unterminated last line
  counts only if it is a whole JSON document (otherwise it is a line cut short).

All the text of a stream is assembled, also what comes after its terminal event or an upstream
error (the SDKs and raw readers read on); the terminal event (for Gemini: every candidate
finished) and the error decide only whether the stream is complete. An error event makes a
stream complete (it is passed through to the client verbatim). A stream that cannot be assembled
(no recognisable events, data that is not JSON, anywhere in it, or no terminal event) is
incomplete, with a short reason that never quotes the content. Nothing here raises, whatever
the bytes.

Texts of several choices / blocks / parts / candidates are joined with a blank line, in index
order; snapshots that differ from the deltas of their part follow them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Final

from lakera_addon import protocols
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.ndjson import NDJSONSplitter
from lakera_addon.protocols import Protocol
from lakera_addon.sse_parser import GeminiChunks
from lakera_addon.sse_parser import SSEParser
from lakera_addon.stream_events import SEPARATOR
from lakera_addon.stream_events import Key
from lakera_addon.stream_events import Texts
from lakera_addon.stream_events import join_pieces
from lakera_addon.stream_events import part_groups
from lakera_addon.stream_events import reader_for

__all__ = ["SEPARATOR", "Key", "StreamAssembler", "StreamResult", "assemble", "incomplete",
           "join_pieces"]

NO_EVENTS: Final = "no recognisable events in the stream"
NOT_TERMINATED: Final = "stream ended before its terminal event"
UNFINISHED: Final = "stream did not end"  # the connection closed (upstream or client) early
NOT_JSON: Final = "event data is not JSON"
NOT_OBJECT: Final = "event data is not a JSON object"
EMBEDDINGS: Final = "embeddings answers do not stream"
OUT_OF_ORDER: Final = "a part of the answer got text again after the next one began"

_DONE_PROTOCOLS: Final = frozenset({protocols.OPENAI_CHAT, protocols.OPENAI_RESPONSES})

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
    """The assembled text of a stream (all of it, what is screened); `failure` says why it is
    not complete; `answer` is its visible answer alone (no reasoning, no snapshots), what a
    stream re-framed from its text carries."""

    text: str
    complete: bool
    failure: Failure | None = None
    answer: str = field(default="", compare=False)

    @property
    def reason(self) -> str | None:
        return self.failure.reason if self.failure else None

    @property
    def ended_early(self) -> bool:
        """Closed (by the upstream or the client) before its end, rather than unreadable."""
        return self.failure is not None and self.failure.kind == FailureKind.STREAM_INCOMPLETE


def incomplete(kind: FailureKind, reason: str) -> StreamResult:
    return StreamResult(text="", complete=False, failure=Failure(kind, reason))


class StreamAssembler:
    """Feed the decoded bytes of a streamed answer (SSE, or NDJSON for Ollama's native API) in
    chunks; `finish()` gives its text."""

    def __init__(self, protocol: Protocol, candidates: int = 1,
                 parts_in_order: bool = False) -> None:
        self._protocol = protocol
        # parts_in_order (windowed.py): which parts are closed, and whether one came back
        self._texts = Texts(arrival=True,
                            group_of=part_groups(protocol) if parts_in_order else None)
        self._reader = reader_for(protocol, self._texts, candidates)
        self._read = self._reader.handle if self._reader is not None else _no_reader
        self._parser = SSEParser()
        self._lines = NDJSONSplitter() if protocol in protocols.NDJSON else None
        self._gemini = GeminiChunks() if protocol == protocols.GEMINI_GENERATE else None
        self._done_marker = protocol in _DONE_PROTOCOLS
        self._done = False  # openai-chat: `data: [DONE]` was seen
        self._recognised = False
        self._failure: str | None = None
        # the payload of the last event that added answer text (ids and indices for a cut's
        # ending): not a reasoning or thinking delta, whose indices the ending must not reuse
        self.last_text_event: dict[str, object] | None = None

    @property
    def chars(self) -> int:
        """The length of the text assembled so far, kept as it grows."""
        return self._texts.chars

    @property
    def part_chars(self) -> dict[Key, int]:
        """Each part's text length so far (a choice's, a content block's, ...)."""
        return self._texts.part_chars

    def take_grown(self) -> dict[Key, int]:
        """The parts whose text grew since the last call, with their lengths now."""
        return self._texts.take_grown()

    @property
    def text(self) -> str:
        """All the text assembled so far: what is screened."""
        return self._texts.text

    @property
    def answer_text(self) -> str:
        """The visible answer assembled so far (the deltas of its text parts; no reasoning,
        no snapshots): what a cut ending repeats as the text the client has."""
        return self._texts.answer_text

    def views(self) -> list[tuple[Key, str]]:
        """The parts of `text`, each with its key in `part_chars` (Texts.views)."""
        return self._texts.views()

    @property
    def answer_pieces(self) -> int:
        """How many pieces of the visible answer have come so far."""
        return len(self._texts.answer_arrival)

    def answer_arrived(self, pieces: int) -> str:
        """The first `pieces` pieces of the visible answer, in the order they came: the answer
        text of the events released up to the one after which there were that many."""
        return "".join(self._texts.answer_arrival[:pieces])

    @property
    def terminated(self) -> bool:
        """The protocol's terminal event (or an error event) was seen; for Gemini, which has
        none, as many candidates as the request asked for have finished and none is still
        open (or the prompt was blocked)."""
        return self._done or (self._reader is not None and self._reader.terminated)

    @property
    def errored(self) -> bool:
        """The stream carried the upstream's error event."""
        return self._reader is not None and self._reader.errored

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Parse one chunk of the (already content-decoded) body."""
        if self._reader is None or self._failure is not None:
            return  # embeddings, or a stream that cannot be assembled: nothing more to read
        if self._lines is not None:
            for line in self._lines.feed(data):
                self._data(line, "")
        elif self._gemini is not None:
            for chunk in self._gemini.feed(data):
                self._data(chunk, "")
        else:
            for event in self._parser.feed(data):
                self._data(event.data, event.event)

    @property
    def arrival_chars(self) -> int:
        """The length of all the deltas so far in the order they came (Texts.arrival_chars)."""
        return self._texts.arrival_chars

    @property
    def part_count(self) -> int:
        """How many parts have text."""
        return len(self._texts.pieces)

    @property
    def closed_parts(self) -> dict[Key, int]:
        """With `parts_in_order`: the parts the next part of their group followed, with their
        final lengths."""
        return self._texts.closed

    @property
    def out_of_order(self) -> str | None:
        """With `parts_in_order`: why the stream is not read as parts one after the other."""
        if self._texts.resumed is None:
            return None
        return OUT_OF_ORDER

    @property
    def unreadable(self) -> str | None:
        """Why the stream cannot be assembled, once that is known before its end (data that
        is not a JSON object): read it after each chunk to stop at once."""
        return self._failure

    def finish(self) -> StreamResult:
        """End of stream: the result, complete only if the stream reached its end."""
        if self._reader is None:
            return incomplete(FailureKind.STREAM_UNREADABLE, EMBEDDINGS)
        self._parser.finish()
        if self._lines is not None:
            for line in self._lines.finish():  # the last line, without its line end
                self._last_line(line)
        if self._gemini is not None:
            for chunk in self._gemini.finish():  # what google-genai flushes at the end
                self._last_line(chunk)
        if self._failure is not None:
            return incomplete(FailureKind.STREAM_UNREADABLE, self._failure)
        if not self._recognised:
            return incomplete(FailureKind.STREAM_UNREADABLE, NO_EVENTS)
        if not self.terminated:
            return incomplete(FailureKind.STREAM_INCOMPLETE, NOT_TERMINATED)
        return StreamResult(text=self.text, complete=True, answer=self.answer_text)

    def _data(self, data: str, name: str) -> None:
        """One event's data (or NDJSON line, or Gemini chunk)."""
        if self._failure is not None:
            return
        if (not data.startswith("{") and self._done_marker
                and data.strip() == "[DONE]"):  # where the openai SDK stops reading
            self._recognised = True
            if self._protocol == protocols.OPENAI_CHAT:
                self._done = True
            return
        payload = self._payload(data)
        if payload is not None:
            self._handle(payload, name)

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
        """An NDJSON stream's last line, which had no line end, or what a Gemini stream leaves
        at its end: a line cut short is not an event (like an unfinished SSE event; an SDK
        cannot read it either), a whole JSON document is."""
        if self._failure is not None:
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
        texts = self._texts
        before = texts.answer_chars
        self._read(payload, name)
        if texts.answer_chars != before:
            self.last_text_event = payload
        if self._reader is not None and self._reader.odd is not None:
            self._failure = self._reader.odd  # (nothing more is read: it fails as unreadable)


def _no_reader(payload: dict[str, object], name: str) -> None:
    """(embeddings: never called, nothing is read)"""


def assemble(protocol: Protocol, body: bytes, candidates: int = 1) -> StreamResult:
    """The assembled text of a whole streamed body. Fed in slices, so that the decoded text, its
    lines and its events exist for one slice at a time, not for the whole body at once."""
    assembler = StreamAssembler(protocol, candidates)
    view = memoryview(body)
    for at in range(0, len(body), _SLICE):
        assembler.feed(view[at : at + _SLICE])
    return assembler.finish()
