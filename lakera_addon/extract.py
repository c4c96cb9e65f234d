"""The text of a request, as the `{role, content}` messages Lakera screens (SPEC section 3).

Pure functions over the parsed JSON body. A body of the wrong shape for its protocol raises
`BodyShapeError` (the addon then applies `fail_mode`); a body with nothing to screen gives [].
"""

from __future__ import annotations

import json
import re
from typing import TypedDict

from lakera_addon import protocols
from lakera_addon import routing
from lakera_addon.protocols import Protocol


class Message(TypedDict):
    role: str
    content: str


class BodyShapeError(ValueError):
    """The body is JSON but not of its protocol's shape; the message names what is wrong."""


def _role(role: object) -> str:
    if not isinstance(role, str) or not role:
        return "user"
    return "system" if role == "developer" else role


def _part_texts(content: object, text_types: tuple[str, ...]) -> list[str]:
    """Text of string content, or of the text parts of a list of content parts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") in text_types:
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
    return texts


def _append(messages: list[Message], role: str, texts: list[str]) -> None:
    content = " ".join(t for t in texts if t)
    if content.strip():
        messages.append({"role": role, "content": content})


def _list_field(body: dict[str, object], key: str, protocol: str) -> list[object]:
    value = body.get(key)
    if not isinstance(value, list):
        raise BodyShapeError(f"{protocol} body has no '{key}' list")
    return value


def openai_chat(body: dict[str, object]) -> list[Message]:
    messages: list[Message] = []
    for item in _list_field(body, "messages", protocols.OPENAI_CHAT):
        if not isinstance(item, dict):
            raise BodyShapeError("openai-chat message is not an object")
        _append(messages, _role(item.get("role")), _part_texts(item.get("content"), ("text",)))
    return messages


def _anthropic_block_texts(content: object) -> tuple[list[str], list[str]]:
    """(text of the text blocks, text inside the tool_result blocks)."""
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        return [], []
    texts: list[str] = []
    tool_texts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_result":
            tool_texts.extend(_part_texts(block.get("content"), ("text",)))
    return texts, tool_texts


def anthropic_messages(body: dict[str, object]) -> list[Message]:
    messages: list[Message] = []
    _append(messages, "system", _part_texts(body.get("system"), ("text",)))
    for item in _list_field(body, "messages", protocols.ANTHROPIC_MESSAGES):
        if not isinstance(item, dict):
            raise BodyShapeError("anthropic-messages message is not an object")
        texts, tool_texts = _anthropic_block_texts(item.get("content"))
        _append(messages, "tool", tool_texts)
        _append(messages, _role(item.get("role")), texts)
    return messages


_RESPONSES_TEXT_PARTS = ("input_text", "output_text", "text")


def _responses_item(messages: list[Message], item: object) -> None:
    if isinstance(item, str):
        _append(messages, "user", [item])
        return
    if not isinstance(item, dict):
        raise BodyShapeError("openai-responses input item is not an object")
    kind = item.get("type")
    if kind == "function_call_output" or kind == "custom_tool_call_output":
        _append(messages, "tool", _part_texts(item.get("output"), _RESPONSES_TEXT_PARTS))
    elif kind in (None, "message"):
        texts = _part_texts(item.get("content"), _RESPONSES_TEXT_PARTS)
        _append(messages, _role(item.get("role")), texts)


def openai_responses(body: dict[str, object]) -> list[Message]:
    messages: list[Message] = []
    _append(messages, "system", _part_texts(body.get("instructions"), ("text",)))
    value = body.get("input")
    if isinstance(value, str):
        _append(messages, "user", [value])
    elif isinstance(value, list):
        for item in value:
            _responses_item(messages, item)
    elif value is not None:
        raise BodyShapeError("openai-responses 'input' is neither a string nor a list")
    return messages


def openai_embeddings(body: dict[str, object]) -> list[Message]:
    value = body.get("input")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise BodyShapeError("openai-embeddings body has no 'input' string or list")
    messages: list[Message] = []
    for item in value:
        if isinstance(item, str):  # token-id arrays carry no text to screen
            _append(messages, "user", [item])
    return messages


def _field(item: dict[str, object], camel: str, snake: str) -> object:
    """A Gemini field by its camelCase name, or by the snake_case name REST also accepts."""
    return item[camel] if camel in item else item.get(snake)


def _compact(value: object) -> str:
    """A string as it is; any other JSON value as compact JSON (non-ASCII kept readable)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _function_response_texts(value: object) -> list[str]:
    """The text of a Gemini `functionResponse` (a tool result): each value of its `response`
    object, strings verbatim and other values (objects, lists, numbers) as compact JSON."""
    if not isinstance(value, dict):
        return []
    response = value.get("response")
    if isinstance(response, dict):
        return [_compact(v) for v in response.values() if v is not None]
    return [] if response is None else [_compact(response)]


