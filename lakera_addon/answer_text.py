"""The assistant's text of a non-streamed JSON answer (SPEC section 3, "Text of a response"):
every text the SDKs show their caller (answer_fields.py: content, refusals, reasoning and
thinking, audio transcripts) of all choices / blocks / output items / candidates, joined with a
blank line. Streamed answers are assembled by assembly.StreamAssembler."""

from __future__ import annotations

from typing import Final

from lakera_addon import answer_fields as fields
from lakera_addon import lenient_json
from lakera_addon import protocols
from lakera_addon.protocols import Protocol
from lakera_addon.stream_events import SEPARATOR
from lakera_addon.stream_events import Texts
from lakera_addon.stream_events import gemini_chunk


def _gemini_response_text(body: object) -> str:
    """A GenerateContentResponse, or the JSON array of chunks `streamGenerateContent` answers
    without `alt=sse`: each candidate's texts concatenated across the chunks."""
    texts = Texts()
    for chunk in body if isinstance(body, list) else [body]:
        gemini_chunk(texts, chunk)
    return texts.text


def response_text(protocol: Protocol, body: object) -> str:
    """The assistant's text of a non-streamed JSON answer; "" for any unexpected shape."""
    if protocol == protocols.GEMINI_GENERATE:
        return _gemini_response_text(body)
    if not isinstance(body, dict):
        return ""
    texts: list[str] = []
    joined: list[str] = []  # the parts a client joins with nothing between them
    if protocol == protocols.OPENAI_CHAT:
        for choice in fields.as_list(body.get("choices")):
            if isinstance(choice, dict):
                texts.extend(text for _, text in fields.chat_texts(choice.get("message")))
    elif protocol == protocols.ANTHROPIC_MESSAGES:
        for block in fields.as_list(body.get("content")):
            text = fields.anthropic_block_text(block)
            if text:
                texts.append(text)
                if isinstance(block, dict) and block.get("type") == "text":
                    joined.append(text)
    elif protocol == protocols.OPENAI_RESPONSES:
        for item in fields.as_list(body.get("output")):
            texts.extend(text for _, _, text in fields.responses_item_texts(item))
            joined.extend(_output_texts(item))
    elif protocol in (protocols.OLLAMA_CHAT, protocols.OLLAMA_GENERATE):
        texts.extend(text for _, text in fields.ollama_texts(
            body, protocol == protocols.OLLAMA_CHAT))
    # openai's `response.output_text` joins every output_text part, and
    # `"".join(b.text for b in message.content if b.type == "text")` every text block, with
    # nothing between them: a phrase the parts split is whole there (red team, round 5)
    if len(joined) > 1:
        texts.append("".join(joined))
    return SEPARATOR.join(texts)


_OUTPUT_TEXT: Final = {"output_text": "text"}


def _output_texts(item: object) -> list[str]:
    """The `output_text` parts of a Responses message item (what `output_text` joins)."""
    if not isinstance(item, dict) or item.get("type") != "message":
        return []
    texts = (fields.part_text(part, _OUTPUT_TEXT) for part in fields.as_list(item.get("content")))
    return [text for text in texts if text]


def with_hidden(text: str, hidden: list[str]) -> str:
    """An answer's text and the strings its lenient reading found hidden (under duplicate or
    case-variant keys, after its first JSON value: lenient_json), each once, in one text."""
    seen: set[str] = set()
    extra = []
    for string in hidden:
        if string and string not in seen:
            seen.add(string)
            extra.append(string)
    return SEPARATOR.join(t for t in (text, "\n".join(extra)) if t)


_SSE_FIELDS: Final = ("event:", "id:", "retry:", ":")


def _lenient_strings(data: bytes) -> list[str] | None:
    """Every string value of `data` read leniently as JSON (lenient_json), with the strings it
    hides; None unless all of it is JSON."""
    try:
        body = lenient_json.loads(data)
    except RecursionError:
        return None
    if body is None or "data after the JSON value" in body.notes:
        return None
    return [*lenient_json.string_values(body.value), *body.hidden_strings]


def generic_text(content: bytes) -> str:
    """The text of an answer of no known protocol: every string value of it read as JSON
    values, or else of each line (an SSE `data:` line or an NDJSON line) read as JSON, and
    any other line as it is; lines of SSE fields and `[DONE]` are left out. JSON is read
    leniently (lenient_json: duplicate and case-variant keys, values after the first)."""
    whole = _lenient_strings(content)
    if whole is not None:
        return "\n".join(whole)
    text = content.decode("utf-8", "replace")
    texts: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        elif line.startswith(_SSE_FIELDS):
            continue
        if not line or line == "[DONE]":
            continue
        strings = _lenient_strings(line.encode("utf-8", "surrogatepass"))
        texts.extend([line] if strings is None else strings)
    return "\n".join(texts)
