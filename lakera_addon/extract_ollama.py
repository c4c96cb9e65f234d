"""Request text of Ollama's native API (`/api/chat`, `/api/generate`). Ollama's server decodes a
fixed set of fields (Go structs) and ignores any other key, so only those fields are read.
docs/security.md lists every field and what is done with it."""

from __future__ import annotations

from lakera_addon import protocols
from lakera_addon.extract_common import BodyShapeError
from lakera_addon.extract_common import Message
from lakera_addon.extract_common import Texts
from lakera_addon.extract_common import append
from lakera_addon.extract_common import append_turn
from lakera_addon.extract_common import items
from lakera_addon.extract_common import structured_texts
from lakera_addon.extract_common import turn_role
from lakera_addon.extract_common import walk


def _content_visit(part: dict[str, object], role: str) -> list[tuple[object, str]]:
    """Content sent as OpenAI-style parts (Ollama itself takes a string): the text parts."""
    return [(part.get("text"), role)] if part.get("type") in (None, "text") else []


def _message(item: dict[str, object]) -> Texts:
    """`content` and `thinking` (templates render an earlier turn's thinking) by the message's
    role; the arguments of its tool calls (the model's own, as the history claims them)."""
    role = turn_role(item)
    texts = walk(item.get("content"), role, _content_visit)
    if isinstance(item.get("thinking"), str):
        texts.append((role, str(item["thinking"])))
    for call in items(item.get("tool_calls")):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts += [(role, text) for text in structured_texts(function.get("arguments"))]
    return texts


def ollama_chat(body: dict[str, object]) -> list[Message]:
    value = body.get("messages")
    if value is None:  # a request that only loads the model
        return []
    if not isinstance(value, list):
        raise BodyShapeError(f"{protocols.OLLAMA_CHAT} 'messages' is not a list")
    messages: list[Message] = []
    for item in value:
        if not isinstance(item, dict):
            raise BodyShapeError(f"{protocols.OLLAMA_CHAT} message is not an object")
        append_turn(messages, _message(item))
    return messages


# (field, role): `template` replaces the model's prompt template, so its literal text is prompt,
# anywhere in it (a user turn included): the client's text, `user`, never `system`
_GENERATE_FIELDS = (("system", "system"), ("template", "user"), ("prompt", "user"),
                    ("suffix", "user"))
# The top-level keys of the requests (`ollama._types.ChatRequest`, `GenerateRequest`). Any
# other key is screened whole (extract.py).
_COMMON_FIELDS = {"format", "keep_alive", "logprobs", "model", "options", "stream", "think",
                  "top_logprobs"}
CHAT_FIELDS = frozenset({*_COMMON_FIELDS, "messages", "tools"})
GENERATE_FIELDS = frozenset({*_COMMON_FIELDS, "context", "height", "images", "prompt", "raw",
                             "steps", "suffix", "system", "template", "width"})


def ollama_generate(body: dict[str, object]) -> list[Message]:
    messages: list[Message] = []
    for key, role in _GENERATE_FIELDS:
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise BodyShapeError(f"{protocols.OLLAMA_GENERATE} '{key}' is not a string")
        append(messages, role, [value] if value else [])
    return messages


def ollama_tools(body: dict[str, object]) -> list[object]:
    return items(body.get("tools"))
