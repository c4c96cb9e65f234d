"""A flow screened again with a configuration, without touching it: what the addon would do to
it now. `lakera.rescreen` (guard_addon.py) marks and comments the flows picked in mitmweb with
it; `lakera-replay` (replay.py) screens a recorded flows file with a new configuration before
it goes live.

The steps are the hooks' own, from the same functions: the request read and planned by
`request_plan.read_request` and `plan_screen`, asked by `request_plan.ask_lakera`; the answer
read by `HeldAnswer.read`; both decided by `decision.decide`. What changes or records a flow
is left out: nothing is denied, masked, logged, counted or audited, and the flow's request,
response and own verdict (`flow.metadata["lakera"]`) stay as they are. Streamed answers are
screened whole, as a held stream is (a windowed or live stream is cut at the window that
flags; its verdict is the same).

What a recording cannot show is said, not guessed: an answer whose body was streamed past
mitmproxy unrecorded (`store_streamed_bodies` off), an answer the recording's own policy
replaced (its deny, a masked answer), a request masked when it was recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from lakera_addon import masking
from lakera_addon import reporting
from lakera_addon import screen_budget
from lakera_addon.bodies import maybe_off_loop
from lakera_addon.bodies import read_json_body
from lakera_addon.configuration import Route
from lakera_addon.configuration import Settings
from lakera_addon.decision import Decision
from lakera_addon.decision import Side
from lakera_addon.decision import decide
from lakera_addon.decision import decide_failure
from lakera_addon.extract import Message
from lakera_addon.failures import CannotScreen
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.failures import MaskError
from lakera_addon.failures import UnreadableBody
from lakera_addon.flow_state import FlowState
from lakera_addon.held_answer import HeldAnswer
from lakera_addon.held_answer import screen_answer
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.request_plan import ask_lakera
from lakera_addon.request_plan import guessed_state
from lakera_addon.request_plan import plan_screen
from lakera_addon.request_plan import read_request
from lakera_addon.verdict import Verdict
from lakera_addon.verdicts import Verdicts

logger = logging.getLogger("lakera_addon")

ACTIONS = ("block", "alert", "mask", "pass", "fail", "unscanned")
RESCREEN_KEY = "rescreen"  # flow.metadata["lakera"]["rescreen"]: the would-be result
COMMENT_PREFIX = "lakera rescreen: "
MARK_PASS = ":white_check_mark:"
MARK_UNSCANNED = ":heavy_minus_sign:"


@dataclass(frozen=True, slots=True)
class SideResult:
    """What the configuration would do to one side of a flow."""

    side: Side
    verdict: str  # clean, flagged, failure, unscanned, or unreadable (fail_mode decides)
    action: str  # one of ACTIONS
    denied: bool = False  # the addon's deny would go out (a block, a fail-closed failure)
    detector_types: tuple[str, ...] = ()
    reason: str | None = None  # of a failure or an unscanned side, without content
    masked: dict[str, int] | None = None  # placeholder → count, never the text

    def as_json(self) -> dict[str, Any]:
        return {"side": self.side, "verdict": self.verdict, "action": self.action,
                "denied": self.denied, "detector_types": list(self.detector_types),
                "reason": self.reason, "masked": self.masked}


@dataclass(frozen=True, slots=True)
class FlowResult:
    route: str | None  # None: on no route, not touched
    protocol: str | None
    sides: tuple[SideResult, ...] = ()
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"route": self.route, "protocol": self.protocol,
                "sides": [s.as_json() for s in self.sides], "note": self.note}


def outcome(side: Side, decision: Decision, verdict: Verdict | None = None,
            masked: Counter[str] | None = None) -> SideResult:
    """A decision as the action the addon would take."""
    if decision.outcome == "failure":
        action = "fail"
    elif decision.outcome == "flagged":
        action = "block" if decision.deny else "mask" if decision.mask else "alert"
    else:
        action = "pass" if decision.outcome == "clean" else "unscanned"
    return SideResult(side, decision.outcome, action, decision.deny,
                      verdict.detector_types if verdict is not None else (), decision.reason,
                      dict(masked) if masked is not None else None)


def unscanned(side: Side, reason: str) -> SideResult:
    return outcome(side, Decision("unscanned", False, reason))


async def rescreen(flow: http.HTTPFlow, route: Route | None, lakera: LakeraClient) -> FlowResult:
    """What `route`'s settings would do to the flow (None: a flow on no route)."""
    if route is None:
        request = flow.request
        why = ("on no route" if request.method == "POST" or request.raw_content
               else f"not screened: {request.method} without a body")
        return FlowResult(None, None, note=why)
    settings = route.settings
    state, request_result, note = await _request(flow, route, lakera)
    sides = [request_result] if request_result is not None else []
    if settings.scans_output:
        sides.append(await _response(flow, state, lakera, request_result))
    protocol = None if state is None else "generic" if state.generic else state.protocol
    return FlowResult(route.name, protocol, tuple(sides), note)


