"""Where a stream of events has whole events: the boundaries of SSE events, NDJSON lines and
Gemini's chunks (as google-genai reads them), for the stream functions and the windowed
release, which forward only whole events so that an ending never lands inside one."""

from __future__ import annotations

import re
from typing import Final

from lakera_addon.sse_parser import GeminiChunks

# the end of an SSE event: a line ending followed by an empty line (LF, CRLF or CR endings)
EVENT_END: Final = re.compile(rb"\r\n\r\n|\n\n|\r\r|\n\r\n|\r\n\n")


def last_event_end(data: bytes | bytearray) -> int:
    """The offset just after the last complete SSE event in `data`; 0 if none is complete."""
    end = 0
    for match in EVENT_END.finditer(data):
        end = match.end()
    return end


def last_line_end(data: bytes | bytearray) -> int:
    """The offset just after the last complete NDJSON line in `data`; 0 if none is complete."""
    return data.rfind(b"\n") + 1


_LINE_END: Final = re.compile(rb"\r\n|\r|\n")


class GeminiBoundary:
    """Where a Gemini stream is between two of the chunks google-genai reads
    (sse_parser.GeminiChunks): after a blank line that ends an event, and also after a bare JSON
    line, which is a chunk of its own without one. Called with the bytes not yet forwarded
    (the caller forwards and removes the bytes up to the offset it returns); it reads each line
    once, however the stream is chunked."""

    def __init__(self) -> None:
        self._reader = GeminiChunks()
        self._scanned = 0  # bytes of the pending data read already

    def __call__(self, pending: bytes | bytearray) -> int:
        clean = 0
        at = self._scanned
        for match in _LINE_END.finditer(pending, at):
            self._reader.feed(pending[at : match.end()])
            at = match.end()
            if not self._reader.pending:
                clean = at
        self._scanned = at - clean
        return clean


def split_events(data: bytes, ndjson: bool) -> list[bytes]:
    """`data`, which ends at a boundary, as its whole SSE events (NDJSON lines), each with its
    line ends. (Gemini's bare JSON lines stay together with what precedes them.)"""
    if ndjson:
        *lines, last = data.split(b"\n")
        return [line + b"\n" for line in lines] + ([last] if last else [])
    ends = [m.end() for m in EVENT_END.finditer(data)]
    starts = [0, *ends]
    pieces = [data[a:b] for a, b in zip(starts, ends, strict=False)]
    if starts[-1] < len(data):
        pieces.append(data[starts[-1]:])
    return pieces
