"""Screening flows again without touching them (lakera_addon.rescreen), the `lakera.rescreen`
command, and the pure parts of `lakera-replay` (lakera_addon.replay): the request side's
planning, the would-be actions, the table and the summary. Lakera is the stand-in's verdict
function, called in-process (no socket); tests/e2e/test_replay.py runs the console script on
a file recorded through a real mitmdump."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from mitmproxy import http
from mitmproxy.addons import view
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from lakera_addon import replay
from lakera_addon import rescreen
from lakera_addon.configuration import Config
from lakera_addon.configuration import Route
from lakera_addon.configuration import Settings
from lakera_addon.configuration import parse_config
from lakera_addon.decision import Decision
from lakera_addon.extract import Message
from lakera_addon.flow_route import route_of
from lakera_addon.flow_state import FlowState
from lakera_addon.guard_addon import LakeraGuard
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.lakera_client import classify
from lakera_addon.request_plan import plan_screen
from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import PII_TRIGGER
from lakera_addon.standins.lakera_guard import verdict as standin_verdict
from lakera_addon.verdict import Verdict

ENDPOINT = "http://127.0.0.1:9/v2/guard"  # never called: StandinLakera answers in-process
CHAT = "http://api.test/v1/chat/completions"


class StandinLakera(LakeraClient):
    """The Lakera stand-in's verdicts, without a socket; the bodies it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[dict[str, Any]] = []

    async def _call(self, settings: Settings, body: bytes) -> Verdict:
        document = json.loads(body)
        self.asked.append(document)
        if "lakera-500" in json.dumps(document):
            return classify(500, b"{}", 1.0)
        return classify(200, json.dumps(standin_verdict(document)).encode(), 1.0)


def config(**settings: Any) -> Config:
    return parse_config({"lakera_endpoint": ENDPOINT, "verdict_cache_seconds": 0, **settings,
                         "routes": [{"name": "api", "hosts": ["api.test"]}]}, "new.yaml", {})


def chat_flow(prompt: str, answer: str | None = "Hello.", stream: bool = False,
              status: int = 200) -> http.HTTPFlow:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    flow = tflow.tflow(req=http.Request.make("POST", CHAT, json.dumps(body),
                                             {"content-type": "application/json"}))
    if answer is not None and stream:
        pieces = [answer[i:i + 5] for i in range(0, len(answer), 5)]
        events = "".join("data: " + json.dumps({"choices": [{"index": 0, "delta": {
            "content": piece}}]}) + "\n\n" for piece in pieces)
        flow.response = http.Response.make(status, events + "data: [DONE]\n\n",
                                           {"content-type": "text/event-stream"})
    elif answer is not None:
        flow.response = http.Response.make(status, json.dumps(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}),
            {"content-type": "application/json"})
    return flow


def screen(flow: http.HTTPFlow, cfg: Config) -> rescreen.FlowResult:
    async def run() -> rescreen.FlowResult:
        return await rescreen.rescreen(flow, route_of(cfg, flow), StandinLakera())
    return asyncio.run(run())


def actions(result: rescreen.FlowResult) -> dict[str, str]:
    return {side.side: side.action for side in result.sides}


# --- the request side's plan (request_plan.plan_screen) ------------------------------------

def state(**settings: Any) -> FlowState:
    route = Route("r", ("*",), (), "auto", Settings(**settings))
    return FlowState(route, "openai-chat", "m", False)


def test_plan_nothing_to_screen() -> None:
    assert plan_screen(state(), [], [], {}).unscanned == "no text"


def test_plan_older_turns_in_calls_of_their_own() -> None:
    messages: list[Message] = [{"role": "system", "content": "s" * 100}]
    messages += [{"role": "user", "content": f"{i}" * 400} for i in range(5)]
    plan = plan_screen(state(max_screen_bytes=1000), messages, [], {})
    assert plan.sent == [messages[0], messages[4], messages[5]]
    assert plan.others == [[messages[1], messages[2]], [messages[3]]]
    assert plan.coverage is not None and plan.coverage.startswith("3 older of 6 messages")


