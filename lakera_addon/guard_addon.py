"""The mitmproxy hooks. They stay thin: the logic lives in the modules they call."""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections import Counter
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy import command
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import hooks
from mitmproxy import http
from mitmproxy.addonmanager import Loader
from mitmproxy.utils import asyncio_utils

from lakera_addon import assembly
from lakera_addon import content_decoding
from lakera_addon import extract
from lakera_addon import masking
from lakera_addon import reporting
from lakera_addon import routing
from lakera_addon import screen_budget
from lakera_addon.audit_log import AuditLog
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
from lakera_addon.deny import CUT_PROTOCOLS
from lakera_addon.deny import build_deny
from lakera_addon.deny import cut_ending
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.lakera_client import Verdict
from lakera_addon.progressive_stream import ProgressiveTap
from lakera_addon.protocols import Protocol
from lakera_addon.stats import Stats
from lakera_addon.stream_tap import STREAM_CUT
from lakera_addon.stream_tap import StreamTap

logger = logging.getLogger("lakera_addon")


@dataclass(slots=True)
class FlowState:
    """What the request hook learned about a screened flow, for the response hooks."""

    route: Route
    protocol: Protocol
    model: str | None
    streams: bool
    candidates: int = 1  # answers asked for at once (Gemini's candidateCount)
    denied: bool = False
    tap: StreamTap | None = None
    live: ProgressiveTap | None = None  # stream_mode: progressive
    scan: asyncio.Task[None] | None = None  # the progressive window scan in flight
    cut_by: tuple[Decision, Verdict | None] | None = None  # what cut a progressive stream

    @property
    def settings(self) -> Settings:
        return self.route.settings


OFF_LOOP_BYTES = 256 * 1024  # parse bodies larger than this in a worker thread


async def _off_loop[T](function: Callable[..., T], *args: Any) -> T:
    """Run CPU-heavy parsing of a large body without stalling mitmproxy's event loop."""
    return await asyncio.to_thread(function, *args)


class TooDeep(Exception):
    """Valid JSON nested deeper than Python's parser goes: it cannot be screened, but an
    upstream may well accept it, so it is a failure (`fail_open`), not an unreadable body."""


async def _parse_json(content: bytes) -> Any:
    """The parsed body, or None if it is not JSON; TooDeep if it nests too deeply."""

    def parse() -> Any:
        try:
            return json.loads(content)
        except RecursionError:
            return TooDeep
        except ValueError:
            return None

    body = await _off_loop(parse) if len(content) > OFF_LOOP_BYTES else parse()
    if body is TooDeep:
        raise TooDeep("nests too deeply to be screened")
    return body


class UnreadableBody(Exception):
    """A matched request whose body is not its protocol's JSON: `fail_mode` applies."""


