"""The Lakera API key never leaves the addon's memory (SPEC section 1) and Lakera calls never go
through a proxy (SPEC section 4), end to end.

One mitmdump of its own for this module, as chatty as mitmdump gets (`termlog_verbosity=debug`,
`flow_detail=4`), saving every flow (`-w flows.mitm`), with a regular proxy mode next to the
harness's reverse mode and HTTP(S)_PROXY/ALL_PROXY pointing at that very regular mode: a Lakera
client that honoured proxy variables would send its calls through mitmproxy, where they would
become flows. Its own Lakera stand-in wants a recognisable key, given to the addon through
`$env://` for the `env-*` routes and literally in the YAML for the `lit-*` routes; the
`badkey-*` routes send a second recognisable (wrong) key. Every path through the addon is driven
with the official SDKs and raw httpx, then mitmdump is stopped and its whole output, the observer's
records, the saved flows and every other file it wrote are searched for either key."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
import warnings
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import openai
import pytest
from mitmproxy import http

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_upstream import LLMUpstreamStandin
from tests.e2e.clients import Client
from tests.e2e.clients import Clients
from tests.e2e.clients import lakera_bodies
from tests.harness import Proxy
from tests.harness import run_mitmdump
from tests.harness import wait_until
from tests.harness import write_config

KEY = "lk-SECRET-5f3a9c1e7d"
WRONG_KEY = "lk-WRONGKEY-0c8e2b4d6f"
KEY_ENV = "MY_LAKERA_KEY"
WRONG_KEY_ENV = "MY_WRONG_LAKERA_KEY"
FAMILIES = ("env", "lit")  # key from `$env://`, key literally in the YAML
REQUEST_DENY = "Request blocked by Lakera Guard"
RESPONSE_DENY = "Response blocked by Lakera Guard"
UPSTREAM_TEXT = "Hello from the stand-in."
REVERSE_LISTENING = re.compile(r"[Rr]everse proxy to \S+ listening at \S*:(\d+)")


def secret_forms(key: str) -> dict[str, bytes]:
    """Ways a key could show up in a file: as is, its distinctive tail, base64 of the header."""
    return {
        "key": key.encode(),
        "key tail": key.rsplit("-", 1)[-1].encode(),
        "base64(Bearer key)": base64.b64encode(f"Bearer {key}".encode()),
        "base64(key)": base64.b64encode(key.encode()),
    }


FORMS = {f"{name} of {which}": form
         for which, key in (("the key", KEY), ("the wrong key", WRONG_KEY))
         for name, form in secret_forms(key).items()}


def leaks(data: bytes | str) -> list[str]:
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
    return [name for name, form in FORMS.items() if form in raw]


def route(name: str, family: str | None = None, **overrides: Any) -> dict[str, Any]:
    full = f"{family}-{name}" if family else name
    if family == "lit":
        overrides = {"api_key": KEY, **overrides}
    return {"name": full, "hosts": ["127.0.0.1"], "paths": [f"/{full}/*"], **overrides}


def routes() -> list[dict[str, Any]]:
    made = []
    for family in FAMILIES:
        made += [
            route("block", family),
            route("shadow", family, action="alert", fail_open=True),
            route("reveal", family, reveal_failure_categories=True),
            route("unreachable", family, lakera_endpoint="http://127.0.0.1:1/v2/guard"),
            route("failmode-error", family, fail_mode="error"),
            route("small", family, max_body_bytes=4096),
        ]
    made += [route("badkey-lit", api_key=WRONG_KEY),
             route("badkey-env", api_key=f"$env://{WRONG_KEY_ENV}")]
    return made


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Run:
    """What one module's mitmdump run left behind, read after mitmdump stopped."""

    workdir: Path
    config: Path
    lakera: LakeraGuardStandin
    llm: LLMUpstreamStandin
    log: str = ""
    observer: str = ""
    ids: dict[str, str] = field(default_factory=dict)  # path name -> x-test-id
    outcomes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # path -> (want, got)

    def expect(self, path: str, want: Any, got: Any) -> None:
        self.outcomes[path] = (want, got)


def _chat(c: Client, prompt: str, stream: bool = False, reply: str | None = None) -> str:
    headers = {"x-standin-reply-b64": base64.b64encode(reply.encode()).decode()} if reply else {}
    messages = [{"role": "user", "content": prompt}]
    if stream:
        chunks = c.openai.chat.completions.create(
            model="gpt-test", messages=messages, stream=True, extra_headers=headers)
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    answer = c.openai.chat.completions.create(
        model="gpt-test", messages=messages, extra_headers=headers)
    return answer.choices[0].message.content or ""


