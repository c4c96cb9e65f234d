"""What the phases of a flow share: asking Lakera, recording a verdict once (log, metadata,
mark, stats, audit), denying, and deciding an internal error like a failure."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Coroutine
from typing import Any

from mitmproxy import ctx
from mitmproxy import hooks
from mitmproxy import http
from mitmproxy.utils import asyncio_utils

from lakera_addon import protocols
from lakera_addon import reporting
from lakera_addon import routing
from lakera_addon import screen_budget
from lakera_addon.audit_log import AuditLog
from lakera_addon.configuration import Route
from lakera_addon.decision import Decision
from lakera_addon.decision import Side
from lakera_addon.decision import decide
from lakera_addon.decision import decide_failure
from lakera_addon.decision import deny_text
from lakera_addon.deny import DenyResponse
from lakera_addon.deny import build_deny
from lakera_addon.deny import last_resort
from lakera_addon.extract import Message
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.flow_state import FlowState
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.stats import Stats
from lakera_addon.verdict import Verdict

logger = logging.getLogger("lakera_addon")


def close(flow: http.HTTPFlow) -> None:
    """Close a flow's connections (mitmproxy's kill): what is left when nothing can be sent."""
    if flow.killable:
        flow.kill()  # type: ignore[no-untyped-call]


class Verdicts:
    def __init__(self, lakera: LakeraClient, stats: Stats, audit: AuditLog) -> None:
        self.lakera = lakera
        self.stats = stats
        self.audit = audit
        # told how long a flow waited on the addon (metrics.py); None while metrics are off
        self.on_hold: Callable[[Side, float], None] | None = None

    # --- asking Lakera -----------------------------------------------------------------------

    def answer_parts(self, flow: http.HTTPFlow, route: Route, text: str) -> list[list[Message]]:
        """An answer as the message lists to screen: one, or overlapping parts if it is larger
        than one Lakera call may carry."""
        limit = route.settings.max_screen_bytes
        parts = screen_budget.split_text(text, limit)
        if len(parts) > 1:
            reporting.coverage(flow, route, "response",
                               f"answer screened in {len(parts)} overlapping parts of at most "
                               f"max_screen_bytes ({limit})")
        return [[{"role": "assistant", "content": part}] for part in parts]

    async def background_scan(
        self, flow: http.HTTPFlow, route: Route, side: Side, parts: list[list[Message]]
    ) -> None:
        """Screen and record, for a flow that has gone on already (nothing left to block)."""
        verdict = await self.lakera.screen_parts(route.settings, parts)
        self.record(flow, route, side, decide(verdict, route.settings), verdict)
        self.notify(flow)

    # --- recording ---------------------------------------------------------------------------

    def record(
        self,
        flow: http.HTTPFlow,
        route: Route,
        side: Side,
        decision: Decision,
        verdict: Verdict | None = None,
        masked: Counter[str] | None = None,
    ) -> None:
        """The one place a decision is recorded: metadata, comment, mark, log, stats, audit.
        Never raises (a full disk under the audit log must not undo a deny): what cannot be
        recorded is logged as such."""
        try:
            side_record = reporting.record(flow, route, side, decision, verdict, masked)
        except Exception:
            logger.exception("lakera_addon could not record a %s verdict", side)
            side_record = {"verdict": decision.outcome,
                           "action": "blocked" if decision.deny else "allowed"}
        try:
            self.stats.observe(side, decision, verdict, route.name, masked is not None)
            self.audit.write(flow, route.name, side, side_record)
        except Exception:
            logger.exception("lakera_addon could not count or audit a %s verdict", side)

    def held(self, side: Side, started: float) -> None:
        """A flow waited on the addon from `started` (time.perf_counter()) until now."""
        if self.on_hold is not None:
            self.on_hold(side, time.perf_counter() - started)

    def count_failure(self, failure: Failure) -> None:
        """A failure that decided nothing on its own (a window scan the route lets through):
        counted, so that the stats show every failure."""
        self.stats.failures[failure.kind] += 1

    def unscanned(self, flow: http.HTTPFlow, route: Route, side: Side, reason: str) -> None:
        self.record(flow, route, side, Decision("unscanned", False, reason))

    # --- denying -----------------------------------------------------------------------------

    def deny_response(
        self, state: FlowState, side: Side, stream: bool, verdict: Verdict | None = None
    ) -> DenyResponse:
        """The protocol's deny for this flow; never raises: if it cannot be built, the one
        built ahead of time from constants."""
        try:
            return build_deny(state.protocol, deny_text(side, verdict, state.settings),
                              status=state.settings.deny_code, stream=stream,
                              model=state.model, json_array=state.json_array)
        except Exception:
            logger.exception("lakera_addon could not build a deny; sending the last resort")
            return last_resort(state.protocol, stream, state.json_array)

    def deny(
        self, flow: http.HTTPFlow, state: FlowState, side: Side, verdict: Verdict | None
    ) -> None:
        """Answer the client with the protocol's deny instead of the upstream's answer. Never
        raises: if the deny cannot be built, the one built ahead of time from constants goes
        out; if not even that, the flow is killed (the connection closed). Call it before
        recording: a deny that is recorded must have happened."""
        state.denied = True
        stream = False
        try:
            if side == "request":
                stream = state.streams
            else:
                stream = flow.response is not None and routing.is_streamed_answer(
                    flow.response.headers.get("content-type"))
        except Exception:
            logger.exception("lakera_addon could not tell the shape of a deny")
        deny = self.deny_response(state, side, stream, verdict)
        try:
            flow.response = http.Response.make(deny.status, deny.body, deny.headers)
        except Exception:
            logger.exception("lakera_addon could not answer with a deny; closing the flow")
            close(flow)

    def internal_error(
        self,
        flow: http.HTTPFlow,
        route: Route,
        side: Side,
        error: Exception,
        state: FlowState | None,
    ) -> None:
        """An unexpected error while screening: logged with its traceback (never with content:
        the addon's exceptions carry none), and decided like a failure (`fail_open`): on a
        fail-closed route the flow is denied. Never raises."""
        logger.error("lakera_addon internal error on %s [%s route=%s]: %s",
                     side, reporting.flow_label(flow), route.name, type(error).__name__,
                     exc_info=error)
        failure = Failure(FailureKind.INTERNAL, f"internal error ({type(error).__name__})")
        decision = decide_failure(failure, route.settings)
        if decision.deny and not (state and state.denied):
            if state is None:
                try:
                    protocol = routing.guess_protocol(flow.request.path)
                except Exception:
                    protocol = protocols.OPENAI_CHAT
                state = FlowState(route, protocol, None, False)
            self.deny(flow, state, side, None)
        self.record(flow, route, side, decision)

    # --- flows that changed after their last hook --------------------------------------------

    @staticmethod
    def notify(flow: http.HTTPFlow) -> None:
        """Tell mitmweb/console that a flow changed after its last hook."""
        try:
            ctx.master.addons.trigger(hooks.UpdateHook([flow]))
        except Exception:  # no master (unit tests) or shutting down
            logger.debug("could not trigger an update for a flow", exc_info=True)

    @staticmethod
    def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
        asyncio_utils.create_task(coro, name=name, keep_ref=True)