def test_plan_too_large_is_a_failure() -> None:
    plan = plan_screen(state(max_screen_bytes=1000), [{"role": "user", "content": "x" * 2000}],
                       [], {})
    assert plan.failure is not None and "exceed max_screen_bytes (1000)" in plan.failure.reason


def test_plan_text_of_no_conversation_goes_in_parts() -> None:
    generic = state()
    generic.generic = True
    plan = plan_screen(generic, [{"role": "user", "content": "every string"}], [], {})
    assert not plan.sent and plan.parts == [{"role": "user", "content": "every string"}]


# --- would-be actions (rescreen.outcome) -----------------------------------------------------

@pytest.mark.parametrize(("decision", "action"), [
    (Decision("clean", False), "pass"),
    (Decision("flagged", True), "block"),
    (Decision("flagged", False), "alert"),
    (Decision("flagged", False, mask=True), "mask"),
    (Decision("failure", True, "timeout"), "fail"),
    (Decision("failure", False, "timeout"), "fail"),
    (Decision("unscanned", False, "no text"), "unscanned"),
])
def test_decisions_as_actions(decision: Decision, action: str) -> None:
    result = rescreen.outcome("request", decision)
    assert result.action == action and result.denied is decision.deny


# --- a flow screened again, untouched ----------------------------------------------------------

def test_both_sides_and_the_flow_is_not_changed() -> None:
    flow = chat_flow("hello", f"the card is {PII_TRIGGER}")
    before = flow.get_state()
    result = screen(flow, config(direction="both", detector_actions={"pii/*": "mask"}))
    assert flow.get_state() == before
    assert result.route == "api" and result.protocol == "openai-chat"
    assert actions(result) == {"request": "pass", "response": "mask"}
    assert result.sides[1].masked == {"[CREDIT_CARD]": 1}
    assert result.sides[1].detector_types == ("pii/credit_card",)


def test_a_blocked_request_leaves_its_answer_unscreened() -> None:
    result = screen(chat_flow(ATTACK_TRIGGER), config(direction="both"))
    assert actions(result) == {"request": "block", "response": "unscanned"}
    assert result.sides[0].denied
    assert result.sides[1].reason == "not reached: the request would be denied"


def test_a_streamed_answer_is_assembled() -> None:
    result = screen(chat_flow("hi", f"here: {PII_TRIGGER}", stream=True),
                    config(direction="output"))
    assert actions(result) == {"response": "block"}


@pytest.mark.parametrize(("change", "reason"), [
    ("status", "upstream status 500"),
    ("no-body", "answer body not recorded"),
    ("no-response", "no answer recorded"),
    ("denied-then", "the recorded answer is the deny of the policy in force"),
    ("masked-then", "the recorded answer was replaced by the policy in force"),
])
def test_answers_a_recording_cannot_show(change: str, reason: str) -> None:
    flow = chat_flow("hi", "Hello.", status=500 if change == "status" else 200)
    assert flow.response is not None
    if change == "no-body":
        flow.response.content = None  # streamed past mitmproxy, not stored
    elif change == "no-response":
        flow.response = None
    elif change == "denied-then":
        flow.metadata["lakera"] = {"request": {"verdict": "flagged", "action": "blocked"}}
    elif change == "masked-then":
        flow.metadata["lakera"] = {"response": {"verdict": "flagged", "action": "masked"}}
    result = screen(flow, config(direction="output"))
    assert actions(result) == {"response": "unscanned"}
    assert (result.sides[0].reason or "").startswith(reason)


def test_a_streamed_and_stored_answer_is_read_from_a_copy() -> None:
    flow = chat_flow("hi", "Hello.")
    assert flow.response is not None
    flow.response.stream = True  # mitmweb with store_streamed_bodies: the body is there
    result = screen(flow, config(direction="output"))
    assert actions(result) == {"response": "pass"} and flow.response.stream is True


