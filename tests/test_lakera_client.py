"""Classification of Lakera's answers (SPEC section 4) and the decision table (section 5)."""

import json

import pytest

from lakera_addon.configuration import Settings
from lakera_addon.decision import decide
from lakera_addon.decision import deny_text
from lakera_addon.failures import Failure
from lakera_addon.failures import lakera_status
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.lakera_client import build_payload
from lakera_addon.lakera_client import classify
from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.verdict import Verdict
from lakera_addon.verdict import merge

FLAGGED = json.dumps({
    "flagged": True,
    "metadata": {"request_uuid": "u-1"},
    "breakdown": [
        {"detector_type": "prompt_attack", "detected": True, "message_id": 0},
        {"detector_type": "pii/email", "detected": False, "message_id": 0},
        {"detector_type": "prompt_attack", "detected": True, "message_id": 1},
    ],
}).encode()


@pytest.mark.parametrize(
    ("status", "body", "flagged", "failure"),
    [
        (200, b'{"flagged": false}', False, None),
        (200, FLAGGED, True, None),
        (201, b'{"flagged": false}', False, None),
        (500, b'{"flagged": false}', False, "status 500"),
        (429, b"", False, "status 429"),
        (401, b'{"error":"Unauthorized"}', False, "status 401"),
        (200, b"<html>", False, "not JSON"),
        (200, b'{"flagged": tr', False, "not JSON"),
        (200, b"[]", False, "not an object"),
        (200, b'{"metadata": {}}', False, "no boolean 'flagged'"),
        (200, b'{"flagged": "true"}', False, "no boolean 'flagged'"),
        (200, b'{"flagged": null}', False, "no boolean 'flagged'"),
    ],
)
def test_classify(status, body, flagged, failure) -> None:
    verdict = classify(status, body, 1.0)
    assert verdict.flagged is flagged
    if failure is None:
        assert verdict.failure is None
    else:
        assert verdict.failure is not None and failure in verdict.failure.reason


def test_flagged_details() -> None:
    verdict = classify(200, FLAGGED, 3.0)
    assert verdict.detector_types == ("prompt_attack",)
    assert verdict.request_uuid == "u-1"
    assert len(verdict.breakdown) == 3


def test_payload() -> None:
    messages = [{"role": "user", "content": "x"}]
    assert build_payload(Settings(), messages) == {"messages": messages, "breakdown": True}
    assert build_payload(Settings(project_id="p"), messages)["project_id"] == "p"
    assert "payload" not in build_payload(Settings(project_id="p"), messages)


CLEAN = Verdict(False)
FLAG = Verdict(True, detector_types=("prompt_attack",))
FAIL = Verdict(False, failure=Failure(lakera_status(500), "Lakera Guard returned status 500"))


@pytest.mark.parametrize(
    ("verdict", "action", "fail_open", "outcome", "deny"),
    [
        (CLEAN, "block", False, "clean", False),
        (CLEAN, "alert", True, "clean", False),
        (FLAG, "block", False, "flagged", True),
        (FLAG, "block", True, "flagged", True),
        (FLAG, "alert", False, "flagged", False),
        (FLAG, "alert", True, "flagged", False),
        (FAIL, "block", False, "failure", True),
        (FAIL, "alert", False, "failure", True),  # fail-closed also in alert mode
        (FAIL, "block", True, "failure", False),
        (FAIL, "alert", True, "failure", False),
    ],
)
def test_decision_table(verdict, action, fail_open, outcome, deny) -> None:
    decision = decide(verdict, Settings(action=action, fail_open=fail_open))
    assert (decision.outcome, decision.deny) == (outcome, deny)


def test_deny_text() -> None:
    plain = Settings()
    assert deny_text("request", FLAG, plain) == "Request blocked by Lakera Guard"
    assert deny_text("response", FLAG, plain) == "Response blocked by Lakera Guard"
    reveal = Settings(reveal_failure_categories=True)
    assert deny_text("request", FLAG, reveal) == (
        "Request blocked by Lakera Guard. Flagged categories: prompt_attack")
    assert deny_text("request", FAIL, reveal) == "Request blocked by Lakera Guard"
    with_result = Verdict(True, detector_types=("prompt_attack",), breakdown=(
        {"detector_type": "prompt_attack", "detected": True, "result": "l1_confident"},))
    assert deny_text("request", with_result, reveal).endswith("prompt_attack (l1_confident)")


@pytest.mark.parametrize(
    ("verdicts", "flagged", "failure", "types"),
    [
        ([Verdict(False), Verdict(False)], False, None, ()),
        ([Verdict(False), Verdict(True, detector_types=("pii/email",))], True, None,
         ("pii/email",)),
        ([Verdict(True, detector_types=("a",)), Verdict(True, detector_types=("b", "a"))],
         True, None, ("a", "b")),
        ([Verdict(True), Verdict(False, failure=Failure(
            lakera_status(500), "Lakera Guard returned status 500"))], False,
         "Lakera Guard returned status 500", ()),
    ],
)
def test_merge_of_parts(verdicts, flagged, failure, types) -> None:
    merged = merge(verdicts)
    reason = merged.failure.reason if merged.failure else None
    assert (merged.flagged, reason, merged.detector_types) == (flagged, failure, types)


async def test_lone_surrogates_and_parts_reach_lakera() -> None:
    """JSON allows "\\ud800"; such text must still be screened, not raise in the hook."""
    with LakeraGuardStandin(api_key="k") as lakera:
        client = LakeraClient()
        settings = Settings(api_key="k", lakera_endpoint=f"{lakera.url}/v2/guard")
        try:
            clean = await client.screen(settings, [{"role": "user", "content": "hi \ud800"}])
            parts = await client.screen_parts(settings, [
                [{"role": "assistant", "content": "part one"}],
                [{"role": "assistant", "content": f"two {ATTACK_TRIGGER}"}]])
        finally:
            await client.aclose()
    assert clean.failure is None and clean.flagged is False
    assert lakera.received[0]["messages"][0]["content"] == "hi \ud800"
    assert parts.flagged and parts.detector_types == ("prompt_attack",)
    assert len(lakera.received) == 3
