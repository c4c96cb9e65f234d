"""An incremental Server-Sent Events parser over raw bytes (WHATWG event-stream rules).

Written here rather than taken from a library because the SSE parsers on PyPI (httpx-sse, the
decoders inside the openai and anthropic SDKs, sseclient-py) either decode lines of an httpx
response or pull from an iterator, while a mitmproxy stream function pushes raw byte chunks
one at a time and needs the events back at once.

Rules followed (https://html.spec.whatwg.org/multipage/server-sent-events.html):
- UTF-8, decoded incrementally with errors replaced; one leading BOM is stripped.
- Lines end with LF, CRLF or CR, and with nothing else; a CR ending one chunk and an LF
  starting the next are one line end.
- A blank line dispatches the event; an event without data lines is not dispatched.
- Lines starting with ":" are comments. "name: value" loses one space after the colon; a line
  without a colon is a field with an empty value. Fields: data, event, id, retry.
- At the end of the stream an unfinished event is discarded, never dispatched.

Work is linear in the input: only the unfinished tail of the last line is kept (appended to in
place, so a long line fed in tiny chunks is neither re-scanned nor re-copied), and each
character is scanned for line ends once (by `str.split` when the chunk has no CR). `data:` lines,
nearly all of a stream, skip the general field parsing (docs/performance.md).

The openai and anthropic SDKs decode SSE by these rules too. google-genai does not: Gemini
streams are read by `GeminiChunks`, its own reading (below).
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass
from typing import Final

_LINE_END: Final = re.compile(r"\r\n|\r|\n")
_BOM: Final = "\ufeff"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event."""

    event: str
    data: str
    id: str | None
    retry: int | None


