"""The end-to-end test bed: the stand-ins on loopback and one real mitmdump with the addon,
configured with one route per behaviour under test (selected by the path prefix)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_upstream import LLMUpstreamStandin
from tests.e2e.clients import Clients
from tests.harness import Proxy
from tests.harness import run_mitmdump
from tests.harness import write_config

LAKERA_KEY = "test-lakera-key"


def route(name: str, **overrides: Any) -> dict[str, Any]:
    return {"name": name, "hosts": ["127.0.0.1"], "paths": [f"/{name}/*"], **overrides}


MASK_RULES = {"prompt_attack": "block", "pii/*": "mask", "moderated_content/*": "alert"}

ROUTES = [
    route("block"),
    route("block-input", direction="input"),
    route("alert", action="alert"),
    route("block-open", fail_open=True),
    route("shadow", action="alert", fail_open=True, timeout=2000),
    route("shadow-slow", action="alert", fail_open=True, timeout=5000),
    route("badkey", api_key="wrong-key"),
    route("unreachable", lakera_endpoint="http://127.0.0.1:1/v2/guard"),
    route("unreachable-open", lakera_endpoint="http://127.0.0.1:1/v2/guard", fail_open=True),
    route("timeout", timeout=300),
    route("project", project_id="project-e2e"),
    route("reveal", deny_code=403, reveal_failure_categories=True),
    route("deny503", deny_code=503),
    route("custom", request_failure_message="Nope, not that."),
    route("failmode-warn", fail_mode="warn"),
    route("failmode-error", fail_mode="error"),
    route("small", max_body_bytes=4096),
    route("small-open", max_body_bytes=4096, fail_open=True),
    route("output", direction="output"),
    route("budget", max_screen_bytes=4096),
    route("mask", detector_actions=MASK_RULES),
    route("mask-open", detector_actions=MASK_RULES, fail_open=True),
    route("mask-budget", detector_actions=MASK_RULES, max_screen_bytes=4096),
    route("latest", input_scope="latest"),
    route("live", stream_mode="live", window_chars=200),
    route("live-open", stream_mode="live", window_chars=200, fail_open=True),
    route("live-mask", stream_mode="live", window_chars=200,
          detector_actions=MASK_RULES),
    route("tools", screen_tool_definitions=True),
    route("windowed", stream_mode="windowed", window_chars=200),
    route("windowed-open", stream_mode="windowed", window_chars=200, fail_open=True),
    route("windowed-small", stream_mode="windowed", window_chars=200, max_body_bytes=100_000),
    route("parallel", input_mode="parallel"),
    route("parallel-windowed", input_mode="parallel", stream_mode="windowed", window_chars=200),
    route("live-small", stream_mode="live", window_chars=200, max_body_bytes=4096),
    route("live-small-open", stream_mode="live", window_chars=200,
          max_body_bytes=4096, fail_open=True),
]


@pytest.fixture(scope="session")
def lakera() -> Iterator[LakeraGuardStandin]:
    with LakeraGuardStandin(api_key=LAKERA_KEY) as standin:
        yield standin


@pytest.fixture(scope="session")
def llm() -> Iterator[LLMUpstreamStandin]:
    with LLMUpstreamStandin() as standin:
        yield standin


def e2e_config(lakera: LakeraGuardStandin) -> dict[str, Any]:
    return {
        "api_key": LAKERA_KEY,
        "lakera_endpoint": f"{lakera.url}/v2/guard",
        "direction": "both",
        "timeout": 1000,
        "routes": ROUTES,
    }


@pytest.fixture(scope="session")
def proxy(
    lakera: LakeraGuardStandin, llm: LLMUpstreamStandin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    workdir = tmp_path_factory.mktemp("mitmdump")
    config = write_config(workdir / "lakera.yaml", e2e_config(lakera))
    audit = workdir / "audit.jsonl"
    with run_mitmdump(config, llm.url, workdir,
                      extra=("--set", f"lakera_audit_log={audit}")) as running:
        yield running
    log = running.log()
    # after every end-to-end test of the session: nothing escaped a hook, and the shutdown
    # summary was logged
    assert "Traceback" not in log and "Addon error" not in log, log[-5000:]
    assert "lakera stats: screened " in log


@pytest.fixture
def clients(proxy: Proxy) -> Iterator[Clients]:
    made = Clients(proxy)
    yield made
    made.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
