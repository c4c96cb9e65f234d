"""mitmweb as the LLM traffic inspector (issue 16), end to end: a real `lakera-mitmweb` with the
addon in front of the stand-ins, flows sent with the official SDKs (openai chat and responses,
anthropic, google-genai, ollama chat and generate, openai embeddings), then read back through
mitmweb's HTTP API as the web app reads them (`GET /flows`, `GET /flows/<id>/<side>/content/
auto.json`): the addon's "LLM" view must be chosen by itself for both sides of every protocol,
and show the conversation, the answer and Lakera's verdict; flows on no route keep mitmproxy's
views.

Last, once, a real browser (headless Chromium driven by playwright-core) opens mitmweb with a
blocked flow selected and finds the view's text on the page; it saves a screenshot
(`LAKERA_SCREENSHOT=docs/mitmweb-view.png` writes the README's). It skips, with the reason,
where Chromium or playwright-core is not there and cannot be installed
(scripts/browser-setup.sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import PII_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_upstream import LLMUpstreamStandin
from tests.e2e.clients import Clients
from tests.e2e.clients import ask
from tests.e2e.clients import ask_native
from tests.e2e.clients import stream_answer
from tests.e2e.conftest import e2e_config
from tests.harness import ROOT
from tests.harness import WebProxy
from tests.harness import run_mitmweb
from tests.harness import wait_until
from tests.harness import write_config

PASSWORD = "e2e-web-password"
KINDS = ["chat", "responses", "anthropic", "gemini", "ollama-chat", "ollama-generate"]
PROTOCOL = {"chat": "openai-chat", "responses": "openai-responses",
            "anthropic": "anthropic-messages", "gemini": "gemini-generate",
            "ollama-chat": "ollama-chat", "ollama-generate": "ollama-generate"}
CASES = ["clean", "clean-streamed", "blocked-prompt", "blocked-answer"]
UPSTREAM_TEXT = "Hello from the stand-in."
LEAK = f"Your card number is {PII_TRIGGER}."
BROWSER_DIR = ROOT / "tests" / "e2e" / "browser"
CHROMIUM = os.environ.get("LAKERA_CHROMIUM", "/usr/bin/chromium")


@dataclass
class Sent:
    test_id: str
    prompt: str
    flow_id: str = ""


def words(n: int, tag: str) -> str:
    return "".join(f"{tag}{i} " for i in range(n))


def send(web: WebProxy, clients: Clients, kind: str, case: str) -> Sent:
    """One request of `case` through the proxy with the kind's official SDK, on route `block`
    (direction both, action block)."""
    c = clients.make("block")
    prompt = f"{ATTACK_TRIGGER} {c.id}" if case == "blocked-prompt" else f"Weather? {c.id}"
    reply = LEAK if case == "blocked-answer" else None
    stream = case != "clean"  # (a blocked answer is held and denied as a stream)
    if kind in ("chat", "responses", "anthropic"):
        ask(c, kind, stream, prompt, reply)
    else:
        ask_native(web, kind, "block", c.id, prompt, stream, reply)
    return Sent(c.id, prompt)


@pytest.fixture(scope="module")
def web(lakera: LakeraGuardStandin, llm: LLMUpstreamStandin,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebProxy]:
    workdir = tmp_path_factory.mktemp("mitmweb")
    config = write_config(workdir / "lakera.yaml", e2e_config(lakera))
    with run_mitmweb(config, llm.url, workdir, PASSWORD) as running:
        yield running
    log = running.log()
    assert "Traceback" not in log and "Addon error" not in log, log[-5000:]


@pytest.fixture(scope="module")
def sent(web: WebProxy) -> dict[str, Sent]:
    """Every flow of the module, sent once: by "kind/case", and the cut and unrouted ones."""
    clients = Clients(web)
    found: dict[str, Sent] = {}
    try:
        for kind in KINDS:
            for case in CASES:
                found[f"{kind}/{case}"] = send(web, clients, kind, case)
        c = clients.make("block")
        c.openai.embeddings.create(model="emb", input=[f"embed me {c.id}", "and me"])
        found["embeddings"] = Sent(c.id, f"embed me {c.id}")
        for route in ("windowed", "live"):
            c = clients.make(route)
            reply = f"{c.id} " + words(60, "before") + PII_TRIGGER + " " + words(300, "after")
            stream_answer(c, "chat", reply, mode="delay-ms=2")
            found[f"{route}-cut"] = Sent(c.id, f"hello {c.id}")
        c = clients.make("unrouted")
        ask(c, "chat", False, f"not screened {c.id}")
        found["unrouted"] = Sent(c.id, f"not screened {c.id}")
    finally:
        clients.close()
    flows = web.api("/flows")
    for entry in found.values():
        entry.flow_id = next(
            f["id"] for f in flows
            if ["x-test-id", entry.test_id] in [[k.lower(), v] for k, v in f["request"]["headers"]])
    return found


def view(web: WebProxy, flow_id: str, side: str) -> dict[str, Any]:
    result: dict[str, Any] = web.api(f"/flows/{flow_id}/{side}/content/auto.json")
    return result


def view_when(web: WebProxy, flow_id: str, side: str, check: Callable[[str], bool]
              ) -> dict[str, Any]:
    """The view once its text passes `check` (a verdict recorded after the stream ended)."""
    found: dict[str, Any] = {}

    def ready() -> bool:
        found.update(view(web, flow_id, side))
        return check(found.get("text") or "")

    try:
        wait_until(ready, 10, f"the {side} view of {flow_id}")
    except AssertionError:
        raise AssertionError(found.get("text")) from None
    return found


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_the_view_shows_conversation_answer_and_verdict(web: WebProxy, sent: dict[str, Sent],
                                                         kind: str, case: str) -> None:
    flow = sent[f"{kind}/{case}"]
    request = view(web, flow.flow_id, "request")
    assert request["view_name"] == "LLM", request
    text = request["text"]
    assert "Lakera Guard · request" in text and f"{PROTOCOL[kind]} request" in text
    assert flow.prompt in text
    if kind != "ollama-generate":
        assert "── user ─" in text
    if kind in ("gemini", "ollama-chat", "ollama-generate"):  # the helpers send a system prompt
        assert "── system ─" in text and f"Be brief. {flow.test_id}" in text

    response = view_when(web, flow.flow_id, "response", lambda t: "pending" not in t)
    assert response["view_name"] == "LLM", response
    answer = response["text"]
    assert "Lakera Guard · response" in answer
    if case == "blocked-prompt":
        assert "flagged, BLOCKED" in text and "prompt_attack" in text
        assert "the addon's deny (the request was blocked)" in answer
        assert "Request blocked by Lakera Guard" in answer
    elif case == "blocked-answer":
        assert "clean, allowed" in text
        assert "flagged, BLOCKED" in answer and "pii/credit_card" in answer
        assert "the addon's deny, in place of the upstream's answer" in answer
        client, upstream = answer.split("what the upstream sent", 1)
        assert "Response blocked by Lakera Guard" in client and PII_TRIGGER not in client
        assert PII_TRIGGER in upstream and "kept by the addon" in upstream
    else:
        assert "clean, allowed" in text and "clean, allowed" in answer
        assert "the upstream's answer, as the client got it" in answer
        assert UPSTREAM_TEXT in answer and "  finish " in answer
        framing = "NDJSON stream" if kind.startswith("ollama") else "SSE stream"
        assert (framing if case == "clean-streamed" else "· JSON") in answer
    assert "request_uuid" in text


def test_embeddings(web: WebProxy, sent: dict[str, Sent]) -> None:
    flow = sent["embeddings"]
    request = view(web, flow.flow_id, "request")
    assert request["view_name"] == "LLM"
    assert "openai-embeddings request" in request["text"] and flow.prompt in request["text"]
    assert "── input 1 ─" in request["text"]
    response = view(web, flow.flow_id, "response")
    assert response["view_name"] == "LLM", response
    assert "vector(s)" in response["text"]


@pytest.mark.parametrize("route", ["windowed", "live"])
def test_a_cut_stream_shows_what_the_client_got_and_what_the_upstream_sent(
        web: WebProxy, sent: dict[str, Sent], route: str) -> None:
    flow = sent[f"{route}-cut"]
    response = view_when(web, flow.flow_id, "response", lambda t: "BLOCKED" in t)
    assert response["view_name"] == "LLM", response
    text = response["text"]
    client, upstream = text.split("what the upstream sent", 1)
    assert "the upstream's stream, cut by the addon" in client
    assert f"{flow.test_id} before0" in client and "Response blocked by Lakera Guard" in client
    assert "after299" not in client
    if route == "windowed":  # the relay read ahead: the flagged text never reached the client
        assert PII_TRIGGER not in client
        assert PII_TRIGGER in upstream and "the client received" in upstream
    else:  # live: what the client got is all the addon read; the rest was never read
        assert "dropped unread" in upstream


def test_flows_on_no_route_keep_mitmproxys_views(web: WebProxy, sent: dict[str, Sent]) -> None:
    flow = sent["unrouted"]
    assert view(web, flow.flow_id, "request")["view_name"] == "JSON"
    assert view(web, flow.flow_id, "response")["view_name"] == "JSON"


def test_the_view_is_listed_for_the_web_app(web: WebProxy) -> None:
    state = web.api("/state")
    assert "LLM" in state["contentViews"] or "llm" in [v.lower() for v in state["contentViews"]]


# --- a real browser, once -----------------------------------------------------------------

def browser_ready() -> str | None:
    """Why the browser test cannot run, or None. Installs what is missing once
    (scripts/browser-setup.sh: Debian's chromium as root, playwright-core from npm)."""
    def missing() -> str | None:
        if not Path(CHROMIUM).exists():
            return f"no Chromium at {CHROMIUM}"
        if shutil.which("node") is None:
            return "no node to drive Chromium"
        if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
            return "playwright-core is not installed in tests/e2e/browser"
        return None

    if missing() is None:
        return None
    try:
        subprocess.run(["bash", str(ROOT / "scripts" / "browser-setup.sh")], timeout=900,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"scripts/browser-setup.sh failed: {e}"
    reason = missing()
    return f"{reason} (scripts/browser-setup.sh could not install it)" if reason else None


def test_a_browser_shows_the_view_of_a_blocked_flow(web: WebProxy, sent: dict[str, Sent],
                                                    tmp_path: Path) -> None:
    reason = browser_ready()
    if reason:
        pytest.skip(reason)
    flow = sent["anthropic/blocked-answer"]
    shot = tmp_path / "mitmweb-view.png"
    url = f"{web.web_url}/?token={PASSWORD}#/flows/{flow.flow_id}/response"
    profile = tmp_path / f"chromium-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    done = subprocess.run(
        ["node", str(BROWSER_DIR / "show.mjs"), url, "what the upstream sent", str(shot),
         str(profile), CHROMIUM],
        cwd=BROWSER_DIR, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    page = json.loads(done.stdout.strip().splitlines()[-1])
    text = page["text"]
    assert "Lakera Guard · response" in text and "flagged, BLOCKED" in text
    assert "Response blocked by Lakera Guard" in text and PII_TRIGGER in text
    assert shot.stat().st_size > 10_000
    target = os.environ.get("LAKERA_SCREENSHOT")
    if target:
        shutil.copyfile(shot, ROOT / target)
    assert time.monotonic() - started < 180