def _messages(c: Client, prompt: str, stream: bool = False, reply: str | None = None) -> str:
    headers = {"x-standin-reply-b64": base64.b64encode(reply.encode()).decode()} if reply else {}
    messages = [{"role": "user", "content": prompt}]
    if stream:
        with c.anthropic.messages.stream(model="claude-test", max_tokens=50, messages=messages,
                                         extra_headers=headers) as s:
            return s.get_final_text()
    message = c.anthropic.messages.create(model="claude-test", max_tokens=50, messages=messages,
                                          extra_headers=headers)
    return message.content[0].text


def _verdict(side: str, verdict: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: (r["lakera"] or {}).get(side, {}).get("verdict") == verdict


def drive(run: Run, clients: Clients, proxy: Proxy, regular_port: int) -> None:
    """Every path through the addon, for a key from `$env://` and a key in the YAML."""

    def make(path: str, prefix: str) -> Client:
        c = clients.make(prefix)
        run.ids[path] = c.id
        return c

    for fam in FAMILIES:
        c = make(f"{fam}: clean, openai chat", f"{fam}-block")
        run.expect(f"{fam}: clean, openai chat", UPSTREAM_TEXT, _chat(c, f"hello {c.id}"))
        c = make(f"{fam}: clean, anthropic stream", f"{fam}-block")
        run.expect(f"{fam}: clean, anthropic stream", UPSTREAM_TEXT,
                   _messages(c, f"hello {c.id}", stream=True))

        c = make(f"{fam}: flagged prompt, openai chat", f"{fam}-block")
        run.expect(f"{fam}: flagged prompt, openai chat", REQUEST_DENY,
                   _chat(c, f"{ATTACK_TRIGGER} {c.id}"))
        c = make(f"{fam}: flagged prompt, anthropic stream", f"{fam}-block")
        run.expect(f"{fam}: flagged prompt, anthropic stream", REQUEST_DENY,
                   _messages(c, f"{ATTACK_TRIGGER} {c.id}", stream=True))
        c = make(f"{fam}: flagged prompt, openai responses", f"{fam}-block")
        run.expect(f"{fam}: flagged prompt, openai responses", REQUEST_DENY,
                   c.openai.responses.create(model="m", input=f"{ATTACK_TRIGGER} {c.id}")
                   .output_text)
        c = make(f"{fam}: flagged prompt, embeddings", f"{fam}-block")
        try:
            c.openai.embeddings.create(model="e", input=[f"{ATTACK_TRIGGER} {c.id}"])
            got: Any = "no error"
        except openai.BadRequestError as error:
            got = REQUEST_DENY if REQUEST_DENY in str(error) else str(error)
        run.expect(f"{fam}: flagged prompt, embeddings", REQUEST_DENY, got)

        c = make(f"{fam}: flagged answer, held stream", f"{fam}-block")
        run.expect(f"{fam}: flagged answer, held stream", RESPONSE_DENY,
                   _chat(c, f"hello {c.id}", stream=True, reply=f"{ATTACK_TRIGGER} {c.id}"))
        c = make(f"{fam}: flagged answer, non-stream", f"{fam}-block")
        run.expect(f"{fam}: flagged answer, non-stream", RESPONSE_DENY,
                   _messages(c, f"hello {c.id}", reply=f"{ATTACK_TRIGGER} {c.id}"))

        c = make(f"{fam}: pass-through stream", f"{fam}-shadow")
        reply = f"{ATTACK_TRIGGER} {c.id}"
        run.expect(f"{fam}: pass-through stream", reply,
                   _chat(c, f"hello {c.id}", stream=True, reply=reply))
        c = make(f"{fam}: shadow request", f"{fam}-shadow")
        run.expect(f"{fam}: shadow request", UPSTREAM_TEXT, _chat(c, f"{ATTACK_TRIGGER} {c.id}"))

        for failure in ("lakera-500", "lakera-401", "lakera-notjson", "lakera-sleep-1500"):
            c = make(f"{fam}: Lakera failure {failure}", f"{fam}-block")
            run.expect(f"{fam}: Lakera failure {failure}", REQUEST_DENY,
                       _chat(c, f"{failure} {c.id}"))
        c = make(f"{fam}: Lakera failure on the answer, raw httpx", f"{fam}-block")
        response = c.http.post(
            f"{c.base}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": f"hi {c.id}"}]},
            headers={"x-standin-reply": f"lakera-500 {c.id}"})
        run.expect(f"{fam}: Lakera failure on the answer, raw httpx", RESPONSE_DENY,
                   response.json()["choices"][0]["message"]["content"])

        c = make(f"{fam}: unreachable Lakera", f"{fam}-unreachable")
        run.expect(f"{fam}: unreachable Lakera", REQUEST_DENY, _chat(c, f"hello {c.id}"))

        c = make(f"{fam}: non-JSON body, fail_mode error", f"{fam}-failmode-error")
        response = c.http.post(f"{c.base}/v1/chat/completions", content=b"not json",
                               headers={"content-type": "application/json"})
        run.expect(f"{fam}: non-JSON body, fail_mode error", 500, response.status_code)

        c = make(f"{fam}: body over max_body_bytes", f"{fam}-small")
        run.expect(f"{fam}: body over max_body_bytes", REQUEST_DENY,
                   _chat(c, f"{c.id} " + "x" * 5000))

        c = make(f"{fam}: reveal_failure_categories", f"{fam}-reveal")
        run.expect(f"{fam}: reveal_failure_categories", True,
                   _chat(c, f"{ATTACK_TRIGGER} {c.id}").startswith(
                       f"{REQUEST_DENY}. Flagged categories: prompt_attack"))

    for which in ("lit", "env"):
        c = make(f"bad key ({which}), openai chat", f"badkey-{which}")
        run.expect(f"bad key ({which}), openai chat", REQUEST_DENY, _chat(c, f"hello {c.id}"))
        c = make(f"bad key ({which}), anthropic stream", f"badkey-{which}")
        run.expect(f"bad key ({which}), anthropic stream", REQUEST_DENY,
                   _messages(c, f"hello {c.id}", stream=True))

    # the regular proxy mode is live: a client that uses it makes flows (screened ones, too)
    with openai.DefaultHttpxClient(proxy=f"http://127.0.0.1:{regular_port}",
                                   trust_env=False) as via_proxy:
        for path, prompt, want in (("regular mode: clean", "hello", UPSTREAM_TEXT),
                                   ("regular mode: flagged prompt", ATTACK_TRIGGER,
                                    REQUEST_DENY)):
            test_id = f"t-regular-{len(run.ids)}"
            run.ids[path] = test_id
            sdk = openai.OpenAI(base_url=f"{run.llm.url}/env-block/v1", api_key="sk-provider",
                                max_retries=0, http_client=via_proxy,
                                default_headers={"x-test-id": test_id})
            answer = sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"{prompt} {test_id}"}])
            run.expect(path, want, answer.choices[0].message.content)

    # shadow verdicts arrive after the answer: wait for them before stopping mitmdump
    for fam in FAMILIES:
        proxy.wait_for_record(run.ids[f"{fam}: pass-through stream"],
                              _verdict("response", "flagged"))
        proxy.wait_for_record(run.ids[f"{fam}: shadow request"], _verdict("request", "flagged"))
    for test_id in run.ids.values():
        proxy.wait_for_record(test_id, lambda r: r["hook"] in ("response", "update"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("secrets")
    with LakeraGuardStandin(api_key=KEY) as lakera, LLMUpstreamStandin() as llm:
        config = write_config(workdir / "lakera.yaml", {
            "api_key": f"$env://{KEY_ENV}",
            "lakera_endpoint": f"{lakera.url}/v2/guard",
            "direction": "both",
            "timeout": 1000,
            "routes": routes(),
        })
        result = Run(workdir, config, lakera, llm)
        regular_port = free_port()
        regular = f"http://127.0.0.1:{regular_port}"
        env = {KEY_ENV: KEY, WRONG_KEY_ENV: WRONG_KEY,
               "HTTP_PROXY": regular, "HTTPS_PROXY": regular, "ALL_PROXY": regular,
               "http_proxy": regular, "https_proxy": regular, "all_proxy": regular,
               "NO_PROXY": "", "no_proxy": "", "LAKERA_GUARD_API_KEY": ""}
        extra = ("--mode", f"regular@{regular_port}",
                 "--set", "termlog_verbosity=debug",
                 "--set", "flow_detail=4",
                 "-w", str(workdir / "flows.mitm"))
        started = time.monotonic()
        with run_mitmdump(config, llm.url, workdir, extra=extra, env=env) as running:
            port = int(wait_until(lambda: REVERSE_LISTENING.search(running.log()), 10,
                                  "the reverse mode to listen").group(1))
            proxy = Proxy(port, running.log_path, running.observer_path, running.process)
            clients = Clients(proxy)
            try:
                drive(result, clients, proxy, regular_port)
            finally:
                clients.close()
        print(f"\nsecrets run: {len(result.ids)} paths in {time.monotonic() - started:.1f} s")
        result.log = running.log()
        result.observer = running.observer_path.read_text(encoding="utf-8")
        yield result


def _flows(run: Run) -> list[http.HTTPFlow]:
    with warnings.catch_warnings():  # mitmproxy's flow filters use deprecated pyparsing names
        warnings.simplefilter("ignore", DeprecationWarning)
        from mitmproxy import io
    with open(run.workdir / "flows.mitm", "rb") as f:
        return [flow for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)]


# --- the run did what it claims, so the searches below are not vacuous -------------------------

def test_every_path_behaved_as_expected(run: Run) -> None:
    wrong = {path: outcome for path, outcome in run.outcomes.items() if outcome[0] != outcome[1]}
    assert not wrong
    assert len(run.outcomes) == len(run.ids) >= 40


def test_lakera_received_the_right_key_on_the_valid_routes(run: Run) -> None:
    """The stand-in stores a body only after the bearer key matched: both families got there."""
    for fam in FAMILIES:
        for path in (f"{fam}: clean, openai chat", f"{fam}: flagged prompt, openai chat",
                     f"{fam}: pass-through stream", f"{fam}: Lakera failure lakera-401"):
            assert lakera_bodies(run.lakera, run.ids[path]), path
    for which in ("lit", "env"):
        assert not lakera_bodies(run.lakera, run.ids[f"bad key ({which}), openai chat"])
    assert run.lakera.calls > len(run.lakera.received)  # the bad-key calls were refused


def test_bad_key_routes_failed_with_401(run: Run) -> None:
    for which in ("lit", "env"):
        records = [json.loads(line) for line in run.observer.splitlines()]
        test_id = run.ids[f"bad key ({which}), openai chat"]
        failures = [r["lakera"]["request"].get("failure") for r in records
                    if r["id"] == test_id and r["lakera"]]
        assert failures and "status 401" in str(failures[-1])


def test_log_is_debug_and_shows_flows_in_full(run: Run) -> None:
    assert "route=env-block]" in run.log and "route=badkey-lit]" in run.log
    # flow_detail=4: the prompts themselves are printed
    assert run.ids["env: clean, openai chat"] in run.log


# --- the key is nowhere -----------------------------------------------------------------------

def test_keys_not_in_mitmdump_output(run: Run) -> None:
    assert leaks(run.log) == []


def test_keys_not_in_observer_records(run: Run) -> None:
    """Metadata, comments, marks, errors and the addon's log records as the observer saw them."""
    records = [json.loads(line) for line in run.observer.splitlines()]
    flows = [r for r in records if r["id"] not in ("log", "tasks")]
    assert {r["id"] for r in flows} >= set(run.ids.values())
    assert any(r["lakera"] for r in flows) and any(r["comment"] for r in flows)
    assert any(r["marked"] for r in flows)
    assert [r for r in records if r["id"] == "log"]
    assert leaks(run.observer) == []
    for record in records:
        assert leaks(json.dumps(record)) == [], record


def test_keys_not_in_saved_flows(run: Run) -> None:
    data = (run.workdir / "flows.mitm").read_bytes()
    assert leaks(data) == []
    flows = _flows(run)
    saved_ids = {flow.request.headers.get("x-test-id") for flow in flows}
    assert saved_ids >= set(run.ids.values()), "the provider flows were all saved"
    for flow in flows:
        assert leaks(json.dumps(flow.get_state(), default=repr)) == []
        assert leaks(flow.request.headers.get("authorization", "")) == []


def test_no_lakera_call_went_through_mitmproxy(run: Run) -> None:
    flows = _flows(run)
    assert flows
    lakera_port = int(run.lakera.url.rsplit(":", 1)[1])
    through = [flow.request.url for flow in flows
               if flow.request.port == lakera_port or flow.request.path.endswith("/v2/guard")
               or "/v2/guard" in flow.request.path]
    assert through == []


def test_keys_not_in_any_other_file_mitmdump_wrote(run: Run) -> None:
    files = [p for p in run.workdir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"mitmdump.log", "flows.jsonl", "flows.mitm"}
    found = {str(p.relative_to(run.workdir)): leaks(p.read_bytes())
             for p in files if p != run.config}
    assert {name: forms for name, forms in found.items() if forms} == {}
    # the user's own file does hold the literal keys: the check would have seen them
    assert leaks(run.config.read_bytes())

