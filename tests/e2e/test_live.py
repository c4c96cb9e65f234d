"""`stream_mode: live` end to end: the answer streams live through a real mitmdump and
is screened every `window_chars` (200 on these routes); a flag ends the stream in the protocol's
own shape, which the official SDKs parse as an ordinary end of stream."""

from __future__ import annotations

from typing import Any

import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import PII_TRIGGER
from tests.e2e.clients import PROTOCOLS
from tests.e2e.clients import Clients
from tests.e2e.clients import lakera_bodies
from tests.e2e.clients import stream_answer
from tests.harness import Proxy

DENY = "Response blocked by Lakera Guard"
TAIL = "TAIL-MARKER-END"


CUT_ENDING = {"chat": "content_filter", "responses": "incomplete:content_filter",
              "anthropic": "refusal"}
NORMAL_ENDING = {"chat": "stop", "responses": "completed", "anthropic": "end_turn"}


def words(n: int, tag: str) -> str:
    return "".join(f"{tag}{i} " for i in range(n))


def response_record(proxy: Proxy, test_id: str) -> dict[str, Any]:
    record = proxy.wait_for_record(test_id, lambda r: ((r["lakera"] or {}).get("response") or {})
                                   .get("verdict") not in (None, "pending"))
    return record


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_clean_answer_streams_whole_and_is_screened_in_windows(
    clients: Clients, proxy: Proxy, lakera: Any, protocol: str
) -> None:
    c = clients.make("live")
    reply = f"{c.id} " + words(150, "clean") + TAIL  # ~1,300 characters
    got = stream_answer(c, protocol, reply)
    assert got.text == reply
    assert got.ending == NORMAL_ENDING[protocol]
    record = response_record(proxy, c.id)
    assert record["lakera"]["response"]["verdict"] == "clean"
    assert record["marked"] in ("", None)
    scans = [b for b in lakera_bodies(lakera, c.id) if b["messages"][0]["role"] == "assistant"]
    # windows of 200 characters, one in flight at a time, and the final scan of the whole
    assert 2 <= len(scans) <= len(reply) // 200 + 2
    assert scans[-1]["messages"][0]["content"] == reply


@pytest.mark.parametrize("trigger", [ATTACK_TRIGGER, PII_TRIGGER])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_flag_mid_stream_ends_it_in_the_protocols_shape(
    clients: Clients, proxy: Proxy, protocol: str, trigger: str
) -> None:
    c = clients.make("live")
    reply = f"{c.id} " + words(60, "before") + trigger + " " + words(400, "after") + TAIL
    got = stream_answer(c, protocol, reply)
    assert got.ending == CUT_ENDING[protocol]
    assert got.text.endswith("\n\n" + DENY)
    assert TAIL not in got.text
    assert got.text.startswith(f"{c.id} before0 ")
    leaked = got.text[: -len(DENY) - 2]
    assert reply.startswith(leaked), "the client got the upstream's text, in order, then the deny"
    assert len(leaked) < len(reply) / 2
    if protocol != "anthropic":  # the openai SDKs stop reading at [DONE]: the call returns
        # then, not when the upstream's discarded ~2 s of answer ends (anthropic's reads on)
        assert got.ended_at < 1.5
    record = response_record(proxy, c.id)
    response = record["lakera"]["response"]
    assert response["verdict"] == "flagged" and response["action"] == "blocked"
    assert "live stream cut" in response["coverage"]
    assert record["marked"] == ":no_entry:"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_first_token_arrives_long_before_the_end(
    clients: Clients, protocol: str
) -> None:
    c = clients.make("live")
    reply = f"{c.id} " + words(80, "w")
    got = stream_answer(c, protocol, reply, mode="delay-ms=20")  # ~1.6 s of streaming
    assert got.text == reply
    assert got.first_text_at is not None and got.first_text_at < got.ended_at / 3


@pytest.mark.parametrize(("route", "cut"), [("live", True), ("live-open", False)])
def test_lakera_failure_mid_stream_follows_fail_open(
    clients: Clients, proxy: Proxy, route: str, cut: bool
) -> None:
    c = clients.make(route)
    reply = f"{c.id} " + words(40, "a") + "lakera-500 " + words(200, "b") + TAIL
    got = stream_answer(c, "chat", reply)
    record = response_record(proxy, c.id)
    assert record["lakera"]["response"]["verdict"] == "failure"
    if cut:
        assert got.ending == "content_filter" and TAIL not in got.text
        assert record["lakera"]["response"]["action"] == "blocked"
    else:
        assert got.text == reply and got.ending == "stop"
        assert record["lakera"]["response"]["action"] == "allowed"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_flag_in_the_last_window_is_recorded_after_the_end(
    clients: Clients, proxy: Proxy, protocol: str
) -> None:
    c = clients.make("live")
    reply = f"{c.id} tiny answer {ATTACK_TRIGGER}"  # shorter than one window
    got = stream_answer(c, protocol, reply)
    assert got.text == reply, "nothing could be cut: the stream ended before a window"
    record = response_record(proxy, c.id)
    response = record["lakera"]["response"]
    assert response["verdict"] == "flagged" and response["action"] == "allowed"
    assert "after the end of the stream" in response["coverage"]
    assert record["marked"] == ":warning:"


def test_mask_route_holds_streams_instead(clients: Clients, lakera: Any) -> None:
    c = clients.make("live-mask")
    reply = f"{c.id} " + words(60, "w") + " mail me at someone@example.com " + words(60, "x")
    got = stream_answer(c, "chat", reply)
    assert "someone@example.com" not in got.text and "[" in got.text
    assert got.first_text_at is not None and got.first_text_at > 0.8 * got.ended_at


def test_json_answers_are_held_and_blocked_as_before(clients: Clients) -> None:
    c = clients.make("live")
    answer = c.openai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": f"hello {c.id}"}],
        extra_headers={"x-standin-reply": f"{c.id} {ATTACK_TRIGGER}"})
    assert answer.choices[0].message.content == DENY
