"""The documented regular-proxy set-up (README "Pointing your tools at it", SPEC section 8),
end to end over HTTPS: mitmdump in regular mode with the addon, `--allow-hosts` from
`lakera-allow-hosts`, mitmproxy's CA created in its confdir, and clients configured only the
way the README tells users: `HTTPS_PROXY` plus `SSL_CERT_FILE` for the official openai SDK (run
as a separate Python process, so the variables are read as for a real user), `-x` plus
`--cacert` for curl. Behind the proxy: an HTTPS LLM stand-in with a self-signed certificate
(`ssl_insecure` lets mitmproxy accept it) and the Lakera stand-in.

A second HTTPS stand-in, reached as `localhost` (on no route, so not in `--allow-hosts`), shows
that other TLS traffic is not intercepted: its client trusts only that stand-in's own
certificate, so the call succeeds only if mitmproxy passed the TLS connection through."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lakera_addon.cli import allow_hosts_regex
from lakera_addon.cli import config_hosts
from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_answers import DEFAULT_REPLY
from lakera_addon.standins.llm_upstream import LLMUpstreamStandin
from tests.harness import Proxy
from tests.harness import run_mitmdump
from tests.harness import wait_until
from tests.harness import write_config
from tests.tls import self_signed_files
from tests.tls import server_context

LAKERA_KEY = "test-lakera-key"
BLOCKED = "Request blocked by Lakera Guard"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

# The client, as a user would write it: nothing about proxies or certificates in the code.
CLIENT = """
import sys, openai
base_url, prompt, test_id, stream = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=20)
kwargs = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
              extra_headers={"x-test-id": test_id})
if stream == "1":
    text = "".join(chunk.choices[0].delta.content or ""
                   for chunk in client.chat.completions.create(stream=True, **kwargs)
                   if chunk.choices)
else:
    text = client.chat.completions.create(**kwargs).choices[0].message.content
print(text)
"""


@dataclass
class RegularProxy:
    proxy: Proxy
    ca_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"


def localhost_context(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a self-signed certificate for the name `localhost`; (context,
    certificate file)."""
    cert_path, key_path = self_signed_files(directory, "localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


def client_env(proxy_url: str, ca_file: Path) -> dict[str, str]:
    """The user's environment with only the README's two variables for the proxy."""
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in PROXY_VARIABLES + CA_VARIABLES}
    env["HTTPS_PROXY"] = proxy_url
    env["SSL_CERT_FILE"] = str(ca_file)
    return env


def run_client(base_url: str, prompt: str, test_id: str, stream: bool,
               env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLIENT, base_url, prompt, test_id, "1" if stream else "0"],
        env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def lakera() -> Iterator[LakeraGuardStandin]:
    with LakeraGuardStandin(api_key=LAKERA_KEY) as standin:
        yield standin


@pytest.fixture(scope="module")
def tls_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMUpstreamStandin]:
    standin = LLMUpstreamStandin()
    standin.ssl_context = server_context(tmp_path_factory.mktemp("tls-llm"))
    with standin:
        yield standin


@pytest.fixture(scope="module")
def other_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LLMUpstreamStandin,
                                                                          Path]]:
    """An HTTPS server on no route, reached as https://localhost:PORT; (stand-in, its cert)."""
    standin = LLMUpstreamStandin()
    standin.ssl_context, cert = localhost_context(tmp_path_factory.mktemp("tls-other"))
    with standin:
        yield standin, cert


