"""The stream function of a live stream (`stream_mode: live`, formerly `progressive`).

The answer stays live: every complete SSE event (NDJSON line, for Ollama) is forwarded as soon
as it arrives, and the text assembled from them is screened in the background each time it has
grown by `window_chars`, with at most one scan in flight, always on the newest text. When a scan
flags, the addon calls `cut()`: from the next chunk on, nothing more of the upstream's answer is
forwarded; the client gets the protocol's own ending instead (deny.cut_ending) and then nothing.

mitmproxy calls the stream function synchronously on its event loop for each chunk and once
with b"" at the end (mitmproxy-addon-notes 1.1-1.3), and nothing calls it in between: a cut
takes effect when the next chunk arrives (or at the end). What the client can receive of a
flagged text is therefore bounded by what streams between the end of the last clean window and
the moment the flag arrives: at most `window_chars` of text not yet in a scan, plus the text
that streams during one Lakera round trip (docs/stream-modes.md has the measured figures).

Only whole events are forwarded, so that the ending never lands inside an event: the bytes after
the last event boundary of a chunk wait for the next chunk. (A Gemini stream's boundaries are
where google-genai ends a chunk: also after a bare JSON line, which needs no blank line; text
that waited for a boundary to the end of the stream would otherwise go out unscreened.) Held
back data is returned as `[]`, never as b"" (b"" is the chunked terminator to an HTTP/1.1
client). Never raises: if the tap cannot go on reading (past `max_body_bytes`, bytes it cannot
read), it sends the protocol's ending in place of the rest where failures deny (`fail_open:
false`), or forwards the rest unread where they pass, recorded as a failure at the end.
"""

from __future__ import annotations

from collections.abc import Callable

from lakera_addon import protocols
from lakera_addon.assembly import UNFINISHED
from lakera_addon.assembly import StreamAssembler
from lakera_addon.assembly import StreamResult
from lakera_addon.assembly import incomplete
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.protocols import Protocol
from lakera_addon.stream_events import Key
from lakera_addon.stream_framing import GeminiBoundary
from lakera_addon.stream_framing import last_event_end
from lakera_addon.stream_framing import last_line_end

_Out = bytes | list[bytes]


