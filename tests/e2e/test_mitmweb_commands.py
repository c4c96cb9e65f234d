"""The addon's commands run from mitmweb, as its command bar runs them (`POST /commands/<name>`
with the password and the XSRF pair): `lakera.reload` applies an edited file at once, or refuses
a bad one and keeps the policy in force; `lakera.rescreen @all` marks and comments recorded flows
with what the configuration now in force would do to them. mitmdump has no command prompt, so
this is where a user runs them on a real process (tests/test_config_watch.py and
tests/test_replay.py call them in-process)."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_upstream import LLMUpstreamStandin
from tests.e2e.test_reload import REQUEST_DENY
from tests.e2e.test_reload import answer_of
from tests.e2e.test_reload import chat
from tests.e2e.test_reload import policy
from tests.harness import WebProxy
from tests.harness import run_mitmweb
from tests.harness import wait_until
from tests.harness import write_config

PASSWORD = "e2e-command-password"


def run_command(web: WebProxy, name: str, *arguments: str) -> Any:
    """What mitmweb's command bar does: POST /commands/NAME; the command's return value."""
    xsrf = secrets.token_hex(8)
    response = httpx.post(
        f"{web.web_url}/commands/{name}", json={"arguments": list(arguments)},
        headers={"Authorization": f"Bearer {PASSWORD}", "X-XSRFToken": xsrf},
        cookies={"_mitmproxy_xsrf": xsrf}, trust_env=False, timeout=30)
    response.raise_for_status()
    answer = response.json()
    assert "error" not in answer, answer
    return answer["value"]


def prompt(web: WebProxy, text: str) -> str:
    """Send a chat prompt on route /r/ through mitmweb; the text the client got back."""
    with httpx.Client(trust_env=False, timeout=30) as http:
        return answer_of(chat(http, web, text))


@pytest.fixture
def web_and_file(lakera: LakeraGuardStandin, llm: LLMUpstreamStandin,
                 tmp_path: Path) -> Iterator[tuple[WebProxy, Path]]:
    """mitmweb with an alerting policy (version 1) on /r/, from a file the test edits."""
    path = write_config(tmp_path / "policy.yaml", policy(lakera, 1, "alert"))
    with run_mitmweb(path, llm.url, tmp_path / "web", PASSWORD) as web:
        yield web, path
    log = web.log()
    assert "Traceback" not in log and "Addon error" not in log, log[-5000:]


def test_reload_applies_an_edited_file_at_once_and_refuses_a_bad_one(
        lakera: LakeraGuardStandin, web_and_file: tuple[WebProxy, Path]) -> None:
    web, path = web_and_file
    flagged = f"{ATTACK_TRIGGER} {uuid.uuid4().hex[:8]}"
    assert prompt(web, flagged) != REQUEST_DENY  # alert: forwarded

    # the file's watch waits for one more unchanged poll (~1-2 s); the command reads it now
    path.write_text(json.dumps(policy(lakera, 2, "block")), encoding="utf-8")
    assert run_command(web, "lakera.reload") == "lakera reload: ok, routes: block-v2"
    assert prompt(web, f"{flagged} again") == REQUEST_DENY

    path.write_text("routes: [{name: broken", encoding="utf-8")  # half an edit, not YAML
    answer = run_command(web, "lakera.reload")
    assert answer.startswith("lakera reload: failed: lakera_config: "), answer
    assert answer.endswith(f"; keeping {path}"), answer
    assert prompt(web, f"{flagged} once more") == REQUEST_DENY  # the policy in force stays
    assert web.log_lines("lakera guard reload failed")


def test_rescreen_marks_recorded_flows_with_the_policy_now_in_force(
        lakera: LakeraGuardStandin, web_and_file: tuple[WebProxy, Path]) -> None:
    web, path = web_and_file
    run = uuid.uuid4().hex[:8]
    flagged, clean = f"{ATTACK_TRIGGER} {run}", f"hello {run}"
    assert prompt(web, flagged) != REQUEST_DENY  # recorded under the alerting policy
    assert prompt(web, clean) != REQUEST_DENY

    path.write_text(json.dumps(policy(lakera, 2, "block")), encoding="utf-8")
    assert run_command(web, "lakera.reload") == "lakera reload: ok, routes: block-v2"
    started = run_command(web, "lakera.rescreen", "@all")
    assert started == f"lakera rescreen: screening 2 flows with {path}"

    def annotated() -> dict[str, dict[str, Any]] | None:
        flows = {f["id"]: f for f in web.api("/flows")}
        if len(flows) != 2 or not all("lakera rescreen: " in f["comment"]
                                      for f in flows.values()):
            return None
        return flows

    flows = wait_until(annotated, 30, "both flows marked by lakera.rescreen")
    # the flow's own verdict line stays; the rescreen's line and mark say what would happen now
    by_comment = sorted((f["comment"], f["marked"]) for f in flows.values())
    assert by_comment == [
        ("lakera: request clean\nlakera rescreen: would pass request", "✅"),
        ("lakera: request flagged (prompt_attack), allowed\n"
         "lakera rescreen: would block request (prompt_attack)", "⛔"),
    ], by_comment