def _repeated(value: object) -> object:
    """A repeated Gemini field: Google's REST API also takes a single object for a list of one
    (its own docs send `"contents": {"parts": {"text": ...}}`)."""
    return [value] if isinstance(value, dict) else value


def _gemini_parts(parts: object) -> tuple[list[str], list[str]]:
    """(text of the text parts, text of the tool results: functionResponse and
    codeExecutionResult) of a Gemini `Content`'s parts. Function calls are the model's own."""
    parts = _repeated(parts)
    if not isinstance(parts, list):
        return [], []
    texts: list[str] = []
    tool_texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            texts.append(text)
        tool_texts.extend(_function_response_texts(
            _field(part, "functionResponse", "function_response")))
        result = _field(part, "codeExecutionResult", "code_execution_result")
        if isinstance(result, dict) and isinstance(result.get("output"), str):
            tool_texts.append(result["output"])
    return texts, tool_texts


_GEMINI_ROLES = {"model": "assistant", "function": "tool"}


def gemini_generate(body: dict[str, object]) -> list[Message]:
    messages: list[Message] = []
    system = _field(body, "systemInstruction", "system_instruction")
    if isinstance(system, str):
        _append(messages, "system", [system])
    elif isinstance(system, dict):
        _append(messages, "system", _gemini_parts(system.get("parts"))[0])
    contents = _repeated(body.get("contents"))
    if not isinstance(contents, list):
        raise BodyShapeError("gemini-generate body has no 'contents' list")
    for item in contents:
        if not isinstance(item, dict):
            raise BodyShapeError("gemini-generate content is not an object")
        texts, tool_texts = _gemini_parts(item.get("parts"))
        role = item.get("role")
        _append(messages, "tool", tool_texts)
        _append(messages, _GEMINI_ROLES.get(role, "user") if isinstance(role, str) else "user",
                texts)
    return messages


def ollama_chat(body: dict[str, object]) -> list[Message]:
    value = body.get("messages")
    if value is None:  # a request that only loads the model
        return []
    if not isinstance(value, list):
        raise BodyShapeError("ollama-chat 'messages' is not a list")
    messages: list[Message] = []
    for item in value:
        if not isinstance(item, dict):
            raise BodyShapeError("ollama-chat message is not an object")
        _append(messages, _role(item.get("role")), _part_texts(item.get("content"), ("text",)))
    return messages


def ollama_generate(body: dict[str, object]) -> list[Message]:
    messages: list[Message] = []
    for key, role in (("system", "system"), ("prompt", "user"), ("suffix", "user")):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise BodyShapeError(f"ollama-generate '{key}' is not a string")
        _append(messages, role, [value] if value else [])
    return messages


_EXTRACTORS = {
    protocols.OPENAI_CHAT: openai_chat,
    protocols.ANTHROPIC_MESSAGES: anthropic_messages,
    protocols.OPENAI_RESPONSES: openai_responses,
    protocols.OPENAI_EMBEDDINGS: openai_embeddings,
    protocols.GEMINI_GENERATE: gemini_generate,
    protocols.OLLAMA_CHAT: ollama_chat,
    protocols.OLLAMA_GENERATE: ollama_generate,
}


def request_messages(protocol: Protocol, body: dict[str, object]) -> list[Message]:
    """The messages to screen for a request body of `protocol`."""
    return _EXTRACTORS[protocol](body)


def request_model(body: dict[str, object], path: str = "") -> str | None:
    """The body's `model`; for Gemini, whose body has none, the model its path names."""
    model = body.get("model")
    return model if isinstance(model, str) else routing.gemini_model(path)


