"""The JSON-lines audit log (option `lakera_audit_log`): one line per verdict, never text."""

from __future__ import annotations

import json
from typing import Any

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from tests.e2e.clients import Clients
from tests.e2e.conftest import LAKERA_KEY
from tests.harness import Proxy
from tests.harness import wait_until


def audit_lines(proxy: Proxy) -> list[dict[str, Any]]:
    path = proxy.log_path.parent / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]]  # complete lines


def test_one_line_per_verdict_without_text(clients: Clients, proxy: Proxy) -> None:
    c = clients.make("block")
    c.openai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    secret_prompt = f"{ATTACK_TRIGGER} my-private-words-{c.id}"
    c.openai.chat.completions.create(model="m", messages=[
        {"role": "user", "content": secret_prompt}])
    record = proxy.wait_for_record(c.id, lambda r: r["hook"] == "response")
    uuid = record["lakera"]["request"]["request_uuid"]
    lines = wait_until(lambda: [x for x in audit_lines(proxy) if x["request_uuid"] == uuid], 10,
                       "the audit line")
    assert len(lines) == 1
    line = lines[0]
    assert {k: line[k] for k in ("route", "side", "verdict", "action", "detector_types",
                                 "method", "path")} == {
        "route": "block", "side": "request", "verdict": "flagged", "action": "blocked",
        "detector_types": ["prompt_attack"], "method": "POST",
        "path": "/block/v1/chat/completions"}
    assert line["latency_ms"] > 0 and line["time"].endswith("+00:00")
    text = (proxy.log_path.parent / "audit.jsonl").read_text()
    assert "my-private-words" not in text and LAKERA_KEY not in text
    assert '"verdict":"clean","action":"allowed"' in text