class LakeraGuard:
    def __init__(self) -> None:
        self.config: Config | None = None
        self.lakera = LakeraClient()
        self.counters = Stats()
        self.audit = AuditLog()
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = (
            weakref.WeakKeyDictionary()
        )

    # --- options -------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "lakera_config",
            str,
            "",
            "Path to the lakera_addon YAML configuration (Lakera endpoint, key, routes, "
            "direction, action, fail_open, ...). Empty: built-in defaults, which screen the "
            "prompts sent to the well-known LLM providers with the key from "
            "LAKERA_GUARD_API_KEY.",
        )
        loader.add_option(
            "lakera_audit_log",
            str,
            "",
            "Path of a JSON-lines audit log, one line per verdict (time, route, side, verdict, "
            "detector types, request_uuid, latency, failure reason; never prompt text or the "
            "key). Empty: no audit log.",
        )

    def configure(self, updated: set[str]) -> None:
        if "lakera_audit_log" in updated:
            path = ctx.options.lakera_audit_log
            try:
                self.audit.open(path)
            except OSError as e:
                raise exceptions.OptionsError(  # type: ignore[no-untyped-call]
                    f"lakera_audit_log: cannot open {path}: {e.strerror}") from e
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

    @command.command("lakera.stats")  # type: ignore[untyped-decorator]
    def stats(self) -> str:
        """Flows screened, flagged, blocked, failures by kind, Lakera latency p50/p95."""
        summary = self.counters.summary()
        logger.info("%s", summary)
        return summary

    def running(self) -> None:
        if self.config is not None:
            self.lakera.prepare({r.settings.ssl_verify for r in self.config.routes})

    def done(self) -> None:
        if self.config is not None:
            logger.info("%s", self.counters.summary())
        self.audit.close()
        # Sync, so that a script reload can call it; closing the pool needs the running loop.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._spawn(self.lakera.aclose(), "lakera close")

    # --- request side --------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # A plain function: a flow on no route costs no coroutine; mitmproxy awaits what a
        # hook returns when it is awaitable.
        if flow.response or flow.error or not flow.live or self.config is None:
            return None
        if flow.request.method != "POST":
            return None
        hosts = (flow.request.host, flow.request.pretty_host)
        route = self.config.route_for(hosts, flow.request.path)
        if route is None:
            return None
        reporting.start(flow, route, None)
        return self._request(flow, route)

    async def _request(self, flow: http.HTTPFlow, route: Route) -> None:
        try:
            await self._guard_request(flow, route)
        except Exception as e:  # a bug must not let the request skip the decision
            self._internal_error(flow, route, "request", e, self._flows.get(flow))

    async def _guard_request(self, flow: http.HTTPFlow, route: Route) -> None:
        settings = route.settings
        raw = flow.request.raw_content
        try:
            if flow.request.stream or raw is None:
                raise content_decoding.TooLarge(
                    "request body was streamed by mitmproxy, not held")
            state, messages, body = await self._read_request(flow, route)
        except (content_decoding.TooLarge, TooDeep) as e:
            reason = str(e) if raw is None else f"request body {e}"
            guessed_protocol = routing.guess_protocol(flow.request.path)
            guessed = FlowState(route, guessed_protocol, None, extract.sniff_streams(
                guessed_protocol, flow.request.path, raw or b""),
                extract.sniff_candidates(guessed_protocol, raw or b""))
            if settings.scans_input:
                self._fail(flow, route, reason, guessed)
            if not guessed.denied and settings.scans_output:
                self._flows[flow] = guessed  # the answer can still be screened
            return
        except UnreadableBody as e:
            self._unreadable(flow, route, str(e))
            return
        reporting.start(flow, route, state.protocol)
        self._flows[flow] = state
        if settings.scans_output:
            flow.request.anticomp()  # ask the upstream for an identity-encoded answer
        if settings.scans_input:
            await self._screen_request(flow, state, messages, body)

    async def _read_request(
        self, flow: http.HTTPFlow, route: Route
    ) -> tuple[FlowState, list[extract.Message], dict[str, Any]]:
        """The flow's protocol, model and stream flag, and the messages to screen."""
        limit = route.settings.max_body_bytes
        try:
            content = content_decoding.decode_bounded(
                flow.request.raw_content or b"", flow.request.headers.get("content-encoding"),
                limit)
        except content_decoding.TooLarge:
            raise
        except ValueError as e:
            raise UnreadableBody(f"request body cannot be decoded: {e}") from e
        body = await _parse_json(content)
        if body is None:
            raise UnreadableBody("request body is not JSON")
        if not isinstance(body, dict):
            raise UnreadableBody("request body is not a JSON object")
        protocol = routing.detect_protocol(route.protocol, flow.request.path, body)
        if protocol is None:
            raise UnreadableBody("request body matches no known LLM protocol")
        state = FlowState(
            route,
            protocol,
            extract.request_model(body, flow.request.path),
            extract.request_streams(protocol, body, flow.request.path),
            extract.request_candidates(protocol, body),
        )
        try:
            messages = extract.request_messages(protocol, body)
        except extract.BodyShapeError as e:
            raise UnreadableBody(str(e)) from e
        return state, messages, body

    async def _screen_request(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        messages: list[extract.Message],
        body: dict[str, Any],
    ) -> None:
        if not messages:
            self._record(flow, state.route, "request", Decision("unscanned", False, "no text"))
            return
        if state.settings.input_scope == "latest" and not state.settings.masks:
            # (with mask rules the whole conversation is screened: a client resends its own,
            # unmasked history every turn)
            messages = extract.request_messages(
                state.protocol, extract.latest_turn(state.protocol, body))
            if not messages:
                self._record(flow, state.route, "request",
                             Decision("unscanned", False, "no new text since the last turn"))
                return
        limit = state.settings.max_screen_bytes
        fitted = screen_budget.fit_request(messages, limit)
        if fitted is None:
            self._fail(flow, state.route, f"the system prompt and the newest message alone "
                       f"exceed max_screen_bytes ({limit})", state)
            return
        if fitted.dropped:
            reporting.cut(flow, state.route, "request",
                          f"{fitted.dropped} older of {len(messages)} messages left out to fit "
                          f"max_screen_bytes ({limit}); sent the system prompt and the "
                          f"{len(fitted.messages)} most recent")
        sent = fitted.messages
        if state.settings.shadow:  # nothing can block: forward now, log the verdict later
            reporting.pending(flow, "request")
            self._spawn(self._background_scan(flow, state.route, "request", [sent]),
                        "lakera shadow request scan")
            return
        verdict = await self.lakera.screen(state.settings, sent)
        decision = decide(verdict, state.settings)
        masked: Counter[str] | None = None
        if decision.mask:
            try:
                masked = await self._mask_request(flow, state, messages, sent, body, verdict)
            except masking.MaskError as e:
                decision = decide_failure(f"cannot mask: {e}", state.settings)
        self._record(flow, state.route, "request", decision, verdict, masked)
        if decision.deny:
            self._deny(flow, state, "request", verdict)

    async def _mask_request(
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
        texts = self._confirmed(settings, sent, verdict)
        sent_ids = {id(m) for m in sent}
        older = [m for m in messages if id(m) not in sent_ids]
        if older:
            batches = screen_budget.batches(older, settings.max_screen_bytes)
            if batches is None:
                raise masking.MaskError("an older message is too large to screen for masking")
            verdicts = await asyncio.gather(
                *(self.lakera.screen(settings, batch) for batch in batches))
            for batch, extra in zip(batches, verdicts, strict=True):
                if extra.failure is not None:
                    raise masking.MaskError(f"screening older messages failed: {extra.failure}")
                texts.update(self._confirmed(settings, batch, extra))
        masker = masking.Masker(texts)
        masked = masker.document(body)
        try:
            flow.request.content = json.dumps(masked, ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate: keep it escaped
            flow.request.content = json.dumps(masked).encode()
        return masker.counts

    @staticmethod
    def _confirmed(
        settings: Settings, sent: Sequence[extract.Message], verdict: Verdict
    ) -> dict[str, str]:
        """The texts to mask that a verdict's spans confirm in the messages it was given."""
        if not verdict.flagged:
            return {}
        types = [t for t in verdict.detector_types if settings.action_for(t) == "mask"]
        detected = [(str(e.get("detector_type")), e["message_id"]) for e in verdict.breakdown
                    if e.get("detected") is True and type(e.get("message_id")) is int]
        return masking.confirmed_texts([m["content"] for m in sent], verdict.payload, types,
                                       detected)

    def _unreadable(self, flow: http.HTTPFlow, route: Route, reason: str) -> None:
        """A matched flow whose body cannot be read as its protocol: `fail_mode` decides."""
        mode = route.settings.fail_mode
        where = f"[{reporting.flow_label(flow)} route={route.name}]"
        level = logging.INFO if mode == "skip" else logging.WARNING
        logger.log(level, "lakera_addon skipped %s: %s (fail_mode=%s)", where, reason, mode)
        entry = reporting.metadata(flow)
        entry["request"] = {"verdict": "unscanned", "action": "allowed", "failure": reason}
        self.counters.observe("request", Decision("unscanned", False, reason), None)
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
        self.audit.write(flow, route.name, "request", entry["request"])

    def _fail(self, flow: http.HTTPFlow, route: Route, reason: str, state: FlowState) -> None:
        """A request-side failure found before Lakera was asked: `fail_open` decides."""
        decision = decide_failure(reason, route.settings)
        self._record(flow, route, "request", decision)
        if decision.deny:
            self._deny(flow, state, "request", None)

    # --- response side -------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._output_state(flow)
        if state is None or flow.response is None:
            return
        if not routing.is_streamed_answer(flow.response.headers.get("content-type")):
            flow.response.stream = False  # a JSON answer is screened whole
            return
        if state.settings.shadow:  # pass-through: forward every chunk at once
            state.tap = StreamTap(
                state.protocol,
                flow.response.headers.get("content-encoding"),
                state.settings.max_body_bytes,
                state.candidates,
            )
            flow.response.stream = state.tap
        elif self._can_stay_live(flow.response, state):  # progressive: live, cut on a flag
            state.live = ProgressiveTap(
                state.protocol,
                state.settings.max_body_bytes,
                state.settings.window_chars,
                lambda: self._start_window_scan(flow, state),
                state.candidates,
            )
            flow.response.stream = state.live
        else:  # held: mitmproxy buffers the body until the response hook has decided
            flow.response.stream = False

    @staticmethod
    def _can_stay_live(response: http.Response, state: FlowState) -> bool:
        """`stream_mode: progressive` applies to a stream the addon can end in its protocol's
        own shape: an identity-encoded body (the ending is appended as plain text) of unknown
        length (chunked or HTTP/2: the length changes); others are held."""
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        return (state.settings.progressive and state.protocol in CUT_PROTOCOLS
                and encoding in ("", "identity") and "content-length" not in response.headers)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        state = self._output_state(flow)
        if state is None or flow.response is None:
            return None
        self._flows.pop(flow, None)  # exactly one scan per response
        if state.live is not None:
            self._spawn(self._progressive_end(flow, state, state.live),
                        "lakera progressive final scan")
            return None
        if state.tap is not None:
            self._spawn(self._background_stream_scan(flow, state, state.tap),
                        "lakera pass-through scan")
            return None
        return self._held(flow, state)

    async def _held(self, flow: http.HTTPFlow, state: FlowState) -> None:
        try:
            await self._screen_held(flow, state)
        except Exception as e:  # a bug must not release a held answer unscreened
            self._internal_error(flow, state.route, "response", e, state)

    def error(self, flow: http.HTTPFlow) -> None:
        state = self._flows.pop(flow, None)
        if state is None or (state.tap is None and state.live is None) or state.denied:
            return
        if flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE:
            return  # killed on purpose (by the user or another addon)
        if state.live is not None:
            self._spawn(self._progressive_end(flow, state, state.live),
                        "lakera progressive final scan")
            return
        assert state.tap is not None
        self._spawn(self._background_stream_scan(flow, state, state.tap),
                    "lakera pass-through scan")

    def _output_state(self, flow: http.HTTPFlow) -> FlowState | None:
        state = self._flows.get(flow)
        if state is None or state.denied or not state.settings.scans_output:
            return None
        if flow.error or flow.response is None:
            return None
        status = flow.response.status_code
        if not 200 <= status < 300 or status == 204:  # errors, redirects, empty answers
            self._flows.pop(flow, None)
            reason = f"upstream status {status}"
            self._record(flow, state.route, "response", Decision("unscanned", False, reason))
            return None
        return state

    async def _screen_held(self, flow: http.HTTPFlow, state: FlowState) -> None:
        settings = state.settings
        text, failure, document = await self._response_text(flow, state)
        if failure is not None and flow.response is not None and flow.response.stream:
            # another addon streamed it to the client already: a deny could not take effect
            self._record(flow, state.route, "response", Decision("failure", False, failure))
            return
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
        parts = self._answer_parts(flow, state.route, text)
        verdict = await self.lakera.screen_parts(settings, parts)
        decision = decide(verdict, settings)
        masked: Counter[str] | None = None
        if decision.mask:
            try:
                if len(parts) > 1:
                    raise masking.MaskError("an answer screened in parts cannot be masked")
                masked = self._mask_response(flow, state, text, document, verdict)
            except masking.MaskError as e:
                decision = decide_failure(f"cannot mask: {e}", settings)
        self._record(flow, state.route, "response", decision, verdict, masked)
        if decision.deny:
            self._deny(flow, state, "response", verdict)

    def _mask_response(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        text: str,
        document: Any,
        verdict: Verdict,
    ) -> Counter[str]:
        """Mask the confirmed texts in the answer. A JSON answer is masked in place (ids, usage,
        tool calls kept; the texts masked wherever they occur); a held stream is re-framed from
        its masked text in the protocol's own shape, so that the SDKs parse it. `document` is the
        parsed JSON answer, None for a stream."""
        assert flow.response is not None
        masker = masking.Masker(self._confirmed(state.settings, [
            {"role": "assistant", "content": text}], verdict))
        if document is not None:
            masked = masker.document(document)
            flow.response.headers.pop("content-encoding", None)
            flow.response.content = json.dumps(masked, ensure_ascii=False).encode()
            flow.response.headers["x-lakera-guard"] = "masked"
            return masker.counts
        released = build_deny(
            state.protocol,
            masker.text(text),
            status=flow.response.status_code,
            stream=True,
            model=state.model,
            path=flow.request.path,
        )
        headers = {**released.headers, "x-lakera-guard": "masked"}
        flow.response = http.Response.make(released.status, released.body, headers)
        return masker.counts

    async def _response_text(
        self, flow: http.HTTPFlow, state: FlowState
    ) -> tuple[str, str | None, Any]:
        """(assistant text, failure reason, the parsed JSON answer or None for a stream) of a
        buffered response."""
        assert flow.response is not None
        limit = state.settings.max_body_bytes
        if flow.response.stream:
            return "", "response was streamed by another addon, not held", None
        try:
            content = content_decoding.decode_bounded(
                flow.response.raw_content or b"",
                flow.response.headers.get("content-encoding"), limit)
        except content_decoding.TooLarge as e:
            return "", f"response {e}", None
        except ValueError:
            return "", "response body cannot be decoded", None
        if routing.is_streamed_answer(flow.response.headers.get("content-type")):
            result = (assembly.assemble(state.protocol, content, state.candidates)
                      if len(content) <= OFF_LOOP_BYTES
                      else await _off_loop(assembly.assemble, state.protocol, content,
                                           state.candidates))
            return (result.text, None, None) if result.complete else ("", result.reason, None)
        try:
            body = await _parse_json(content)
        except TooDeep as e:
            return "", f"response body {e}", None
        if body is None:
            return "", "response body is not JSON", None
        return assembly.response_text(state.protocol, body), None, body

    async def _background_stream_scan(
        self, flow: http.HTTPFlow, state: FlowState, tap: StreamTap
    ) -> None:
        result = tap.result()
        partial = "" if result.complete else tap.partial_text
        if partial:  # cut short (upstream or client): screen what the client received
            reporting.cut(flow, state.route, "response",
                          f"stream ended early ({result.reason}); screened the "
                          f"{len(partial)} characters received")
            parts = self._answer_parts(flow, state.route, partial)
            await self._background_scan(flow, state.route, "response", parts)
            return
        if not result.complete and result.reason in (STREAM_CUT, assembly.NOT_TERMINATED):
            self._record(flow, state.route, "response", Decision(
                "unscanned", False, f"stream ended early ({result.reason}) before any text"))
        elif not result.complete:  # the client received what the addon could not read
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

    # --- progressive streams -------------------------------------------------------------

    def _start_window_scan(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Called by the progressive tap, from the stream function, when a window is due."""
        state.scan = asyncio_utils.create_task(
            self._window_scans(flow, state), name="lakera progressive window scan",
            keep_ref=True)

    async def _window_scans(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Screen the newest text until a window is clean and no next one is due, or until a
        flag (or a failure with fail_open false) cuts the stream."""
        live, settings = state.live, state.settings
        assert live is not None
        verdict: Verdict | None = None
        try:
            while True:
                upto, text = live.requested_chars, live.text
                parts = screen_budget.window_parts(text, live.clean_chars,
                                                   settings.max_screen_bytes)
                verdict = await self.lakera.screen_parts(
                    settings, [[{"role": "assistant", "content": p}] for p in parts])
                decision = decide(verdict, settings)
                if decision.deny:
                    break
                if decision.outcome == "flagged":
                    return  # flagged, but nothing blocks: no more windows; the final scan logs it
                if not live.scanned(upto):
                    return
        except Exception as e:  # a bug must not let a stream run on unscreened
            logger.error("lakera_addon internal error in a progressive scan [%s route=%s]: %s",
                         reporting.flow_label(flow), state.route.name, type(e).__name__,
                         exc_info=e)
            verdict = None
            decision = decide_failure(f"internal error ({type(e).__name__})", settings)
            if not decision.deny:
                return  # no more windows (the tap still thinks one is in flight)
        state.cut_by = (decision, verdict)
        live.cut(cut_ending(state.protocol, deny_text("response", verdict, settings),
                            live.last_text_event, state.model, sent_text=live.text))

    async def _progressive_end(
        self, flow: http.HTTPFlow, state: FlowState, live: ProgressiveTap
    ) -> None:
        """After a progressive stream: record the cut, or screen the last window (its verdict
        can only arrive after the end: logged and marked, nothing left to cut)."""
        if state.scan is not None and not state.scan.done():
            await asyncio.wait({state.scan})
        route = state.route
        if state.cut_by is not None and live.cutting:
            decision, verdict = state.cut_by
            reporting.cut(flow, route, "response",
                          f"progressive stream cut: the client received {live.sent_chars} "
                          f"characters; the last clean scan covered {live.clean_chars}, the "
                          f"flagged one {live.requested_chars}")
            self._record(flow, route, "response", decision, verdict)
            self._notify(flow)
            return
        result = live.result()
        text = result.text if result.complete else live.text
        if not text:
            reason = "no assistant text" if result.complete else (
                f"stream ended early ({result.reason}) before any text")
            self._record(flow, route, "response", Decision("unscanned", False, reason))
            self._notify(flow)
            return
        if not result.complete:
            reporting.cut(flow, route, "response",
                          f"stream ended early ({result.reason}); screened the "
                          f"{len(text)} characters received")
        parts = screen_budget.window_parts(text, live.clean_chars,
                                           route.settings.max_screen_bytes)
        verdict = await self.lakera.screen_parts(
            route.settings, [[{"role": "assistant", "content": p}] for p in parts])
        decision = decide(verdict, route.settings)
        if decision.deny:  # nothing left to cut: the client has the whole answer
            reporting.cut(flow, route, "response",
                          "progressive stream: the last window's verdict arrived after the "
                          "end of the stream")
            decision = Decision(decision.outcome, False, decision.reason)
        self._record(flow, route, "response", decision, verdict)
        self._notify(flow)

    # --- shared --------------------------------------------------------------------------

    def _internal_error(
        self,
        flow: http.HTTPFlow,
        route: Route,
        side: Side,
        error: Exception,
        state: FlowState | None,
    ) -> None:
        """An unexpected error while screening: logged with its traceback (never with content:
        the addon's exceptions carry none), and decided like a failure (`fail_open`)."""
        logger.error("lakera_addon internal error on %s [%s route=%s]: %s",
                     side, reporting.flow_label(flow), route.name, type(error).__name__,
                     exc_info=error)
        decision = decide_failure(f"internal error ({type(error).__name__})", route.settings)
        self._record(flow, route, side, decision)
        if decision.deny and not (state and state.denied):
            fallback = FlowState(route, routing.guess_protocol(flow.request.path), None, False)
            self._deny(flow, state or fallback, side, None)

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
        masked: Counter[str] | None = None,
    ) -> None:
        reporting.record(flow, route, side, decision, verdict, masked)
        self.counters.observe(side, decision, verdict)
        self.audit.write(flow, route.name, side, reporting.metadata(flow)[side])

    def _deny(
        self, flow: http.HTTPFlow, state: FlowState, side: Side, verdict: Verdict | None
    ) -> None:
        settings = state.settings
        stream = (
            state.streams
            if side == "request"
            else routing.is_streamed_answer(flow.response.headers.get("content-type"))
            if flow.response
            else False
        )
        deny = build_deny(
            state.protocol,
            deny_text(side, verdict, settings),
            status=settings.deny_code,
            stream=stream,
            model=state.model,
            path=flow.request.path,
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
