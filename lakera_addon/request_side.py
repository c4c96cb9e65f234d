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

from lakera_addon import content_decoding
from lakera_addon import extract
from lakera_addon import masking
from lakera_addon import reporting
from lakera_addon import routing
from lakera_addon import screen_budget
from lakera_addon.bodies import parse_json
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
            state, messages, body = await self._read(flow, route)
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
        reporting.start(flow, route, state.protocol)
        self.flows[flow] = state
        if settings.scans_output:
            flow.request.anticomp()  # ask the upstream for an identity-encoded answer
        if settings.scans_input:
            await self._screen(flow, state, messages, body)

    async def _read(
        self, flow: http.HTTPFlow, route: Route
    ) -> tuple[FlowState, list[extract.Message], dict[str, Any]]:
        """The flow's protocol, model and stream flag, and the messages to screen."""
        try:
            content = content_decoding.decode_bounded(
                flow.request.raw_content or b"", flow.request.headers.get("content-encoding"),
                route.settings.max_body_bytes)
        except ValueError as e:
            raise UnreadableBody(f"request body cannot be decoded: {e}") from e
        body = await parse_json(content)
        if body is None:
            raise UnreadableBody("request body is not JSON")
        if not isinstance(body, dict):
            raise UnreadableBody("request body is not a JSON object")
        path = flow.request.path
        protocol = routing.detect_protocol(route.protocol, path, body)
        if protocol is None:
            raise UnreadableBody("request body matches no known LLM protocol")
        state = FlowState(
            route,
            protocol,
            extract.request_model(body, path),
            extract.request_streams(protocol, body, path),
            extract.request_candidates(protocol, body),
            routing.gemini_json_array(path),
        )
        try:
            messages = extract.request_messages(protocol, body)
        except extract.BodyShapeError as e:
            raise UnreadableBody(str(e)) from e
        return state, messages, body

    async def _screen(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        messages: list[extract.Message],
        body: dict[str, Any],
    ) -> None:
        route, settings = state.route, state.settings
        if not messages:
            self.verdicts.unscanned(flow, route, "request", "no text")
            return
        if settings.input_scope == "latest" and not settings.masks:
            # (with mask rules the whole conversation is screened: a client resends its own,
            # unmasked history every turn)
            messages = extract.request_messages(
                state.protocol, extract.latest_turn(state.protocol, body))
            if not messages:
                self.verdicts.unscanned(flow, route, "request", "no new text since the last turn")
                return
        limit = settings.max_screen_bytes
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
        if settings.shadow:  # nothing can block: forward now, log the verdict later
            reporting.pending(flow, "request")
            self.verdicts.spawn(self.verdicts.background_scan(flow, route, "request", [sent]),
                                "lakera shadow request scan")
            return
        verdict = await self.verdicts.lakera.screen(settings, sent)
        decision = decide(verdict, settings)
        masked: Counter[str] | None = None
        if decision.mask:
            try:
                masked = await self._mask(flow, state, messages, sent, body, verdict)
            except MaskError as e:
                decision = decide_failure(e.failure("cannot mask: "), settings)
        self.verdicts.record(flow, route, "request", decision, verdict, masked)
        if decision.deny:
            self.verdicts.deny(flow, state, "request", verdict)

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
        self.verdicts.record(flow, route, "request", decision)
        if decision.deny:
            self.verdicts.deny(flow, state, "request", None)

