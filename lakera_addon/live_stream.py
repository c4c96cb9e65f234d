"""Streamed answers that stay live (SPEC section 5, stream modes): each kind is one object that
owns all of a stream's state and is itself the stream function mitmproxy calls.

- `PassThrough` (shadow routes): every chunk forwarded at once, screened when the stream ends,
  only logged.
- `LiveStream` (`stream_mode: live`): whole events forwarded at once, screened in windows
  behind the stream, cut with the protocol's own ending on a flag.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from mitmproxy import ctx
from mitmproxy import http
from mitmproxy.utils import asyncio_utils

from lakera_addon import reporting
from lakera_addon import screen_budget
from lakera_addon.decision import Decision
from lakera_addon.decision import decide
from lakera_addon.decision import decide_failure
from lakera_addon.decision import deny_text
from lakera_addon.deny import CUT_PROTOCOLS
from lakera_addon.deny import cut_ending
from lakera_addon.deny import last_resort_cut
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.flow_state import FlowState
from lakera_addon.live_tap import LiveTap
from lakera_addon.stream_tap import StreamTap
from lakera_addon.verdict import Verdict
from lakera_addon.verdicts import Verdicts

logger = logging.getLogger("lakera_addon")


def can_stay_live(response: http.Response, state: FlowState) -> bool:
    """`stream_mode: live` applies to a stream the addon can end in its protocol's own shape:
    an identity-encoded body (the ending is appended as plain text) of unknown length (chunked
    or HTTP/2: the length changes); others are held."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    return (state.settings.live and state.protocol in CUT_PROTOCOLS
            and encoding in ("", "identity") and "content-length" not in response.headers)


def _store_streamed_bodies() -> bool:
    """mitmproxy's `store_streamed_bodies` (lakera-mitmweb turns it on)."""
    try:
        return bool(ctx.options.store_streamed_bodies)
    except Exception:  # no options (unit tests)
        return False


class PassThrough:
    """A shadow route's streamed answer: forwarded untouched, screened at the end."""

    def __init__(self, state: FlowState, verdicts: Verdicts, content_encoding: str | None) -> None:
        self.state = state
        self.verdicts = verdicts
        self.tap = StreamTap(state.protocol, content_encoding, state.settings.max_body_bytes,
                             state.candidates)

    async def end(self, flow: http.HTTPFlow) -> None:
        """After the stream (ended or cut short): screen what the client received, and log."""
        route, verdicts = self.state.route, self.verdicts
        result = self.tap.result()
        partial = "" if result.complete else self.tap.partial_text
        if partial:  # cut short (upstream or client): screen what the client received
            reporting.coverage(flow, route, "response",
                               f"stream ended early ({result.reason}); screened the "
                               f"{len(partial)} characters received")
            parts = verdicts.answer_parts(flow, route, partial)
            await verdicts.background_scan(flow, route, "response", parts)
            return
        if not result.complete and result.ended_early:
            verdicts.unscanned(flow, route, "response",
                               f"stream ended early ({result.reason}) before any text")
        elif not result.complete:  # the client received what the addon could not read
            assert result.failure is not None
            verdicts.record(flow, route, "response",
                            decide_failure(result.failure, route.settings))
        elif not result.text:
            verdicts.unscanned(flow, route, "response", "no assistant text")
        else:
            parts = verdicts.answer_parts(flow, route, result.text)
            await verdicts.background_scan(flow, route, "response", parts)
            return
        verdicts.notify(flow)