def recorded(flow: http.HTTPFlow, side: Side) -> dict[str, Any]:
    """The flow's own verdict on a side (as the addon recorded it), or {}."""
    entry = flow.metadata.get(reporting.METADATA_KEY)
    record = entry.get(side) if isinstance(entry, dict) else None
    return record if isinstance(record, dict) else {}


async def _request(
    flow: http.HTTPFlow, route: Route, lakera: LakeraClient
) -> tuple[FlowState | None, SideResult | None, str | None]:
    """(the flow's state for the answer side, the request's result where the route screens
    prompts, a note) as `RequestSide` would have them."""
    settings = route.settings
    raw = flow.request.raw_content
    note = ("the request was masked when it went through: its masked text is screened"
            if recorded(flow, "request").get("action") == "masked" else None)
    if raw is None:
        return (guessed_state(route, flow.request.path, b""),
                unscanned("request", "request body not recorded") if settings.scans_input
                else None, note)
    try:
        read = await maybe_off_loop(len(raw), read_json_body, raw,
                                    flow.request.headers.get("content-encoding"),
                                    settings.max_body_bytes)
        prompt = await maybe_off_loop(len(raw), read_request, read, flow.request.path, route)
    except CannotScreen as e:
        result = outcome("request", decide_failure(e.failure("request body "), settings))
        return (guessed_state(route, flow.request.path, raw),
                result if settings.scans_input else None, note)
    except UnreadableBody as e:  # fail_mode decides; the addon keeps no state for the answer
        deny = settings.fail_mode == "error"
        return None, SideResult("request", "unreadable", "block" if deny else "unscanned",
                                deny, reason=f"{e} (fail_mode={settings.fail_mode})"), note
    state = prompt.state
    if not settings.scans_input:
        return state, None, note
    plan = plan_screen(state, prompt.messages, prompt.extra, prompt.body)
    if plan.unscanned is not None:
        return state, unscanned("request", plan.unscanned), note
    if plan.failure is not None:
        return state, outcome("request", decide_failure(plan.failure, settings)), note
    if not plan.sent:  # text of no conversation: one call per part, never masked
        verdict = await lakera.screen_parts(settings, [[part] for part in plan.parts])
        decision = decide(verdict, settings)
        if decision.mask:
            decision = decide_failure(Failure(
                FailureKind.MASK, "cannot mask: a body of no known protocol"), settings)
        return state, outcome("request", decision, verdict), note
    verdict, on_sent = await ask_lakera(lakera, settings, plan.sent, plan.others, plan.tools)
    decision = decide(verdict, settings)
    masked: Counter[str] | None = None
    if decision.mask:
        try:
            masked = _masks(settings, plan.sent, on_sent, prompt.body)
        except MaskError as e:
            decision = decide_failure(e.failure("cannot mask: "), settings)
    return state, outcome("request", decision, verdict, masked), note


async def _response(
    flow: http.HTTPFlow, state: FlowState | None, lakera: LakeraClient,
    request: SideResult | None,
) -> SideResult:
    """The answer's result as `HeldAnswer` would have it, or why it would not be screened."""
    if state is None:
        return unscanned("response", "the request body is unreadable: answer not screened")
    if request is not None and request.denied:
        return unscanned("response", "not reached: the request would be denied")
    if recorded(flow, "request").get("action") == "blocked":
        return unscanned("response", "the recorded answer is the deny of the policy in force")
    if recorded(flow, "response").get("action") in ("blocked", "masked"):
        return unscanned("response", "the recorded answer was replaced by the policy in force")
    response = flow.response
    if response is None:
        return unscanned("response", "no answer recorded")
    status = response.status_code
    if not 200 <= status < 300 or status == 204:
        return unscanned("response", f"upstream status {status}")
    if response.raw_content is None:
        return unscanned("response", "answer body not recorded (streamed past mitmproxy; "
                                     "record with store_streamed_bodies=true)")
    if response.stream:  # streamed and stored: read as held (a copy: the flow is not touched)
        copy = flow.copy()  # type: ignore[no-untyped-call]
        assert copy.response is not None
        copy.response.stream = False
        flow = copy
    settings = state.settings
    text, failure, document, visible = await HeldAnswer.read(flow, state)
    if failure is not None:
        return outcome("response", decide_failure(failure, settings))
    if not text:
        return unscanned("response", "no assistant text")
    parts: list[list[Message]] = [
        [{"role": "assistant", "content": part}]
        for part in screen_budget.split_text(text, settings.max_screen_bytes)]
    decision, verdict, masked = await screen_answer(
        lakera, settings, parts,
        lambda v: _answer_masks(settings, text, document, visible, v))
    return outcome("response", decision, verdict, masked)


