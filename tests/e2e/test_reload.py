"""Reloading the configuration file while mitmdump serves traffic (config_watch.py): every
request is screened across any number of edits, new flows follow the new policy, flows in flight
finish under the old one, a bad edit keeps the old policy with one log line, and a Kubernetes
ConfigMap's symlink swap is picked up. Each test runs its own mitmdump on a file in tmp_path.

(`lakera.reload`, the command, cannot be typed into mitmdump: tests/e2e/test_mitmweb_commands.py
runs it from mitmweb's command API, tests/test_config_watch.py through the command manager.)"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import PII_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_upstream import LLMUpstreamStandin
from tests.e2e.clients import standin_headers
from tests.e2e.conftest import LAKERA_KEY
from tests.harness import Proxy
from tests.harness import run_mitmdump
from tests.harness import write_config

REQUEST_DENY = "Request blocked by Lakera Guard"
RESPONSE_DENY = "Response blocked by Lakera Guard"


def policy(lakera: LakeraGuardStandin, version: int, action: str,
           direction: str = "input") -> dict[str, Any]:
    """One route on /r/; its name says which version of the file is in force."""
    return {"api_key": LAKERA_KEY, "lakera_endpoint": f"{lakera.url}/v2/guard",
            "timeout": 5000, "direction": direction, "action": action,
            "routes": [{"name": f"{action}-v{version}", "hosts": ["127.0.0.1"],
                        "paths": ["/r/*"]}]}


def replace_atomically(path: Path, text: str) -> None:
    """An editor's save: a temporary file renamed over the path."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def chat(http: httpx.Client, proxy: Proxy, prompt: str, headers: dict[str, str] | None = None,
         ) -> httpx.Response:
    return http.post(proxy.url("r") + "/v1/chat/completions", headers=headers or {},
                     json={"model": "m", "messages": [{"role": "user", "content": prompt}]})


def answer_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def flagged_is_blocked(proxy: Proxy) -> bool:
    """Whether a new flow's flagged prompt is blocked now (else the policy only alerts)."""
    with httpx.Client(trust_env=False, timeout=30) as http:
        return answer_of(chat(http, proxy, f"{ATTACK_TRIGGER} probe {uuid.uuid4()}")) \
            == REQUEST_DENY


def reloaded(proxy: Proxy, path: Path, route: str) -> None:
    proxy.wait_for_log(f"lakera guard reloaded: config {path}; routes: {route}", timeout=15)


def test_edits_under_load_screen_every_request(
        lakera: LakeraGuardStandin, llm: LLMUpstreamStandin, tmp_path: Path) -> None:
    """Four clients send prompts without pause (every other one flagged) while the file
    switches six times between a blocking and an alerting policy, in place and by rename: every
    prompt reached Lakera (one audit line each), none was denied on a clean prompt, and after
    each switch a new flow follows the new policy."""
    path = write_config(tmp_path / "policy.yaml", policy(lakera, 0, "block"))
    audit = tmp_path / "audit.jsonl"
    run = uuid.uuid4().hex[:8]
    sent: list[tuple[str, bool, str]] = []  # (marker, flagged, the answer the client got)
    failures: list[BaseException] = []
    stop = threading.Event()

    with run_mitmdump(path, llm.url, tmp_path / "run",
                      extra=("--set", f"lakera_audit_log={audit}")) as proxy:
        def client(worker: int) -> None:
            try:
                with httpx.Client(trust_env=False, timeout=30) as http:
                    n = 0
                    while not stop.is_set():
                        marker = f"load-{run}-{worker}-{n}"
                        flagged = n % 2 == 1
                        prompt = f"{ATTACK_TRIGGER} {marker}" if flagged else f"hello {marker}"
                        sent.append((marker, flagged, answer_of(chat(http, proxy, prompt))))
                        n += 1
            except BaseException as e:  # reported after the run
                failures.append(e)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        assert flagged_is_blocked(proxy)
        probes = 1
        for version in range(1, 7):
            action = "alert" if version % 2 else "block"
            text = json.dumps(policy(lakera, version, action))
            if version % 3:
                path.write_text(text, encoding="utf-8")  # in place
            else:
                replace_atomically(path, text)
            reloaded(proxy, path, f"{action}-v{version}")
            assert flagged_is_blocked(proxy) is (action == "block"), version
            probes += 1
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not failures, failures
    assert len(sent) > 100, len(sent)  # load all along (about 450 here in 10 s)

    # every prompt sent was screened: Lakera received each marker, and the audit log holds one
    # request verdict per prompt, on a route of one of the file's versions
    screened = set()
    for body in list(lakera.received):
        for message in body.get("messages", []) if isinstance(body, dict) else []:
            screened.update(re.findall(rf"load-{run}-\d+-\d+", str(message.get("content"))))
    unscreened = [marker for marker, _, _ in sent if marker not in screened]
    assert not unscreened, unscreened[:10]
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == len(sent) + probes
    assert {line["side"] for line in lines} == {"request"}
    assert {line["route"] for line in lines} <= {"block-v0", *(
        f"{'alert' if v % 2 else 'block'}-v{v}" for v in range(1, 7))}
    # a clean prompt was never denied; a flagged one was denied or forwarded, never lost
    assert all(text != REQUEST_DENY for _, flagged, text in sent if not flagged)
    flagged_answers = {text == REQUEST_DENY for _, flagged, text in sent if flagged}
    assert flagged_answers == {True, False}  # both policies were in force under load
    log = proxy.log()
    assert "config reloads 6 ok" in log  # the shutdown summary
    assert "Traceback" not in log


