"""One decision per scan (SPEC section 5), and the text of a deny (SPEC section 6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lakera_addon.configuration import Settings
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.verdict import Verdict

Side = Literal["request", "response"]
Outcome = Literal["clean", "flagged", "failure", "unscanned"]


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    deny: bool
    reason: str | None = None  # for failures and unscanned flows: why, without any content
    mask: bool = False  # flagged, and the strictest action of its detectors is `mask`
    kind: FailureKind | None = None  # for failures: what kind (stats and audit read it)


def decide(verdict: Verdict, settings: Settings) -> Decision:
    if verdict.failure is not None:
        return decide_failure(verdict.failure, settings)
    if verdict.flagged:
        action = strictest_action(verdict, settings)
        return Decision("flagged", deny=action == "block", mask=action == "mask")
    return Decision("clean", deny=False)


_STRICTNESS = {"alert": 0, "mask": 1, "block": 2}


def strictest_action(verdict: Verdict, settings: Settings) -> str:
    """block > mask > alert among the detectors that fired (`detector_actions`); detector
    types no glob names, and a flag that names no detector, take `action`."""
    actions = [settings.action_for(kind) for kind in verdict.detector_types]
    return max(actions or [settings.action], key=_STRICTNESS.__getitem__)


def decide_failure(failure: Failure, settings: Settings) -> Decision:
    """A failure: Lakera's, or the addon's own (a body it cannot screen, too large, cut short).
    `fail_open` decides, whatever the action (SPEC section 5)."""
    return Decision("failure", deny=not settings.fail_open, reason=failure.reason,
                    kind=failure.kind)


def _categories(verdict: Verdict) -> str:
    shown = []
    for kind in verdict.detector_types:
        results = {
            str(e["result"])
            for e in verdict.breakdown
            if e.get("detector_type") == kind and e.get("detected") is True and e.get("result")
        }
        shown.append(f"{kind} ({', '.join(sorted(results))})" if results else kind)
    return ", ".join(shown)


def deny_text(side: Side, verdict: Verdict | None, settings: Settings) -> str:
    """The refusal's text: the failure message, plus the categories when configured."""
    text = (
        settings.request_failure_message
        if side == "request"
        else settings.response_failure_message
    )
    if (
        settings.reveal_failure_categories
        and verdict is not None
        and verdict.flagged
        and verdict.detector_types
    ):
        text = f"{text}. Flagged categories: {_categories(verdict)}"
    return text