class LiveTap:
    """Forwards whole events at once, tells when a scan is due every `window_chars`, cuts on
    request.

    After each chunk its owner asks `take_window()`: True when a window is due and no scan is in
    flight (the tap then counts one in flight); the owner runs the scan and reports back with
    `scanned()` (clean: the next window may start) or `cut()` (flagged: end the stream)."""

    def __init__(
        self,
        protocol: Protocol,
        max_bytes: int,
        window_chars: int,
        candidates: int = 1,
        failure_ending: bytes | None = None,
        keep_sent: bool = False,
    ) -> None:
        """`failure_ending`: on a route with `fail_open: false`, the ending to send in place of
        everything after a failure of the tap itself (a stream past `max_body_bytes`, or bytes
        it cannot read); None forwards the rest unread (`fail_open: true`)."""
        self._assembler = StreamAssembler(protocol, candidates)
        self._failure_ending = failure_ending
        self._boundary: Callable[[bytes | bytearray], int] = (
            last_line_end if protocol in protocols.NDJSON
            else GeminiBoundary() if protocol == protocols.GEMINI_GENERATE else last_event_end)
        self._max_bytes = max_bytes
        self._window = window_chars
        self._seen = 0
        self._pending = bytearray()  # after the last complete event: waits for the next chunk
        self._ending: bytes | None = None
        self._drop_after_end = False
        self._failure: tuple[FailureKind, str] | None = None
        self.ended = False
        self.cut_sent = False  # the ending went out; nothing more is forwarded
        self.in_flight = False
        self.requested_chars = 0  # text length when the newest scan was asked for
        self.clean_chars = 0  # text length covered by the last clean verdict
        self.clean_parts: dict[Key, int] = {}  # and each part's and view's (window_views)
        self.sent_chars = 0  # text length the client had when the ending went out
        # what went out to the client, when it is to be kept (`keep_sent`, for mitmweb's view:
        # mitmproxy's store_streamed_bodies keeps nothing of a stream the client left early)
        self.sent: bytearray | None = bytearray() if keep_sent else None

    # --- the stream function -----------------------------------------------------------------

    def __call__(self, data: bytes) -> _Out:
        try:
            out = self._chunk(data)
        except Exception as e:  # a stream function must never raise
            out = self._fail(FailureKind.STREAM_UNREADABLE,
                             f"cannot read the stream: {type(e).__name__}", data)
        if self.sent is not None and len(self.sent) <= self._max_bytes:
            self.sent += out if isinstance(out, bytes) else b"".join(out)
        return out

    def _fail(self, kind: FailureKind, reason: str, data: bytes) -> _Out:
        """The tap cannot go on reading: fail closed (the ending goes out in place of this
        chunk and all that follows) or open (the rest is forwarded unread)."""
        self._failure = (kind, reason)
        self.ended = self.ended or not data
        if self._failure_ending is not None and not self.cut_sent:
            self._ending = self._failure_ending
            return self._send_ending()
        rest, self._pending = bytes(self._pending) + data, bytearray()
        return rest if rest or not data else []

    def _chunk(self, data: bytes) -> _Out:
        if not data:
            return self._end()
        if self.cut_sent:
            return []  # the client's stream has ended: drop the rest of the upstream's
        if self._drop_after_end:  # a flag after the stream's own end: what follows is dropped
            self._ending = b""
        if self._ending is not None:
            return self._send_ending()
        if self._failure is not None:
            return data
        self._seen += len(data)
        if self._seen > self._max_bytes:
            return self._fail(FailureKind.TOO_LARGE,
                              f"stream larger than max_body_bytes ({self._max_bytes} bytes)",
                              data)
        self._pending += data
        end = self._boundary(self._pending)
        if not end:
            return []
        out = bytes(self._pending[:end])
        del self._pending[:end]
        self._assembler.feed(out)
        return out

    def _end(self) -> bytes:
        self.ended = True
        if self.cut_sent:
            return b""
        if self._ending is not None:
            ending = self._send_ending()
            return ending if isinstance(ending, bytes) else b""
        rest, self._pending = bytes(self._pending), bytearray()
        if rest and self._failure is None:
            self._assembler.feed(rest)
        return rest  # b"" (nothing held) is the final call's "nothing"

    def _send_ending(self) -> _Out:
        assert self._ending is not None
        self.cut_sent = True
        self.sent_chars = self._assembler.chars
        self._pending = bytearray()
        return self._ending or []  # (no ending after the stream's own: [] is "nothing")

    # --- windows and verdicts ----------------------------------------------------------------

    def window_due(self) -> bool:
        return (not self.in_flight and self._ending is None and self._failure is None
                and self._assembler.chars - self.requested_chars >= self._window)

    def take_window(self) -> bool:
        """Whether a scan of the newest text should start now; if so, it counts as in flight
        from now on, for the text up to `requested_chars`."""
        if not self.window_due():
            return False
        self.in_flight = True
        self.requested_chars = self._assembler.chars
        return True

    def scanned(self, chars: int, parts: dict[Key, int] | None = None) -> bool:
        """A clean verdict for the text up to `chars` (and `parts`: each part's and view's
        length it covered); True if the next window is already due (the caller then scans
        again at once, on the newest text)."""
        self.clean_chars = max(self.clean_chars, chars)
        for key, length in (parts or {}).items():
            self.clean_parts[key] = max(self.clean_parts.get(key, 0), length)
        self.in_flight = False
        if self.window_due() and not self.ended:
            self.in_flight = True
            self.requested_chars = self._assembler.chars
            return True
        return False

    def scan_failed(self) -> None:
        """A window scan failed and the route lets failures through: the text it covered is not
        clean, so a later scan (the next window, or the last) covers it again."""
        self.in_flight = False

    def cut(self, ending: bytes) -> None:
        """A flag: the next call of the stream function sends `ending` instead of the chunk.
        Ignored once the stream has ended, or once its own ending has gone out (a verdict that
        arrives between the upstream's last event and the end of its body): the client has the
        whole answer, and an ending after it would be a second one; whatever the upstream
        sends after its end is dropped then (the client's stream ends as the upstream's did)."""
        self.in_flight = False
        if self.cut_sent or self.ended:
            return
        if self._assembler.terminated:  # no second ending; but text the upstream sends after
            self._drop_after_end = True  # its own end (which SDKs read on past) is dropped
            return
        self._ending = ending

    @property
    def cutting(self) -> bool:
        """A cut was asked for (sent already, or waiting for the next chunk)."""
        return self._ending is not None

    # --- what was read -------------------------------------------------------------------------

    @property
    def chars(self) -> int:
        return self._assembler.chars

    @property
    def text(self) -> str:
        """All the text read so far: what is screened."""
        return self._assembler.text if self._failure is None else ""

    def views(self) -> list[tuple[Key, str]]:
        """The parts and views of `text` (Texts.views), with what each counts in part_chars."""
        return self._assembler.views() if self._failure is None else []

    @property
    def part_chars(self) -> dict[Key, int]:
        return dict(self._assembler.part_chars)

    @property
    def answer_text(self) -> str:
        """The visible answer read so far (no reasoning, no snapshots): the text a cut ending
        repeats as what the client has."""
        return self._assembler.answer_text if self._failure is None else ""

    @property
    def last_text_event(self) -> dict[str, object] | None:
        return self._assembler.last_text_event

    @property
    def failure(self) -> Failure | None:
        """Why the tap itself stopped reading (too large, unreadable), if it did."""
        return Failure(*self._failure) if self._failure else None

    def result(self) -> StreamResult:
        if self._failure is not None:
            return incomplete(*self._failure)
        if not self.ended:
            return incomplete(FailureKind.STREAM_INCOMPLETE, UNFINISHED)
        return self._assembler.finish()
