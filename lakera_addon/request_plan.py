"""The pure steps of the request side (request_side.py), also lakera.rescreen's and
lakera-replay's (rescreen.py): read a prompt as its protocol and a lenient upstream read it,
plan the Lakera calls that screen it within `max_screen_bytes` and `input_scope`, and ask them
all at once. No flow, no recording."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import NamedTuple

from lakera_addon import extract
from lakera_addon import routing
from lakera_addon import screen_budget
from lakera_addon.configuration import Route
from lakera_addon.configuration import Settings
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.flow_state import FlowState
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.lenient_json import LenientBody
from lakera_addon.verdict import Verdict
from lakera_addon.verdict import merge


class RequestText(NamedTuple):
    """A request body as the request side reads it (`read_request`)."""

    state: FlowState
    messages: list[extract.Message]  # the conversation (a body of no known protocol: its text)
    extra: list[extract.Message]  # what only a lenient reading shows, screened apart
    body: dict[str, Any]
    notes: list[str]  # how it was read leniently (the flow's coverage), without content


def read_request(read: LenientBody, path: str, route: Route) -> RequestText:
    """The flow's protocol, model and stream flag, and the messages to screen: the text of
    the body as its protocol reads it (for a JSON object of no known protocol or of the
    wrong shape, every string in it: an LLM upstream may still take it), and, apart,
    whatever a lenient upstream reads that the protocol's shape does not show
    (lenient_json: duplicate keys, values after the first, other readings)."""
    body: dict[str, Any] = read.value
    detected = routing.detect_protocol(route.protocol, path, body)
    protocol = detected or routing.guess_protocol(path)
    state = FlowState(
        route,
        protocol,
        extract.request_model(body, path),
        extract.request_streams(protocol, body, path),
        extract.request_candidates(protocol, body),
        routing.gemini_json_array(path),
        generic=detected is None,
    )
    notes = list(read.notes)
    extra: list[extract.Message] = []
    try:
        messages, extra = ([], []) if state.generic else extract.conversation(protocol, body)
    except extract.BodyShapeError as e:
        state.generic = True
        notes.append(str(e))
        messages = []
    if state.generic:
        notes.insert(0, "no known protocol" if detected is None else f"not {protocol}")
        messages = extract.every_string(body)
    if read.hidden_strings:
        extra.append({"role": "user", "content": "\n".join(read.hidden_strings)})
    return RequestText(state, messages, extra, body, notes)


def guessed_state(route: Route, path: str, raw: bytes) -> FlowState:
    """The state of a flow whose body cannot be parsed (too large, too deep, not held), from
    its path and a sniff of its bytes: enough to shape a deny and to screen the answer."""
    protocol = routing.guess_protocol(path)
    return FlowState(route, protocol, None, extract.sniff_streams(protocol, path, raw),
                     extract.sniff_candidates(protocol, raw), routing.gemini_json_array(path))


Calls = list[list[extract.Message]]


@dataclass(frozen=True, slots=True)
class ScreenPlan:
    """The Lakera calls that screen a prompt (`plan_screen`), one of: nothing to screen
    (`unscanned`: why); a failure before any call (`failure`); text that is not a
    conversation (`parts`: one call each, never masked); or the call `sent` (the system
    prompt and the newest turns that fit one call) with `others` (the older turns that did
    not fit, what only a lenient reading found) and `tools` (the tool definitions' set key
    and calls, where the route screens them)."""

    unscanned: str | None = None
    failure: Failure | None = None
    parts: list[extract.Message] = field(default_factory=list)
    messages: list[extract.Message] = field(default_factory=list)  # the conversation screened
    sent: list[extract.Message] = field(default_factory=list)
    others: Calls = field(default_factory=list)
    tools: tuple[bytes, Calls] | None = None
    coverage: str | None = None  # how the older turns were split off (the flow's coverage)


def plan_screen(
    state: FlowState,
    messages: list[extract.Message],
    extra: list[extract.Message],
    body: dict[str, Any],
) -> ScreenPlan:
    """What to ask Lakera about a prompt read by `read_request`, within the route's
    `max_screen_bytes` and `input_scope`."""
    settings = state.settings
    if not messages and not extra:
        return ScreenPlan(unscanned="no text")
    limit = settings.max_screen_bytes
    if state.generic or extra:  # screened whole, in overlapping parts if large
        if state.generic:
            messages, extra = [], messages + extra
        extra = [{"role": "user", "content": part} for m in extra
                 for part in screen_budget.split_text(m["content"], limit)]
    if settings.input_scope == "latest" and not settings.masks and not state.generic:
        # (with mask rules the whole conversation is screened: a client resends its own,
        # unmasked history every turn)
        latest = extract.latest_turn(state.protocol, body)
        messages = extract.conversation(state.protocol, latest)[0]
        if not messages and not extra:
            return ScreenPlan(unscanned="no new text since the last turn")
    if not messages:  # only text a lenient reading found
        return ScreenPlan(parts=extra)
    fitted = screen_budget.fit_request(messages, limit)
    if fitted is None:
        return ScreenPlan(failure=Failure(
            FailureKind.TOO_LARGE, f"the system prompt and the newest message alone "
            f"exceed max_screen_bytes ({limit})"))
    sent = fitted.messages
    older, coverage = _older(messages, sent, limit)
    return ScreenPlan(messages=messages, sent=sent, others=[*older, *([m] for m in extra)],
                      tools=_tool_parts(state, body), coverage=coverage)


def _older(
    messages: list[extract.Message], sent: list[extract.Message], limit: int
) -> tuple[Calls, str | None]:
    """The messages that did not fit one call with the system prompt and the newest ones
    (`max_screen_bytes`), as calls of their own: a client can write any history, so none
    of it goes to the model unscreened; and the coverage note that says so. (A message larger
    than one call is split into overlapping parts.)"""
    kept = {id(m) for m in sent}
    older = [m for m in messages if id(m) not in kept]
    if not older:
        return [], None
    pieces: list[extract.Message] = [
        {"role": m["role"], "content": part}
        for m in older for part in screen_budget.split_text(m["content"], limit)]
    calls = screen_budget.batches(pieces, limit) or [[piece] for piece in pieces]
    return calls, (f"{len(older)} older of {len(messages)} messages screened in "
                   f"{len(calls)} more call(s) to fit max_screen_bytes ({limit}); the "
                   f"system prompt and the {len(sent)} most recent in one")


def _tool_parts(state: FlowState, body: dict[str, Any]) -> tuple[bytes, Calls] | None:
    """(the key of the set, the calls that screen it) of the request's tool definitions,
    where the route screens them (`screen_tool_definitions`) and there are any."""
    settings = state.settings
    if not settings.screen_tool_definitions:
        return None
    key = extract.tool_definitions_key(state.protocol, body)
    if key is None:
        return None
    limit = settings.max_screen_bytes
    pieces: list[extract.Message] = [
        {"role": m["role"], "content": part}
        for m in extract.tool_definitions(state.protocol, body)
        for part in screen_budget.split_text(m["content"], limit)]
    return key, screen_budget.batches(pieces, limit) or [[piece] for piece in pieces]


async def ask_lakera(
    lakera: LakeraClient,
    settings: Settings,
    sent: list[extract.Message],
    others: Calls,
    tools: tuple[bytes, Calls] | None,
) -> tuple[Verdict, Verdict]:
    """(the request's verdict, the verdict on `sent` alone) from the calls on the prompt,
    on what did not fit it and on the tool definitions (once per distinct set), all asked
    at the same time: a flag or a failure of any is the request's. The verdict on `sent`
    keeps its spans, for masking."""
    calls = [lakera.screen(settings, sent), *(lakera.screen(settings, p) for p in others)]
    if tools is not None:
        calls.append(lakera.screen_tool_set(settings, *tools))
    verdicts = await asyncio.gather(*calls)
    prompt = verdicts[0]
    if all(v.failure is None and not v.flagged for v in verdicts[1:]):
        return prompt, prompt
    return merge(verdicts), prompt
