"""`stream_mode: windowed`: a streamed answer released window by window, only what a clean
verdict covered (SPEC section 5, stream modes).

The relay (relay.py) reads the upstream's answer and hands its body here; this writes to the
client only whole events (SSE) or lines (NDJSON) whose text lies inside the text already screened
clean. Each scan covers all the text so far (past `max_screen_bytes`, of each part what
follows a little before where its clean scans reached: screen_budget.window_views), so a phrase
split across two windows is judged whole. A scan starts as soon as
none is in flight and `window_chars` of new text is waiting; the first at FIRST_WINDOW_CHARS
when that is smaller, so the first words do not wait for a whole window (a smaller first
window would release nothing: the last TAIL_HELD_CHARS a scan covers stay held). When the
upstream ends, a last scan covers the rest (at once, beside a scan still in flight) and only
then go the rest and the upstream's own ending out. A flag, or a failure on a route with
`fail_open: false`, ends the client's stream with the protocol's own cut ending
(deny.cut_ending) and closes the upstream.

Unlike a mitmproxy stream function, this runs as a coroutine: it can wait for a verdict before
the end of the stream, which is what lets the upstream's ending wait for the last scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import http

from lakera_addon import protocols
from lakera_addon import reporting
from lakera_addon import screen_budget
from lakera_addon.assembly import StreamAssembler
from lakera_addon.content_decoding import make_decoder
from lakera_addon.decision import Decision
from lakera_addon.decision import decide
from lakera_addon.decision import decide_failure
from lakera_addon.decision import deny_text
from lakera_addon.deny import CUT_NEEDS_START
from lakera_addon.deny import cut_ending
from lakera_addon.deny import last_resort_cut
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.flow_state import FlowState
from lakera_addon.llm_view_answer import keep_text
from lakera_addon.stream_events import Key
from lakera_addon.stream_framing import GeminiBoundary
from lakera_addon.stream_framing import last_event_end
from lakera_addon.stream_framing import last_line_end
from lakera_addon.stream_framing import split_events
from lakera_addon.verdict import Verdict
from lakera_addon.verdicts import Verdicts

logger = logging.getLogger("lakera_addon")

Write = Callable[[bytes], Awaitable[None]]
_INPUT_SLICE = 1024  # compressed input decoded per step: bounds one step's output
# The last characters a clean scan covered stay held until a scan that also covers what follows
# them is clean: an entity or phrase cut by the window's end (the first digits of a card
# number, "ignore all previous" before "instructions") is judged whole before any of it goes.
TAIL_HELD_CHARS = 128
# The first window: what lets TAIL_HELD_CHARS go out at once, or window_chars if that is less.
FIRST_WINDOW_CHARS = 2 * TAIL_HELD_CHARS
# The most parts (choices, blocks, items, candidates and their reasoning) a windowed answer may
# have: past max_screen_bytes each part is screened where it grew, so a stream of thousands of
# parts would make each scan that many slices (red-team round 5). OpenAI's `n` is at most 128.
MAX_PARTS = 300
TOO_MANY_PARTS = f"more than {MAX_PARTS} parts (choices, blocks, items) in one answer"


@dataclass(slots=True)
class _Scan:
    upto: int  # the text length it covers
    parts: dict[Key, int]  # and each part's (choice's, content block's) length it covers
    arrival: int  # and the length of all the deltas in the order they came
    closed: frozenset[Key]  # the parts closed when it started: it saw what follows them
    task: asyncio.Task[Verdict]


@dataclass(slots=True)
class _Held:
    event: bytes
    chars: int  # the text length after it
    answer_pieces: int  # the visible answer's pieces after it (StreamAssembler.answer_pieces)
    arrival: int  # all the deltas' length after it, in the order they came
    grown: dict[Key, int]  # the parts whose text it carries, with their lengths after it


class WindowedRelease:
    """One windowed answer: feed it the upstream's body, it writes what is released."""

    def __init__(self, flow: http.HTTPFlow, state: FlowState, verdicts: Verdicts,
                 content_encoding: str | None) -> None:
        self.flow = flow
        self.state = state
        self.verdicts = verdicts
        self._decode = make_decoder(content_encoding)  # ValueError: not a coding it reads
        self._assembler = StreamAssembler(state.protocol, state.candidates,
                                          parts_in_order=True)
        self._boundary: Callable[[bytes | bytearray], int] = (
            last_line_end if state.protocol in protocols.NDJSON
            else GeminiBoundary() if state.protocol == protocols.GEMINI_GENERATE
            else last_event_end)
        self._pending = bytearray()  # decoded, after the last whole event
        self._held: deque[_Held] = deque()
        self._seen = 0
        self.clean = 0  # the text length covered by clean verdicts
        self.clean_parts: dict[Key, int] = {}  # and each part's (released: all but its tail)
        self.clean_arrival = 0  # and of all the deltas in the order they came
        self.clean_closed: set[Key] = set()  # parts whose closing a clean scan saw
        self.released = 0  # the text length the client has
        self.released_answer = 0  # the visible answer's pieces the client has
        self.scans = 0
        self._sent_any = False
        self.failed_scans: list[Failure] = []
        self.last: Verdict | None = None

    # --- reading ---------------------------------------------------------------------------

    def _take(self, data: bytes) -> Failure | None:
        """Add a chunk of the upstream's body; a failure if the stream cannot be read (past
        `max_body_bytes` once decoded, undecodable, or not its protocol's events)."""
        limit = self.state.settings.max_body_bytes
        try:
            decoded = bytearray()
            # decoded a little at a time, so that a compression bomb stops at the limit
            for at in range(0, len(data), _INPUT_SLICE) if self._decode else ():
                decoded += self._decode(data[at:at + _INPUT_SLICE])  # type: ignore[misc]
                if self._seen + len(decoded) > limit:
                    break
            self._seen += len(decoded) if self._decode else len(data)
            if self._seen > limit:
                return Failure(FailureKind.TOO_LARGE, f"stream larger than max_body_bytes "
                               f"({limit} bytes)")
            self._pending += decoded if self._decode else data
            end = self._boundary(self._pending)
            if end:
                events = bytes(self._pending[:end])
                del self._pending[:end]
                self._feed(events)
        except Exception as e:
            return Failure(FailureKind.STREAM_UNREADABLE,
                           f"cannot read the stream: {type(e).__name__}")
        # (the text count would stop growing; a part come back would get its tail released)
        problem = self._assembler.unreadable or self._assembler.out_of_order or (
            TOO_MANY_PARTS if self._assembler.part_count > MAX_PARTS else None)
        return Failure(FailureKind.STREAM_UNREADABLE, problem) if problem else None

    def _feed(self, events: bytes) -> None:
        """Feed whole events one by one, so that each is released with the text it carries
        (a Gemini chunk may hold a blank line inside its JSON: its boundaries are the
        reader's, and what lies between two of them goes as one piece)."""
        pieces = ([events] if self.state.protocol == protocols.GEMINI_GENERATE
                  else split_events(events, self.state.protocol in protocols.NDJSON))
        for event in pieces:
            self._assembler.feed(event)
            self._held.append(self._holding(event))

    def _finish_reading(self) -> Failure | None:
        """The upstream ended: what is left after the last whole event is one more event,
        counted with the text the end makes of it (a last line without its line end); a stream
        that cannot be assembled (no events, not its protocol's, no end) is a failure, as a held
        one is."""
        rest, self._pending = bytes(self._pending), bytearray()
        if rest:
            self._assembler.feed(rest)
        result = self._assembler.finish()
        if rest:
            self._held.append(self._holding(rest))
        if result.complete and self._assembler.out_of_order:
            return Failure(FailureKind.STREAM_UNREADABLE, self._assembler.out_of_order)
        return None if result.complete else result.failure

    def _holding(self, event: bytes) -> _Held:
        assembler = self._assembler
        return _Held(event, assembler.chars, assembler.answer_pieces, assembler.arrival_chars,
                     assembler.take_grown())

    # --- releasing ---------------------------------------------------------------------------

    async def _release(self, write: Write, everything: bool = False) -> None:
        """Write the held events a clean verdict released, in order (all of them at the
        end, `everything`)."""
        out = bytearray()
        while self._held and (everything or self._releasable(self._held[0])):
            held = self._held.popleft()
            out += held.event
            self.released = held.chars
            self.released_answer = held.answer_pieces
        if out:
            self._sent_any = True
            await write(bytes(out))

    def _releasable(self, held: _Held) -> bool:
        """Before the upstream ends, an event goes out when clean verdicts covered the text
        up to its end and, in each part whose text it carries, TAIL_HELD_CHARS more of that
        part's text. Per part: parts may interleave (the choices of `n` > 1, Gemini's
        candidates, a hostile upstream's reasoning and content), and a tail counted over
        several would let one part's tail go as another grew, which Lakera sees elsewhere.

        A part is closed once the next part of its choice begins (the answer after the
        reasoning). Its tail goes out when a clean scan that started after that covered all
        of it and TAIL_HELD_CHARS of the deltas that came after it (screened in the order
        they came: what a client that prints them shows joined), so the answer streams on
        after the reasoning. A closed part that gets text again is cut (StreamAssembler.
        out_of_order)."""
        if held.chars > self.clean:
            return False
        clean, closed = self.clean_parts, self._assembler.closed_parts
        for key, length in held.grown.items():
            covered = clean.get(key, 0)
            if length <= covered - TAIL_HELD_CHARS:
                continue
            final = closed.get(key)
            if (final is None or covered < final or key not in self.clean_closed
                    or held.arrival > self.clean_arrival - TAIL_HELD_CHARS):
                return False
        return True

    def _scan(self, upto: int) -> _Scan:
        settings = self.state.settings
        assembler = self._assembler
        parts = screen_budget.window_views(assembler.text, assembler.views, self.clean_parts,
                                           settings.max_screen_bytes)
        self.scans += 1
        task = asyncio.ensure_future(self.verdicts.lakera.screen_parts(
            settings, [[{"role": "assistant", "content": p}] for p in parts]))
        return _Scan(upto, dict(assembler.part_chars), assembler.arrival_chars,
                     frozenset(assembler.closed_parts), task)

    def _ending(self, verdict: Verdict | None) -> bytes:
        state = self.state
        try:
            return cut_ending(state.protocol, deny_text("response", verdict, state.settings),
                              self._assembler.last_text_event, state.model,
                              sent_text=self._assembler.answer_arrived(self.released_answer))
        except Exception:
            logger.exception("lakera_addon could not build a cut ending; sending the last resort")
            return last_resort_cut(state.protocol)

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, body: AsyncIterator[bytes], write: Write) -> Decision:
        """Read the upstream's body to its end and release it; the decision taken (the caller
        records it)."""
        settings = self.state.settings
        scans: list[_Scan] = []  # at most a window scan and the last one
        reading: asyncio.Task[bytes] | None = asyncio.ensure_future(_next(body))
        requested = 0  # the text length the newest scan covers
        try:
            while True:
                waiting: set[asyncio.Task[Verdict] | asyncio.Task[bytes]] = {
                    s.task for s in scans}
                if reading is not None:
                    waiting.add(reading)
                if waiting:
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if reading is not None and reading.done():
                    chunk = reading.result()
                    if chunk:
                        failure = self._take(chunk)
                        if failure is not None:
                            return await self._failed(failure, write, body)
                        await self._release(write)  # events without new text
                        reading = asyncio.ensure_future(_next(body))
                    else:
                        reading = None
                        failure = self._finish_reading()
                        if failure is not None:
                            for scan in scans:
                                scan.task.cancel()
                            return await self._failed(failure, write, body)
                for scan in [s for s in scans if s.task.done()]:
                    scans.remove(scan)
                    decision = await self._verdict(scan, write)
                    if decision is not None:
                        return await self._cut(decision, write)
                chars = self._assembler.chars
                if reading is not None:  # a window: the first one smaller, then every window
                    window = settings.window_chars if requested else min(
                        settings.window_chars, FIRST_WINDOW_CHARS)
                    if not scans and chars > requested and chars - requested >= window:
                        requested = chars
                        scans.append(self._scan(chars))
                elif chars > requested:  # the end: the rest now, beside a scan in flight
                    requested = chars
                    scans.append(self._scan(chars))
                elif not scans:  # the end, all of it decided: the rest and the ending go out
                    await self._release(write, everything=True)
                    if self.last is None:
                        return Decision("unscanned", False, "no assistant text")
                    return decide(self.last, settings)
        finally:
            if reading is not None:
                reading.cancel()
            for scan in scans:
                scan.task.cancel()

    async def _verdict(self, scan: _Scan, write: Write) -> Decision | None:
        """Apply a finished scan: release what it covers if clean; the decision if it ends the
        stream."""
        verdict = scan.task.result()
        settings = self.state.settings
        decision = decide(verdict, settings)
        self.last = verdict
        if decision.deny:
            return decision
        if verdict.failure is not None:  # the route lets failures through: not clean, but on
            self.failed_scans.append(verdict.failure)  # record; a later scan covers it again
            self.verdicts.count_failure(verdict.failure)
            return None
        self.clean = max(self.clean, scan.upto)  # (flagged by a detector that only alerts too)
        for key, length in scan.parts.items():
            self.clean_parts[key] = max(self.clean_parts.get(key, 0), length)
        self.clean_arrival = max(self.clean_arrival, scan.arrival)
        self.clean_closed |= scan.closed
        await self._release(write)
        return None

    async def _cut(self, decision: Decision, write: Write) -> Decision:
        """End the client's stream: the protocol's cut ending, or, when nothing has gone out
        yet in a protocol whose ending needs its start (Anthropic's message_start, Responses'
        response.created), the whole streamed deny."""
        if self._sent_any or self.state.protocol not in CUT_NEEDS_START:
            ending = self._ending(self.last)
        else:
            ending = self.verdicts.deny_response(self.state, "response", True, self.last).body
        keep_text(self.flow, self.state.protocol, self._assembler.text,  # for mitmweb's view
                  f"the client received {self.released} of these {self._assembler.chars} "
                  "characters, then the cut ending")
        with contextlib.suppress(Exception):
            await write(ending)
        return decision

    async def _failed(self, failure: Failure, write: Write, body: AsyncIterator[bytes]
                      ) -> Decision:
        """The stream cannot be read (too large, undecodable): cut (fail closed), or released
        as it comes, unread (fail open)."""
        decision = decide_failure(failure, self.state.settings)
        if decision.deny:
            return await self._cut(decision, write)
        await self._release(write, everything=True)
        if self._pending:
            await write(bytes(self._pending))
        async for chunk in body:
            await write(chunk)
        return decision

    def coverage(self) -> str:
        note = (f"windowed: {self.scans} scan(s); the client received {self.released} of "
                f"{self._assembler.chars} characters")
        if self.failed_scans:
            note += (f"; {len(self.failed_scans)} scan(s) failed "
                     f"({self.failed_scans[-1].reason}) and were covered again")
        return note

    def record(self, decision: Decision) -> None:
        reporting.coverage(self.flow, self.state.route, "response", self.coverage())
        self.verdicts.record(self.flow, self.state.route, "response", decision, self.last)
        self.verdicts.notify(self.flow)


async def _next(body: AsyncIterator[bytes]) -> bytes:
    """The next chunk of the body; b"" at its end."""
    try:
        return await anext(body)
    except StopAsyncIteration:
        return b""
