"""The benchmark's requests in each protocol the addon reads: the path and the body of one call.

One conversation (micro.conversation: a system prompt and ~2 KB turns, openai-chat shaped) is
rewritten into each protocol's own request shape, so that the protocols table compares the
same amount of text in each.
"""

from __future__ import annotations

from typing import Any
from typing import Final

from bench import micro
from lakera_addon.protocols import Protocol

MODEL: Final = "bench-model"
# name in the tables: the protocol the addon detects on its path
PROTOCOLS: Final[dict[str, Protocol]] = {
    "openai-chat": "openai-chat",
    "openai-responses": "openai-responses",
    "anthropic": "anthropic-messages",
    "gemini": "gemini-generate",
    "ollama-chat": "ollama-chat",
    "ollama-generate": "ollama-generate",
}


def path(name: str, stream: bool) -> str:
    """The path of a call in protocol `name` (Gemini's says whether it streams)."""
    if name == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"/v1beta/models/{MODEL}:{method}"
    return {"openai-chat": "/v1/chat/completions", "openai-responses": "/v1/responses",
            "anthropic": "/v1/messages", "ollama-chat": "/api/chat",
            "ollama-generate": "/api/generate"}[name]


def body(name: str, size: int, stream: bool) -> dict[str, Any]:
    """A request body of about `size` bytes of conversation in protocol `name`."""
    chat = micro.conversation(size, stream)
    messages: list[dict[str, str]] = chat["messages"]
    system = " ".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    if name == "openai-chat":
        return chat
    if name == "openai-responses":
        return {"model": MODEL, "input": messages, "stream": stream}
    if name == "anthropic":
        return {"model": MODEL, "max_tokens": 1024, "system": system, "messages": turns,
                "stream": stream}
    if name == "gemini":  # whether it streams is in the path
        return {"systemInstruction": {"parts": [{"text": system}]},
                "contents": [{"role": "model" if m["role"] == "assistant" else "user",
                              "parts": [{"text": m["content"]}]} for m in turns]}
    if name == "ollama-chat":
        return {"model": MODEL, "messages": messages, "stream": stream}
    if name == "ollama-generate":
        return {"model": MODEL, "system": system,
                "prompt": "\n\n".join(m["content"] for m in turns), "stream": stream}
    raise ValueError(f"unknown protocol {name}")
