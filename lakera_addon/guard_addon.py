"""The mitmproxy hooks. They stay thin: the logic lives in the modules they call."""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Coroutine
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import hooks
from mitmproxy import http
from mitmproxy.addonmanager import Loader
from mitmproxy.utils import asyncio_utils

from lakera_addon import assembly
from lakera_addon import extract
from lakera_addon import reporting
from lakera_addon import routing
from lakera_addon import screen_budget
from lakera_addon.configuration import Config
from lakera_addon.configuration import ConfigError
from lakera_addon.configuration import Route
from lakera_addon.configuration import Settings
from lakera_addon.configuration import load_config
from lakera_addon.decision import Decision
from lakera_addon.decision import Side
from lakera_addon.decision import decide
from lakera_addon.decision import decide_failure
from lakera_addon.decision import deny_text
from lakera_addon.deny import build_deny
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.lakera_client import Verdict
from lakera_addon.protocols import Protocol
from lakera_addon.stream_tap import StreamTap

logger = logging.getLogger("lakera_addon")


@dataclass(slots=True)
class FlowState:
    """What the request hook learned about a screened flow, for the response hooks."""

    route: Route
    protocol: Protocol
    model: str | None
    streams: bool
    denied: bool = False
    tap: StreamTap | None = None

    @property
    def settings(self) -> Settings:
        return self.route.settings


class UnreadableBody(Exception):
    """A matched request whose body is not its protocol's JSON: `fail_mode` applies."""


