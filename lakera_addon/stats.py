"""Counters of what the addon decided, for the `lakera.stats` command and the summary logged
at shutdown: flows screened, flagged, blocked, failures by kind, Lakera latency p50/p95."""

from __future__ import annotations

import statistics
from collections import Counter
from collections import deque

from lakera_addon.decision import Decision
from lakera_addon.decision import Side
from lakera_addon.failures import FailureKind
from lakera_addon.verdict import Verdict

LATENCY_WINDOW = 10_000  # the most recent Lakera latencies kept for the percentiles

class Stats:
    def __init__(self) -> None:
        self.screened: Counter[Side] = Counter()
        self.flagged: Counter[Side] = Counter()
        self.blocked: Counter[Side] = Counter()
        self.unscanned: Counter[Side] = Counter()
        self.failures: Counter[FailureKind] = Counter()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.cached = 0  # verdicts reused from an identical call (verdict_cache_seconds)

    def observe(self, side: Side, decision: Decision, verdict: Verdict | None) -> None:
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
                f"cached verdicts {self.cached}")
