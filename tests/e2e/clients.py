"""SDK clients that go through the proxy, and lookups of what the stand-ins saw."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import anthropic
import httpx
import ollama
import openai
from google import genai
from google.genai import types as genai_types

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


# --- the official SDKs as a caller uses them --------------------------------------------------

PROTOCOLS = ["chat", "responses", "anthropic"]  # openai chat, openai responses, anthropic


def standin_headers(reply: str | None = None, mode: str = "") -> dict[str, str]:
    """The LLM stand-in's switches: the reply text it sends, and its modes."""
    headers = {}
    if reply is not None:
        headers["x-standin-reply-b64"] = base64.b64encode(reply.encode()).decode()
    if mode:
        headers["x-standin-mode"] = mode
    return headers


def ask(c: Client, protocol: str, stream: bool, prompt: str, reply: str | None = None,
        mode: str = "") -> str:
    """The assistant text the official SDK hands to its caller for a one-turn prompt."""
    headers = standin_headers(reply, mode)
    messages: Any = [{"role": "user", "content": prompt}]
    if protocol == "chat":
        if stream:
            chunks = c.openai.chat.completions.create(
                model="gpt-test", messages=messages, stream=True, extra_headers=headers)
            return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        answer = c.openai.chat.completions.create(
            model="gpt-test", messages=messages, extra_headers=headers)
        return answer.choices[0].message.content or ""
    if protocol == "responses":
        if stream:
            events = c.openai.responses.create(
                model="gpt-test", input=prompt, stream=True, extra_headers=headers)
            return "".join(e.delta for e in events if e.type == "response.output_text.delta")
        return c.openai.responses.create(
            model="gpt-test", input=prompt, extra_headers=headers).output_text
    if stream:
        anthropic_events = c.anthropic.messages.create(
            model="claude-test", max_tokens=50, messages=messages, stream=True,
            extra_headers=headers)
        return "".join(e.delta.text for e in anthropic_events
                       if e.type == "content_block_delta" and e.delta.type == "text_delta")
    message = c.anthropic.messages.create(
        model="claude-test", max_tokens=50, messages=messages, extra_headers=headers)
    return "".join(b.text for b in message.content if b.type == "text")


@dataclass
class Streamed:
    """What the caller of a streamed answer got, and when."""

    text: str = ""
    ending: str | None = None  # finish reason / stop reason / final event type
    first_text_at: float | None = None  # seconds from the request
    ended_at: float = 0.0
    events: list[str] = field(default_factory=list)


def stream_answer(c: Client, protocol: str, reply: str, mode: str = "delay-ms=5") -> Streamed:
    """Stream an answer through the official SDK; what the caller got, how it ended, when."""
    headers = standin_headers(reply, mode)
    got = Streamed()
    started = time.perf_counter()

    def add(text: str | None) -> None:
        if text:
            if got.first_text_at is None:
                got.first_text_at = time.perf_counter() - started
            got.text += text

    prompt: Any = [{"role": "user", "content": f"hello {c.id}"}]
    if protocol == "chat":
        for chunk in c.openai.chat.completions.create(
                model="gpt-test", messages=prompt, stream=True, extra_headers=headers):
            for choice in chunk.choices:
                add(choice.delta.content)
                got.ending = choice.finish_reason or got.ending
    elif protocol == "responses":
        for event in c.openai.responses.create(
                model="gpt-test", input=f"hello {c.id}", stream=True, extra_headers=headers):
            got.events.append(event.type)
            if event.type == "response.output_text.delta":
                add(event.delta)
            elif event.type == "response.incomplete":
                details = event.response.incomplete_details
                got.ending = f"incomplete:{details.reason if details else None}"
            elif event.type == "response.completed":
                got.ending = "completed"
    else:
        with c.anthropic.messages.stream(model="claude-test", max_tokens=50, messages=prompt,
                                         extra_headers=headers) as events:
            for text in events.text_stream:
                add(text)
            got.ending = events.get_final_message().stop_reason
    got.ended_at = time.perf_counter() - started
    return got


# --- the native SDKs: google-genai and ollama -------------------------------------------------