class LakeraGuard:
    def __init__(self) -> None:
        self.config: Config | None = None
        self.lakera = LakeraClient()
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = (
            weakref.WeakKeyDictionary()
        )

    # --- options -------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        # httpx logs every Lakera call at INFO ("HTTP Request: POST ..."): noise in mitmproxy's
        # event log next to the addon's own verdict lines. Quieten it unless someone set it.
        for name in ("httpx", "httpcore"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        loader.add_option(
            "lakera_config",
            str,
            "",
            "Path to the lakera_addon YAML configuration (Lakera endpoint, key, routes, "
            "direction, action, fail_open, ...). Empty: built-in defaults, which screen the "
            "prompts sent to the well-known LLM providers with the key from "
            "LAKERA_GUARD_API_KEY.",
        )

    def configure(self, updated: set[str]) -> None:
        if "stream_large_bodies" in updated and "lakera_config" not in updated:
            self._check_streaming_options(self.config)
        if "lakera_config" not in updated:
            return
        try:
            config = load_config(ctx.options.lakera_config or None)
        except ConfigError as e:
            raise exceptions.OptionsError(f"lakera_config: {e}") from e  # type: ignore[no-untyped-call]
        self._check_streaming_options(config)
        self.config = config
        routes = ", ".join(r.name for r in config.routes)
        logger.info("lakera guard active: config %s; routes: %s", config.source, routes)

    @staticmethod
    def _check_streaming_options(config: Config | None) -> None:
        """Refuse mitmproxy's `stream_large_bodies` while routes are screened: it switches a
        body past its threshold to streaming even after the addon asked to hold it (its check
        runs again on every chunk, mitmproxy-addon-notes 1.6), so a large prompt would reach
        the LLM, and a large answer the client, before Lakera's verdict."""
        threshold = getattr(ctx.options, "stream_large_bodies", None)
        if threshold and config is not None and config.routes:
            raise exceptions.OptionsError(  # type: ignore[no-untyped-call]
                f"stream_large_bodies={threshold} would let mitmproxy stream screened prompts "
                "and answers past lakera_addon before they are screened; unset it "
                "(lakera_addon holds at most max_body_bytes of one body)"
            )

    def done(self) -> None:
        # Sync, so that a script reload can call it; closing the pool needs the running loop.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._spawn(self.lakera.aclose(), "lakera close")

    # --- request side --------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or self.config is None:
            return
        if flow.request.method != "POST":
            return
        hosts = (flow.request.host, flow.request.pretty_host)
        route = self.config.route_for(hosts, flow.request.path)
        if route is None:
            return
        settings = route.settings
        reporting.start(flow, route, None)
        reason = None
        if flow.request.stream or flow.request.raw_content is None:
            reason = "request body was streamed by mitmproxy (stream_large_bodies), not held"
        elif len(flow.request.raw_content) > settings.max_body_bytes:
            reason = f"request body larger than max_body_bytes ({settings.max_body_bytes})"
        if reason is not None:
            self._fail(flow, route, routing.guess_protocol(flow.request.path), reason)
            return
        try:
            state, messages = self._read_request(flow, route)
        except UnreadableBody as e:
            self._unreadable(flow, route, str(e))
            return
        reporting.start(flow, route, state.protocol)
        self._flows[flow] = state
        if settings.scans_output:
            flow.request.anticomp()  # ask the upstream for an identity-encoded answer
        if settings.scans_input:
            await self._screen_request(flow, state, messages)

    def _read_request(
        self, flow: http.HTTPFlow, route: Route
    ) -> tuple[FlowState, list[extract.Message]]:
        """The flow's protocol, model and stream flag, and the messages to screen."""
        try:
            content = flow.request.get_content(strict=True) or b""
        except ValueError as e:
            raise UnreadableBody(f"request body cannot be decoded: {e}") from e
        try:
            body = json.loads(content)
        except ValueError as e:
            raise UnreadableBody("request body is not JSON") from e
        if not isinstance(body, dict):
            raise UnreadableBody("request body is not a JSON object")
        protocol = routing.detect_protocol(route.protocol, flow.request.path, body)
        if protocol is None:
            raise UnreadableBody("request body matches no known LLM protocol")
        state = FlowState(
            route,
            protocol,
            extract.request_model(body),
            extract.request_streams(protocol, body),
        )
        try:
            messages = extract.request_messages(protocol, body)
        except extract.BodyShapeError as e:
            raise UnreadableBody(str(e)) from e
        return state, messages

    async def _screen_request(
        self, flow: http.HTTPFlow, state: FlowState, messages: list[extract.Message]
    ) -> None:
        if not messages:
            self._record(flow, state.route, "request", Decision("unscanned", False, "no text"))
            return
        limit = state.settings.max_screen_bytes
        fitted = screen_budget.fit_request(messages, limit)
        if fitted is None:
            self._fail(flow, state.route, state.protocol,
                       f"the system prompt and the newest message alone exceed "
                       f"max_screen_bytes ({limit})", state)
            return
        if fitted.dropped:
            reporting.cut(flow, state.route, "request",
                          f"{fitted.dropped} older of {len(messages)} messages left out to fit "
                          f"max_screen_bytes ({limit}); sent the system prompt and the "
                          f"{len(fitted.messages)} most recent")
        messages = fitted.messages
        if state.settings.shadow:  # nothing can block: forward now, log the verdict later
            reporting.pending(flow, "request")
            self._spawn(self._background_scan(flow, state.route, "request", [messages]),
                        "lakera shadow request scan")
            return
        verdict = await self.lakera.screen(state.settings, messages)
        decision = decide(verdict, state.settings)
        self._record(flow, state.route, "request", decision, verdict)
        if decision.deny:
            self._deny(flow, state, "request", verdict)

    def _unreadable(self, flow: http.HTTPFlow, route: Route, reason: str) -> None:
        """A matched flow whose body cannot be read as its protocol: `fail_mode` decides."""
        mode = route.settings.fail_mode
        where = f"[{reporting.flow_label(flow)} route={route.name}]"
        level = logging.INFO if mode == "skip" else logging.WARNING
        logger.log(level, "lakera_addon skipped %s: %s (fail_mode=%s)", where, reason, mode)
        entry = reporting.metadata(flow)
        entry["request"] = {"verdict": "unscanned", "action": "allowed", "failure": reason}
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

    def _fail(
        self,
        flow: http.HTTPFlow,
        route: Route,
        protocol: Protocol,
        reason: str,
        state: FlowState | None = None,
    ) -> None:
        """A failure found before Lakera was asked: `fail_open` decides."""
        decision = decide_failure(reason, route.settings)
        self._record(flow, route, "request", decision)
        if decision.deny:
            self._deny(flow, state or FlowState(route, protocol, None, False), "request", None)

    # --- response side -------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._output_state(flow)
        if state is None or flow.response is None:
            return
        if not routing.is_event_stream(flow.response.headers.get("content-type")):
            flow.response.stream = False  # a JSON answer is screened whole
            return
        if state.settings.shadow:  # pass-through: forward every chunk at once
            state.tap = StreamTap(
                state.protocol,
                flow.response.headers.get("content-encoding"),
                state.settings.max_body_bytes,
            )
            flow.response.stream = state.tap
        else:  # held: mitmproxy buffers the body until the response hook has decided
            flow.response.stream = False

    async def response(self, flow: http.HTTPFlow) -> None:
        state = self._output_state(flow)
        if state is None or flow.response is None:
            return
        if state.tap is not None:
            self._spawn(self._background_stream_scan(flow, state, state.tap),
                        "lakera pass-through scan")
            return
        await self._screen_held(flow, state)

    def error(self, flow: http.HTTPFlow) -> None:
        state = self._flows.get(flow)
        if state is not None and state.tap is not None and not state.denied:
            self._spawn(self._background_stream_scan(flow, state, state.tap),
                        "lakera pass-through scan")
            state.tap = None

    def _output_state(self, flow: http.HTTPFlow) -> FlowState | None:
        state = self._flows.get(flow)
        if state is None or state.denied or not state.settings.scans_output:
            return None
        if flow.error or flow.response is None:
            return None
        status = flow.response.status_code
        if status >= 400:
            self._flows.pop(flow, None)
            reason = f"upstream status {status}"
            self._record(flow, state.route, "response", Decision("unscanned", False, reason))
            return None
        return state

    async def _screen_held(self, flow: http.HTTPFlow, state: FlowState) -> None:
        assert flow.response is not None
        self._flows.pop(flow, None)  # exactly one scan per response
        settings = state.settings
        text, failure = self._response_text(flow, state)
        if failure is not None:
            decision = decide_failure(failure, settings)
            self._record(flow, state.route, "response", decision)
            if decision.deny:
                self._deny(flow, state, "response", None)
            return
        if not text:
            self._record(flow, state.route, "response",
                         Decision("unscanned", False, "no assistant text"))
            return
        verdict = await self.lakera.screen_parts(
            settings, self._answer_parts(flow, state.route, text))
        decision = decide(verdict, settings)
        self._record(flow, state.route, "response", decision, verdict)
        if decision.deny:
            self._deny(flow, state, "response", verdict)

    def _response_text(self, flow: http.HTTPFlow, state: FlowState) -> tuple[str, str | None]:
        """(assistant text, failure reason) of a buffered response."""
        assert flow.response is not None
        limit = state.settings.max_body_bytes
        if flow.response.stream:
            return "", "response was streamed by mitmproxy, not held"
        if len(flow.response.raw_content or b"") > limit:
            return "", f"response larger than max_body_bytes ({limit} bytes)"
        try:
            content = flow.response.get_content(strict=True) or b""
        except ValueError:
            return "", "response body cannot be decoded"
        if len(content) > limit:
            return "", f"response larger than max_body_bytes ({limit} bytes)"
        if routing.is_event_stream(flow.response.headers.get("content-type")):
            result = assembly.assemble(state.protocol, content)
            return (result.text, None) if result.complete else ("", result.reason)
        try:
            return assembly.response_text(state.protocol, json.loads(content)), None
        except ValueError:
            return "", "response body is not JSON"

    async def _background_stream_scan(
        self, flow: http.HTTPFlow, state: FlowState, tap: StreamTap
    ) -> None:
        self._flows.pop(flow, None)
        result = tap.result()
        if not result.complete:
            self._record(flow, state.route, "response",
                         decide_failure(result.reason or "stream incomplete", state.settings))
        elif not result.text:
            self._record(flow, state.route, "response",
                         Decision("unscanned", False, "no assistant text"))
        else:
            parts = self._answer_parts(flow, state.route, result.text)
            await self._background_scan(flow, state.route, "response", parts)
            return
        self._notify(flow)

    # --- shared --------------------------------------------------------------------------

    def _answer_parts(
        self, flow: http.HTTPFlow, route: Route, text: str
    ) -> list[list[extract.Message]]:
        """An answer as the message lists to screen: one, or overlapping parts if it is larger
        than one Lakera call may carry."""
        limit = route.settings.max_screen_bytes
        parts = screen_budget.split_text(text, limit)
        if len(parts) > 1:
            reporting.cut(flow, route, "response",
                          f"answer screened in {len(parts)} overlapping parts of at most "
                          f"max_screen_bytes ({limit})")
        return [[{"role": "assistant", "content": part}] for part in parts]

    async def _background_scan(
        self,
        flow: http.HTTPFlow,
        route: Route,
        side: Side,
        parts: list[list[extract.Message]],
    ) -> None:
        verdict = await self.lakera.screen_parts(route.settings, parts)
        self._record(flow, route, side, decide(verdict, route.settings), verdict)
        self._notify(flow)

    def _record(
        self,
        flow: http.HTTPFlow,
        route: Route,
        side: Side,
        decision: Decision,
        verdict: Verdict | None = None,
    ) -> None:
        reporting.record(flow, route, side, decision, verdict)

    def _deny(
        self, flow: http.HTTPFlow, state: FlowState, side: Side, verdict: Verdict | None
    ) -> None:
        settings = state.settings
        stream = (
            state.streams
            if side == "request"
            else routing.is_event_stream(flow.response.headers.get("content-type"))
            if flow.response
            else False
        )
        deny = build_deny(
            state.protocol,
            deny_text(side, verdict, settings),
            status=settings.deny_code,
            stream=stream,
            model=state.model,
        )
        state.denied = True
        self._flows[flow] = state
        flow.response = http.Response.make(deny.status, deny.body, deny.headers)

    def _notify(self, flow: http.HTTPFlow) -> None:
        """Tell mitmweb/console that a flow changed after its last hook."""
        try:
            ctx.master.addons.trigger(hooks.UpdateHook([flow]))
        except Exception:  # no master (unit tests) or shutting down
            logger.debug("could not trigger an update for a flow", exc_info=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        asyncio_utils.create_task(coro, name=name, keep_ref=True)

    # for tests and commands
    def routes(self) -> Sequence[Route]:
        return self.config.routes if self.config else ()
