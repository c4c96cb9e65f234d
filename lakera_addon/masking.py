"""Masking the spans Lakera reports (its `payload`) with placeholders naming their type.

Lakera's span offsets are not documented in their units or end (reference/lakera-guard-api.md
section 4). So a span is only used once the text it reports is found exactly where its offsets
point, read as code points, UTF-16 units or UTF-8 bytes, with an exclusive or an inclusive end;
a span that matches none, or a masked detector that fired without a usable span, is a
`MaskError`: the caller then decides by `fail_open` and never passes unmasked text on as masked.

Requests are masked in place: each message Lakera saw was joined from strings of the request
body (extract.Messages keeps those very string objects and their offsets), so a span is mapped
back to the strings it covers and each is replaced wherever it sits in the body.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from lakera_addon.extract import Message

Replacement = tuple[int, int, str]  # start, end (code points), placeholder


class MaskError(Exception):
    """Masking cannot be done safely; the message names why, without any content."""


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


_UNITS: tuple[Callable[[str, int], int | None], ...] = (
    lambda content, offset: offset if 0 <= offset <= len(content) else None,
    _from_utf16,
    _from_utf8,
)


def locate(content: str, span: dict[str, Any]) -> tuple[int, int]:
    """Code-point (start, end) of a reported span, checked against the text it reports."""
    start, end, text = span.get("start"), span.get("end"), span.get("text")
    if not (isinstance(start, int) and isinstance(end, int) and isinstance(text, str) and text):
        raise MaskError("a span Lakera reported has no usable start, end and text")
    for convert in _UNITS:
        for stop in (end, end + 1):
            s, e = convert(content, start), convert(content, stop)
            if s is not None and e is not None and content[s:e] == text:
                return s, e
    raise MaskError("a span Lakera reported does not match the text it was sent")


def plan(
    contents: Sequence[str],
    payload: Sequence[dict[str, Any]],
    masked_types: Sequence[str],
) -> tuple[dict[int, list[Replacement]], Counter[str]]:
    """Replacements per message index for the spans of the detector types to mask, and counts
    per placeholder. Every masked type that fired needs at least one usable span."""
    wanted = set(masked_types)
    found: set[str] = set()
    replacements: dict[int, list[Replacement]] = {}
    counts: Counter[str] = Counter()
    for span in payload:
        kind = span.get("detector_type")
        if kind not in wanted:
            continue
        index = span.get("message_id", 0)
        if not isinstance(index, int) or not 0 <= index < len(contents):
            raise MaskError("a span Lakera reported names a message it was not sent")
        start, end = locate(contents[index], span)
        replacements.setdefault(index, []).append((start, end, placeholder(str(kind))))
        counts[placeholder(str(kind))] += 1
        found.add(str(kind))
    missing = wanted - found
    if missing:
        raise MaskError(f"flagged {', '.join(sorted(missing))} without a usable span to mask")
    return replacements, counts


def apply(text: str, replacements: Sequence[Replacement]) -> str:
    """The text with each span replaced; overlapping spans become one placeholder."""
    merged: list[list[Any]] = []
    for start, end, name in sorted(replacements):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end, name])
    out, at = [], 0
    for start, end, name in merged:
        out += [text[at:start], name]
        at = end
    out.append(text[at:])
    return "".join(out)


def _replace_strings(node: Any, new: dict[int, str]) -> Any:
    """The body with every string object whose id is in `new` replaced (identity, not value:
    only the strings the messages were joined from)."""
    if isinstance(node, str):
        return new.get(id(node), node)
    if isinstance(node, list):
        return [_replace_strings(item, new) for item in node]
    if isinstance(node, dict):
        return {key: _replace_strings(value, new) for key, value in node.items()}
    return node


def mask_request(
    body: dict[str, Any],
    sent: Sequence[Message],
    sources: Sequence[Sequence[tuple[str, int]]],
    replacements: dict[int, list[Replacement]],
) -> dict[str, Any]:
    """The request body with the planned replacements made in the strings they came from.
    `sources[i]` are the (string, offset) pairs `sent[i]` was joined from."""
    per_string: dict[int, list[Replacement]] = {}
    strings: dict[int, str] = {}
    for index, planned in replacements.items():
        for start, end, name in planned:
            covered = False
            for string, offset in sources[index]:
                lo, hi = max(start, offset), min(end, offset + len(string))
                if lo < hi:
                    per_string.setdefault(id(string), []).append((lo - offset, hi - offset, name))
                    strings[id(string)] = string
                    covered = True
            if not covered:
                raise MaskError("a span falls between the parts of a message")
    new = {key: apply(strings[key], planned) for key, planned in per_string.items()}
    masked = _replace_strings(body, new)
    assert isinstance(masked, dict)
    return masked
