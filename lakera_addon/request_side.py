"""The request side of a flow (SPEC sections 3 and 5): read the prompt, screen it, and mask it,
deny it or let it go on to the LLM."""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections import Counter
from typing import Any

from mitmproxy import http

from lakera_addon import extract
from lakera_addon import lenient_json
from lakera_addon import masking
from lakera_addon import reporting
from lakera_addon import routing
from lakera_addon import screen_budget
from lakera_addon.bodies import maybe_off_loop
from lakera_addon.bodies import read_json_body
from lakera_addon.configuration import Route
from lakera_addon.decision import Decision
from lakera_addon.decision import decide
from lakera_addon.decision import decide_failure
from lakera_addon.failures import CannotScreen
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.failures import MaskError
from lakera_addon.failures import TooLarge
from lakera_addon.failures import UnreadableBody
from lakera_addon.flow_state import FlowState
from lakera_addon.verdict import Verdict
from lakera_addon.verdict import merge
from lakera_addon.verdicts import Verdicts

logger = logging.getLogger("lakera_addon")

Flows = weakref.WeakKeyDictionary[http.HTTPFlow, FlowState]


class RequestSide:
    """Screens the prompt of a routed flow. What it learns about the flow goes into `flows`,
    for the answer side."""

    def __init__(self, verdicts: Verdicts, flows: Flows) -> None:
        self.verdicts = verdicts
        self.flows = flows

    async def guard(self, flow: http.HTTPFlow, route: Route) -> None:
        try:
            await self._guard(flow, route)
        except Exception as e:  # a bug must not let the request skip the decision
            self.verdicts.internal_error(flow, route, "request", e, self.flows.get(flow))

    async def _guard(self, flow: http.HTTPFlow, route: Route) -> None:
        settings = route.settings
        raw = flow.request.raw_content
        try:
            if flow.request.stream or raw is None:
                raise TooLarge("request body was streamed by mitmproxy, not held")
            state, messages, extra, body = await self._read(flow, route)
        except CannotScreen as e:
            failure = e.failure("" if raw is None else "request body ")
            guessed_protocol = routing.guess_protocol(flow.request.path)
            guessed = FlowState(
                route, guessed_protocol, None,
                extract.sniff_streams(guessed_protocol, flow.request.path, raw or b""),
                extract.sniff_candidates(guessed_protocol, raw or b""),
                routing.gemini_json_array(flow.request.path))
            if settings.scans_input:
                self._fail(flow, route, failure, guessed)
            if not guessed.denied and settings.scans_output:
                self.flows[flow] = guessed  # the answer can still be screened
            return
        except UnreadableBody as e:
            self._unreadable(flow, route, str(e))
            return
        reporting.start(flow, route, "generic" if state.generic else state.protocol)
        self.flows[flow] = state
        if settings.scans_output:
            flow.request.anticomp()  # ask the upstream for an identity-encoded answer
        if settings.scans_input:
            await self._screen(flow, state, messages, extra, body)

    async def _read(
        self, flow: http.HTTPFlow, route: Route
    ) -> tuple[FlowState, list[extract.Message], list[extract.Message], dict[str, Any]]:
        """The flow's protocol, model and stream flag, and the messages to screen: the text of
        the body as its protocol reads it (for a JSON object of no known protocol or of the
        wrong shape, every string in it: an LLM upstream may still take it), and, apart,
        whatever a lenient upstream reads that the protocol's shape does not show
        (lenient_json: duplicate keys, values after the first, other readings)."""
        raw = flow.request.raw_content or b""
        read = await maybe_off_loop(len(raw), read_json_body, raw,
                                    flow.request.headers.get("content-encoding"),
                                    route.settings.max_body_bytes)
        body: dict[str, Any] = read.value
        path = flow.request.path
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
        try:
            messages = [] if state.generic else extract.request_messages(protocol, body)
        except extract.BodyShapeError as e:
            state.generic = True
            notes.append(str(e))
            messages = []
        if state.generic:
            notes.insert(0, "no known protocol" if detected is None else f"not {protocol}")
            messages = generic_messages(body)
        extra: list[extract.Message] = []
        if read.hidden_strings:
            extra.append({"role": "user", "content": "\n".join(read.hidden_strings)})
        if notes:
            reporting.coverage(flow, route, "request", "read leniently: " + "; ".join(notes))
        return state, messages, extra, body

    async def _screen(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        messages: list[extract.Message],
        extra: list[extract.Message],
        body: dict[str, Any],
    ) -> None:
        route, settings = state.route, state.settings
        if not messages and not extra:
            self.verdicts.unscanned(flow, route, "request", "no text")
            return
        limit = settings.max_screen_bytes
        if state.generic or extra:  # screened whole, in overlapping parts if large
            if state.generic:
                messages, extra = [], messages + extra
            extra = [{"role": "user", "content": part} for m in extra
                     for part in screen_budget.split_text(m["content"], limit)]
        if settings.input_scope == "latest" and not settings.masks and not state.generic:
            # (with mask rules the whole conversation is screened: a client resends its own,
            # unmasked history every turn)
            messages = extract.request_messages(
                state.protocol, extract.latest_turn(state.protocol, body))
            if not messages and not extra:
                self.verdicts.unscanned(flow, route, "request", "no new text since the last turn")
                return
        if not messages:  # only text a lenient reading found: each part in a call of its own
            await self._screen_parts(flow, state, extra)
            return
        fitted = screen_budget.fit_request(messages, limit)
        if fitted is None:
            self._fail(flow, route, Failure(
                FailureKind.TOO_LARGE, f"the system prompt and the newest message alone "
                f"exceed max_screen_bytes ({limit})"), state)
            return
        if fitted.dropped:
            reporting.coverage(flow, route, "request",
                               f"{fitted.dropped} older of {len(messages)} messages left out to "
                               f"fit max_screen_bytes ({limit}); sent the system prompt and the "
                               f"{len(fitted.messages)} most recent")
        sent = fitted.messages
        parts = [sent, *([m] for m in extra)]
        tools = self._tool_parts(state, body)
        if settings.shadow:  # nothing can block: forward now, log the verdict later
            reporting.pending(flow, "request")
            self.verdicts.spawn(self.verdicts.background_scan(
                flow, route, "request", parts + (tools[1] if tools else [])),
                "lakera shadow request scan")
            return
        verdict = await self._ask(state, parts, tools)
        decision = decide(verdict, settings)
        masked: Counter[str] | None = None
        if decision.mask:
            try:
                masked = await self._mask(flow, state, messages, sent, body, verdict)
            except MaskError as e:
                decision = decide_failure(e.failure("cannot mask: "), settings)
        if decision.deny:  # first: what is recorded must have happened
            self.verdicts.deny(flow, state, "request", verdict)
        self.verdicts.record(flow, route, "request", decision, verdict, masked)

    @staticmethod
    def _tool_parts(
        state: FlowState, body: dict[str, Any]
    ) -> tuple[bytes, list[list[extract.Message]]] | None:
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

    async def _ask(
        self,
        state: FlowState,
        parts: list[list[extract.Message]],
        tools: tuple[bytes, list[list[extract.Message]]] | None,
    ) -> Verdict:
        """The verdict on the prompt, and on the tool definitions (once per distinct set,
        asked at the same time): a flag or a failure of either is the request's."""
        lakera, settings = self.verdicts.lakera, state.settings
        if tools is None:
            return await lakera.screen_parts(settings, parts)
        prompt, tool_set = await asyncio.gather(lakera.screen_parts(settings, parts),
                                                lakera.screen_tool_set(settings, *tools))
        if tool_set.failure is None and not tool_set.flagged:
            return prompt  # (keeps the prompt's spans, for masking)
        return merge([prompt, tool_set])

    async def _screen_parts(
        self, flow: http.HTTPFlow, state: FlowState, parts: list[extract.Message]
    ) -> None:
        """Screen text that is not a conversation (a body of no known protocol, what only a
        lenient reading finds), one overlapping part per call; masking does not apply."""
        route, settings = state.route, state.settings
        calls = [[part] for part in parts]
        if settings.shadow:
            reporting.pending(flow, "request")
            self.verdicts.spawn(self.verdicts.background_scan(flow, route, "request", calls),
                                "lakera shadow request scan")
            return
        verdict = await self.verdicts.lakera.screen_parts(settings, calls)
        decision = decide(verdict, settings)
        if decision.mask:
            decision = decide_failure(Failure(
                FailureKind.MASK, "cannot mask: a body of no known protocol"), settings)
        if decision.deny:  # first: what is recorded must have happened
            self.verdicts.deny(flow, state, "request", verdict)
        self.verdicts.record(flow, route, "request", decision, verdict)

    async def _mask(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        messages: list[extract.Message],
        sent: list[extract.Message],
        body: dict[str, Any],
        verdict: Verdict,
    ) -> Counter[str]:
        """Mask the confirmed texts everywhere in the request body; MaskError if that cannot
        be done safely. Older turns left out of the call (`max_screen_bytes`) are screened
        too, in calls of their own, so that what they hold is masked as well."""
        settings = state.settings
        texts = masking.confirmed(settings, sent, verdict)
        sent_ids = {id(m) for m in sent}
        older = [m for m in messages if id(m) not in sent_ids]
        if older:
            batches = screen_budget.batches(older, settings.max_screen_bytes)
            if batches is None:
                raise MaskError("an older message is too large to screen for masking")
            verdicts = await asyncio.gather(
                *(self.verdicts.lakera.screen(settings, batch) for batch in batches))
            for batch, extra in zip(batches, verdicts, strict=True):
                if extra.failure is not None:
                    raise MaskError(f"screening older messages failed: {extra.failure}")
                texts.update(masking.confirmed(settings, batch, extra))
        masker = masking.Masker(texts)
        masked = masker.document(body)
        masker.check_all_replaced()
        try:
            flow.request.content = json.dumps(masked, ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate: keep it escaped
            flow.request.content = json.dumps(masked).encode()
        return masker.counts

    def _unreadable(self, flow: http.HTTPFlow, route: Route, reason: str) -> None:
        """A matched flow whose body cannot be read as its protocol: `fail_mode` decides."""
        mode = route.settings.fail_mode
        where = f"[{reporting.flow_label(flow)} route={route.name}]"
        level = logging.INFO if mode == "skip" else logging.WARNING
        logger.log(level, "lakera_addon skipped %s: %s (fail_mode=%s)", where, reason, mode)
        entry = reporting.metadata(flow)
        entry["request"] = {"verdict": "unscanned", "action": "allowed", "failure": reason}
        self.verdicts.stats.observe("request", Decision("unscanned", False, reason), None)
        if mode == "error":
            entry["request"]["action"] = "blocked"
            flow.response = http.Response.make(
                500,
                json.dumps({"error": {"message": f"lakera_addon: {reason}",
                                      "type": "lakera_addon_error"}}),
                {"content-type": "application/json", "x-should-retry": "false"},
            )
            flow.marked = reporting.MARK_BLOCKED
            flow.comment = f"lakera: request blocked: unreadable ({reason})"
        self.verdicts.audit.write(flow, route.name, "request", entry["request"])

    def _fail(self, flow: http.HTTPFlow, route: Route, failure: Failure,
              state: FlowState) -> None:
        """A request-side failure found before Lakera was asked: `fail_open` decides."""
        decision = decide_failure(failure, route.settings)
        if decision.deny:  # first: what is recorded must have happened
            self.verdicts.deny(flow, state, "request", None)
        self.verdicts.record(flow, route, "request", decision)



def generic_messages(body: dict[str, Any]) -> list[extract.Message]:
    """Every string value of a body of no known protocol, as one user message (what an
    upstream might read of it); screened whole, in parts if large (screen_budget)."""
    texts = [text for text in lenient_json.string_values(body) if text.strip()]
    return [{"role": "user", "content": "\n".join(texts)}] if texts else []