class SSEParser:
    """Feed raw bytes in chunks of any size; get back the events they complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bom_checked = False
        self._cr_pending = False  # the last character seen was a CR
        self._tail = io.StringIO()  # the unfinished last line, appended to in place
        self._tail_len = 0
        self._bytes_seen = 0
        # the event being built
        self._data: list[str] = []
        self._event_type = ""
        self._retry: int | None = None
        self._fields_seen = False
        # kept across events, as the spec's "last event ID buffer"
        self._last_event_id: str | None = None

    @property
    def bytes_seen(self) -> int:
        """How many bytes were fed."""
        return self._bytes_seen

    @property
    def pending(self) -> bool:
        """True if some fed data belongs to a line or an event not yet dispatched."""
        undecoded, _ = self._decoder.getstate()
        return bool(self._tail_len or self._fields_seen or undecoded)

    def feed(self, data: bytes | bytearray | memoryview) -> list[SSEEvent]:
        """Parse one chunk; return the events it completes, in order."""
        self._bytes_seen += len(data)
        return self._feed_text(self._decoder.decode(data))

    def finish(self) -> None:
        """End of stream: an unfinished line or event is discarded (never dispatched)."""
        self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._tail = io.StringIO()
        self._tail_len = 0
        self._cr_pending = False
        self._reset_event()

    def _feed_text(self, text: str) -> list[SSEEvent]:
        if not text:
            return []
        if not self._bom_checked:
            self._bom_checked = True
            if text.startswith(_BOM):
                text = text[1:]
                if not text:
                    return []
        if self._cr_pending and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across chunks
            if not text:
                self._cr_pending = False
                return []
        self._cr_pending = text.endswith("\r")
        # str.split in C when there is no CR (the usual case), the regex otherwise
        parts = _LINE_END.split(text) if "\r" in text else text.split("\n")
        if len(parts) == 1:
            self._tail.write(text)
            self._tail_len += len(text)
            return []
        events: list[SSEEvent] = []
        last = parts.pop()
        if self._tail_len:
            self._tail.write(parts[0])
            parts[0] = self._tail.getvalue()
            self._tail = io.StringIO()
        line_of = self._line
        dispatch = self._dispatch
        for line in parts:
            if not line:
                dispatch(events)
            elif line.startswith("data:"):  # the common line, without _line's partition
                self._data.append(line[6:] if line.startswith(" ", 5) else line[5:])
                self._fields_seen = True
            else:
                line_of(line, events)
        self._tail.write(last)
        self._tail_len = len(last)
        return events

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._fields_seen = True
        elif name == "event":
            self._event_type = value
            self._fields_seen = True
        elif name == "id":
            if "\0" not in value:
                self._last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            try:
                self._retry = int(value)
            except ValueError:  # more digits than int() accepts from a string
                return
            self._fields_seen = True

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            events.append(
                SSEEvent(
                    event=self._event_type or "message",
                    data="\n".join(self._data),
                    id=self._last_event_id,
                    retry=self._retry,
                )
            )
        self._reset_event()

    def _reset_event(self) -> None:
        self._data = []
        self._event_type = ""
        self._retry = None
        self._fields_seen = False


# --- Gemini: google-genai's own reading of a stream ----------------------------------------

_BRACES: Final = re.compile(r'["{}]')  # outside a JSON string: what changes the depth
_IN_STRING: Final = re.compile(r'["\\]')  # inside one: its end, or an escape


class GeminiChunks:
    """A Gemini stream's chunks (JSON texts) as google-genai reads them
    (google/genai/_api_client.py: `HttpResponse._iter_response_stream`, `_SseLineDecoder`,
    `_RawJsonLineBuffer`), which is not the WHATWG way:
    - lines end at CR, LF or CRLF; each line is decoded as UTF-8 with errors replaced; no BOM
      is stripped;
    - a line starting `data: ` (with its space) adds to the event's data; a blank line ends the
      event (its data lines joined with LF);
    - any other line (a bare JSON line, `data:` without its space, `event:`, a comment) is
      buffered as raw JSON until its braces balance outside strings, and is then a chunk of its
      own, at once;
    - at the end of the stream the unfinished line is a line, and what is left of the raw
      buffer and then of the event's data are chunks too: a last event needs no blank line.
    Feed raw bytes in chunks of any size; get back the chunks they complete, in order."""

    def __init__(self) -> None:
        self._line = bytearray()  # the unfinished last line
        self._cr = False  # a CR ended the last chunk: an LF may follow
        self._data: list[str] = []
        self._raw: list[str] = []
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self.bytes_seen = 0

    @property
    def pending(self) -> bool:
        return bool(self._line or self._cr or self._data or self._raw)

    def feed(self, data: bytes | bytearray | memoryview) -> list[str]:
        self.bytes_seen += len(data)
        chunk = bytes(data)
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            self._cr = True
            chunk = chunk[:-1]
        if not chunk:
            return []
        lines = chunk.splitlines()  # (bytes: at CR, LF and CRLF only)
        tail = None if chunk.endswith((b"\r", b"\n")) else lines.pop()
        if lines:
            self._line += lines[0]
            lines[0] = bytes(self._line)
            self._line = bytearray()
        if tail is not None:
            self._line += tail
        out: list[str] = []
        for line in lines:
            self._add(line.decode("utf-8", "replace"), out)
        return out

    def finish(self) -> list[str]:
        """End of stream: the chunks still buffered."""
        out: list[str] = []
        if self._line or self._cr:
            line, self._line, self._cr = bytes(self._line), bytearray(), False
            self._add(line.decode("utf-8", "replace"), out)
        if self._raw:
            remaining = self._flush_raw()
            if remaining:
                out.append(remaining)
        if self._data:
            out.append("\n".join(self._data))
            self._data = []
        return out

    def _add(self, line: str, out: list[str]) -> None:
        if not line:
            if self._data:
                out.append("\n".join(self._data))
                self._data = []
        elif line.startswith("data: "):
            self._data.append(line[6:])
        else:
            self._raw.append(line)
            self._count_braces(line)
            if self._depth == 0:
                out.append(self._flush_raw())

    def _count_braces(self, line: str) -> None:
        at = 0
        if self._escaped and line:  # a backslash ended the last line, inside a string
            self._escaped = False
            at = 1
        while True:
            if self._in_string:
                match = _IN_STRING.search(line, at)
                if match is None:
                    return
                if match.group() == "\\":
                    at = match.end() + 1
                    if at > len(line):
                        self._escaped = True
                        return
                    continue
                self._in_string = False
            else:
                match = _BRACES.search(line, at)
                if match is None:
                    return
                char = match.group()
                if char == '"':
                    self._in_string = True
                else:
                    self._depth += 1 if char == "{" else -1
            at = match.end()

    def _flush_raw(self) -> str:
        chunk = "".join(self._raw)
        self._raw = []
        self._depth = 0
        self._in_string = False
        self._escaped = False
        return chunk
