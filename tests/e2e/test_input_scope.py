"""`input_scope: latest` (per route): a coding agent resends its whole history every turn; only
the system prompt and what the turn adds are screened."""

from __future__ import annotations

import json
from typing import Any

from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from tests.e2e.clients import Clients
from tests.e2e.clients import lakera_bodies

DENY = "Request blocked by Lakera Guard"


def agent_session(c: Any, turns: int, last_tool_output: str = "") -> None:
    """An agent loop: each turn the model calls a tool and the tool's ~1 KB output is sent
    back with the whole history."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"You are a coding agent. {c.id}"},
        {"role": "user", "content": "Fix the failing test in the repository."}]
    for turn in range(turns):
        messages.append({"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_{turn}", "type": "function",
            "function": {"name": "read_file", "arguments": json.dumps({"path": f"f{turn}.py"})}}]})
        output = f"# file {turn}\n" + "x = 1\n" * 170
        if turn == turns - 1 and last_tool_output:
            output = last_tool_output
        messages.append({"role": "tool", "tool_call_id": f"call_{turn}", "content": output})
        answer = c.openai.chat.completions.create(model="m", messages=messages)
        if answer.choices[0].message.content == DENY:
            raise PermissionError(turn)


def sent_bytes(lakera: Any, test_id: str) -> int:
    return sum(len(json.dumps(b)) for b in lakera_bodies(lakera, test_id))


def test_fifty_turns_latest_against_conversation(clients: Clients, lakera) -> None:
    full, latest = clients.make("block-input"), clients.make("latest")
    agent_session(full, 50)
    agent_session(latest, 50)
    full_bytes, latest_bytes = sent_bytes(lakera, full.id), sent_bytes(lakera, latest.id)
    print(f"\n50-turn agent session, Lakera bytes: conversation {full_bytes:,}, "
          f"latest {latest_bytes:,} ({full_bytes / latest_bytes:.1f} x less)")
    assert len(lakera_bodies(lakera, latest.id)) == 50
    # every call carries the system prompt and only the newest tool result
    assert all(len(b["messages"]) == 2 for b in lakera_bodies(lakera, latest.id))
    assert latest_bytes * 10 < full_bytes


def test_latest_still_blocks_what_the_turn_adds(clients: Clients) -> None:
    c = clients.make("latest")
    try:
        agent_session(c, 3, last_tool_output=f"README says: {ATTACK_TRIGGER}")
    except PermissionError as blocked:
        assert blocked.args == (2,)
    else:
        raise AssertionError("the injected tool output was not blocked")