MODEL = "gemini-e2e"


def native_headers(test_id: str, reply: str | None = None, mode: str = "") -> dict[str, str]:
    headers = {"x-test-id": test_id}
    if reply is not None:
        headers["x-standin-reply-b64"] = base64.b64encode(reply.encode()).decode()
    if mode:
        headers["x-standin-mode"] = mode
    return headers


def gemini_client(proxy: Proxy, route: str, headers: dict[str, str]) -> genai.Client:
    """google-genai at the route's prefix: `base_url` keeps its path (the SDK appends
    `v1beta/models/...`); no retries; no environment proxy (httpx's trust_env)."""
    return genai.Client(api_key="gemini-provider-key", http_options=genai_types.HttpOptions(
        base_url=proxy.url(route), api_version="v1beta", headers=headers, timeout=30_000,
        client_args={"trust_env": False},
        retry_options=genai_types.HttpRetryOptions(attempts=1)))


def ollama_client(proxy: Proxy, route: str, headers: dict[str, str]) -> ollama.Client:
    # extra keyword arguments go to httpx.Client; the ollama client never retries
    return ollama.Client(host=proxy.url(route), headers=headers, timeout=30, trust_env=False)


def ask_native(proxy: Proxy, kind: str, route: str, test_id: str, prompt: str, stream: bool,
        reply: str | None = None, mode: str = "") -> str:
    """The answer text the SDK hands to its caller for a one-turn prompt."""
    headers = native_headers(test_id, reply, mode)
    if kind == "gemini":
        with gemini_client(proxy, route, headers) as gemini:
            config = genai_types.GenerateContentConfig(system_instruction=f"Be brief. {test_id}")
            if stream:
                return "".join(chunk.text or "" for chunk in gemini.models.generate_content_stream(
                    model=MODEL, contents=prompt, config=config))
            answer = gemini.models.generate_content(model=MODEL, contents=prompt, config=config)
            return answer.text or ""
    with ollama_client(proxy, route, headers) as client:
        if kind == "ollama-chat":
            messages = [{"role": "system", "content": f"Be brief. {test_id}"},
                        {"role": "user", "content": prompt}]
            if stream:
                return "".join(part.message.content or "" for part in client.chat(
                    model="llama-e2e", messages=messages, stream=True))
            return client.chat(model="llama-e2e", messages=messages).message.content or ""
        if stream:
            return "".join(part.response or "" for part in client.generate(
                model="llama-e2e", prompt=prompt, system=f"Be brief. {test_id}", stream=True))
        return client.generate(model="llama-e2e", prompt=prompt,
                               system=f"Be brief. {test_id}").response or ""


def stream_native(proxy: Proxy, kind: str, route: str, test_id: str, reply: str,
                mode: str) -> tuple[str, str | None, float | None, float]:
    """Stream an answer through the SDK: (the text its caller got, the stream's ending
    (Gemini's finish reason, Ollama's done_reason), seconds to the first text, to the end)."""
    headers = native_headers(test_id, reply, mode)
    text, ending, first = "", None, None
    started = time.perf_counter()

    def add(piece: str | None) -> None:
        nonlocal text, first
        if piece:
            first = first if first is not None else time.perf_counter() - started
            text += piece

    if kind == "gemini":
        with gemini_client(proxy, route, headers) as gemini:
            for chunk in gemini.models.generate_content_stream(model=MODEL,
                                                                contents=f"hi {test_id}"):
                add(chunk.text)
                for candidate in chunk.candidates or []:
                    if candidate.finish_reason is not None:
                        ending = candidate.finish_reason.value
    else:
        with ollama_client(proxy, route, headers) as client:
            parts: Any = (client.chat(model="llama-e2e", stream=True,
                                      messages=[{"role": "user", "content": f"hi {test_id}"}])
                          if kind == "ollama-chat" else
                          client.generate(model="llama-e2e", prompt=f"hi {test_id}", stream=True))
            for part in parts:
                add(part.message.content if kind == "ollama-chat" else part.response)
                if part.done:
                    ending = part.done_reason
    return text, ending, first, time.perf_counter() - started