def test_bad_edits_keep_the_policy(
        lakera: LakeraGuardStandin, llm: LLMUpstreamStandin, tmp_path: Path) -> None:
    path = write_config(tmp_path / "policy.yaml", policy(lakera, 1, "block"))
    with run_mitmdump(path, llm.url, tmp_path / "run") as proxy:
        assert flagged_is_blocked(proxy)

        replace_atomically(path, "routes: [unclosed\n")  # invalid YAML
        (line,) = proxy.wait_for_log("lakera guard reload failed", timeout=15)
        assert line.endswith(
            f"lakera guard reload failed: lakera_config: {path}: not valid YAML at line 2, "
            f"column 1: expected ',' or ']', but got '<stream end>'; keeping config {path}")
        assert flagged_is_blocked(proxy)
        time.sleep(2.5)  # two more polls of the unchanged bad file: nothing more said
        assert len(proxy.log_lines("lakera guard reload failed")) == 1

        bad_value = policy(lakera, 2, "block")
        bad_value["routes"][0]["action"] = "maybe"
        replace_atomically(path, json.dumps(bad_value))  # valid YAML, invalid value
        lines = proxy.wait_for_log("action: 'maybe'", timeout=15)
        assert lines[0].endswith(
            f"lakera guard reload failed: lakera_config: {path}: routes[0] (block-v2): action: "
            f"'maybe' is not allowed; must be block or alert; keeping config {path}")
        assert flagged_is_blocked(proxy)
        assert proxy.logged("lakera guard reload failed") == ["ERROR", "ERROR"]
        assert not proxy.log_lines("lakera guard reloaded")

        replace_atomically(path, json.dumps(policy(lakera, 3, "alert")))  # fixed
        reloaded(proxy, path, "alert-v3")
        assert not flagged_is_blocked(proxy)
    assert "config reloads 1 ok, 2 failed" in proxy.log()


def configmap_update(directory: Path, version: str, text: str) -> None:
    """What the kubelet does to a ConfigMap volume: the files in a new timestamped directory,
    a new `..data` symlink renamed over the old one, the old directory removed. The mounted
    `policy.yaml -> ..data/policy.yaml` itself never changes."""
    target = directory / f"..{version}"
    target.mkdir()
    (target / "policy.yaml").write_text(text, encoding="utf-8")
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    os.symlink(target.name, directory / "..data_tmp")
    os.replace(directory / "..data_tmp", data)
    if not (directory / "policy.yaml").is_symlink():
        os.symlink("..data/policy.yaml", directory / "policy.yaml")
    if old:
        (directory / old / "policy.yaml").unlink()
        (directory / old).rmdir()


def test_configmap_symlink_swap_is_picked_up(
        lakera: LakeraGuardStandin, llm: LLMUpstreamStandin, tmp_path: Path) -> None:
    mount = tmp_path / "config"
    mount.mkdir()
    configmap_update(mount, "2026_01_01_00_00_00.000000001",
                     json.dumps(policy(lakera, 1, "block")))
    path = mount / "policy.yaml"
    with run_mitmdump(path, llm.url, tmp_path / "run") as proxy:
        assert flagged_is_blocked(proxy)
        configmap_update(mount, "2026_01_01_00_01_00.000000002",
                         json.dumps(policy(lakera, 2, "alert")))
        reloaded(proxy, path, "alert-v2")
        assert not flagged_is_blocked(proxy)
        configmap_update(mount, "2026_01_01_00_02_00.000000003",
                         json.dumps(policy(lakera, 3, "block")))
        reloaded(proxy, path, "block-v3")
        assert flagged_is_blocked(proxy)
        assert not proxy.log_lines("lakera guard reload failed")


def test_a_flow_in_flight_finishes_under_its_policy(
        lakera: LakeraGuardStandin, llm: LLMUpstreamStandin, tmp_path: Path) -> None:
    """A held answer whose request started under a policy that screens answers is screened
    and blocked, although a reload meanwhile switched to a policy that screens prompts only;
    the same answer to a flow started after the reload reaches the client."""
    path = write_config(tmp_path / "policy.yaml", policy(lakera, 1, "block", "both"))
    with run_mitmdump(path, llm.url, tmp_path / "run") as proxy:
        got: list[str] = []
        leak = standin_headers(reply=f"Your card: {PII_TRIGGER}", mode="ttfb-ms=4000")

        def slow() -> None:
            with httpx.Client(trust_env=False, timeout=30) as http:
                got.append(answer_of(chat(http, proxy, "hello slow", leak)))

        in_flight = threading.Thread(target=slow)
        in_flight.start()
        time.sleep(0.5)  # its request is screened and upstream: the answer is 4 s away
        replace_atomically(path, json.dumps(policy(lakera, 2, "block", "input")))
        reloaded(proxy, path, "block-v2")
        assert in_flight.is_alive() and not got  # reloaded while the flow was in flight
        with httpx.Client(trust_env=False, timeout=30) as http:
            fast = answer_of(chat(http, proxy, "hello fast",
                                  standin_headers(reply=f"Your card: {PII_TRIGGER}")))
        assert fast == f"Your card: {PII_TRIGGER}"  # the new policy screens prompts only
        in_flight.join(30)
        assert got == [RESPONSE_DENY]  # the old one screened its answer
