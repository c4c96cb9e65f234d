"""What can go wrong while screening, as types: the kinds of failure the policy, the stats and
the audit log read, and the one small family of exceptions the addon raises for them.

A failure is anything that stops a flow from getting a verdict (SPEC section 4 and 5): Lakera
not answering properly, or the addon unable to screen a body. `fail_open` decides what a failure
does. A body that is not a request of any LLM protocol is not a failure but "unreadable", and
`fail_mode` decides (SPEC section 2). No code branches on the text of a reason: the reason is
for people, the kind is for code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar


class FailureKind(StrEnum):
    """The kinds of failure; the value is the label the stats summary shows."""

    TIMEOUT = "timeout"  # Lakera did not answer within `timeout`
    UNREACHABLE = "unreachable"  # no connection to Lakera
    STATUS_401 = "status 401"
    STATUS_429 = "status 429"
    STATUS_4XX = "status 4xx"  # another client error: this call's (its size, its content)
    STATUS_OTHER = "status 5xx/other"
    NOT_JSON = "not JSON"  # Lakera's answer is not a JSON object
    NO_VERDICT = "no verdict"  # Lakera's answer has no boolean `flagged`
    TOO_LARGE = "too large"  # past max_body_bytes or max_screen_bytes
    TOO_DEEP = "too deep"  # valid JSON nested deeper than the parser goes
    ANSWER_UNREADABLE = "answer unreadable"  # a JSON answer that cannot be read
    STREAM_UNREADABLE = "stream unreadable"  # a streamed answer that cannot be assembled
    STREAM_INCOMPLETE = "stream incomplete"  # a held stream that ended before its end
    MASK = "cannot mask"  # masking could not be done safely
    INTERNAL = "internal error"  # a bug in the addon


@dataclass(frozen=True, slots=True)
class Failure:
    """A failure: its kind, and a one-line reason without any content or key."""

    kind: FailureKind
    reason: str

    def __str__(self) -> str:
        return self.reason


def lakera_status(status: int) -> FailureKind:
    """The kind of failure of a non-2xx status from Lakera."""
    if status in (401, 429):
        return FailureKind.STATUS_401 if status == 401 else FailureKind.STATUS_429
    return FailureKind.STATUS_4XX if 400 <= status < 500 else FailureKind.STATUS_OTHER


class GuardError(Exception):
    """Base of the addon's own exceptions. The message is one line without content."""


class CannotScreen(GuardError):
    """A body or answer the addon cannot screen: a failure, `fail_open` decides."""

    kind: ClassVar[FailureKind] = FailureKind.INTERNAL

    def failure(self, prefix: str = "") -> Failure:
        return Failure(self.kind, f"{prefix}{self}")


class TooLarge(CannotScreen):
    """Larger than `max_body_bytes` (or, once decoded, than that)."""

    kind = FailureKind.TOO_LARGE


class TooDeep(CannotScreen):
    """Valid JSON nested deeper than Python's parser goes: it cannot be screened, but an
    upstream may well accept it, so it is a failure (`fail_open`), not an unreadable body."""

    kind = FailureKind.TOO_DEEP


class MaskError(CannotScreen):
    """Masking cannot be done safely; the message names why, without any content."""

    kind = FailureKind.MASK


class UnreadableBody(GuardError):
    """A matched request whose body no LLM upstream would take as a request (not JSON, not a
    JSON object): `fail_mode` decides."""
