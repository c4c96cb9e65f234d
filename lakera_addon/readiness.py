"""What `/healthz` and `/readyz` answer (health_server.py): plain functions of the addon's
state and the time, with a one-line reason each.

`/healthz`: the addon is loaded with a valid configuration (a reload that failed leaves the
previous one in force: still healthy, and the reason says so). `/readyz`: Lakera Guard can be
relied on: it answered since its last failure, or that failure is older than
`lakera_ready_failure_seconds`. A pod that has not called Lakera yet is ready: a new pod behind
a load balancer would otherwise never get the traffic that proves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lakera_addon.failures import FailureKind
from lakera_addon.verdict import Verdict

# The failures that say Lakera cannot be relied on right now. Not 401 (the key of one route),
# nor 429 (a quota all replicas share: taking this one out of the Service does not help), nor
# another 4xx (that call's own: a client could otherwise take replicas out at will).
OUTAGE = frozenset({FailureKind.TIMEOUT, FailureKind.UNREACHABLE, FailureKind.STATUS_OTHER,
                    FailureKind.NOT_JSON, FailureKind.NO_VERDICT})


@dataclass(frozen=True, slots=True)
class Probe:
    ok: bool
    reason: str

    def body(self) -> dict[str, str]:
        return {"status": "ok" if self.ok else "fail", "reason": self.reason}


@dataclass(slots=True)
class LakeraHealth:
    """When Lakera last answered and last failed (monotonic seconds), from every call made."""

    answered_at: float | None = None
    failed_at: float | None = None
    failure: str = ""  # the last failure's reason (no content, no key)

    def call(self, verdict: Verdict, now: float) -> None:
        if verdict.failure is None:
            self.answered_at = now
        elif verdict.failure.kind in OUTAGE:
            self.failed_at, self.failure = now, verdict.failure.reason


def readiness(health: LakeraHealth, now: float, failure_seconds: int) -> Probe:
    """Ready unless Lakera failed less than `failure_seconds` ago and has not answered since
    (0: Lakera's failures never make the addon unready)."""
    answered = health.answered_at
    if health.failed_at is None or (answered is not None and answered >= health.failed_at):
        if answered is None:
            return Probe(True, "no call to Lakera Guard yet")
        return Probe(True, f"Lakera Guard answered {now - answered:.1f} s ago")
    age = now - health.failed_at
    if failure_seconds <= 0 or age >= failure_seconds:
        return Probe(True, f"Lakera Guard's last failure was {age:.1f} s ago "
                           f"(lakera_ready_failure_seconds={failure_seconds}): {health.failure}")
    return Probe(False, f"Lakera Guard failed {age:.1f} s ago and has not answered since: "
                        f"{health.failure}; ready again on its next answer or "
                        f"{failure_seconds} s after the failure")


def liveness(source: str | None, routes: int, last_reload_ok: bool) -> Probe:
    """Healthy when a configuration is loaded (`source`: where from; None: none)."""
    if source is None:
        return Probe(False, "lakera_addon has no valid configuration loaded")
    reason = f"lakera guard active: config {source}; {routes} route(s)"
    if not last_reload_ok:
        reason += "; the last reload failed, the previous configuration is in force"
    return Probe(True, reason)