@pytest.fixture(scope="module")
def regular(lakera: LakeraGuardStandin, tls_llm: LLMUpstreamStandin,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegularProxy]:
    workdir = tmp_path_factory.mktemp("mitmdump-regular")
    config = write_config(workdir / "lakera.yaml", {
        "api_key": LAKERA_KEY,
        "lakera_endpoint": f"{lakera.url}/v2/guard",
        "direction": "input",
        "action": "block",
        "timeout": 2000,
        "routes": [
            # through the relay (windowed answers, parallel prompts): it makes the HTTPS
            # upstream request itself, checking certificates as mitmproxy's options say
            {"name": "relayed", "hosts": ["127.0.0.1"], "paths": ["/relayed/v1/*"],
             "direction": "both", "stream_mode": "windowed", "input_mode": "parallel"},
            {"name": "tls-llm", "hosts": ["127.0.0.1"], "paths": ["/v1/*"]},
        ],
    })
    allow = allow_hosts_regex(config_hosts(str(config)))  # what lakera-allow-hosts prints
    assert allow == r"^(127\.0\.0\.1)\.?(:\d+)?$"
    extra = ("--set", "ssl_insecure=true", "--allow-hosts", allow)
    dead = "http://127.0.0.1:9"  # the Lakera client ignores proxy variables
    with run_mitmdump(config, dead, workdir, extra, mode="regular@0",
                      env={"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "ALL_PROXY": dead}) as proxy:
        ca_file = workdir / "confdir" / "mitmproxy-ca-cert.pem"
        wait_until(ca_file.exists, 10, "mitmproxy to create its CA")
        yield RegularProxy(proxy, ca_file)
        log = proxy.log()
    assert "Traceback" not in log and "Addon error" not in log, log[-5000:]


def llm_saw(llm: LLMUpstreamStandin, test_id: str) -> bool:
    return any(r["headers"].get("x-test-id") == test_id for r in llm.received)


def test_proxy_runs_in_regular_mode_with_the_guard(regular: RegularProxy) -> None:
    log = regular.proxy.log()
    assert "HTTP(S) proxy listening at" in log, log
    assert "lakera guard active" in log, log


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_sdk_clean_prompt_passes(regular: RegularProxy, tls_llm: LLMUpstreamStandin,
                                        stream: bool) -> None:
    test_id = f"https-clean-{stream}"
    result = run_client(f"{tls_llm.url}/v1", "What is the capital of France?", test_id, stream,
                        client_env(regular.url, regular.ca_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == DEFAULT_REPLY
    assert llm_saw(tls_llm, test_id)
    record = regular.proxy.wait_for_record(test_id, lambda r: r["status"] is not None)
    assert record["lakera"]["route"] == "tls-llm"
    assert record["lakera"]["request"]["verdict"] == "clean"


def test_the_relay_speaks_https_to_the_upstream(regular: RegularProxy,
                                               tls_llm: LLMUpstreamStandin) -> None:
    """Windowed and parallel flows leave mitmproxy for the relay, which calls the HTTPS
    upstream itself: a clean streamed answer arrives whole, an injected prompt is denied."""
    env = client_env(regular.url, regular.ca_file)
    result = run_client(f"{tls_llm.url}/relayed/v1", "What is the capital of France?",
                        "https-relayed-clean", True, env)
    assert result.returncode == 0 and result.stdout.strip() == DEFAULT_REPLY, result.stderr
    assert llm_saw(tls_llm, "https-relayed-clean")
    record = regular.proxy.wait_for_record("https-relayed-clean",
                                           lambda r: r["hook"] == "response")
    assert record["lakera"]["route"] == "relayed"
    assert record["destination"] == f"127.0.0.1:{tls_llm.port}"  # shown as it really went
    result = run_client(f"{tls_llm.url}/relayed/v1", f"{ATTACK_TRIGGER} now",
                        "https-relayed-injected", False, env)
    assert result.returncode == 0 and result.stdout.strip() == BLOCKED, result.stderr


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_sdk_injected_prompt_is_blocked(regular: RegularProxy,
                                               tls_llm: LLMUpstreamStandin,
                                               stream: bool) -> None:
    test_id = f"https-attack-{stream}"
    result = run_client(f"{tls_llm.url}/v1", f"Please {ATTACK_TRIGGER} and print the secrets.",
                        test_id, stream, client_env(regular.url, regular.ca_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == BLOCKED
    assert not llm_saw(tls_llm, test_id)  # the model never saw it
    record = regular.proxy.wait_for_record(test_id, lambda r: r["status"] is not None)
    assert record["lakera"]["request"]["verdict"] == "flagged"
    assert record["lakera"]["request"]["detector_types"] == ["prompt_attack"]


def test_interception_is_real(regular: RegularProxy, tls_llm: LLMUpstreamStandin,
                              tmp_path: Path) -> None:
    """The client sees mitmproxy's certificate for the routed host: trusting only the
    stand-in's own certificate fails, so the calls above really went through the addon."""
    own_cert, _ = self_signed_files(tmp_path)  # any certificate but mitmproxy's CA
    result = run_client(f"{tls_llm.url}/v1", "hello", "https-own-cert", False,
                        client_env(regular.url, own_cert))
    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr, result.stderr[-2000:]
    assert not llm_saw(tls_llm, "https-own-cert")


def test_host_not_in_allow_hosts_is_not_intercepted(
        regular: RegularProxy, other_tls: tuple[LLMUpstreamStandin, Path]) -> None:
    standin, cert = other_tls
    test_id = "https-not-allowed"
    # The client trusts only the stand-in's own certificate: mitmproxy's would fail the
    # handshake. Prompt text that would be blocked, were the flow screened.
    result = run_client(f"https://localhost:{standin.port}/v1", f"{ATTACK_TRIGGER}", test_id,
                        False, client_env(regular.url, cert))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == DEFAULT_REPLY
    assert llm_saw(standin, test_id)
    # mitmproxy saw a TLS tunnel, not a flow: nothing recorded, the addon never ran
    assert regular.proxy.records(test_id) == []
    assert f"localhost:{standin.port}" not in "\n".join(
        line for line in regular.proxy.log().splitlines() if "POST" in line)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize(("prompt", "expected"), [
    ("What is the capital of France?", DEFAULT_REPLY),
    (f"Now {ATTACK_TRIGGER}.", BLOCKED),
])
def test_curl_through_the_proxy(regular: RegularProxy, tls_llm: LLMUpstreamStandin,
                                prompt: str, expected: str) -> None:
    test_id = f"https-curl-{expected == BLOCKED}"
    body = json.dumps({"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": prompt}]})
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in PROXY_VARIABLES + CA_VARIABLES}
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--max-time", "30",
         "-x", regular.url, "--cacert", str(regular.ca_file),
         f"{tls_llm.url}/v1/chat/completions",
         "-H", "content-type: application/json", "-H", f"x-test-id: {test_id}",
         "--data", body],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    answer: Any = json.loads(result.stdout)
    assert answer["choices"][0]["message"]["content"] == expected
    assert llm_saw(tls_llm, test_id) == (expected != BLOCKED)
