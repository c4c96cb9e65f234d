"""Counters behind `lakera.stats` and the shutdown summary (lakera_addon.stats)."""

from __future__ import annotations

from mitmproxy.test import taddons

from lakera_addon.decision import Decision
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.failures import lakera_status
from lakera_addon.guard_addon import LakeraGuard
from lakera_addon.stats import Stats
from lakera_addon.verdict import Verdict


def test_summary_counts_and_percentiles() -> None:
    stats = Stats()
    for ms in range(1, 101):
        stats.observe("request", Decision("clean", False), Verdict(False, latency_ms=float(ms)))
    stats.observe("request", Decision("flagged", True), Verdict(True, latency_ms=50.0))
    stats.observe("response", Decision("flagged", False), Verdict(True, latency_ms=50.0))
    stats.observe("response", Decision("failure", True, "Lakera Guard returned status 429",
                                       kind=FailureKind.STATUS_429),
                  Verdict(False, failure=Failure(
                      lakera_status(429), "Lakera Guard returned status 429"), latency_ms=9.0))
    stats.observe("request", Decision("unscanned", False, "no text"), None)
    summary = stats.summary()
    assert "screened 103 (101 requests, 2 responses)" in summary
    assert "flagged 2 (1 requests, 1 responses)" in summary
    assert "blocked 2 (1 requests, 1 responses)" in summary
    assert "not screened 1 (1 requests, 0 responses)" in summary
    assert "failures: status 429 1" in summary
    assert "p50 50 ms, p95 95 ms over 102 calls" in summary  # failures carry no latency


def test_lakera_stats_is_a_mitmproxy_command() -> None:
    addon = LakeraGuard()
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        addon.counters.observe("request", Decision("clean", False), Verdict(False, latency_ms=7))
        result = tctx.master.commands.call("lakera.stats")
    assert result.startswith("lakera stats: screened 1 (1 requests, 0 responses)")
