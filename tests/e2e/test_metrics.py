"""The metrics port end to end (issue 17): a real mitmdump with `lakera_metrics_port` set, a
known mix of flows sent with the official SDKs and httpx, then `/metrics`, `/healthz` and
`/readyz` read with httpx as Prometheus and a kubelet would.

Each test runs its own mitmdump and its own Lakera stand-in, so that the counts are exactly
those of the flows it sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import PII_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_upstream import LLMUpstreamStandin
from tests.e2e.clients import Clients
from tests.e2e.clients import ask
from tests.e2e.conftest import LAKERA_KEY
from tests.e2e.conftest import e2e_config
from tests.e2e.conftest import route
from tests.harness import Proxy
from tests.harness import free_port
from tests.harness import run_mitmdump
from tests.harness import run_mitmdump_once
from tests.harness import wait_until
from tests.harness import write_config

DENY = "Request blocked by Lakera Guard"
RESPONSE_DENY = "Response blocked by Lakera Guard"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def own_lakera() -> Iterator[LakeraGuardStandin]:
    with LakeraGuardStandin(api_key=LAKERA_KEY) as standin:
        yield standin


def config(lakera: LakeraGuardStandin) -> dict[str, Any]:
    return {**e2e_config(lakera), "routes": [
        route("m"), route("m-mask", direction="input", detector_actions={"pii/*": "mask"})]}


class Scraper:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", trust_env=False, timeout=10)

    def metrics(self) -> Samples:
        response = self.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(response.text)
                for s in family.samples}

    def probe(self, path: str) -> tuple[int, dict[str, str]]:
        response = self.get(path)
        assert response.headers["content-type"] == "application/json"
        assert response.text.count("\n") == 1  # one line
        return response.status_code, json.loads(response.text)


def family(found: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """The samples of one metric by the values of `keys`."""
    return {tuple(dict(labels)[k] for k in keys): v
            for (n, labels), v in found.items() if n == name}


def one(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


@pytest.fixture
def metered(own_lakera: LakeraGuardStandin, llm: LLMUpstreamStandin,
            tmp_path: Path) -> Iterator[tuple[Proxy, Scraper]]:
    port = free_port()
    path = write_config(tmp_path / "lakera.yaml", config(own_lakera))
    with run_mitmdump(path, llm.url, tmp_path, extra=(
            "--set", f"lakera_metrics_port={port}",
            "--set", "lakera_ready_failure_seconds=2")) as proxy:
        scraper = Scraper(port)
        wait_until(lambda: _answers(scraper), 10, "the metrics port to answer")
        yield proxy, scraper
    assert "Traceback" not in proxy.log(), proxy.log()[-3000:]


def _answers(scraper: Scraper) -> bool:
    try:
        return scraper.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_counts_match_the_flows_sent(metered: tuple[Proxy, Scraper], own_lakera,
                                     llm: LLMUpstreamStandin) -> None:
    proxy, scraper = metered
    clients = Clients(proxy)
    try:
        m, mask = clients.make("m"), clients.make("m-mask")
        # clean, JSON answer (openai) and streamed answer (anthropic, held until screened);
        # the same prompt twice: its verdict is reused (verdict_cache_seconds), Lakera not asked
        assert ask(m, "chat", False, f"hello {m.id}", reply="Hi there.") == "Hi there."
        assert ask(m, "anthropic", True, f"hello {m.id}", reply="Hi again.") == "Hi again."
        # a flagged prompt, blocked; an answer that leaks a card, streamed, blocked
        assert ask(m, "chat", False, f"{ATTACK_TRIGGER} {m.id}") == DENY
        assert ask(m, "chat", True, f"card? {m.id}", reply=f"It is {PII_TRIGGER}.") == (
            RESPONSE_DENY)
        # a card number in the prompt on the masking route: masked before the LLM
        assert ask(mask, "responses", False, f"my card is {PII_TRIGGER} {mask.id}") != DENY
        assert PII_TRIGGER not in str(llm.received[-1]["body"])
        # a request on no route: forwarded, not counted
        unrouted = m.http.post(proxy.url("elsewhere/v1/chat/completions"), json={
            "model": "m", "messages": [{"role": "user", "content": ATTACK_TRIGGER}]})
        assert unrouted.status_code == 200
    finally:
        clients.close()

    found = scraper.metrics()
    flows = family(found, "lakera_guard_flows_total", "route", "side", "verdict", "action")
    assert flows == {
        ("m", "request", "clean", "allowed"): 3,
        ("m", "response", "clean", "allowed"): 2,
        ("m", "request", "flagged", "blocked"): 1,
        ("m", "response", "flagged", "blocked"): 1,
        ("m-mask", "request", "flagged", "masked"): 1,
    }
    assert family(found, "lakera_guard_detections_total", "side", "detector_type") == {
        ("request", "prompt_attack"): 1,
        ("request", "pii/credit_card"): 1,
        ("response", "pii/credit_card"): 1,
    }
    # a call for each prompt and answer, but the prompt asked twice, the answer of the denied
    # prompt and that of the input-only route
    calls = 2 + 1 + 1 + 2 + 1
    assert own_lakera.calls == calls
    assert one(found, "lakera_guard_lakera_latency_seconds_count") == calls
    assert one(found, "lakera_guard_lakera_latency_seconds_bucket", le="+Inf") == calls
    assert 0 < (one(found, "lakera_guard_lakera_latency_seconds_sum") or 0) < calls
    # every routed prompt waited in the request hook; the three answers released were held
    assert one(found, "lakera_guard_added_latency_seconds_count", side="request") == 5
    assert one(found, "lakera_guard_added_latency_seconds_count", side="response") == 3
    assert family(found, "lakera_guard_failures_total", "kind") == {}
    assert one(found, "lakera_guard_cache_hits_total", cache="verdict") == 1
    assert one(found, "lakera_guard_held_flows") == 0  # all decided
    assert one(found, "lakera_guard_held_bytes") == 0
    assert one(found, "lakera_guard_config_reloads_total", result="failure") == 0
    assert one(found, "lakera_guard_config_last_reload_success") == 1

    status, body = scraper.probe("/healthz")
    assert status == 200 and body["status"] == "ok"
    assert body["reason"].startswith("lakera guard active: config ")
    assert body["reason"].endswith("lakera.yaml; 2 route(s)")
    status, body = scraper.probe("/readyz")
    assert status == 200 and body["status"] == "ok"
    assert body["reason"].startswith("Lakera Guard answered ")


def test_readiness_follows_lakera(metered: tuple[Proxy, Scraper]) -> None:
    """Ready with no traffic yet; not ready right after Lakera fails; ready again when it
    answers, or `lakera_ready_failure_seconds` (2 here) after the failure."""
    proxy, scraper = metered
    assert scraper.probe("/readyz") == (200, {"status": "ok",
                                             "reason": "no call to Lakera Guard yet"})
    clients = Clients(proxy)
    try:
        c = clients.make("m")
        assert ask(c, "chat", False, f"lakera-503 {c.id}") == DENY  # fail_open: false
        status, body = scraper.probe("/readyz")
        assert (status, body["status"]) == (503, "fail")
        assert "has not answered since: Lakera Guard returned status 503" in body["reason"]
        assert scraper.probe("/healthz")[0] == 200  # alive all the same

        assert ask(c, "chat", False, f"hello {c.id}", reply="Hi.") == "Hi."
        status, body = scraper.probe("/readyz")  # it answered since: ready at once
        assert status == 200 and body["reason"].startswith("Lakera Guard answered ")

        asked_at = time.monotonic()  # the addon saw the failure after this (same clock)
        assert ask(c, "chat", False, f"lakera-500 {c.id}") == DENY
        assert scraper.probe("/readyz")[0] == 503
        status, body = wait_until(lambda: (r := scraper.probe("/readyz"))[0] == 200 and r, 10,
                                  "/readyz to recover")
        assert time.monotonic() - asked_at >= 2
        assert "Lakera Guard's last failure was" in body["reason"]
        assert "(lakera_ready_failure_seconds=2)" in body["reason"]
    finally:
        clients.close()
    found = scraper.metrics()
    assert family(found, "lakera_guard_failures_total", "kind") == {("status_other",): 2}
    assert family(found, "lakera_guard_flows_total", "route", "side", "verdict", "action") == {
        ("m", "request", "failure", "blocked"): 2,
        ("m", "request", "clean", "allowed"): 1,
        ("m", "response", "clean", "allowed"): 1,
    }
    assert one(found, "lakera_guard_lakera_latency_seconds_count") == 4


@pytest.mark.parametrize(("value", "message"), [
    ("in-use", "lakera_metrics_port: cannot listen on 127.0.0.1:{port}: Address already in use"),
    ("abc", "lakera_metrics_port: 'abc' is not a port number (0: off, or 1-65535)"),
])
def test_bad_metrics_port_refuses_to_start(own_lakera: LakeraGuardStandin, tmp_path: Path,
                                           value: str, message: str) -> None:
    """A port in use or a malformed value: one line, and no proxy without its guard (a
    malformed value of a typed option would silently unload the addon, mitmproxy-addon-notes
    4.1: the option is a string the addon parses)."""
    import socket

    path = write_config(tmp_path / "lakera.yaml", config(own_lakera))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        setting = str(port) if value == "in-use" else value
        code, output = run_mitmdump_once(path, tmp_path, extra=(
            "--set", f"lakera_metrics_port={setting}"))
    assert code == 1, output
    (line,) = [x for x in output.splitlines() if "lakera_metrics_port" in x]
    assert line.endswith(message.format(port=port))
    assert "Traceback" not in output
