"""What one Lakera call established (SPEC section 4): a verdict, or a failure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from lakera_addon.failures import Failure


@dataclass(frozen=True, slots=True)
class Verdict:
    """Exactly one of `flagged`/`failure` is meaningful: `failure` is set (and `flagged` False)
    when Lakera could not give a verdict."""

    flagged: bool
    failure: Failure | None = None
    detector_types: tuple[str, ...] = ()
    breakdown: tuple[dict[str, Any], ...] = field(default=(), repr=False)
    request_uuid: str | None = None
    latency_ms: float = 0.0
    # Lakera's `payload` (asked for only when masking is configured): the spans it found
    payload: tuple[dict[str, Any], ...] = field(default=(), repr=False)
    cached: bool = False  # reused from an identical call (verdict_cache), Lakera not asked


def merge(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict for a text screened in parts: a failure if any part failed, else flagged if
    any part was flagged; detector types and breakdowns of all parts."""
    failed = next((v for v in verdicts if v.failure is not None), None)
    latency = max((v.latency_ms for v in verdicts), default=0.0)
    if failed is not None:
        return Verdict(False, failure=failed.failure, latency_ms=latency)
    types = tuple(dict.fromkeys(t for v in verdicts for t in v.detector_types))
    flagged = next((v for v in verdicts if v.flagged), None)
    return Verdict(
        flagged is not None,
        detector_types=types,
        breakdown=tuple(e for v in verdicts for e in v.breakdown),
        request_uuid=(flagged or verdicts[0]).request_uuid if verdicts else None,
        latency_ms=latency,
    )
