"""Answers held whole until their verdict (SPEC section 5): JSON answers, and streamed answers
in `stream_mode: held`. Released as they came, masked, or replaced by the deny."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

from mitmproxy import http

from lakera_addon import answer_text
from lakera_addon import assembly
from lakera_addon import content_decoding
from lakera_addon import lenient_json
from lakera_addon import masking
from lakera_addon import routing
from lakera_addon.bodies import maybe_off_loop
from lakera_addon.configuration import Settings
from lakera_addon.decision import Decision
from lakera_addon.decision import decide
from lakera_addon.decision import decide_failure
from lakera_addon.deny import build_deny
from lakera_addon.extract import Message
from lakera_addon.failures import CannotScreen
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.failures import MaskError
from lakera_addon.failures import TooDeep
from lakera_addon.flow_state import FlowState
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.llm_view_answer import keep_upstream
from lakera_addon.verdict import Verdict
from lakera_addon.verdicts import Verdicts


class HeldAnswer:
    def __init__(self, verdicts: Verdicts) -> None:
        self.verdicts = verdicts

    async def screen(self, flow: http.HTTPFlow, state: FlowState) -> None:
        started = time.perf_counter()
        try:
            await self._screen(flow, state)
        except Exception as e:  # a bug must not release a held answer unscreened
            self.verdicts.internal_error(flow, state.route, "response", e, state)
        self.verdicts.held("response", started)

    async def _screen(self, flow: http.HTTPFlow, state: FlowState) -> None:
        route, settings = state.route, state.settings
        text, failure, document, visible = await self.read(flow, state)
        if failure is not None and flow.response is not None and flow.response.stream:
            # another addon streamed it to the client already: a deny could not take effect
            self.verdicts.record(flow, route, "response",
                                 Decision("failure", False, failure.reason, kind=failure.kind))
            return
        if failure is not None:
            decision = decide_failure(failure, settings)
            if decision.deny:  # first: what is recorded must have happened
                await keep_upstream(flow, state.protocol, state.candidates, settings.max_body_bytes)
                self.verdicts.deny(flow, state, "response", None)
            self.verdicts.record(flow, route, "response", decision)
            return
        if not text:
            self.verdicts.unscanned(flow, route, "response", "no assistant text")
            return
        parts = self.verdicts.answer_parts(flow, route, text)
        decision, verdict, masked = await screen_answer(
            self.verdicts.lakera, settings, parts,
            lambda v: self._mask(flow, state, text, document, v, visible))
        if decision.deny:  # first: what is recorded must have happened
            # what the upstream sent, for mitmweb's view (llm_view): the deny replaces it
            await keep_upstream(flow, state.protocol, state.candidates, settings.max_body_bytes)
            self.verdicts.deny(flow, state, "response", verdict)
        self.verdicts.record(flow, route, "response", decision, verdict, masked)

    def too_large(self, flow: http.HTTPFlow, state: FlowState, declared: int) -> None:
        """An answer that declares more than max_body_bytes, decided before any of it is read
        (mitmproxy would hold all of it): denied at once without reading it, or, where
        failures pass (`fail_open: true`), forwarded as it comes, unread."""
        assert flow.response is not None
        limit = state.settings.max_body_bytes
        failure = Failure(FailureKind.TOO_LARGE, f"response declares {declared} bytes, more "
                          f"than max_body_bytes ({limit} bytes)")
        decision = decide_failure(failure, state.settings)
        if decision.deny:
            self.verdicts.deny(flow, state, "response", None)
            assert flow.response is not None
            flow.response.stream = Replacement(flow.response.content or b"")
        else:
            flow.response.stream = True
        self.verdicts.record(flow, state.route, "response", decision)

    @staticmethod
    def _mask(
        flow: http.HTTPFlow,
        state: FlowState,
        text: str,
        document: Any,
        verdict: Verdict,
        visible: str,
    ) -> Counter[str]:
        """Mask the confirmed texts in the answer. A JSON answer is masked in place (ids, usage,
        tool calls kept; the texts masked wherever they occur); a held stream is re-framed from
        its masked visible answer (`visible`: not its reasoning) in the protocol's own shape, so
        that the SDKs parse it. `document` is the parsed JSON answer, None for a stream."""
        assert flow.response is not None
        masker = masking.Masker(masking.confirmed(state.settings, [
            {"role": "assistant", "content": text}], verdict))
        if document is not None:
            masked = masker.document(document)
            masker.check_all_replaced()
            flow.response.headers.pop("content-encoding", None)
            flow.response.content = json.dumps(masked, ensure_ascii=False).encode()
            flow.response.headers["x-lakera-guard"] = "masked"
            return masker.counts
        released = build_deny(
            state.protocol,
            masker.text(visible),
            status=flow.response.status_code,
            stream=True,
            model=state.model,
            json_array=state.json_array,
        )
        headers = {**released.headers, "x-lakera-guard": "masked"}
        flow.response = http.Response.make(released.status, released.body, headers)
        return masker.counts

    @staticmethod
    async def read(flow: http.HTTPFlow, state: FlowState) -> _Read:
        """(assistant text, failure, the parsed JSON answer or None for a stream, the text a
        re-framed stream carries) of a buffered response. The flow is not changed."""
        assert flow.response is not None
        limit = state.settings.max_body_bytes
        if flow.response.stream:
            return _failed(Failure(FailureKind.STREAM_UNREADABLE,
                                   "response was streamed by another addon, not held"))
        try:
            content = content_decoding.decode_bounded(
                flow.response.raw_content or b"",
                flow.response.headers.get("content-encoding"), limit)
        except CannotScreen as e:
            return _failed(e.failure("response "))
        except ValueError:
            return _failed(Failure(FailureKind.ANSWER_UNREADABLE,
                                   "response body cannot be decoded"))
        if state.generic:  # no known protocol: every string in it is its text
            text = await maybe_off_loop(len(content), answer_text.generic_text, content)
            return _Read(text, None, None, text)
        if routing.is_streamed_answer(flow.response.headers.get("content-type")):
            result = await maybe_off_loop(len(content), assembly.assemble, state.protocol,
                                          content, state.candidates)
            if not result.complete:
                return _failed(result.failure)
            return _Read(result.text, None, None, result.answer)
        try:
            body = await maybe_off_loop(len(content), _read_json, content)
        except RecursionError:
            return _failed(TooDeep("nests too deeply to be screened").failure("response body "))
        if body is None:
            return _failed(Failure(FailureKind.ANSWER_UNREADABLE, "response body is not JSON"))
        text = answer_text.with_hidden(answer_text.response_text(state.protocol, body.value),
                                       body.hidden_strings)
        return _Read(text, None, body.value, text)


async def screen_answer(
    lakera: LakeraClient, settings: Settings, parts: list[list[Message]],
    mask: Callable[[Verdict], Counter[str]],
) -> tuple[Decision, Verdict, Counter[str] | None]:
    """Screen a whole answer's text (in `parts` past max_screen_bytes) and decide: (the
    decision, the verdict, what `mask` replaced where the decision masks). An answer
    screened in parts, or one `mask` cannot mask safely (MaskError), is a failure instead
    (`fail_open`). The held answer's step and lakera.rescreen's (rescreen.py)."""
    verdict = await lakera.screen_parts(settings, parts)
    decision = decide(verdict, settings)
    masked: Counter[str] | None = None
    if decision.mask:
        try:
            if len(parts) > 1:
                raise MaskError("an answer screened in parts cannot be masked")
            masked = mask(verdict)
        except MaskError as e:
            decision = decide_failure(e.failure("cannot mask: "), settings)
    return decision, verdict, masked


def _read_json(content: bytes) -> lenient_json.LenientBody | None:
    """A JSON answer read as leniently as any client reads it (lenient_json): keys found in
    any case, as Go finds them, and the values duplicate or case-variant keys hide (a Go client
    takes the last, a first-wins reader the first), for their strings to be screened with the
    answer's text. None, as before, for a body Python's own parser refuses (invalid UTF-8, data
    after the JSON value): such an answer is denied, not read past. RecursionError propagates
    (too deep: a failure)."""
    try:
        json.loads(content)
    except ValueError:  # (UnicodeDecodeError too)
        return None
    return lenient_json.loads(content)


class _Read(NamedTuple):
    text: str
    failure: Failure | None
    document: Any
    visible: str


def _failed(failure: Failure | None) -> _Read:
    return _Read("", failure, None, "")


class Replacement:
    """The stream function of an answer replaced before its body was read: the replacement's
    body goes out in place of the first chunk, and nothing of the upstream's after it."""

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        body, self._body = self._body, None
        if body:
            return body
        return [] if data else b""  # (never b"" mid-stream: it would end an HTTP/1.1 body)
