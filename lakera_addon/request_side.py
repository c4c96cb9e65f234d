"""The request side of a flow (SPEC sections 3 and 5): read the prompt, screen it, and mask it,
deny it or let it go on to the LLM."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections import Counter
from typing import Any

from mitmproxy import http

from lakera_addon import extract
from lakera_addon import masking
from lakera_addon import reporting
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
from lakera_addon.relay import Relay
from lakera_addon.request_plan import ask_lakera
from lakera_addon.request_plan import guessed_state
from lakera_addon.request_plan import plan_screen
from lakera_addon.request_plan import read_request
from lakera_addon.verdict import Verdict
from lakera_addon.verdicts import Verdicts

logger = logging.getLogger("lakera_addon")

Flows = weakref.WeakKeyDictionary[http.HTTPFlow, FlowState]


class RequestSide:
    """Screens the prompt of a routed flow. What it learns about the flow goes into `flows`,
    for the answer side."""

    def __init__(self, verdicts: Verdicts, flows: Flows, relay: Relay) -> None:
        self.verdicts = verdicts
        self.flows = flows
        self.relay = relay

    async def guard(self, flow: http.HTTPFlow, route: Route) -> None:
        started = time.perf_counter()
        try:
            await self._guard(flow, route)
        except Exception as e:  # a bug must not let the request skip the decision
            self.verdicts.internal_error(flow, route, "request", e, self.flows.get(flow))
        self.verdicts.held("request", started)

    async def _guard(self, flow: http.HTTPFlow, route: Route) -> None:
        settings = route.settings
        raw = flow.request.raw_content
        try:
            if flow.request.stream or raw is None:
                raise TooLarge("request body was streamed by mitmproxy, not held")
            state, messages, extra, body = await self._read(flow, route)
        except CannotScreen as e:
            failure = e.failure("" if raw is None else "request body ")
            guessed = guessed_state(route, flow.request.path, raw or b"")
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
        if settings.parallel:  # upstream at once; the relay holds the answer for the verdict
            await self.relay.start()
            verdict = asyncio.ensure_future(self._parallel(flow, state, messages, extra, body))
            self.relay.send(flow, state, verdict)
            return
        if settings.scans_input:
            await self._screen(flow, state, messages, extra, body)
        if (not state.denied and settings.windowed and settings.scans_output and state.streams
                and not state.generic):
            await self.relay.start()  # the answer is released window by window
            self.relay.send(flow, state)

    async def _parallel(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        messages: list[extract.Message],
        extra: list[extract.Message],
        body: dict[str, Any],
    ) -> Decision:
        """`_screen` for a request already on its way: what goes wrong is decided like a
        failure, and the relay acts on the decision."""
        try:
            return await self._screen(flow, state, messages, extra, body, parallel=True)
        except Exception as e:  # a bug must not let the answer out unscreened
            logger.error("lakera_addon internal error on request [%s route=%s]: %s",
                         reporting.flow_label(flow), state.route.name, type(e).__name__,
                         exc_info=e)
            failure = Failure(FailureKind.INTERNAL, f"internal error ({type(e).__name__})")
            return self._conclude(flow, state, decide_failure(failure, state.settings),
                                  parallel=True)

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
        prompt = read_request(read, flow.request.path, route)
        if prompt.notes:
            reporting.coverage(flow, route, "request",
                               "read leniently: " + "; ".join(prompt.notes))
        return prompt.state, prompt.messages, prompt.extra, prompt.body

    async def _screen(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        messages: list[extract.Message],
        extra: list[extract.Message],
        body: dict[str, Any],
        parallel: bool = False,
    ) -> Decision:
        """Screen the prompt and decide; the decision (recorded; a deny sent unless `parallel`,
        where the relay sends it)."""
        route, settings = state.route, state.settings
        plan = plan_screen(state, messages, extra, body)
        if plan.unscanned is not None:
            return self._unscanned(flow, state, plan.unscanned)
        if plan.failure is not None:
            return self._fail(flow, route, plan.failure, state, parallel)
        if not plan.sent:  # only text a lenient reading found: each part in a call of its own
            return await self._screen_parts(flow, state, plan.parts, parallel)
        if plan.coverage:
            reporting.coverage(flow, route, "request", plan.coverage)
        sent, others, tools = plan.sent, plan.others, plan.tools
        if settings.shadow:  # nothing can block: forward now, log the verdict later
            reporting.pending(flow, "request")
            self.verdicts.spawn(self.verdicts.background_scan(
                flow, route, "request", [sent, *others, *(tools[1] if tools else [])]),
                "lakera shadow request scan")
            return Decision("unscanned", False, "shadow: screened in the background")
        verdict, prompt = await ask_lakera(self.verdicts.lakera, settings, sent, others, tools)
        decision = decide(verdict, settings)
        masked: Counter[str] | None = None
        if decision.mask:
            try:
                masked = await self._mask(flow, state, plan.messages, sent, body, prompt)
            except MaskError as e:
                decision = decide_failure(e.failure("cannot mask: "), settings)
        return self._conclude(flow, state, decision, verdict, masked, parallel)

    def _conclude(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        decision: Decision,
        verdict: Verdict | None = None,
        masked: Counter[str] | None = None,
        parallel: bool = False,
    ) -> Decision:
        """Deny (first: what is recorded must have happened), then record. In parallel mode
        the request has gone on already: the relay sends the deny (`state.denied` tells the
        answer side that it is the addon's own)."""
        if decision.deny:
            if parallel:
                state.denied = True
            else:
                self.verdicts.deny(flow, state, "request", verdict)
        self.verdicts.record(flow, state.route, "request", decision, verdict, masked)
        return decision

    def _unscanned(self, flow: http.HTTPFlow, state: FlowState, reason: str) -> Decision:
        decision = Decision("unscanned", False, reason)
        self.verdicts.record(flow, state.route, "request", decision)
        return decision

    async def _screen_parts(
        self, flow: http.HTTPFlow, state: FlowState, parts: list[extract.Message],
        parallel: bool = False,
    ) -> Decision:
        """Screen text that is not a conversation (a body of no known protocol, what only a
        lenient reading finds), one overlapping part per call; masking does not apply."""
        route, settings = state.route, state.settings
        calls = [[part] for part in parts]
        if settings.shadow:
            reporting.pending(flow, "request")
            self.verdicts.spawn(self.verdicts.background_scan(flow, route, "request", calls),
                                "lakera shadow request scan")
            return Decision("unscanned", False, "shadow: screened in the background")
        verdict = await self.verdicts.lakera.screen_parts(settings, calls)
        decision = decide(verdict, settings)
        if decision.mask:
            decision = decide_failure(Failure(
                FailureKind.MASK, "cannot mask: a body of no known protocol"), settings)
        return self._conclude(flow, state, decision, verdict, None, parallel)

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
        self.verdicts.stats.observe("request", Decision("unscanned", mode == "error", reason),
                                    None, route.name)
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
              state: FlowState, parallel: bool = False) -> Decision:
        """A request-side failure found before Lakera was asked: `fail_open` decides."""
        return self._conclude(flow, state, decide_failure(failure, route.settings),
                              parallel=parallel)
