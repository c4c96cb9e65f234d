"""The stream function of a pass-through stream (SPEC section 5).

mitmproxy calls it synchronously on its event loop, once per chunk and once with b"" at the
end, and sends whatever it returns to the client. It returns every chunk unchanged, at once,
and feeds a decoded copy to the protocol's stream assembler. It never raises (an exception in a
stream function loses that chunk, mitmproxy-addon-notes section 1.3) and never waits.
"""

from __future__ import annotations

from lakera_addon.assembly import UNFINISHED
from lakera_addon.assembly import StreamAssembler
from lakera_addon.assembly import StreamResult
from lakera_addon.assembly import incomplete
from lakera_addon.content_decoding import make_decoder
from lakera_addon.failures import FailureKind
from lakera_addon.protocols import Protocol

# Decoded bytes gathered before they are parsed: the parser's per-call costs once per 32 KB,
# not once per event (docs/performance.md); the text is screened only at the end anyway.
BATCH_BYTES = 32 * 1024


class StreamTap:
    """Forwards a streamed response untouched and assembles its text on the side."""

    def __init__(self, protocol: Protocol, content_encoding: str | None, max_bytes: int,
                 candidates: int = 1) -> None:
        self._assembler = StreamAssembler(protocol, candidates)
        self._max_bytes = max_bytes
        self._seen = 0
        self._decoded = 0
        self._batch = bytearray()  # decoded, not yet parsed
        self._failure: tuple[FailureKind, str] | None = None
        self.ended = False
        try:
            self._decode = make_decoder(content_encoding)
        except ValueError as e:
            self._decode = None
            self._failure = (FailureKind.STREAM_UNREADABLE, f"cannot read the stream: {e}")

    def __call__(self, data: bytes) -> bytes:
        if not data:
            self.ended = True
            self._flush()
            return data
        if self._failure is None:
            try:
                self._feed(data)
            except Exception as e:  # a stream function must never raise
                self._failure = (FailureKind.STREAM_UNREADABLE,
                                 f"cannot read the stream: {type(e).__name__}")
        return data

    def _feed(self, data: bytes) -> None:
        self._seen += len(data)
        if self._seen > self._max_bytes:
            self._failure = (FailureKind.TOO_LARGE,
                             f"stream larger than max_body_bytes ({self._max_bytes} bytes)")
            return
        if self._decode is not None:
            data = self._decode(data)
            self._decoded += len(data)
            if self._decoded > self._max_bytes:  # a compression bomb: it would all be parsed
                self._failure = (FailureKind.TOO_LARGE, "stream larger than max_body_bytes "
                                 f"({self._max_bytes} bytes) once decoded")
                return
        self._batch += data
        if len(self._batch) >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._batch and self._failure is None:
            try:
                self._assembler.feed(self._batch)
            except Exception as e:  # a stream function must never raise
                self._failure = (FailureKind.STREAM_UNREADABLE,
                                 f"cannot read the stream: {type(e).__name__}")
        self._batch = bytearray()

    @property
    def partial_text(self) -> str:
        """The assistant text read so far (for a stream that was cut short)."""
        self._flush()
        return self._assembler.text if self._failure is None else ""

    def result(self) -> StreamResult:
        """The assembled stream; a failure to read it is an incomplete result with a reason."""
        self._flush()
        if self._failure is not None:
            return incomplete(*self._failure)
        if not self.ended:
            return incomplete(FailureKind.STREAM_INCOMPLETE, UNFINISHED)
        return self._assembler.finish()