def request_streams(protocol: Protocol, body: dict[str, object], path: str = "") -> bool:
    """Whether the answer will be streamed: `"stream": true` for the OpenAI and Anthropic
    protocols; the path for Gemini (`:streamGenerateContent`); for Ollama's native API unless
    `"stream": false` (it streams by default)."""
    if protocol == protocols.OPENAI_EMBEDDINGS:
        return False
    if protocol == protocols.GEMINI_GENERATE:
        return routing.gemini_streams(path)
    if protocol in protocols.NDJSON:
        return body.get("stream") is not False
    return body.get("stream") is True


def request_candidates(protocol: Protocol, body: dict[str, object]) -> int:
    """How many answers the request asks for at once: Gemini's `generationConfig.
    candidateCount` (its streams have no terminal event: one is whole once that many
    candidates finished); 1 otherwise."""
    if protocol != protocols.GEMINI_GENERATE:
        return 1
    config = _field(body, "generationConfig", "generation_config")
    count = _field(config, "candidateCount", "candidate_count") if isinstance(
        config, dict) else None
    if isinstance(count, str) and count.isdecimal():  # proto3 JSON also takes "2"
        count = int(count)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 1 else 1


_CANDIDATE_COUNT = re.compile(rb'(?<!\\)"candidate(?:Count|_count)"\s*:\s*"?(\d{1,6})')


def sniff_candidates(protocol: Protocol, raw: bytes) -> int:
    """`request_candidates` for a body the addon does not parse (too large or too deep)."""
    if protocol != protocols.GEMINI_GENERATE:
        return 1
    counts = [int(m.group(1)) for m in _CANDIDATE_COUNT.finditer(raw)]
    return max([1, *counts])


_STREAM_TRUE = re.compile(rb'(?<!\\)"stream"\s*:\s*true')
_STREAM_FALSE = re.compile(rb'(?<!\\)"stream"\s*:\s*false')


def sniff_stream(raw: bytes) -> bool:
    """Whether a body the addon does not parse (too large, streamed) asks to stream, for the
    shape of a deny. A `"stream": true` inside a JSON string is escaped and does not match."""
    return _STREAM_TRUE.search(raw) is not None


def sniff_streams(protocol: Protocol, path: str, raw: bytes) -> bool:
    """`request_streams` for a body the addon does not parse."""
    if protocol == protocols.OPENAI_EMBEDDINGS:
        return False
    if protocol == protocols.GEMINI_GENERATE:
        return routing.gemini_streams(path)
    if protocol in protocols.NDJSON:
        return _STREAM_FALSE.search(raw) is None
    return sniff_stream(raw)


def _model_turn(protocol: Protocol, item: object) -> bool:
    """Whether a conversation item is the model's own (an assistant turn or a tool call)."""
    if not isinstance(item, dict):
        return False
    if protocol == protocols.OPENAI_RESPONSES:
        return item.get("role") == "assistant" or item.get("type") in (
            "function_call", "custom_tool_call", "reasoning")
    if protocol == protocols.GEMINI_GENERATE:
        return item.get("role") == "model"
    return item.get("role") == "assistant"


_CONVERSATION_KEYS: dict[str, str] = {
    protocols.OPENAI_RESPONSES: "input",
    protocols.GEMINI_GENERATE: "contents",
}


def latest_turn(protocol: Protocol, body: dict[str, object]) -> dict[str, object]:
    """`input_scope: latest`: the body with its conversation cut to what follows the model's
    last turn (the new user input and tool results); system messages and `system` /
    `instructions` / `systemInstruction` stay. Earlier turns were screened when they were new."""
    key = _CONVERSATION_KEYS.get(protocol, "messages")
    items = body.get(key)
    if protocol in (protocols.OPENAI_EMBEDDINGS, protocols.OLLAMA_GENERATE) or not isinstance(
            items, list):
        return body  # no conversation history
    last = max((i for i, item in enumerate(items) if _model_turn(protocol, item)), default=-1)
    kept = [item for i, item in enumerate(items) if i > last or (
        isinstance(item, dict) and item.get("role") in ("system", "developer"))]
    return {**body, key: kept}
