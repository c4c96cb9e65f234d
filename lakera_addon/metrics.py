"""Prometheus metrics of the addon (`/metrics` on `lakera_metrics_port`, health_server.py).

The counts already kept for `lakera.stats` (stats.py) are read at scrape time by a collector;
the latencies are histograms observed as they happen. All of it in a registry of the addon's
own, never the process-wide one: a second instance (a script reload, the tests) registers
again without clashing. Every label value is bounded: route names come from the
configuration, sides, verdicts, actions and failure kinds are fixed sets, and detector types
are Lakera's, past a bound "other" (stats.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Mapping

from mitmproxy import http
from prometheus_client import CollectorRegistry
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import Metric

from lakera_addon.decision import Side
from lakera_addon.failures import FailureKind
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.stats import Stats
from lakera_addon.verdict import Verdict

PREFIX = "lakera_guard"
# seconds: a Lakera call takes tens of milliseconds, a timeout up to `timeout` (default 5 s)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   10.0)


def failure_label(kind: FailureKind) -> str:
    """A failure kind as a label value: its name, `status_429`, `not_json`, ..."""
    return kind.name.lower()


class StatsCollector:
    """The addon's counters and what it holds, read when Prometheus scrapes."""

    def __init__(self, stats: Stats, lakera: LakeraClient,
                 flows: Mapping[http.HTTPFlow, object]) -> None:
        self.stats = stats
        self.lakera = lakera
        self.flows = flows

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        flows = CounterMetricFamily(
            f"{PREFIX}_flows", "Sides of routed flows decided, by route, side (request or "
            "response), verdict (clean, flagged, failure, unscanned) and action (allowed, "
            "blocked, masked).", labels=["route", "side", "verdict", "action"])
        for (route, side, verdict, action), n in sorted(stats.decisions.items()):
            flows.add_metric([route, side, verdict, action], n)
        yield flows
        detections = CounterMetricFamily(
            f"{PREFIX}_detections", "Detector types Lakera Guard reported as detected, once "
            "per screened side of a flow (types of unknown shape: other).",
            labels=["side", "detector_type"])
        for (side, kind), n in sorted(stats.detections.items()):
            detections.add_metric([side, kind], n)
        yield detections
        failures = CounterMetricFamily(
            f"{PREFIX}_failures", "Screenings that ended in a failure (Lakera's or the "
            "addon's: too large, unreadable, ...), by kind; fail_open decides what they do.",
            labels=["kind"])
        for kind, n in sorted(stats.failures.items()):
            failures.add_metric([failure_label(kind)], n)
        yield failures
        hits = CounterMetricFamily(
            f"{PREFIX}_cache_hits", "Lakera calls not made: an identical call's verdict reused "
            "(cache=verdict: verdict_cache_seconds; cache=tool_set: tool definitions screened "
            "once per set).", labels=["cache"])
        hits.add_metric(["verdict"], self.lakera.cache.hits)
        hits.add_metric(["tool_set"], self.lakera.tool_sets.hits)
        yield hits
        count, size = held(self.flows)
        yield GaugeMetricFamily(
            f"{PREFIX}_held_flows", "Routed flows the addon keeps in memory now: from the "
            "prompt's screening until the answer is decided.", value=count)
        yield GaugeMetricFamily(
            f"{PREFIX}_held_bytes", "Body bytes of those flows (the request, and the answer "
            "once it is read whole).", value=size)
        reloads = CounterMetricFamily(
            f"{PREFIX}_config_reloads", "Reloads of lakera_config after start, by result "
            "(success, failure).", labels=["result"])
        for result in ("success", "failure"):
            reloads.add_metric([result], stats.config_reloads[result])
        yield reloads
        yield GaugeMetricFamily(
            f"{PREFIX}_config_last_reload_success", "1 if the last reload of lakera_config "
            "succeeded (or none was tried), 0 if it failed (the previous configuration is in "
            "force).", value=1 if stats.config_last_reload_ok else 0)


def held(flows: Mapping[http.HTTPFlow, object]) -> tuple[int, int]:
    """(flows, body bytes) of the flows the addon keeps state for."""
    count = size = 0
    for flow in list(flows):  # (a copy: a weak mapping may lose keys meanwhile)
        count += 1
        size += len(flow.request.raw_content or b"")
        if flow.response is not None:
            size += len(flow.response.raw_content or b"")
    return count, size


class Metrics:
    """The registry `/metrics` renders, and the histograms the addon observes."""

    def __init__(self, stats: Stats, lakera: LakeraClient,
                 flows: Mapping[http.HTTPFlow, object]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(stats, lakera, flows))
        self.lakera_latency = Histogram(
            f"{PREFIX}_lakera_latency_seconds", "Lakera Guard calls: time from sending to the "
            "answer or the failure (cached verdicts are not calls).",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.added_latency = Histogram(
            f"{PREFIX}_added_latency_seconds", "Time a flow waited on the addon, Lakera's "
            "calls included: a prompt from the request hook until it went on or was denied, "
            "a held answer from its end until released or denied.", ["side"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self._added = {side: self.added_latency.labels(side)
                       for side in ("request", "response")}

    def lakera_call(self, verdict: Verdict) -> None:
        self.lakera_latency.observe(verdict.latency_ms / 1000)

    def added(self, side: Side, seconds: float) -> None:
        self._added[side].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
