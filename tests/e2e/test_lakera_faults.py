"""Lakera Guard faults end to end (SPEC sections 2, 4, 5): every way a Lakera call can fail,
on both sides, streamed or not, in block and alert mode, fail_open false and true, through a
real mitmdump with the official SDKs.

The module runs its own mitmdump with one route per (endpoint kind, direction, action,
fail_open), `f-{kind}-{direction}-{action}-{open|closed}`. The endpoint kind is the fault for a
Lakera that cannot be reached (`refused`, `unresolvable`, `tls-verify`: a self-signed HTTPS
stand-in with `ssl_verify: true`); on the normal stand-in (`standin`) a trigger word in the
screened text picks the fault: in the prompt for the input side, in the answer for the output
side. `lakera-huge` (a multi-megabyte but valid clean answer) and the HTTPS stand-in with
`ssl_verify: false` (`tls-noverify`, clean and flagged) are the controls: they must work.

Expected, SPEC section 5: a failure with fail_open false denies (in alert mode too) and, on the
input side, the LLM never sees the request; on the output side no byte of the answer reaches
the client. A failure with fail_open true lets the upstream answer through intact. The flow's
verdict is `failure` with a reason, marked `:no_entry:` when denied and
`:large_orange_diamond:` when allowed.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_upstream import LLMUpstreamStandin
from tests.e2e.clients import Client
from tests.e2e.clients import ask
from tests.e2e.clients import lakera_bodies
from tests.e2e.clients import llm_saw
from tests.e2e.conftest import LAKERA_KEY
from tests.harness import Proxy
from tests.harness import run_mitmdump
from tests.harness import write_config
from tests.tls import server_context

DENY = {"input": "Request blocked by Lakera Guard", "output": "Response blocked by Lakera Guard"}
SIDE = {"input": "request", "output": "response"}
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
         "anthropic": "/v1/messages"}
KINDS = ["standin", "refused", "unresolvable", "tls-verify", "tls-noverify"]
DIRECTIONS = ["input", "output"]
ACTIONS = ["block", "alert"]


@dataclass(frozen=True)
class Fault:
    kind: str  # the route's endpoint kind
    trigger: str  # put in the screened text ("" for none)
    verdict: str  # failure | clean | flagged
    reasons: tuple[str, ...] = ()  # the recorded failure reason contains one of these


REACH = "failed to reach Lakera Guard"
DEADLINE = "did not answer within 1000 ms"  # a slow resolver may make `unresolvable` this
FAULTS = {
    "refused": Fault("refused", "", "failure", (REACH,)),
    "unresolvable": Fault("unresolvable", "", "failure", (REACH, DEADLINE)),
    "tls-verify": Fault("tls-verify", "", "failure", (REACH,)),
    "401": Fault("standin", "lakera-401", "failure", ("status 401",)),
    "429": Fault("standin", "lakera-429", "failure", ("status 429",)),
    "500": Fault("standin", "lakera-500", "failure", ("status 500",)),
    "503": Fault("standin", "lakera-503", "failure", ("status 503",)),
    "truncated": Fault("standin", "lakera-truncated", "failure", (REACH, "not JSON")),
    "notjson": Fault("standin", "lakera-notjson", "failure", ("not JSON",)),
    "array": Fault("standin", "lakera-array", "failure", ("not an object",)),
    "noflag": Fault("standin", "lakera-noflag", "failure", ("'flagged'",)),
    "trickle": Fault("standin", "lakera-trickle", "failure", (DEADLINE,)),
    # controls: these must work
    "huge": Fault("standin", "lakera-huge", "clean"),
    "tls-clean": Fault("tls-noverify", "", "clean"),
    "tls-flagged": Fault("tls-noverify", ATTACK_TRIGGER, "flagged"),
}


def route_name(kind: str, direction: str, action: str, fail_open: bool) -> str:
    return f"f-{kind}-{direction}-{action}-{'open' if fail_open else 'closed'}"


def fault_routes(standin: str, tls: str) -> list[dict[str, Any]]:
    endpoints = {
        "standin": (standin, True),
        "refused": ("http://127.0.0.1:1/v2/guard", True),
        "unresolvable": ("http://lakera-guard.invalid/v2/guard", True),
        "tls-verify": (tls, True),
        "tls-noverify": (tls, False),
    }
    routes = []
    for kind in KINDS:
        endpoint, verify = endpoints[kind]
        for direction in DIRECTIONS:
            for action in ACTIONS:
                for fail_open in (False, True):
                    name = route_name(kind, direction, action, fail_open)
                    routes.append({
                        "name": name, "hosts": ["127.0.0.1"], "paths": [f"/{name}/*"],
                        "lakera_endpoint": endpoint, "ssl_verify": verify,
                        "direction": direction, "action": action, "fail_open": fail_open,
                        "timeout": 1000,
                    })
    return routes


@pytest.fixture(scope="module")
def tls_lakera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LakeraGuardStandin]:
    standin = LakeraGuardStandin(api_key=LAKERA_KEY)
    standin.ssl_context = server_context(tmp_path_factory.mktemp("tls"))
    with standin:
        yield standin


@pytest.fixture(scope="module")
def fault_proxy(lakera: LakeraGuardStandin, tls_lakera: LakeraGuardStandin,
                llm: LLMUpstreamStandin,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    workdir = tmp_path_factory.mktemp("mitmdump-faults")
    config = write_config(workdir / "lakera.yaml", {
        "api_key": LAKERA_KEY,
        "lakera_endpoint": f"{lakera.url}/v2/guard",
        "timeout": 1000,
        "routes": fault_routes(f"{lakera.url}/v2/guard", f"{tls_lakera.url}/v2/guard"),
    })
    with run_mitmdump(config, llm.url, workdir) as running:
        yield running


@dataclass
class Pools:
    sdk: Any  # the SDKs' own httpx flavour (`openai.DefaultHttpxClient`)
    raw: httpx.Client


@pytest.fixture(scope="module")
def pools() -> Iterator[Pools]:
    """Connection pools shared by every client of the module: an SDK client made per test with
    its own pool loads the CA bundle each time (~75 ms a test, most of a case's time)."""
    with (openai.DefaultHttpxClient(timeout=30.0, trust_env=False) as sdk,
          httpx.Client(timeout=30.0, trust_env=False) as raw):
        yield Pools(sdk, raw)


def make_client(proxy: Proxy, pools: Pools, route: str) -> Client:
    """SDK clients for one route with a unique `x-test-id`, on the shared pools (never closed
    here: closing an SDK client closes the pool it was given)."""
    test_id = f"t-{uuid.uuid4().hex[:12]}"
    base = proxy.url(route)
    headers = {"x-test-id": test_id}
    return Client(
        test_id,
        base,
        openai.OpenAI(base_url=f"{base}/v1", api_key="sk-provider-test", max_retries=0,
                      default_headers=headers, http_client=pools.sdk),
        anthropic.Anthropic(base_url=base, api_key="sk-ant-provider-test", max_retries=0,
                            default_headers=headers, http_client=pools.sdk),
        pools.raw,
    )


# --- clients ---------------------------------------------------------------------------------

def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def raw_stream(c: Client, protocol: str, prompt: str, reply: str) -> httpx.Response:
    """The exact bytes of a streamed answer, without an SDK in between."""
    body: dict[str, Any] = {"model": "m", "stream": True, "max_tokens": 50}
    if protocol == "responses":
        body["input"] = prompt
    else:
        body["messages"] = [{"role": "user", "content": prompt}]
    return c.http.post(f"{c.base}{PATHS[protocol]}", json=body,
                       headers={"x-standin-reply-b64": b64(reply), "x-test-id": c.id})


def sse_text(protocol: str, body: str) -> str:
    """The assistant text of an SSE body, read the way the SDKs read it."""
    parts: list[str] = []
    for line in body.splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        event = json.loads(line[5:])
        if protocol == "chat":
            parts += [ch["delta"].get("content") or "" for ch in event.get("choices", [])]
        elif protocol == "responses":
            if event.get("type") == "response.output_text.delta":
                parts.append(event["delta"])
        elif event.get("type") == "content_block_delta" and event["delta"]["type"] == "text_delta":
            parts.append(event["delta"]["text"])
    return "".join(parts)


# --- the matrix ----------------------------------------------------------------------------

def expected(fault: Fault, action: str, fail_open: bool) -> tuple[str, str]:
    """(outcome deny|pass, mark) by SPEC section 5."""
    if fault.verdict == "failure":
        return ("pass", ":large_orange_diamond:") if fail_open else ("deny", ":no_entry:")
    if fault.verdict == "flagged":
        return ("deny", ":no_entry:") if action == "block" else ("pass", ":warning:")
    return "pass", ""


def case_id(protocol: str, fault: str, side: str, stream: bool, action: str,
            fail_open: bool) -> str:
    return (f"{protocol}-{fault}-{side}-{'stream' if stream else 'json'}-{action}-"
            f"{'open' if fail_open else 'closed'}")


def cases() -> list[Any]:
    rows = [("chat", fault, side, stream, action, fail_open)
            for fault in FAULTS for side in DIRECTIONS for stream in (False, True)
            for action in ACTIONS for fail_open in (False, True)]
    # the other protocols: the held stream (the hardest path), block, both fail_open values
    rows += [(protocol, fault, side, True, "block", fail_open)
             for protocol in ("anthropic", "responses") for fault in FAULTS
             for side in DIRECTIONS for fail_open in (False, True)]
    return [pytest.param(*row, id=case_id(*row)) for row in rows]


@pytest.mark.parametrize(("protocol", "fault_name", "side", "stream", "action", "fail_open"),
                         cases())
def test_lakera_fault(fault_proxy: Proxy, pools: Pools, llm: LLMUpstreamStandin,
                      lakera: LakeraGuardStandin, tls_lakera: LakeraGuardStandin,
                      protocol: str, fault_name: str, side: str, stream: bool, action: str,
                      fail_open: bool) -> None:
    fault = FAULTS[fault_name]
    c = make_client(fault_proxy, pools, route_name(fault.kind, side, action, fail_open))
    trigger = f"{fault.trigger} " if fault.trigger else ""
    if side == "input":
        prompt, reply = f"{trigger}prompt {c.id}", f"Upstream answer marker-{c.id}."
    else:
        prompt, reply = f"hello {c.id}", f"{trigger}upstream answer marker-{c.id}."
    outcome, mark = expected(fault, action, fail_open)

    started = time.monotonic()
    if side == "output" and stream:
        response = raw_stream(c, protocol, prompt, reply)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        if outcome == "deny":
            assert f"marker-{c.id}" not in response.text, "the answer leaked"
            assert sse_text(protocol, response.text) == DENY[side]
        else:
            assert response.content == bytes(llm.sent[c.id]), "not released verbatim"
    else:
        text = ask(c, protocol, stream, prompt, reply)
        assert text == (DENY[side] if outcome == "deny" else reply)
    elapsed = time.monotonic() - started
    if fault_name == "trickle" and action == "alert" and fail_open and (side == "input" or stream):
        # shadow mode on the request and pass-through streams: nothing waits for Lakera
        assert elapsed < 0.8, f"the client waited {elapsed:.2f} s for a 1 s Lakera deadline"
    seen = llm_saw(llm, c.id)
    if side == "input" and outcome == "deny":
        assert not seen, "a denied request reached the LLM"
    else:
        assert seen

    screened = SIDE[side]
    record = fault_proxy.wait_for_record(
        c.id, lambda r: ((r["lakera"] or {}).get(screened) or {}).get("verdict") == fault.verdict)
    verdict = record["lakera"][screened]
    assert SIDE["output" if side == "input" else "input"] not in record["lakera"]
    assert verdict["action"] == ("blocked" if outcome == "deny" else "allowed")
    assert record["marked"] == mark
    if fault.verdict == "failure":
        assert any(r in (verdict["failure"] or "") for r in fault.reasons), verdict["failure"]

    # which Lakera saw the text, once the verdict is in: exactly one call where a Lakera can
    # answer, none where the TLS handshake fails
    scans = {"standin": (1, 0), "tls-noverify": (0, 1), "tls-verify": (0, 0)}
    if fault.kind in scans:
        assert (len(lakera_bodies(lakera, c.id)),
                len(lakera_bodies(tls_lakera, c.id))) == scans[fault.kind]
