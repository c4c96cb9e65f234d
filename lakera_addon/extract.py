"""The text of a request, as the `{role, content}` messages Lakera screens (SPEC section 3), and
the text of its tool definitions.

Pure functions over the parsed JSON body. A body of the wrong shape for its protocol raises
`BodyShapeError` (the addon then applies `fail_mode`); a body with nothing to screen gives [].
Nothing else raises, whatever the JSON. The extractors live in one module per protocol family
(`extract_openai`, `extract_anthropic`, `extract_gemini`, `extract_ollama`); this module is
their dispatcher. docs/security.md lists, field by field, what is screened and what is not.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from collections.abc import Iterable

from lakera_addon import extract_anthropic
from lakera_addon import extract_gemini
from lakera_addon import extract_ollama
from lakera_addon import extract_openai
from lakera_addon import protocols
from lakera_addon import routing
from lakera_addon.extract_common import BodyShapeError
from lakera_addon.extract_common import Message
from lakera_addon.extract_common import append
from lakera_addon.extract_common import compact
from lakera_addon.extract_common import definition_messages
from lakera_addon.extract_common import fields
from lakera_addon.extract_common import loose_texts
from lakera_addon.extract_common import snake
from lakera_addon.extract_common import turn_role
from lakera_addon.lenient_json import string_values
from lakera_addon.lenient_json import with_value
from lakera_addon.protocols import Protocol

__all__ = [
    "BodyShapeError",
    "Message",
    "latest_turn",
    "other_fields",
    "request_candidates",
    "request_messages",
    "request_model",
    "request_streams",
    "sniff_candidates",
    "sniff_stream",
    "sniff_streams",
    "tool_definition_objects",
    "tool_definitions",
    "tool_definitions_key",
]

# the per-protocol extractors, by their old names
openai_chat = extract_openai.openai_chat
openai_responses = extract_openai.openai_responses
openai_embeddings = extract_openai.openai_embeddings
anthropic_messages = extract_anthropic.anthropic_messages
gemini_generate = extract_gemini.gemini_generate
ollama_chat = extract_ollama.ollama_chat
ollama_generate = extract_ollama.ollama_generate

Extractor = Callable[[dict[str, object]], list[Message]]

_EXTRACTORS: dict[str, Extractor] = {
    protocols.OPENAI_CHAT: openai_chat,
    protocols.ANTHROPIC_MESSAGES: anthropic_messages,
    protocols.OPENAI_RESPONSES: openai_responses,
    protocols.OPENAI_EMBEDDINGS: openai_embeddings,
    protocols.GEMINI_GENERATE: gemini_generate,
    protocols.OLLAMA_CHAT: ollama_chat,
    protocols.OLLAMA_GENERATE: ollama_generate,
}


def _no_tools(body: dict[str, object]) -> list[object]:
    return []


# Per protocol: the request's tool definitions, as the JSON objects the client sent
_DEFINITIONS: dict[str, Callable[[dict[str, object]], list[object]]] = {
    protocols.OPENAI_CHAT: extract_openai.openai_chat_tools,
    protocols.ANTHROPIC_MESSAGES: extract_anthropic.anthropic_tools,
    protocols.OPENAI_RESPONSES: extract_openai.openai_responses_tools,
    protocols.OPENAI_EMBEDDINGS: _no_tools,
    protocols.GEMINI_GENERATE: extract_gemini.gemini_tools,
    protocols.OLLAMA_CHAT: extract_ollama.ollama_tools,
    protocols.OLLAMA_GENERATE: _no_tools,
}


# Per protocol: the top-level keys its requests have (the SDK's request type, and the keys of
# lenient servers the extractor reads); tests/test_field_inventory.py keeps them in step with
# the SDKs. Gemini's are camelCase; Google takes them in snake_case too.
KNOWN_FIELDS: dict[str, frozenset[str]] = {
    protocols.OPENAI_CHAT: extract_openai.CHAT_FIELDS,
    protocols.OPENAI_RESPONSES: extract_openai.RESPONSES_FIELDS,
    protocols.OPENAI_EMBEDDINGS: extract_openai.EMBEDDINGS_FIELDS,
    protocols.ANTHROPIC_MESSAGES: extract_anthropic.MESSAGES_FIELDS,
    protocols.GEMINI_GENERATE: extract_gemini.GENERATE_FIELDS,
    protocols.OLLAMA_CHAT: extract_ollama.CHAT_FIELDS,
    protocols.OLLAMA_GENERATE: extract_ollama.GENERATE_FIELDS,
}
# The same, as a key of a body is compared with them: in any case (Go's decoder matches keys
# case-insensitively, and so does the extractors' FoldDict), Gemini's in either spelling
_FOLDED: dict[str, frozenset[str]] = {
    protocol: frozenset(k.casefold() for name in names for k in (
        (name, snake(name)) if protocol == protocols.GEMINI_GENERATE else (name,)))
    for protocol, names in KNOWN_FIELDS.items()}


def request_messages(protocol: Protocol, body: dict[str, object]) -> list[Message]:
    """The messages to screen for a request body of `protocol`: every text the model reads in
    it but the tool definitions (`tool_definitions`); first, every string under a top-level
    key the protocol does not define (`other_fields`)."""
    return [*other_fields(protocol, body), *_EXTRACTORS[protocol](body)]


def other_fields(protocol: Protocol, body: dict[str, object]) -> list[Message]:
    """Every string under the top-level keys that are not fields of `protocol`, as one `user`
    message: a lenient server may put a field of its own into the prompt (text-generation-
    webui's `context`, Bedrock Converse's `system`), and its text is the client's."""
    known = _FOLDED[protocol]
    texts: list[str] = []
    for key, value in body.items():
        if isinstance(key, str) and key.casefold() not in known:
            texts += loose_texts({key: value})
    messages: list[Message] = []
    append(messages, "user", texts)
    return messages


