"""Masking Lakera's spans (lakera_addon.masking) and choosing the strictest detector action."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from lakera_addon import extract
from lakera_addon.configuration import Settings
from lakera_addon.decision import decide
from lakera_addon.decision import strictest_action
from lakera_addon.lakera_client import Verdict
from lakera_addon.masking import MaskError
from lakera_addon.masking import apply
from lakera_addon.masking import locate
from lakera_addon.masking import mask_request
from lakera_addon.masking import placeholder
from lakera_addon.masking import plan

EMAIL = "jane.doe@example.com"


def span(text: str, start: int, end: int, kind: str = "pii/email", mid: int = 0) -> dict[str, Any]:
    return {"start": start, "end": end, "text": text, "detector_type": kind, "message_id": mid}


@pytest.mark.parametrize(
    ("content", "start", "end", "expected"),
    [
        (f"mail {EMAIL} now", 5, 25, (5, 25)),  # code points, exclusive end
        (f"mail {EMAIL} now", 5, 24, (5, 25)),  # inclusive end
        (f"😀 mail {EMAIL}", 8, 28, (7, 27)),  # UTF-16 units: the emoji counts 2
        (f"é mail {EMAIL}", 8, 28, (7, 27)),  # UTF-8 bytes: é counts 2
        (f"ÿ😀 {EMAIL}", 3, 23, (3, 23)),  # code points win when they match
    ],
)
def test_locate_checks_the_text_in_any_unit(content, start, end, expected) -> None:
    assert locate(content, span(EMAIL, start, end)) == expected


@pytest.mark.parametrize(
    "bad",
    [span(EMAIL, 8, 28), span(EMAIL, 0, 5), {"start": 1, "text": EMAIL}, span("", 0, 0),
     span(EMAIL, -5, 15)],
)
def test_locate_refuses_spans_that_do_not_match(bad) -> None:
    with pytest.raises(MaskError):
        locate(f"mail {EMAIL} now", bad)


@pytest.mark.parametrize(
    ("kind", "name"),
    [("pii/email", "[EMAIL]"), ("pii/phone_number", "[PHONE_NUMBER]"), ("pii", "[PII]"),
     ("pii/credit_card", "[CREDIT_CARD]")],
)
def test_placeholders(kind, name) -> None:
    assert placeholder(kind) == name


def test_overlapping_spans_become_one_placeholder() -> None:
    assert apply("abcdefgh", [(1, 4, "[A]"), (3, 6, "[B]"), (7, 8, "[C]")]) == "a[A]g[C]"


def test_plan_needs_a_span_for_every_masked_type() -> None:
    contents = [f"mail {EMAIL}"]
    with pytest.raises(MaskError, match="pii/credit_card without a usable span"):
        plan(contents, [span(EMAIL, 5, 25)], ["pii/email", "pii/credit_card"])
    with pytest.raises(MaskError, match="names a message it was not sent"):
        plan(contents, [span(EMAIL, 5, 25, mid=3)], ["pii/email"])
    replacements, counts = plan(contents, [span(EMAIL, 5, 25), span("x", 0, 1, "other")],
                                ["pii/email"])
    assert replacements == {0: [(5, 25, "[EMAIL]")]} and counts == Counter({"[EMAIL]": 1})


def test_mask_request_in_the_strings_the_messages_came_from() -> None:
    body: dict[str, Any] = {"model": "m", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "first part"},
                                     {"type": "image_url", "image_url": {"url": "x"}},
                                     {"type": "text", "text": f"write to {EMAIL} please"}]},
        {"role": "user", "content": f"cc {EMAIL}"}]}
    messages = extract.request_messages("openai-chat", body)
    assert isinstance(messages, extract.Messages)
    sent = messages[1:]  # as if the system prompt had not been sent
    sources = messages.sources[1:]
    payload = [span(EMAIL, 20, 40, mid=0), span(EMAIL, 3, 23, mid=1)]
    replacements, _ = plan([m["content"] for m in sent], payload, ["pii/email"])
    masked = mask_request(body, sent, sources, replacements)
    assert masked["messages"][1]["content"][0] == {"type": "text", "text": "first part"}
    assert masked["messages"][1]["content"][2]["text"] == "write to [EMAIL] please"
    assert masked["messages"][2]["content"] == "cc [EMAIL]"
    assert body["messages"][2]["content"] == f"cc {EMAIL}"  # the original is not changed


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
