"""The mitmproxy hooks (SPEC section 1): options and lifecycle, then one short hook per step of
a flow that finds the flow's route or state and hands it to the phase that screens it:

    request          → RequestSide      read, screen, mask or deny the prompt
    responseheaders  → live_stream      choose how an answer goes out: held, live or pass-through
    response, error  → HeldAnswer       screen a whole answer before it is released
                       PassThrough /    end a live answer: screen the rest, record the verdict
                       LiveStream

What the phases share (asking Lakera, recording, denying) is in verdicts.py.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable

from mitmproxy import command
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.addonmanager import Loader

from lakera_addon import reporting
from lakera_addon import routing
from lakera_addon.audit_log import AuditLog
from lakera_addon.configuration import Config
from lakera_addon.configuration import ConfigError
from lakera_addon.configuration import load_config
from lakera_addon.flow_state import FlowState
from lakera_addon.held_answer import HeldAnswer
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.live_stream import LiveStream
from lakera_addon.live_stream import PassThrough
from lakera_addon.live_stream import can_stay_live
from lakera_addon.request_side import RequestSide
from lakera_addon.stats import Stats
from lakera_addon.verdicts import Verdicts

logger = logging.getLogger("lakera_addon")


class LakeraOptionsError(exceptions.OptionsError):
    """A bad value of one of the addon's options. The message says it all, in one line: the
    option, the file, the key, the value and what is allowed."""


class _OneLineOptionErrors(logging.Filter):
    """mitmproxy logs an error raised while a script loads with its whole traceback (addons/
    script.py, script_error_handler). For the addon's own option errors the one-line message
    is all there is to say: the record keeps it and drops the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, LakeraOptionsError):
            record.msg, record.args = f"{record.getMessage()}: {error}", ()
            record.exc_info, record.exc_text = None, None
        return True


_ONE_LINE = _OneLineOptionErrors()


class LakeraGuard:
    def __init__(self) -> None:
        self.config: Config | None = None
        self.lakera = LakeraClient()
        self.counters = Stats()
        self.audit = AuditLog()
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = (
            weakref.WeakKeyDictionary()
        )
        self.verdicts = Verdicts(self.lakera, self.counters, self.audit)
        self.request_side = RequestSide(self.verdicts, self._flows)
        self.held = HeldAnswer(self.verdicts)

    # --- options -------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        logging.getLogger("mitmproxy.addons.script").addFilter(_ONE_LINE)
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
                raise LakeraOptionsError(  # type: ignore[no-untyped-call]
                    f"lakera_audit_log: cannot open {path}: {e.strerror}") from None
        if "stream_large_bodies" in updated and "lakera_config" not in updated:
            self._check_streaming_options(self.config)
        if "lakera_config" not in updated:
            return
        try:
            config = load_config(ctx.options.lakera_config or None)
        except ConfigError as e:
            raise LakeraOptionsError(f"lakera_config: {e}") from None  # type: ignore[no-untyped-call]
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
            raise LakeraOptionsError(  # type: ignore[no-untyped-call]
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
        self.verdicts.spawn(self.lakera.aclose(), "lakera close")

    # --- the hooks ---------------------------------------------------------------------------

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
        return self.request_side.guard(flow, route)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._answer_state(flow)
        if state is None or flow.response is None:
            return
        response = flow.response
        if not routing.is_streamed_answer(response.headers.get("content-type")):
            response.stream = False  # a JSON answer is screened whole
        elif state.settings.shadow:  # pass-through: forward every chunk at once
            state.stream = PassThrough(state, self.verdicts,
                                       response.headers.get("content-encoding"))
            response.stream = state.stream.tap
        elif can_stay_live(response, state):  # progressive: live, cut on a flag
            state.stream = LiveStream(flow, state, self.verdicts)
            response.stream = state.stream
        else:  # held: mitmproxy buffers the body until the response hook has decided
            response.stream = False

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        state = self._answer_state(flow)
        if state is None or flow.response is None:
            return None
        self._flows.pop(flow, None)  # exactly one scan per response
        if state.stream is not None:
            self.verdicts.spawn(state.stream.end(flow), "lakera stream end")
            return None
        return self.held.screen(flow, state)

    def error(self, flow: http.HTTPFlow) -> None:
        state = self._flows.pop(flow, None)
        if state is None or state.stream is None or state.denied:
            return
        if flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE:
            return  # killed on purpose (by the user or another addon)
        self.verdicts.spawn(state.stream.end(flow), "lakera stream end")

    def _answer_state(self, flow: http.HTTPFlow) -> FlowState | None:
        """The state of a flow whose answer is to be screened; None for any other (an error
        status is passed through unscanned, SPEC section 5)."""
        state = self._flows.get(flow)
        if state is None or state.denied or not state.settings.scans_output:
            return None
        if flow.error or flow.response is None:
            return None
        status = flow.response.status_code
        if not 200 <= status < 300 or status == 204:  # errors, redirects, empty answers
            self._flows.pop(flow, None)
            self.verdicts.unscanned(flow, state.route, "response", f"upstream status {status}")
            return None
        return state
