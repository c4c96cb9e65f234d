"""Counters of what the addon decided, for the `lakera.stats` command and the summary logged
at shutdown: flows screened, flagged, blocked, failures by kind, Lakera latency p50/p95, and
reloads of the configuration file (config_watch.py)."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections import deque
from typing import Literal

from lakera_addon.decision import Decision
from lakera_addon.decision import Outcome
from lakera_addon.decision import Side
from lakera_addon.failures import FailureKind
from lakera_addon.verdict import Verdict

LATENCY_WINDOW = 10_000  # the most recent Lakera latencies kept for the percentiles

Action = Literal["allowed", "blocked", "masked"]  # what the flow's side got (as the audit log)

# Lakera's detector types (lakera-guard-api.md section 5), counted by name (metrics.py); a type
# of another shape is counted as "other", and so is any past MAX_DETECTOR_TYPES distinct names,
# so that a metric label stays bounded whatever Lakera answers.
KNOWN_DETECTOR_TYPE = re.compile(
    r"(prompt_attack|unknown_links?|(moderated_content|pii|custom)/[a-z0-9_]{1,40})")
MAX_DETECTOR_TYPES = 40

class Stats:
    def __init__(self) -> None:
        self.screened: Counter[Side] = Counter()
        self.flagged: Counter[Side] = Counter()
        self.blocked: Counter[Side] = Counter()
        self.unscanned: Counter[Side] = Counter()
        self.failures: Counter[FailureKind] = Counter()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.cached = 0  # verdicts reused from an identical call (verdict_cache_seconds)
        # every decision by (route, side, verdict, action), and the detector types that fired
        # by (side, type), for the Prometheus metrics (metrics.py)
        self.decisions: Counter[tuple[str, Side, Outcome, Action]] = Counter()
        self.detections: Counter[tuple[Side, str]] = Counter()
        self._detector_types: set[str] = set()  # the types counted by name so far
        # reloads of `lakera_config` after start ("success" / "failure"); a failed one leaves
        # the previous configuration in force
        self.config_reloads: Counter[str] = Counter()
        self.config_last_reload_ok = True

    def observe(self, side: Side, decision: Decision, verdict: Verdict | None,
                route: str = "", masked: bool = False) -> None:
        action: Action = "blocked" if decision.deny else "masked" if masked else "allowed"
        self.decisions[(route, side, decision.outcome, action)] += 1
        for kind in verdict.detector_types if verdict is not None else ():
            self.detections[(side, self._detector_label(kind))] += 1
        if decision.outcome == "unscanned":
            self.unscanned[side] += 1
            return
        self.screened[side] += 1
        if verdict is not None and verdict.cached:
            self.cached += 1
        if decision.outcome == "flagged":
            self.flagged[side] += 1
        if decision.outcome == "failure":
            self.failures[decision.kind or FailureKind.INTERNAL] += 1
        if decision.deny:
            self.blocked[side] += 1
        if verdict is not None and verdict.latency_ms and verdict.failure is None:
            self.latencies.append(verdict.latency_ms)

    def _detector_label(self, kind: str) -> str:
        if kind in self._detector_types:
            return kind
        if not KNOWN_DETECTOR_TYPE.fullmatch(kind) or (
                len(self._detector_types) >= MAX_DETECTOR_TYPES):
            return "other"
        self._detector_types.add(kind)
        return kind

    def reloaded(self, ok: bool) -> None:
        self.config_reloads["success" if ok else "failure"] += 1
        self.config_last_reload_ok = ok

    def percentile(self, q: int) -> float | None:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else None
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]

    def summary(self) -> str:
        def sides(counter: Counter[Side]) -> str:
            return (f"{counter['request'] + counter['response']} "
                    f"({counter['request']} requests, {counter['response']} responses)")

        p50, p95 = self.percentile(50), self.percentile(95)
        latency = (f"p50 {p50:.0f} ms, p95 {p95:.0f} ms over {len(self.latencies)} calls"
                   if p50 is not None and p95 is not None else "no calls yet")
        failures = ", ".join(f"{kind} {n}" for kind, n in self.failures.most_common()) or "none"
        return (f"lakera stats: screened {sides(self.screened)}; flagged {sides(self.flagged)}; "
                f"blocked {sides(self.blocked)}; not screened {sides(self.unscanned)}; "
                f"failures: {failures}; Lakera latency {latency}; "
                f"cached verdicts {self.cached}; config reloads "
                f"{self.config_reloads['success']} ok, {self.config_reloads['failure']} failed"
                + ("" if self.config_last_reload_ok else " (the last failed)"))
