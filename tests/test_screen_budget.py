"""Fitting conversations and answers into one Lakera call (lakera_addon.screen_budget)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from lakera_addon.extract import Message
from lakera_addon.screen_budget import fit_request
from lakera_addon.screen_budget import split_text
from tests.fuzz import examples


def m(role: str, size: int, tag: str = "") -> Message:
    return {"role": role, "content": (tag + "x" * size)[:size]}


@pytest.mark.parametrize(
    ("sizes", "limit", "kept", "dropped"),
    [
        ([("system", 10), ("user", 10)], 100, [0, 1], 0),  # fits: unchanged
        ([("system", 10), ("user", 50), ("assistant", 50), ("user", 30)], 100, [0, 2, 3], 1),
        ([("user", 50), ("system", 10), ("user", 50), ("user", 30)], 100, [1, 2, 3], 1),
        ([("system", 10), ("user", 30), ("user", 80), ("user", 30)], 100, [0, 3], 2),  # suffix
        ([("user", 40), ("tool", 40), ("user", 40)], 100, [1, 2], 1),
    ],
)
def test_fit_request_keeps_system_and_most_recent(sizes, limit, kept, dropped) -> None:
    messages = [m(role, size, f"#{i}") for i, (role, size) in enumerate(sizes)]
    fitted = fit_request(messages, limit)
    assert fitted is not None
    assert fitted.messages == [messages[i] for i in kept]
    assert fitted.dropped == dropped


@pytest.mark.parametrize(
    "sizes",
    [[("system", 90), ("user", 20)], [("user", 10), ("user", 101)], [("system", 101)]],
)
def test_fit_request_gives_up_when_nothing_sensible_fits(sizes) -> None:
    assert fit_request([m(role, size) for role, size in sizes], 100) is None


def test_sizes_are_utf8_bytes() -> None:
    messages: list[Message] = [{"role": "user", "content": "é" * 60}]
    assert fit_request(messages, 119) is None
    assert fit_request(messages, 120) is not None


@pytest.mark.parametrize(
    ("text", "limit", "overlap", "parts"),
    [
        ("abcdef", 10, 2, ["abcdef"]),
        ("abcdefghij", 4, 1, ["abcd", "defg", "ghij"]),
        ("ééé", 4, 0, ["éé", "é"]),  # never cuts inside a character
    ],
)
def test_split_text_table(text, limit, overlap, parts) -> None:
    assert split_text(text, limit, overlap) == parts


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.characters(), unique=True, max_size=300).map("".join),
       st.integers(8, 64), st.integers(0, 40))
def test_split_text_covers_everything_within_the_limit(text, limit, overlap) -> None:
    """Characters are unique, so where one part continues the previous one is unambiguous."""
    parts = split_text(text, limit, overlap)
    assert all(len(p.encode("utf-8", "surrogatepass")) <= limit for p in parts)
    # consecutive parts overlap or touch: every character of the text is in some part
    rebuilt = parts[0]
    for part in parts[1:]:
        shared = next(k for k in range(min(len(rebuilt), len(part)), -1, -1)
                      if rebuilt.endswith(part[:k]))
        rebuilt += part[shared:]
    assert rebuilt == text


@settings(max_examples=examples(200), deadline=None)
@given(st.text(alphabet="ab", min_size=200, max_size=600), st.integers(40, 80))
def test_a_phrase_shorter_than_the_overlap_is_whole_in_some_part(text, limit) -> None:
    phrase = "NEEDLE"
    at = len(text) // 2
    text = text[:at] + phrase + text[at:]
    assert any(phrase in p for p in split_text(text, limit, overlap=limit // 2))

