"""Masking Lakera's spans (lakera_addon.masking) and choosing the strictest detector action."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from lakera_addon.configuration import Settings
from lakera_addon.decision import decide
from lakera_addon.decision import strictest_action
from lakera_addon.failures import MaskError
from lakera_addon.masking import Masker
from lakera_addon.masking import confirmed_texts
from lakera_addon.masking import placeholder
from lakera_addon.verdict import Verdict

EMAIL = "jane.doe@example.com"


def span(text: str, start: int, end: int, kind: str = "pii/email", mid: int = 0) -> dict[str, Any]:
    return {"start": start, "end": end, "text": text, "detector_type": kind, "message_id": mid}


@pytest.mark.parametrize(
    ("content", "start", "end"),
    [
        (f"mail {EMAIL} now", 5, 25),  # code points, exclusive end
        (f"mail {EMAIL} now", 5, 24),  # inclusive end
        (f"😀 mail {EMAIL}", 8, 28),  # UTF-16 units: the emoji counts 2
        (f"é mail {EMAIL}", 8, 28),  # UTF-8 bytes: é counts 2
        (f"ÿ😀 {EMAIL}", 3, 23),  # code points
    ],
)
def test_spans_are_confirmed_in_any_unit(content, start, end) -> None:
    assert confirmed_texts([content], [span(EMAIL, start, end)], ["pii/email"]) == {
        EMAIL: "[EMAIL]"}


@pytest.mark.parametrize(
    "bad",
    [span(EMAIL, 8, 28), span(EMAIL, 0, 5), {"start": 1, "text": EMAIL, "detector_type":
     "pii/email"}, span("", 0, 0), span(EMAIL, -5, 15),
     {**span(EMAIL, 5, 25), "detector_type": ["pii/email"]},
     {**span(EMAIL, 5, 25), "message_id": True}, "not a span"],
)
def test_spans_that_do_not_match_or_are_malformed_are_refused(bad) -> None:
    with pytest.raises(MaskError):
        confirmed_texts([f"mail {EMAIL} now"], [bad], ["pii/email"])


def test_one_reading_for_all_spans() -> None:
    """Byte offsets of the first span, read as code points, would land on the second copy:
    the reading must be the one under which every span matches."""
    content = "日日日日a@b.cd  a@b.cd"
    spans = [span("a@b.cd", 12, 18), span("a@b.cd", 20, 26)]
    assert confirmed_texts([content], spans, ["pii/email"]) == {"a@b.cd": "[EMAIL]"}
    masker = Masker({"a@b.cd": "[EMAIL]"})
    assert masker.text(content) == "日日日日[EMAIL]  [EMAIL]"
    with pytest.raises(MaskError, match="do not match"):
        confirmed_texts([content], [span("a@b.cd", 4, 10), span("a@b.cd", 20, 26)],
                        ["pii/email"])


@pytest.mark.parametrize(
    ("kind", "name"),
    [("pii/email", "[EMAIL]"), ("pii/phone_number", "[PHONE_NUMBER]"), ("pii", "[PII]"),
     ("pii/credit_card", "[CREDIT_CARD]")],
)
def test_placeholders(kind, name) -> None:
    assert placeholder(kind) == name


def test_every_masked_type_and_detected_message_needs_a_span() -> None:
    contents = [f"mail {EMAIL}", f"again {EMAIL}"]
    with pytest.raises(MaskError, match="pii/credit_card without a usable span"):
        confirmed_texts(contents, [span(EMAIL, 5, 25)], ["pii/email", "pii/credit_card"])
    with pytest.raises(MaskError, match=r"pii/email \(message 1\) without a usable span"):
        confirmed_texts(contents, [span(EMAIL, 5, 25)], ["pii/email"],
                        detected=[("pii/email", 0), ("pii/email", 1)])
    with pytest.raises(MaskError, match="names a message it was not sent"):
        confirmed_texts(contents, [span(EMAIL, 5, 25, mid=3)], ["pii/email"])
    texts = confirmed_texts(contents, [span(EMAIL, 5, 25), span("x", 0, 1, "other")],
                            ["pii/email"], detected=[("pii/email", 0), ("other", 1)])
    assert texts == {EMAIL: "[EMAIL]"}


def test_masker_replaces_every_occurrence_everywhere_longest_first() -> None:
    masker = Masker({EMAIL: "[EMAIL]", "doe@example.com": "[EMAIL]", "4111": "[CREDIT_CARD]"})
    body: dict[str, Any] = {"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": f"to {EMAIL}, {EMAIL}"}]},
        {"role": "assistant", "tool_calls": [{"function": {
            "arguments": f'{{"to": "{EMAIL}", "card": "4111"}}'}}]},
        {"role": "user", "content": "x"}], "metadata": {"x": "x"}}
    masked = masker.document(body)
    assert masked["messages"][0]["content"][0]["text"] == "to [EMAIL], [EMAIL]"
    assert masked["messages"][1]["tool_calls"][0]["function"]["arguments"] == (
        '{"to": "[EMAIL]", "card": "[CREDIT_CARD]"}')
    assert masked["messages"][2]["content"] == "x" and masked["metadata"] == {"x": "x"}
    assert masker.counts == Counter({"[EMAIL]": 3, "[CREDIT_CARD]": 1})
    assert body["messages"][0]["content"][0]["text"] == f"to {EMAIL}, {EMAIL}"  # unchanged


@pytest.mark.parametrize(
    ("actions", "fired", "default", "expected"),
    [
        ((), ("pii/email",), "block", "block"),
        ((("pii/*", "mask"),), ("pii/email",), "block", "mask"),
        ((("pii/*", "mask"), ("prompt_attack", "block")), ("pii/email", "prompt_attack"),
         "alert", "block"),
        ((("pii/*", "mask"), ("moderated_content/*", "alert")),
         ("pii/email", "moderated_content/hate"), "block", "mask"),
        ((("moderated_content/*", "alert"),), ("moderated_content/hate",), "block", "alert"),
        ((("pii/*", "mask"),), ("unknown_links",), "alert", "alert"),
        ((("pii/*", "mask"),), (), "block", "block"),  # a flag naming no detector
    ],
)
def test_strictest_action(actions, fired, default, expected) -> None:
    settings = Settings(action=default, detector_actions=actions)
    verdict = Verdict(True, detector_types=fired)
    assert strictest_action(verdict, settings) == expected
    decision = decide(verdict, settings)
    assert (decision.deny, decision.mask) == (expected == "block", expected == "mask")


def test_shadow_only_when_nothing_can_block_or_mask() -> None:
    assert Settings(action="alert", fail_open=True).shadow
    assert not Settings(action="alert", fail_open=True,
                        detector_actions=(("pii/*", "mask"),)).shadow
    assert Settings(action="alert", fail_open=True,
                    detector_actions=(("pii/*", "alert"),)).shadow
