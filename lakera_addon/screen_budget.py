"""Fitting what is screened into one Lakera call's size limit.

Lakera Guard documents a maximum content size per request: 128 kB on its SaaS plans, up to
1 MB on enterprise ones, configurable when self-hosted (reference/lakera-guard-api.md section
7); `max_screen_bytes` sets it. Long agent conversations pass it easily.

- A request keeps its system messages and then the most recent turns, as many whole messages as
  fit, in their original order: the newest input is what a turn adds, the system prompt frames
  it. If the system prompt and the newest message alone do not fit, nothing sensible does.
- An answer is screened whole, in consecutive overlapping parts that each fit, so that nothing
  the client receives goes unscreened and a phrase cut by a part boundary is still seen whole.
Sizes are UTF-8 bytes of the text (a lone surrogate, which JSON allows, counts as three).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass

from lakera_addon.extract import Message
from lakera_addon.stream_events import SEPARATOR
from lakera_addon.stream_events import Key

PART_OVERLAP_BYTES = 2000


def _size(message: Message) -> int:
    content = message["content"]
    if content.isascii():  # a flag of the string: no encoding, no copy
        return len(content)
    return len(content.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class Fitted:
    messages: list[Message]
    dropped: int  # messages left out (older turns)


def fit_request(messages: Sequence[Message], limit: int) -> Fitted | None:
    """The messages to send within `limit` bytes, or None when even the system prompt and the
    most recent message do not fit."""
    if sum(_size(m) for m in messages) <= limit:
        return Fitted(list(messages), 0)
    keep = {i for i, m in enumerate(messages) if m["role"] == "system"}
    budget = limit - sum(_size(messages[i]) for i in keep)
    latest = next((i for i in reversed(range(len(messages))) if i not in keep), None)
    for i in reversed(range(len(messages))):
        if i in keep:
            continue
        size = _size(messages[i])
        if size > budget:
            break
        keep.add(i)
        budget -= size
    if budget < 0 or (latest is not None and latest not in keep):
        return None
    return Fitted([messages[i] for i in sorted(keep)], len(messages) - len(keep))


def split_text(text: str, limit: int, overlap: int = PART_OVERLAP_BYTES) -> list[str]:
    """`text` in consecutive parts of at most `limit` UTF-8 bytes, each starting `overlap`
    bytes (at most half a part) before the previous one ended; cuts fall between characters."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return [text]
    overlap = min(overlap, limit // 2)
    parts: list[str] = []
    start = 0
    while True:
        end = min(start + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # not inside a character
            end -= 1
        parts.append(data[start:end].decode("utf-8", "surrogatepass"))
        if end >= len(data):
            return parts
        next_start = max(end - overlap, start + 1)
        while (data[next_start] & 0xC0) == 0x80:
            next_start += 1
        start = next_start


def batches(messages: Sequence[Message], limit: int) -> list[list[Message]] | None:
    """Consecutive messages packed into calls of at most `limit` bytes each; None if one
    message alone is larger."""
    packed: list[list[Message]] = []
    size = 0
    for message in messages:
        length = _size(message)
        if length > limit:
            return None
        if not packed or size + length > limit:
            packed.append([])
            size = 0
        packed[-1].append(message)
        size += length
    return packed



def window_views(text: str, views: Callable[[], Sequence[tuple[Key, str]]],
                 clean: Mapping[Key, int], limit: int) -> list[str]:
    """What to screen of a growing answer (`stream_mode: windowed`): all of `text` while it
    fits one call; past that, of each of its views (the parts, the snapshots, the answer in
    the order it came: Texts.views) the text from a little before where the clean scans
    reached in it (`clean`: each view's length they covered), in parts that each fit. Each
    view is counted on its own, so a part that grows after a later one (interleaved choices
    or blocks, reasoning after the answer) is screened where it grew. `views` is called only
    then: joining every part again is work a text that fits does not need."""
    parts = split_text(text, limit)
    if len(parts) == 1:
        return parts
    slices = [view[max(0, clean.get(key, 0) - PART_OVERLAP_BYTES):]
              for key, view in views() if len(view) > clean.get(key, 0)]
    return pack(slices, limit) or parts[-1:]  # (nothing new: a scan is only asked after growth)


def pack(texts: Sequence[str], limit: int) -> list[str]:
    """`texts` in as few parts of at most `limit` UTF-8 bytes as they fit, joined with a blank
    line (a text larger than `limit` split as split_text does)."""
    packed: list[str] = []
    current: list[str] = []
    size = 0
    for text in texts:
        for piece in split_text(text, limit):
            length = len(piece.encode("utf-8", "surrogatepass")) + len(SEPARATOR)
            if current and size + length > limit:
                packed.append(SEPARATOR.join(current))
                current, size = [], 0
            current.append(piece)
            size += length
    if current:
        packed.append(SEPARATOR.join(current))
    return packed
