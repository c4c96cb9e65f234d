"""An incremental splitter of newline-delimited JSON (NDJSON, JSON Lines) over raw bytes.

Ollama's native API streams its answers this way (`application/x-ndjson`): one JSON document per
line. Written here rather than taken from a library because the NDJSON readers on PyPI (ndjson,
jsonlines, the ollama SDK's own `iter_lines`) pull lines from a file or an iterator, while a
mitmproxy stream function pushes raw byte chunks one at a time and needs the lines back at once
(the same reason as for sse_parser.py). It only splits; the caller parses each line.

Rules (https://github.com/ndjson/ndjson-spec, https://jsonlines.org):
- Lines end with LF; a CR before it is JSON whitespace and stays in the line (the JSON parser
  skips it). LF never occurs inside a UTF-8 multi-byte sequence, so the bytes are split before
  they are decoded and a character cut across chunks is never split.
- Blank lines (only whitespace) are skipped. One leading UTF-8 BOM is stripped.
- Lines are decoded as UTF-8 with invalid bytes replaced.
- The last line may lack its LF: `finish()` hands it back (the caller decides whether it is a
  whole document or a line cut short).

Work is linear in the input: each byte is searched for LF once, and only the unfinished tail of
the last line is kept (appended to in place).
"""

from __future__ import annotations

from typing import Final

_BOM: Final = b"\xef\xbb\xbf"


def _decode(line: bytes | bytearray) -> str | None:
    """The line as text, None if it is blank."""
    if not line.strip():
        return None
    return line.decode("utf-8", "replace")


class NDJSONSplitter:
    """Feed raw bytes in chunks of any size; get back the complete lines they finish."""

    def __init__(self) -> None:
        self._tail = bytearray()  # the unfinished last line
        self._start = True  # nothing but (part of) a BOM seen yet
        self.bytes_seen = 0

    @property
    def pending(self) -> bool:
        """True if some fed data belongs to a line not yet finished."""
        return bool(self._tail.strip())

    def feed(self, data: bytes | bytearray | memoryview) -> list[str]:
        """Split one chunk; return the lines it completes, in order."""
        self.bytes_seen += len(data)
        chunk = bytes(data)
        if self._start:
            chunk = self._strip_bom(chunk)
        if not chunk:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            self._tail += chunk
            return []
        self._tail += chunk[:end]
        pieces = self._tail.split(b"\n")
        self._tail = bytearray(chunk[end + 1 :])
        return [text for text in map(_decode, pieces) if text is not None]

    def finish(self) -> list[str]:
        """End of stream: the last line if it had no LF (and is not blank)."""
        tail, self._tail = self._tail, bytearray()
        self._start = False  # (a tail kept at the start is a BOM's first bytes, not a BOM)
        text = _decode(tail)
        return [] if text is None else [text]

    def _strip_bom(self, chunk: bytes) -> bytes:
        """Strip one leading BOM, which may arrive split across chunks."""
        seen = bytes(self._tail) + chunk
        if len(seen) < len(_BOM) and _BOM.startswith(seen):
            self._tail = bytearray(seen)  # could still be a BOM: wait for more
            return b""
        self._start = False
        self._tail = bytearray()
        return seen.removeprefix(_BOM)
