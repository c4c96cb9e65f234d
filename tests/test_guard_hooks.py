"""Hook behaviour that the end-to-end bed cannot stage, on real mitmproxy flows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path

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