class LiveStream:
    """A live stream: the stream function, its window scans, and what cut it.

    mitmproxy calls it for every chunk; after each, a window scan starts when one is due and
    none is in flight (`LiveTap.take_window`). A scan that flags (or fails, with
    `fail_open: false`) asks the tap to cut: the next chunk is replaced by the protocol's own
    ending and nothing more of the upstream's answer goes out."""

    def __init__(self, flow: http.HTTPFlow, state: FlowState, verdicts: Verdicts) -> None:
        settings = state.settings
        self.state = state
        self.verdicts = verdicts
        failure_ending = None if settings.fail_open else self._ending(None, "")
        self.tap = LiveTap(state.protocol, settings.max_body_bytes, settings.window_chars,
                                  state.candidates, failure_ending, _store_streamed_bodies())
        self.scan: asyncio.Task[None] | None = None  # the window scan in flight
        self.cut_by: tuple[Decision, Verdict | None] | None = None
        self.failed_windows: list[Failure] = []  # window scans that failed (fail_open: true)
        self._flow = weakref.ref(flow)  # (the flow holds this object: no cycle through it)

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        out = self.tap(data)
        try:
            if data and self.tap.take_window():
                self.scan = asyncio_utils.create_task(
                    self._window_scans(), name="lakera live window scan", keep_ref=True)
        except Exception:  # a stream function must never raise; the end screens everything
            logger.exception("lakera_addon could not start a window scan")
        return out

    def _ending(self, verdict: Verdict | None, sent_text: str) -> bytes:
        """The protocol's own ending with the deny text; never fails (the one built ahead of
        time from constants stands in)."""
        state = self.state
        try:
            return cut_ending(state.protocol, deny_text("response", verdict, state.settings),
                              self.tap.last_text_event if sent_text else None, state.model,
                              sent_text=sent_text)
        except Exception:
            logger.exception("lakera_addon could not build a cut ending; sending the last resort")
            return last_resort_cut(state.protocol)

    async def _window_scans(self) -> None:
        """Screen the newest text until a window is clean and no next one is due, or until a
        flag (or a failure with fail_open false) cuts the stream. A failure the route lets
        through leaves its text unscreened for a later scan."""
        tap, state, settings = self.tap, self.state, self.state.settings
        verdict: Verdict | None = None
        try:
            while True:
                upto, text, covered = tap.requested_chars, tap.text, tap.part_chars
                # past max_screen_bytes, each part where it grew (a part that grows after a
                # later one lies before an offset in the whole text: red-team round 4)
                parts = screen_budget.window_views(text, tap.views, tap.clean_parts,
                                                   settings.max_screen_bytes)
                verdict = await self.verdicts.lakera.screen_parts(
                    settings, [[{"role": "assistant", "content": p}] for p in parts])
                decision = decide(verdict, settings)
                if decision.deny:
                    break
                if verdict.failure is not None:
                    self._window_failed(verdict.failure)
                    return
                if decision.outcome == "flagged":
                    return  # flagged, but nothing blocks: no more windows; the final scan logs it
                if not tap.scanned(upto, covered):
                    return
        except Exception as e:  # a bug must not let a stream run on unscreened
            flow = self._flow()
            logger.error("lakera_addon internal error in a live scan [%s route=%s]: %s",
                         reporting.flow_label(flow) if flow else "?", state.route.name,
                         type(e).__name__, exc_info=e)
            verdict = None
            failure = Failure(FailureKind.INTERNAL, f"internal error ({type(e).__name__})")
            decision = decide_failure(failure, settings)
            if not decision.deny:
                self._window_failed(failure)
                return
        self.cut_by = (decision, verdict)
        tap.cut(self._ending(verdict, tap.answer_text))

    def _window_failed(self, failure: Failure) -> None:
        """A window scan failed on a route that lets failures through: counted and logged; its
        text stays unscreened (not clean) until a later scan covers it."""
        self.failed_windows.append(failure)
        self.tap.scan_failed()
        self.verdicts.count_failure(failure)
        flow = self._flow()
        logger.warning("Lakera Guard failure on a response window [%s route=%s]: %s; "
                       "fail_open=true, its text is screened again by a later scan",
                       reporting.flow_label(flow) if flow else "?", self.state.route.name,
                       failure.reason)

    async def end(self, flow: http.HTTPFlow) -> None:
        """After the stream: record the cut, or screen the last window (its verdict can only
        arrive after the end: logged and marked, nothing left to cut)."""
        if self.scan is not None and not self.scan.done():
            await asyncio.wait({self.scan})
        tap, route, verdicts = self.tap, self.state.route, self.verdicts
        if tap.sent is not None and flow.response is not None and (
                flow.response.raw_content is None):  # the client left before the end
            flow.response.raw_content = bytes(tap.sent)  # what it got, as mitmproxy would keep
        if self.failed_windows:
            reporting.coverage(flow, route, "response",
                               f"{len(self.failed_windows)} window scan(s) failed "
                               f"({self.failed_windows[-1].reason}); their text was screened "
                               "again by a later scan")
        if self.cut_by is not None and tap.cutting:
            decision, verdict = self.cut_by
            reporting.coverage(flow, route, "response",
                               f"live stream cut: the client received {tap.sent_chars} "
                               f"characters; the last clean scan covered {tap.clean_chars}, the "
                               f"flagged one {tap.requested_chars}")
            verdicts.record(flow, route, "response", decision, verdict)
            verdicts.notify(flow)
            return
        if tap.failure is not None:  # the tap stopped reading: cut (fail_open false) or not
            if tap.cut_sent:
                reporting.coverage(flow, route, "response",
                                   f"live stream cut: the client received "
                                   f"{tap.sent_chars} characters before the failure")
            verdicts.record(flow, route, "response", decide_failure(tap.failure, route.settings))
            verdicts.notify(flow)
            return
        result = tap.result()
        text = result.text if result.complete else tap.text
        if not text:
            reason = "no assistant text" if result.complete else (
                f"stream ended early ({result.reason}) before any text")
            verdicts.unscanned(flow, route, "response", reason)
            verdicts.notify(flow)
            return
        if not result.complete:
            reporting.coverage(flow, route, "response",
                               f"stream ended early ({result.reason}); screened the "
                               f"{len(text)} characters received")
        # all of it, in parts: past max_screen_bytes the windows' offsets follow the whole
        # text's count, and a part that grew after a later one would lie before them
        parts = screen_budget.split_text(text, route.settings.max_screen_bytes)
        verdict = await verdicts.lakera.screen_parts(
            route.settings, [[{"role": "assistant", "content": p}] for p in parts])
        decision = decide(verdict, route.settings)
        if decision.deny:  # nothing left to cut: the client has the whole answer
            reporting.coverage(flow, route, "response",
                               "live stream: the last window's verdict arrived after the "
                               "end of the stream")
            decision = Decision(decision.outcome, False, decision.reason, kind=decision.kind)
        verdicts.record(flow, route, "response", decision, verdict)
        verdicts.notify(flow)
