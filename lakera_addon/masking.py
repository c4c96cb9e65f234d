"""Masking the personal data Lakera reports (its `payload`) with placeholders naming its type.

Lakera's span offsets are not documented in their units or end (reference/lakera-guard-api.md
section 4). So a span is only trusted once the text it reports is found exactly where its
offsets point, read as code points, UTF-16 units or UTF-8 bytes, with an exclusive or an
inclusive end, one reading for all spans of a verdict; a span that matches under no common
reading, or a masked detector that fired in a message without a usable span, is a `MaskError`:
the caller then decides by `fail_open` and never passes unmasked text on as masked.

What is masked is the text, not the offsets: every occurrence of each confirmed text is replaced
in every string of the body (the same address in an older turn Lakera did not see, in a tool
call's arguments, in a second choice), so nothing the detector found survives elsewhere.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from lakera_addon.configuration import Settings
from lakera_addon.extract import Message
from lakera_addon.failures import MaskError
from lakera_addon.verdict import Verdict


def placeholder(detector_type: str) -> str:
    """`pii/email` → `[EMAIL]`, `pii/phone_number` → `[PHONE_NUMBER]`."""
    name = detector_type.rsplit("/", 1)[-1] or detector_type
    return f"[{name.upper()}]"


def _from_utf16(content: str, units: int) -> int | None:
    encoded = content.encode("utf-16-le", "surrogatepass")
    if not 0 <= units * 2 <= len(encoded):
        return None
    try:
        return len(encoded[: units * 2].decode("utf-16-le"))
    except UnicodeDecodeError:  # inside a surrogate pair
        return None


def _from_utf8(content: str, offset: int) -> int | None:
    encoded = content.encode("utf-8", "surrogatepass")
    if not 0 <= offset <= len(encoded):
        return None
    try:
        return len(encoded[:offset].decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError:  # inside a character
        return None


def _code_points(content: str, offset: int) -> int | None:
    return offset if 0 <= offset <= len(content) else None


# (name, offset → code points, end inclusive?)
READINGS: tuple[tuple[str, Callable[[str, int], int | None], bool], ...] = tuple(
    (f"{name}{', inclusive end' if inclusive else ''}", convert, inclusive)
    for name, convert in (("code points", _code_points), ("UTF-16 units", _from_utf16),
                          ("UTF-8 bytes", _from_utf8))
    for inclusive in (False, True)
)


def _span_fields(span: dict[str, Any]) -> tuple[str, int, int, int, str]:
    kind, index = span.get("detector_type"), span.get("message_id", 0)
    start, end, text = span.get("start"), span.get("end"), span.get("text")
    if not (isinstance(kind, str) and type(index) is int and type(start) is int
            and type(end) is int and isinstance(text, str) and text):
        raise MaskError("a span Lakera reported is malformed")
    return kind, index, start, end, text


def _matches(content: str, start: int, end: int, text: str,
             convert: Callable[[str, int], int | None], inclusive: bool) -> bool:
    s, e = convert(content, start), convert(content, end + 1 if inclusive else end)
    return s is not None and e is not None and content[s:e] == text


def confirmed_texts(
    contents: Sequence[str],
    payload: Sequence[dict[str, Any]],
    masked_types: Sequence[str],
    detected: Sequence[tuple[str, int]] = (),
) -> dict[str, str]:
    """The texts to mask (text → placeholder), from the spans of the masked detector types that
    match `contents` under one common reading. Every masked type that fired, and every
    (type, message) the breakdown marks as detected, needs a usable span."""
    wanted = set(masked_types)
    spans = []
    for span in payload:
        if not isinstance(span, dict):
            raise MaskError("a span Lakera reported is malformed")
        fields = _span_fields(span)
        if fields[0] in wanted:
            if not 0 <= fields[1] < len(contents):
                raise MaskError("a span Lakera reported names a message it was not sent")
            spans.append(fields)
    for _, convert, inclusive in READINGS:
        if all(_matches(contents[i], s, e, t, convert, inclusive) for _, i, s, e, t in spans):
            break
    else:
        raise MaskError("the spans Lakera reported do not match the text it was sent")
    found_types = {kind for kind, *_ in spans}
    found_pairs = {(kind, index) for kind, index, *_ in spans}
    missing = sorted(wanted - found_types) + sorted(
        f"{kind} (message {index})" for kind, index in detected
        if kind in wanted and (kind, index) not in found_pairs)
    if missing:
        raise MaskError(f"flagged {', '.join(missing)} without a usable span to mask")
    return {text: placeholder(kind) for kind, _, _, _, text in spans}


class Masker:
    """Replaces every occurrence of the confirmed texts, longest first, and counts them."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts
        self.counts: Counter[str] = Counter()
        self.replaced: set[str] = set()  # the confirmed texts found and replaced
        ordered = sorted(texts, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def text(self, value: str) -> str:
        if self._pattern is None:
            return value

        def name(match: re.Match[str]) -> str:
            self.replaced.add(match.group(0))
            self.counts[self.texts[match.group(0)]] += 1
            return self.texts[match.group(0)]

        return self._pattern.sub(name, value)

    def check_all_replaced(self) -> None:
        """MaskError unless every confirmed text was found and replaced: one that was not is
        in the body in another form than the text screened (inside a base64 attachment the
        addon decoded, say), and would go on unmasked."""
        if set(self.texts) - self.replaced:
            raise MaskError("a text to mask is not in the body as such (an encoded "
                            "attachment?)")

    def document(self, node: Any) -> Any:
        """A JSON document with the texts masked in every string value and key."""
        if isinstance(node, str):
            return self.text(node)
        if isinstance(node, list):
            return [self.document(item) for item in node]
        if isinstance(node, dict):
            return {self.text(key) if isinstance(key, str) else key: self.document(value)
                    for key, value in node.items()}
        return node


def confirmed(settings: Settings, sent: Sequence[Message], verdict: Verdict) -> dict[str, str]:
    """The texts to mask (text → placeholder) that a verdict's spans confirm in the messages
    it was given: those of the detector types whose action is `mask`."""
    if not verdict.flagged:
        return {}
    types = [t for t in verdict.detector_types if settings.action_for(t) == "mask"]
    detected = [(str(e.get("detector_type")), e["message_id"]) for e in verdict.breakdown
                if e.get("detected") is True and type(e.get("message_id")) is int]
    return confirmed_texts([m["content"] for m in sent], verdict.payload, types, detected)
