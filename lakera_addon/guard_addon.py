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
from collections.abc import Sequence

from mitmproxy import command
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.addonmanager import Loader

from lakera_addon import config_watch
from lakera_addon import llm_view
from lakera_addon import reporting
from lakera_addon import rescreen
from lakera_addon import routing
from lakera_addon.audit_log import AuditLog
from lakera_addon.configuration import Config
from lakera_addon.configuration import ConfigError
from lakera_addon.configuration import load_config
from lakera_addon.decision import Decision
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.flow_route import route_of
from lakera_addon.flow_state import FlowState
from lakera_addon.health_server import MetricsPort
from lakera_addon.held_answer import HeldAnswer
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.live_stream import LiveStream
from lakera_addon.live_stream import PassThrough
from lakera_addon.live_stream import can_stay_live
from lakera_addon.relay import Relay
from lakera_addon.relay import upstream_ssl
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
        self.relay = Relay(self.verdicts)
        self.request_side = RequestSide(self.verdicts, self._flows, self.relay)
        self.held = HeldAnswer(self.verdicts)
        self.metrics_port = MetricsPort(self.counters, self.lakera, self.verdicts, self._flows,
                                        lambda: self.config)
        self.watch = config_watch.ConfigWatch(self._reload)  # lakera_config, while running

    # --- options -------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        logging.getLogger("mitmproxy.addons.script").addFilter(_ONE_LINE)
        llm_view.register()  # mitmweb's view of the conversation and the verdicts
        loader.add_option(
            "lakera_config",
            str,
            "",
            "Path to the lakera_addon YAML configuration (Lakera endpoint, key, routes, "
            "direction, action, fail_open, ...). Empty: built-in defaults, which screen the "
            "prompts sent to the well-known LLM providers with the key from "
            "LAKERA_GUARD_API_KEY. The file is watched while the proxy runs: a valid new "
            "version applies to new flows, an invalid one is refused and logged (lakera.reload "
            "reloads it at once).",
        )
        loader.add_option(
            "lakera_audit_log",
            str,
            "",
            "Path of a JSON-lines audit log, one line per verdict (time, route, side, verdict, "
            "detector types, request_uuid, latency, failure reason; never prompt text or the "
            "key). Empty: no audit log.",
        )
        loader.add_option(
            "lakera_metrics_port",
            str,
            "0",
            "Port of the addon's HTTP server for Prometheus (/metrics) and probes (/healthz: "
            "loaded with a valid configuration; /readyz: Lakera answered recently, see "
            "lakera_ready_failure_seconds). 0: no server.",
        )
        loader.add_option(
            "lakera_metrics_host",
            str,
            "127.0.0.1",
            "Address the lakera_metrics_port server listens on (0.0.0.0: every IPv4 address).",
        )
        loader.add_option(
            "lakera_ready_failure_seconds",
            str,
            "30",
            "After Lakera Guard fails (timeout, unreachable, 5xx, a bad answer), /readyz "
            "answers 503 until Lakera answers again or this many seconds have passed since the "
            "failure. 0: Lakera's failures never make /readyz fail.",
        )

    def configure(self, updated: set[str]) -> None:
        if updated & METRICS_OPTIONS:
            o = ctx.options
            try:
                self.metrics_port.configure(o.lakera_metrics_host, o.lakera_metrics_port,
                                            o.lakera_ready_failure_seconds)
            except ValueError as e:
                raise LakeraOptionsError(str(e)) from None  # type: ignore[no-untyped-call]
        if "lakera_audit_log" in updated:
            path = ctx.options.lakera_audit_log
            try:
                self.audit.open(path)
            except OSError as e:
                raise LakeraOptionsError(  # type: ignore[no-untyped-call]
                    f"lakera_audit_log: cannot open {path}: {e.strerror}") from None
        if "stream_large_bodies" in updated and "lakera_config" not in updated:
            self._check_streaming_options(self.config)
        if updated & {"ssl_insecure", "ssl_verify_upstream_trusted_ca"}:
            try:  # the relay checks upstream certificates as mitmproxy does
                self.relay.upstream_ssl = upstream_ssl(
                    bool(getattr(ctx.options, "ssl_insecure", False)),
                    getattr(ctx.options, "ssl_verify_upstream_trusted_ca", None))
            except OSError as e:
                raise LakeraOptionsError(  # type: ignore[no-untyped-call]
                    f"ssl_verify_upstream_trusted_ca: cannot be read: {e.strerror}") from None
        if "lakera_config" not in updated:
            return
        path = ctx.options.lakera_config or None
        stamp = config_watch.stamp_of(path) if path else None  # before the read (config_watch)
        try:
            config = load_config(path)
        except ConfigError as e:
            raise LakeraOptionsError(f"lakera_config: {e}") from None  # type: ignore[no-untyped-call]
        self._check_streaming_options(config)
        self.config = config
        self.watch.follow(path, stamp)  # polled for changes from `running` on
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

    @command.command("lakera.rescreen")  # type: ignore[untyped-decorator]
    def rescreen(self, flows: Sequence[mflow.Flow]) -> str:
        """Screen flows again with the current configuration, without changing them: each is
        marked and commented with what the addon would do to it now, kept in
        metadata["lakera"]["rescreen"] (e.g. `:lakera.rescreen @marked`)."""
        config = self.config
        if config is None:
            raise exceptions.CommandError("lakera_addon is not configured")
        picked = [(f, route_of(config, f)) for f in flows if isinstance(f, http.HTTPFlow)]

        async def run() -> None:
            await rescreen.rescreen_all(picked, self.lakera, RESCREEN_CONCURRENCY,
                                        lambda i, result: rescreen.annotate(picked[i][0], result))

        self.verdicts.spawn(run(), "lakera rescreen")
        return f"lakera rescreen: screening {len(picked)} flows with {config.source}"

    @command.command("lakera.reload")  # type: ignore[untyped-decorator]
    def reload(self) -> str:
        """Read lakera_config again now. A valid file takes effect for new flows (flows in
        flight finish under the configuration they started with); an invalid one is refused
        and the current configuration stays. The file is also watched (config_watch.py)."""
        reading = config_watch.read(ctx.options.lakera_config or None)
        self.watch.follow(reading.path, reading.stamp)
        return self._reload(reading)

    def _reload(self, reading: config_watch.Reading) -> str:
        """Apply a new reading of the configuration file (the watch, lakera.reload): swap the
        one reference new flows read, or keep the configuration in force and say why in one
        line. Never a moment without one."""
        config, error = reading.config, f"lakera_config: {reading.error}"
        if config is not None:
            try:
                self._check_streaming_options(config)
            except LakeraOptionsError as e:
                config, error = None, str(e)
        if config is None:
            self.counters.reloaded(False)
            kept = self.config.source if self.config is not None else "no configuration"
            logger.error("lakera guard reload failed: %s; keeping config %s", error, kept)
            return f"lakera reload: failed: {error}; keeping {kept}"
        self.config = config
        self.counters.reloaded(True)
        if self.watch.active:  # mitmproxy runs: the event loop the sessions need is there
            self.lakera.prepare({r.settings.ssl_verify for r in config.routes})
        routes = ", ".join(r.name for r in config.routes)
        logger.info("lakera guard reloaded: config %s; routes: %s", config.source, routes)
        return f"lakera reload: ok, routes: {routes}"

    def running(self) -> None:
        if self.config is not None:
            self.lakera.prepare({r.settings.ssl_verify for r in self.config.routes})
        self.watch.start()
        self.metrics_port.serve()

    def done(self) -> None:
        self.watch.stop()
        if self.config is not None:
            logger.info("%s", self.counters.summary())
        self.audit.close()
        self.metrics_port.close()
        # Sync, so that a script reload can call it; closing the pool needs the running loop.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.verdicts.spawn(self.lakera.aclose(), "lakera close")
        self.verdicts.spawn(self.relay.close(), "lakera relay close")

    # --- the hooks ---------------------------------------------------------------------------
    # Each hook finds the flow's route or state and hands the flow on; any exception inside a
    # hook of a routed flow is decided like a failure (fail_open), never left to mitmproxy,
    # which would forward the flow as it is (SPEC section 5, the invariant).

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # A plain function: a flow on no route costs no coroutine; mitmproxy awaits what a
        # hook returns when it is awaitable.
        if flow.response or flow.error or not flow.live or self.config is None:
            return None
        route = route_of(self.config, flow)
        if route is None:
            return None
        try:
            reporting.start(flow, route, None)
        except Exception as e:
            self.verdicts.internal_error(flow, route, "request", e, None)
            return None
        return self.request_side.guard(flow, route)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._answer_state(flow)
        if state is None or flow.response is None:
            return
        if state.relay_screened:  # released window by window by the relay: pass it on
            flow.response.stream = True
            return
        try:
            self._choose_delivery(flow, flow.response, state)
        except Exception as e:  # hold it: the response hook screens it whole
            logger.error("lakera_addon internal error choosing how an answer goes out [%s]: %s",
                         reporting.flow_label(flow), type(e).__name__, exc_info=e)
            state.stream = None
            flow.response.stream = False

    def _choose_delivery(
        self, flow: http.HTTPFlow, response: http.Response, state: FlowState
    ) -> None:
        """How the answer goes out: held whole, live, passed through (shadow),
        or, when it declares more than max_body_bytes, decided at once without reading it."""
        declared = declared_length(response)
        if declared is not None and declared > state.settings.max_body_bytes:
            self._forget(flow)  # decided here: the response hook has nothing to do
            self.held.too_large(flow, state, declared)
        elif not routing.is_streamed_answer(response.headers.get("content-type")):
            response.stream = False  # a JSON answer is screened whole
        elif state.generic:  # a stream of no known protocol: held, read whole (answer_text)
            response.stream = False
        elif state.settings.shadow:  # pass-through: forward every chunk at once
            passing = PassThrough(state, self.verdicts, response.headers.get("content-encoding"))
            state.stream = passing
            response.stream = passing.tap
        elif can_stay_live(response, state):  # live: cut on a flag
            live = LiveStream(flow, state, self.verdicts)
            state.stream = live
            response.stream = live
        else:  # held: mitmproxy buffers the body until the response hook has decided
            response.stream = False

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        state = self._answer_state(flow)
        self._forget(flow)  # exactly one scan per response
        if state is None or flow.response is None:
            return None
        if state.relay_screened:  # the relay screened it and recorded the verdict
            return None
        if state.stream is not None:
            self.verdicts.spawn(self._end_stream(flow, state), "lakera stream end")
            return None
        return self.held.screen(flow, state)

    def error(self, flow: http.HTTPFlow) -> None:
        state = self._forget(flow)
        if state is None or state.stream is None or state.denied:
            return
        if flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE:
            return  # killed on purpose (by the user or another addon)
        self.verdicts.spawn(self._end_stream(flow, state), "lakera stream end")

    async def _end_stream(self, flow: http.HTTPFlow, state: FlowState) -> None:
        assert state.stream is not None
        try:
            await state.stream.end(flow)
        except Exception as e:  # the stream is over: nothing left to hold back; record that
            logger.error("lakera_addon internal error after a stream [%s route=%s]: %s",
                         reporting.flow_label(flow), state.route.name, type(e).__name__,
                         exc_info=e)
            failure = Failure(FailureKind.INTERNAL, f"internal error ({type(e).__name__})")
            self.verdicts.record(flow, state.route, "response",
                                 Decision("failure", False, failure.reason, kind=failure.kind))

    def _forget(self, flow: http.HTTPFlow) -> FlowState | None:
        """Drop a flow's state once its answer is decided; a relay job the relay never took
        (a request its HTTP parser refused) goes with it, and the flow shows its real
        destination."""
        state = self._flows.pop(flow, None)
        if state is not None and state.relay_token is not None:
            self.relay.finish(flow, state.relay_token)
        return state

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
            self._forget(flow)
            self.verdicts.unscanned(flow, state.route, "response", f"upstream status {status}")
            return None
        return state


RESCREEN_CONCURRENCY = 8  # lakera.rescreen: flows screened at once
METRICS_OPTIONS = {"lakera_metrics_port", "lakera_metrics_host", "lakera_ready_failure_seconds"}


def declared_length(message: http.Message) -> int | None:
    """The body size a message declares (Content-Length), if it declares one."""
    value = message.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())