@pytest.mark.parametrize(("fail_mode", "action"), [("skip", "unscanned"), ("error", "block")])
def test_an_unreadable_body_follows_fail_mode(fail_mode: str, action: str) -> None:
    flow = tflow.tflow(req=http.Request.make("POST", CHAT, b"not json"))
    result = screen(flow, config(direction="both", fail_mode=fail_mode))
    assert [(s.side, s.verdict, s.action) for s in result.sides] == [
        ("request", "unreadable", action), ("response", "unscanned", "unscanned")]


def test_lakera_failure_follows_fail_open() -> None:
    closed = screen(chat_flow("lakera-500"), config())
    opened = screen(chat_flow("lakera-500"), config(fail_open=True))
    assert [(s.action, s.denied) for s in closed.sides] == [("fail", True)]
    assert [(s.action, s.denied) for s in opened.sides] == [("fail", False)]
    assert closed.sides[0].reason == "Lakera Guard returned status 500"


def test_no_route() -> None:
    flow = tflow.tflow(req=http.Request.make("POST", "http://elsewhere.test/v1/chat/completions",
                                             b"{}"))
    assert screen(flow, config()) == rescreen.FlowResult(None, None, note="on no route")
    get = tflow.tflow(req=http.Request.make("GET", CHAT))
    assert screen(get, config()).note == "not screened: GET without a body"


def test_describe_and_mark() -> None:
    blocked = screen(chat_flow(ATTACK_TRIGGER), config(direction="both"))
    assert rescreen.describe(blocked) == (
        "would block request (prompt_attack); would not screen response (not reached: the "
        "request would be denied)")
    assert rescreen.mark(blocked) == ":no_entry:"
    clean = screen(chat_flow("hi"), config())
    assert rescreen.describe(clean) == "would pass request"
    assert rescreen.mark(clean) == rescreen.MARK_PASS
    failing = screen(chat_flow("lakera-500"), config(fail_open=True))
    assert rescreen.describe(failing) == (
        "would fail on request (Lakera Guard returned status 500): allowed")
    assert rescreen.mark(failing) == ":large_orange_diamond:"


# --- lakera.rescreen, through mitmproxy's command API -----------------------------------------

def test_lakera_rescreen_command_marks_and_comments_picked_flows(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "lakera_endpoint": ENDPOINT, "direction": "both",
        "routes": [{"name": "api", "hosts": ["api.test"]}]}))
    injected, clean, unpicked = chat_flow(ATTACK_TRIGGER), chat_flow("hi"), chat_flow("hi")
    own = {"route": "old", "request": {"verdict": "flagged", "action": "allowed",
                                       "detector_types": ["prompt_attack"]}}
    injected.metadata["lakera"] = json.loads(json.dumps(own))
    injected.comment = "lakera: request flagged (prompt_attack), allowed"
    injected.marked = clean.marked = ":default:"  # picked in mitmweb
    states = {f.id: f.get_state() for f in (injected, clean)}

    async def run() -> str:
        addon, flows = LakeraGuard(), view.View()
        addon.lakera = StandinLakera()
        with taddons.context(addon, flows) as tctx:  # type: ignore[no-untyped-call]
            tctx.configure(addon, lakera_config=str(path))
            flows.add([injected, clean, unpicked])
            said: str = tctx.master.commands.execute("lakera.rescreen @marked")
            for _ in range(500):
                if all("rescreen" in f.metadata.get("lakera", {}) for f in (injected, clean)):
                    break
                await asyncio.sleep(0.01)
            tctx.master._legacy_log_events.uninstall()
        return said

    said = asyncio.run(run())
    assert said == f"lakera rescreen: screening 2 flows with {path}"
    assert injected.comment == ("lakera: request flagged (prompt_attack), allowed\n"
                                "lakera rescreen: would block request (prompt_attack); would "
                                "not screen response (not reached: the request would be denied)")
    assert injected.marked == ":no_entry:"
    assert clean.comment == "lakera rescreen: would pass request; would pass response"
    assert clean.marked == rescreen.MARK_PASS
    # the flow's own verdict is kept as it was; the would-be one beside it
    entry = injected.metadata["lakera"]
    assert {k: v for k, v in entry.items() if k != "rescreen"} == own
    assert entry["rescreen"]["route"] == "api"
    assert [(s["side"], s["action"]) for s in entry["rescreen"]["sides"]] == [
        ("request", "block"), ("response", "unscanned")]
    for f in (injected, clean):  # request and response untouched
        now, then = f.get_state(), states[f.id]
        assert (now["request"], now["response"]) == (then["request"], then["response"])
    assert "lakera" not in unpicked.metadata and unpicked.comment == ""


