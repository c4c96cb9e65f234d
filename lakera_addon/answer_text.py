"""The assistant's text of a non-streamed JSON answer (SPEC section 3, "Text of a response"):
all choices / text blocks / output_text parts / candidates, joined with a blank line. Streamed
answers are assembled by assembly.StreamAssembler."""

from __future__ import annotations

import json
from typing import Final

from lakera_addon import lenient_json
from lakera_addon import protocols
from lakera_addon.assembly import SEPARATOR
from lakera_addon.assembly import Key
from lakera_addon.assembly import gemini_chunk
from lakera_addon.assembly import join_pieces
from lakera_addon.protocols import Protocol


def _texts_of_parts(parts: object, kinds: dict[str, str]) -> list[str]:
    """Texts of a list of typed parts; `kinds` maps a part type to its text field."""
    if not isinstance(parts, list):
        return []
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        field = kinds.get(kind) if isinstance(kind, str) else None
        if field is None:
            continue
        text = part.get(field)
        if isinstance(text, str) and text:
            texts.append(text)
    return texts


_CHAT_PARTS: Final = {"text": "text", "output_text": "text"}
_ANTHROPIC_BLOCKS: Final = {"text": "text"}
_RESPONSES_PARTS: Final = {"output_text": "text", "refusal": "refusal"}


def _gemini_response_text(body: object) -> str:
    """A GenerateContentResponse, or the JSON array of chunks `streamGenerateContent` answers
    without `alt=sse`: each candidate's texts concatenated across the chunks."""
    pieces: dict[Key, list[str]] = {}
    for chunk in body if isinstance(body, list) else [body]:
        gemini_chunk(pieces, chunk)
    return join_pieces(pieces)


def response_text(protocol: Protocol, body: object) -> str:
    """The assistant's text of a non-streamed JSON answer; "" for any unexpected shape."""
    if protocol == protocols.GEMINI_GENERATE:
        return _gemini_response_text(body)
    if not isinstance(body, dict):
        return ""
    texts: list[str] = []
    if protocol == protocols.OPENAI_CHAT:
        choices = body.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                if content:
                    texts.append(content)
            else:
                texts.extend(_texts_of_parts(content, _CHAT_PARTS))
    elif protocol == protocols.ANTHROPIC_MESSAGES:
        texts.extend(_texts_of_parts(body.get("content"), _ANTHROPIC_BLOCKS))
    elif protocol == protocols.OPENAI_RESPONSES:
        output = body.get("output")
        for item in output if isinstance(output, list) else []:
            if isinstance(item, dict) and item.get("type") == "message":
                texts.extend(_texts_of_parts(item.get("content"), _RESPONSES_PARTS))
    elif protocol == protocols.OLLAMA_CHAT:
        message = body.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content:
            texts.append(content)
    elif protocol == protocols.OLLAMA_GENERATE:
        answer = body.get("response")
        if isinstance(answer, str) and answer:
            texts.append(answer)
    return SEPARATOR.join(texts)


_SSE_FIELDS: Final = ("event:", "id:", "retry:", ":")


def generic_text(content: bytes) -> str:
    """The text of an answer of no known protocol: every string value of it read as one JSON
    document, or else of each line (an SSE `data:` line or an NDJSON line) read as JSON, and
    any other line as it is; lines of SSE fields and `[DONE]` are left out."""
    text = content.decode("utf-8", "replace")
    try:
        return "\n".join(lenient_json.string_values(json.loads(text)))
    except (ValueError, RecursionError):
        pass
    texts: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        elif line.startswith(_SSE_FIELDS):
            continue
        if not line or line == "[DONE]":
            continue
        try:
            texts.extend(lenient_json.string_values(json.loads(line)))
        except (ValueError, RecursionError):
            texts.append(line)
    return "\n".join(texts)