def tool_definitions(protocol: Protocol, body: dict[str, object]) -> list[Message]:
    """The text of the request's tool definitions, one `tool` message per tool: names,
    descriptions, parameter names and descriptions and string enum values anywhere in their
    JSON schemas, an MCP server's description and listed tools, and the response schema
    (structured output) as one more. Never raises: a body of the wrong shape has none."""
    return definition_messages(_DEFINITIONS[protocol](body))


def tool_definition_objects(protocol: Protocol, body: dict[str, object]) -> list[object]:
    """The request's tool definitions and response schema, as the JSON objects the client sent
    (what `tool_definitions` reads; mitmweb's view names them). Never raises."""
    return _DEFINITIONS[protocol](body)


def tool_definitions_key(protocol: Protocol, body: dict[str, object]) -> bytes | None:
    """A stable key for the set of tool definitions a body carries: sha256 of the canonical
    JSON (sorted keys, compact) of the definitions `tool_definitions` reads, as the client sent
    them; None when they hold no text. The same definitions in another key order share a key;
    any change to them (a description, a setting, a credential) makes a new one."""
    definitions = _DEFINITIONS[protocol](body)
    if not definition_messages(definitions):
        return None
    canonical = compact(definitions, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).digest()


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
    candidates finished), openai-chat's `n` (an answer's choice index must be below it); 1
    otherwise. The largest the request names, however it is read."""
    counts = [1]
    if protocol == protocols.GEMINI_GENERATE:
        for config in fields(body, "generationConfig"):
            counts += _counts(fields(config, "candidateCount"))
    elif protocol == protocols.OPENAI_CHAT:
        counts += _counts(fields(body, "n"))
    return max(counts)


def _counts(values: Iterable[object]) -> list[int]:
    found = []
    for count in values:
        if isinstance(count, str) and count.isdecimal() and len(count) < 7:  # proto3: "2"
            count = int(count)
        if isinstance(count, int) and not isinstance(count, bool):
            found.append(count)
    return found


_CANDIDATE_COUNT = re.compile(rb'(?<!\\)"candidate(?:Count|_count)"\s*:\s*"?(\d{1,6})')
_CHOICE_COUNT = re.compile(rb'(?<!\\)"n"\s*:\s*"?(\d{1,6})')


def sniff_candidates(protocol: Protocol, raw: bytes) -> int:
    """`request_candidates` for a body the addon does not parse (too large or too deep)."""
    pattern = {protocols.GEMINI_GENERATE: _CANDIDATE_COUNT,
               protocols.OPENAI_CHAT: _CHOICE_COUNT}.get(protocol)
    if pattern is None:
        return 1
    counts = [int(m.group(1)) for m in pattern.finditer(raw)]
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


def _assistant(item: object) -> bool:
    return isinstance(item, dict) and turn_role(item) == "assistant"


def _nothing(item: object) -> None:
    return None


# Per conversation protocol: (is an item the model's own turn, the part of a model's item that
# carries a server-side tool's output or None)
_TURNS: dict[str, tuple[Callable[[object], bool], Callable[[object], object | None]]] = {
    protocols.OPENAI_RESPONSES: (extract_openai.responses_model_turn,
                                 extract_openai.responses_server_output),
    protocols.GEMINI_GENERATE: (extract_gemini.model_turn, extract_gemini.server_output),
    protocols.ANTHROPIC_MESSAGES: (_assistant, extract_anthropic.server_output),
}


_CONVERSATION_KEYS: dict[str, str] = {
    protocols.OPENAI_RESPONSES: "input",
    protocols.GEMINI_GENERATE: "contents",
}


def latest_turn(protocol: Protocol, body: dict[str, object]) -> dict[str, object]:
    """`input_scope: latest`: the body with its conversation cut to what follows the model's
    last turn (the new user input and tool results); system messages and `system` /
    `instructions` / `systemInstruction` stay. Earlier turns were screened when they were new.
    What server-side tools returned inside the model's last turn (an MCP call's output, a web
    fetch, code execution output) stays too: it came in an answer, never as a request."""
    key = _CONVERSATION_KEYS.get(protocol, "messages")
    found = body.get(key)
    if protocol in (protocols.OPENAI_EMBEDDINGS, protocols.OLLAMA_GENERATE) or not isinstance(
            found, list):
        return body  # no conversation history
    model_turn, server_output = _TURNS.get(protocol, (_assistant, _nothing))
    turns = [model_turn(item) for item in found]
    last = max((i for i, turn in enumerate(turns) if turn), default=-1)
    run = last  # the model's last run of items: its own, and those with server tool output
    while run > 0 and (turns[run - 1] or server_output(found[run - 1]) is not None):
        run -= 1
    kept: list[object] = []
    for i, item in enumerate(found):
        if i > last or (isinstance(item, dict) and item.get("role") in ("system", "developer")):
            kept.append(item)
        elif i >= run and last >= 0:
            output = server_output(item)
            if output is not None:
                kept.append(output)
    return with_value(body, key, kept)


def conversation(
    protocol: Protocol, body: dict[str, object]
) -> tuple[list[Message], list[Message]]:
    """(the conversation, the text under top-level keys the protocol does not define). The
    second is screened in calls of its own: Lakera judges a call's latest exchange and reads
    what comes before as context, and text a lenient server puts in the prompt from an unknown
    key must be judged, not only read."""
    messages = request_messages(protocol, body)
    other = other_fields(protocol, body)
    if messages[:len(other)] != other:  # (request_messages puts them first)
        return messages, []
    return messages[len(other):], other


def every_string(body: dict[str, object]) -> list[Message]:
    """Every string value of a body of no known protocol, as one user message (what an
    upstream might read of it); screened whole, in parts if large (screen_budget)."""
    texts = [text for text in string_values(body) if text.strip()]
    return [{"role": "user", "content": "\n".join(texts)}] if texts else []
