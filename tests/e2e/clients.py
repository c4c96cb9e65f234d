"""SDK clients that go through the proxy, and lookups of what the stand-ins saw."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai

from tests.harness import Proxy


@dataclass
class Client:
    id: str
    base: str
    openai: openai.OpenAI
    anthropic: anthropic.Anthropic
    http: httpx.Client


class Clients:
    """Makes clients for one route prefix; each client has a unique id in `x-test-id`."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self._open: list[Client] = []

    def make(self, route: str, max_retries: int = 0, timeout: float = 30.0) -> Client:
        test_id = f"t-{uuid.uuid4().hex[:12]}"
        base = self.proxy.url(route)
        headers = {"x-test-id": test_id}
        client = Client(
            test_id,
            base,
            openai.OpenAI(base_url=f"{base}/v1", api_key="sk-provider-test",
                          max_retries=max_retries, timeout=timeout, default_headers=headers),
            anthropic.Anthropic(base_url=base, api_key="sk-ant-provider-test",
                                max_retries=max_retries, timeout=timeout,
                                default_headers=headers),
            httpx.Client(headers=headers, timeout=timeout, trust_env=False),
        )
        self._open.append(client)
        return client

    def close(self) -> None:
        for client in self._open:
            client.openai.close()
            client.anthropic.close()
            client.http.close()


def _text_of(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    return " ".join(str(m.get("content")) for m in body.get("messages", []))


def lakera_bodies(lakera: Any, needle: str) -> list[dict[str, Any]]:
    """Bodies the Lakera stand-in received whose messages contain `needle`."""
    return [body for body in list(lakera.received) if needle in _text_of(body)]


def llm_saw(llm: Any, needle: str) -> list[dict[str, Any]]:
    """Requests the LLM stand-in received that carry `needle` (in the test-id header or body)."""
    seen = []
    for request in list(llm.received):
        headers = request.get("headers") or {}
        if headers.get("x-test-id") == needle or needle in str(request.get("body")):
            seen.append(request)
    return seen
