"""Hook behaviour that the end-to-end bed cannot stage, on real mitmproxy flows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path

import pytest
import yaml
from mitmproxy import http
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from lakera_addon.guard_addon import LakeraGuard
from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin


async def hook(result: Awaitable[None] | None) -> None:
    """Await a hook's result as mitmproxy does: only when it is awaitable."""
    if result is not None:
        await result


def test_answer_streamed_by_another_addon_is_not_reported_as_blocked(tmp_path: Path) -> None:
    """If a later addon streams a held answer, a deny can no longer take effect: the flow must
    not claim it was blocked, and the response object is left as the client got it."""
    with LakeraGuardStandin(api_key="k") as lakera:
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({
            "api_key": "k", "lakera_endpoint": f"{lakera.url}/v2/guard", "direction": "both",
            "routes": [{"name": "all", "hosts": ["*"]}]}))

        async def run() -> http.HTTPFlow:
            addon = LakeraGuard()
            with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
                tctx.configure(addon, lakera_config=str(config))
                body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
                flow = tflow.tflow(req=http.Request.make(
                    "POST", "http://api.test/v1/chat/completions", body))
                await hook(addon.request(flow))
                flow.response = http.Response.make(
                    200, json.dumps({"choices": [{"message": {"content": ATTACK_TRIGGER}}]}),
                    {"content-type": "application/json"})
                addon.responseheaders(flow)
                flow.response.stream = True  # what another addon might do after ours
                original = flow.response
                await hook(addon.response(flow))
                assert flow.response is original
                await addon.lakera.aclose()
                tctx.master._legacy_log_events.uninstall()
                return flow

        flow = asyncio.run(run())
    record = flow.metadata["lakera"]["response"]
    assert record["verdict"] == "failure" and record["action"] == "allowed"
    assert "streamed by another addon" in record["failure"]
    assert flow.marked == ":large_orange_diamond:"


# --- fail closed on every path (SPEC section 5, the invariant) --------------------------------


def config_file(tmp_path: Path, lakera: LakeraGuardStandin, **settings: object) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "api_key": "k", "lakera_endpoint": f"{lakera.url}/v2/guard", "direction": "both",
        "routes": [{"name": "all", "hosts": ["*"]}], **settings}))
    return path


async def send(config: Path, body: dict[str, object], answer: bytes | None = None,
               content_type: str = "application/json") -> http.HTTPFlow:
    """A flow through the addon's hooks; `answer` None stops after the request side."""
    addon = LakeraGuard()
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        tctx.configure(addon, lakera_config=str(config))
        flow = tflow.tflow(req=http.Request.make(
            "POST", "http://api.test/v1/chat/completions", json.dumps(body)))
        await hook(addon.request(flow))
        if answer is not None and flow.response is None:
            flow.response = http.Response.make(200, answer, {"content-type": content_type})
            addon.responseheaders(flow)
            await hook(addon.response(flow))
        await addon.lakera.aclose()
        tctx.master._legacy_log_events.uninstall()
        return flow


FLAGGED = {"model": "m", "messages": [{"role": "user", "content": ATTACK_TRIGGER}]}
CLEAN = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def test_a_deny_that_cannot_be_built_sends_the_last_resort(tmp_path: Path, monkeypatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("lakera_addon.verdicts.build_deny", broken)
    with LakeraGuardStandin(api_key="k") as lakera:
        flow = asyncio.run(send(config_file(tmp_path, lakera), FLAGGED))
    assert flow.response is not None
    assert b"Blocked by Lakera Guard" in (flow.response.content or b"")
    assert flow.metadata["lakera"]["request"]["action"] == "blocked"


def test_a_deny_that_cannot_be_sent_closes_the_flow(tmp_path: Path, monkeypatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("lakera_addon.verdicts.http.Response.make", broken)
    with LakeraGuardStandin(api_key="k") as lakera:
        flow = asyncio.run(send(config_file(tmp_path, lakera), FLAGGED))
    assert flow.response is None and flow.error is not None
    assert flow.error.msg == flow.error.KILLED_MESSAGE  # closed, never forwarded


def test_an_audit_log_that_fails_does_not_undo_a_deny(tmp_path: Path, monkeypatch) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lakera_addon.audit_log.AuditLog.write", full_disk)
    with LakeraGuardStandin(api_key="k") as lakera:
        flow = asyncio.run(send(config_file(tmp_path, lakera), FLAGGED))
    assert flow.response is not None and b"Request blocked" in (flow.response.content or b"")


@pytest.mark.parametrize(("fail_open", "denied"), [(False, True), (True, False)])
def test_an_exception_while_reading_the_prompt_follows_fail_open(
        tmp_path: Path, monkeypatch, fail_open: bool, denied: bool) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("lakera_addon.extract.request_messages", broken)
    with LakeraGuardStandin(api_key="k") as lakera:
        flow = asyncio.run(send(config_file(tmp_path, lakera, fail_open=fail_open), CLEAN))
    assert (flow.response is not None) is denied
    record = flow.metadata["lakera"]["request"]
    assert record["verdict"] == "failure" and record["failure"] == "internal error (RuntimeError)"
    assert record["action"] == ("blocked" if denied else "allowed")


def test_an_exception_choosing_the_delivery_holds_the_answer(tmp_path: Path,
                                                             monkeypatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("lakera_addon.guard_addon.can_stay_live", broken)
    answer = (b'data: {"choices":[{"index":0,"delta":{"content":"' + ATTACK_TRIGGER.encode()
              + b'"}}]}\n\ndata: [DONE]\n\n')
    with LakeraGuardStandin(api_key="k") as lakera:
        flow = asyncio.run(send(config_file(tmp_path, lakera, stream_mode="live"),
                                {**CLEAN, "stream": True}, answer, "text/event-stream"))
    assert flow.response is not None
    assert ATTACK_TRIGGER.encode() not in (flow.response.content or b"")  # held, screened, denied
    assert b"Response blocked" in (flow.response.content or b"")