def _masks(settings: Settings, sent: list[Message], verdict: Verdict,
           body: dict[str, Any]) -> Counter[str]:
    """What masking the request would replace; MaskError if it could not be done safely.
    (The addon also screens older turns left out of the call to mask them too: not here.)"""
    masker = masking.Masker(masking.confirmed(settings, sent, verdict))
    masker.document(body)
    masker.check_all_replaced()
    return masker.counts


def _answer_masks(settings: Settings, text: str, document: Any, visible: str,
                  verdict: Verdict) -> Counter[str]:
    """What masking the answer would replace (as HeldAnswer masks it); MaskError if unsafe."""
    masker = masking.Masker(masking.confirmed(
        settings, [{"role": "assistant", "content": text}], verdict))
    if document is not None:
        masker.document(document)
        masker.check_all_replaced()
    else:
        masker.text(visible)
    return masker.counts


async def rescreen_all(
    flows: Sequence[tuple[http.HTTPFlow, Route | None]],
    lakera: LakeraClient,
    concurrency: int,
    done: Callable[[int, FlowResult], None] | None = None,
) -> list[FlowResult]:
    """Every flow's result, at most `concurrency` flows at a time, in order; `done(index,
    result)` as each is known. A flow that cannot be screened (a bug) gets a note, never
    stops the others."""
    slots = asyncio.Semaphore(concurrency)

    async def one(index: int, flow: http.HTTPFlow, route: Route | None) -> FlowResult:
        async with slots:
            try:
                result = await rescreen(flow, route, lakera)
            except Exception as e:
                logger.error("lakera_addon internal error re-screening [%s]: %s",
                             reporting.flow_label(flow), type(e).__name__, exc_info=e)
                result = FlowResult(route.name if route else None, None,
                                    note=f"internal error ({type(e).__name__})")
        if done is not None:
            try:
                done(index, result)
            except Exception as e:  # (a flow that cannot be annotated: the others still are)
                logger.error("lakera_addon internal error showing a rescreen [%s]: %s",
                             reporting.flow_label(flow), type(e).__name__, exc_info=e)
        return result

    return list(await asyncio.gather(*(one(i, f, r) for i, (f, r) in enumerate(flows))))


# --- what mitmweb shows: lakera.rescreen ---------------------------------------------------


def describe(result: FlowResult) -> str:
    """One line: what the configuration would do to the flow."""
    if result.route is None or not result.sides:
        return result.note or "not screened"
    parts = []
    for s in result.sides:
        types = f" ({', '.join(s.detector_types)})" if s.detector_types else ""
        if s.action in ("block", "alert", "mask", "pass"):
            parts.append(f"would {s.action} {s.side}{types}")
        elif s.action == "fail":
            parts.append(f"would fail on {s.side} ({s.reason}): "
                         f"{'denied' if s.denied else 'allowed'}")
        else:
            verdict = f"{s.verdict}: " if s.verdict == "unreadable" else ""
            parts.append(f"would not screen {s.side} ({verdict}{s.reason})")
    return "; ".join(parts)


_RANK = {reporting.MARK_BLOCKED: 5, reporting.MARK_FLAGGED: 4, reporting.MARK_MASKED: 3,
         reporting.MARK_FAILURE: 2, MARK_PASS: 1, MARK_UNSCANNED: 0}


def mark(result: FlowResult) -> str:
    """The mark the flow would get: the addon's own marks, ✅ clean, ➖ not screened."""
    marks = [MARK_UNSCANNED]
    for s in result.sides:
        if s.denied:
            marks.append(reporting.MARK_BLOCKED)
        else:
            marks.append({"alert": reporting.MARK_FLAGGED, "mask": reporting.MARK_MASKED,
                          "fail": reporting.MARK_FAILURE, "pass": MARK_PASS}.get(
                              s.action, MARK_UNSCANNED))
    return max(marks, key=_RANK.__getitem__)


def annotate(flow: http.HTTPFlow, result: FlowResult) -> None:
    """Mark and comment the flow with the would-be result, and keep it in
    `flow.metadata["lakera"]["rescreen"]`; the flow's own verdict there stays as it was, and
    a previous rescreen line of the comment is replaced."""
    reporting.metadata(flow)[RESCREEN_KEY] = result.as_json()
    kept = [line for line in (flow.comment or "").splitlines()
            if not line.startswith(COMMENT_PREFIX)]
    flow.comment = "\n".join([*kept, COMMENT_PREFIX + describe(result)])
    flow.marked = mark(result)
    Verdicts.notify(flow)