# --- lakera-replay's pure parts -----------------------------------------------------------------

def test_summary_and_table() -> None:
    cfg = config(direction="both", detector_actions={"pii/*": "mask"})
    flows = [chat_flow(ATTACK_TRIGGER), chat_flow("hi", f"card {PII_TRIGGER}"),
             chat_flow("hi"), tflow.tflow(req=http.Request.make("GET", CHAT))]
    results = [screen(f, cfg) for f in flows]
    rows = [replay.Row(i, f, r) for i, (f, r) in enumerate(zip(flows, results, strict=True), 1)]
    summary = replay.summarize(rows, others=2)
    assert summary["flows"] == 4 and summary["on_route"] == 3 and summary["no_route"] == 1
    assert summary["not_http"] == 2 and summary["flows_denied"] == 1
    assert summary["actions"] == {"block": 1, "alert": 0, "mask": 1, "pass": 3, "fail": 0,
                                  "unscanned": 1}
    assert summary["by_detector"]["pii/credit_card"]["mask"] == 1
    assert summary["by_route"]["api"]["pass"] == 3
    lines = replay.table_lines(rows)
    assert lines[0].split() == list(replay.HEADERS)
    assert len(lines) == 1 + 3 * 2 + 1
    assert lines[1].split()[2:] == ["POST", "api.test/v1/chat/completions", "api", "request",
                                    "flagged", "prompt_attack", "block"]
    assert lines[4].split()[-1] == "[CREDIT_CARD]×1"
    assert lines[-1].endswith("not screened: GET without a body")
    text = replay.summary_lines(summary, cfg)
    assert text[0] == ("4 HTTP flows screened with new.yaml: 3 on a route, 1 on no route; "
                       "2 other flows skipped")
    assert text[4].split() == ["all", "1", "0", "1", "3", "0", "1"]


def test_a_long_label_keeps_its_end() -> None:
    flow = tflow.tflow(req=http.Request.make(
        "POST", "https://x.openai.azure.com/openai/deployments/" + "d" * 80 + "/chat/completions"))
    label = replay._label(flow)
    assert len(label) == replay.LABEL_WIDTH and label.endswith("/chat/completions")


def test_concurrency_bounds_the_lakera_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    in_flight = peak = 0

    async def call(self: LakeraClient, settings: Settings, body: bytes) -> Verdict:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return Verdict(False)

    monkeypatch.setattr(LakeraClient, "_call", call)
    cfg = config(direction="both")
    flows = [(i, chat_flow(f"prompt {i}")) for i in range(1, 13)]
    rows = asyncio.run(replay.replay(flows, cfg, 3))
    assert peak == 3
    assert [r.index for r in rows] == list(range(1, 13))
    assert all([s.action for s in r.result.sides] == ["pass", "pass"] for r in rows)


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("action: maybe\n")
    assert replay.main([str(tmp_path / "flows"), "--config", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"error: lakera_config: {bad}: action: 'maybe' is not allowed; "
                                 "must be block or alert\n")
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"lakera_endpoint": ENDPOINT}))
    missing = tmp_path / "missing.mitm"
    assert replay.main([str(missing), "--config", str(ok)]) == 2
    assert capsys.readouterr().err == (
        f"error: {missing}: cannot be read: No such file or directory\n")
