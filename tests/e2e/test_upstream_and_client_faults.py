"""Faults of the upstream (compressed, invalid UTF-8, stalled streams) and of the client
(disconnecting mid-stream, or while a held answer waits for Lakera), end to end."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from tests.e2e.clients import Client
from tests.e2e.clients import Clients
from tests.harness import Proxy
from tests.harness import wait_until

DENY = "Response blocked by Lakera Guard"


class Received:
    def __init__(self, response: httpx.Response, raw_bytes: bytes) -> None:
        self.headers = response.headers
        self.status_code = response.status_code
        self.raw_bytes = raw_bytes  # as they came, still content-encoded


def stream_request(c: Client, reply: str, mode: str, timeout: float = 30.0) -> Received:
    """A streamed chat answer, read whole."""
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-standin-mode": mode,
               "x-standin-reply-b64": base64.b64encode(reply.encode()).decode()}
    with c.http.stream("POST", f"{c.base}/v1/chat/completions", json=body, headers=headers,
                       timeout=timeout) as response:
        return Received(response, b"".join(response.iter_raw()))


def verdict_of(proxy: Proxy, test_id: str, verdict: str) -> dict[str, Any]:
    return proxy.wait_for_record(
        test_id, lambda r: ((r["lakera"] or {}).get("response") or {}).get("verdict") == verdict)


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("route", ["block", "shadow"])
@pytest.mark.parametrize("answer", ["clean", "flagged"])
def test_compressed_streams(clients: Clients, proxy: Proxy, llm, encoding, route,
                            answer) -> None:
    c = clients.make(route)
    reply = f"Packed {c.id}" + (f" {ATTACK_TRIGGER}" if answer == "flagged" else "")
    response = stream_request(c, reply, encoding)
    verdict_of(proxy, c.id, answer)
    if answer == "flagged" and route == "block":
        assert "content-encoding" not in response.headers
        assert DENY.encode() in response.raw_bytes and c.id.encode() not in response.raw_bytes
    else:  # released (held) or passed through: the upstream's compressed bytes, unchanged
        assert response.headers["content-encoding"] == encoding
        assert response.raw_bytes == bytes(llm.sent[c.id])


@pytest.mark.parametrize("route", ["block", "shadow"])
def test_invalid_utf8_in_a_stream_is_screened(clients: Clients, proxy: Proxy, llm,
                                              route) -> None:
    c = clients.make(route)
    response = stream_request(c, f"odd BADUTF8 bytes {c.id}", "badutf8")
    assert b"\xff\xfe" in response.raw_bytes and response.raw_bytes == bytes(llm.sent[c.id])
    verdict_of(proxy, c.id, "clean")
    c2 = clients.make(route)
    flagged = stream_request(c2, f"BADUTF8 {ATTACK_TRIGGER} {c2.id}", "badutf8")
    verdict_of(proxy, c2.id, "flagged")
    assert (DENY.encode() in flagged.raw_bytes) is (route == "block")


def test_invalid_utf8_in_a_json_answer_fails_closed(clients: Clients, proxy: Proxy) -> None:
    c = clients.make("block")
    response = c.http.post(f"{c.base}/v1/chat/completions",
                           json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                           headers={"x-standin-mode": "badutf8",
                                    "x-standin-reply": f"BADUTF8 {c.id}"})
    assert response.json()["choices"][0]["message"]["content"] == DENY
    assert verdict_of(proxy, c.id, "failure")["lakera"]["response"]["failure"] == (
        "response body is not JSON")


def test_pass_through_stream_stalling_upstream(clients: Clients, proxy: Proxy) -> None:
    """The first event reaches the client before a 2 s stall; the end comes after it."""
    c = clients.make("shadow")
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    started = time.monotonic()
    first = None
    with c.http.stream("POST", f"{c.base}/v1/chat/completions", json=body,
                       headers={"x-standin-mode": "stall-ms=2000"}) as response:
        for _ in response.iter_raw():
            first = first or time.monotonic() - started
    total = time.monotonic() - started
    assert first is not None and first < 1.0 and total >= 2.0
    verdict_of(proxy, c.id, "clean")


def assert_no_leftovers(proxy: Proxy) -> None:
    """No task of the addon left running, no traceback in the log."""
    time.sleep(0.3)
    wait_until(lambda: proxy.lakera_tasks() == 0, 10, "the addon's tasks to finish")
    log = proxy.log()
    assert "Traceback" not in log and "Addon error" not in log


def test_client_gives_up_on_a_stalled_held_stream(clients: Clients, proxy: Proxy) -> None:
    c = clients.make("block", timeout=1.0)
    with pytest.raises(httpx.ReadTimeout):
        stream_request(c, f"slow {c.id}", "stall-ms=2500", timeout=1.0)
    proxy.wait_for_record(c.id, lambda r: r["hook"] in ("error", "response"), timeout=10)
    assert_no_leftovers(proxy)


def test_client_disconnects_mid_pass_through_stream(clients: Clients, proxy: Proxy) -> None:
    c = clients.make("shadow")
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    reply = f"{c.id} " + "word " * 200 + ATTACK_TRIGGER
    with c.http.stream("POST", f"{c.base}/v1/chat/completions", json=body, headers={
            "x-standin-mode": "delay-ms=20",
            "x-standin-reply-b64": base64.b64encode(reply.encode()).decode()}) as response:
        received = b""
        for chunk in response.iter_raw():  # a few words, then hang up
            received += chunk
            if received.count(b"word") >= 3:
                break
    record = proxy.wait_for_record(
        c.id, lambda r: ((r["lakera"] or {}).get("response") or {}).get("verdict") == "clean",
        timeout=15)
    assert "stream ended early" in record["lakera"]["response"]["coverage"]
    assert_no_leftovers(proxy)


def test_client_disconnects_before_any_text(clients: Clients, proxy: Proxy) -> None:
    """Nothing the client received had text: nothing to screen, and no "Lakera failure"."""
    c = clients.make("shadow")
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with c.http.stream("POST", f"{c.base}/v1/chat/completions", json=body,
                       headers={"x-standin-mode": "stall-ms=1500"}) as response:
        next(response.iter_raw())  # the role-only first event, then hang up
    record = verdict_of(proxy, c.id, "unscanned")
    assert record["lakera"]["response"]["failure"].startswith("stream ended early")
    assert record["marked"] == ""


def test_client_disconnects_while_held_answer_waits_for_lakera(clients: Clients,
                                                               proxy: Proxy) -> None:
    c = clients.make("block", timeout=0.5)
    with pytest.raises(httpx.ReadTimeout):
        stream_request(c, f"lakera-sleep-1500 {c.id}", "", timeout=0.5)
    time.sleep(1.5)
    assert_no_leftovers(proxy)
    c2 = clients.make("block")  # and the proxy goes on serving
    assert stream_request(c2, f"after {c2.id}", "").status_code == 200
