"""What the per-protocol extractors share: the message type, the generic text walk, structured
values (tool arguments and results) as text, text attachments (base64, data URLs) and the text
of tool definitions.

Everything here is pure and iterative: a body nests as deeply as `json.loads` allows, and no
walk may hit the recursion limit (nothing but `BodyShapeError` leaves an extractor).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
from collections.abc import Callable
from collections.abc import Iterable
from typing import TypedDict
from urllib.parse import unquote_to_bytes

from lakera_addon.lenient_json import FoldDict
from lakera_addon.lenient_json import readings


class Message(TypedDict):
    role: str
    content: str


class BodyShapeError(ValueError):
    """The body is JSON but not of its protocol's shape; the message names what is wrong."""


# (role, text) pairs, in the order they occur in a turn
Texts = list[tuple[str, str]]
# A walk's step at one JSON object: its children to walk next, in order, each with the role it
# is read as (a string child is text; a child the step already turned into text is a string).
Visit = Callable[[dict[str, object], str], list[tuple[object, str]]]

TOOL = "tool"


# The roles Lakera knows, as a turn's role is sent to it: `developer` is `system`, a function
# result is a tool result
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
          "tool": TOOL, "function": TOOL}


def role_name(role: object) -> str:
    """A turn's role as Lakera takes it: `developer` is `system`, a function result is a tool
    result; no role, or one Lakera does not know (another case, a made-up name), is the user:
    the least trusted."""
    return _ROLES.get(role, "user") if isinstance(role, str) else "user"


def one_role(roles: Iterable[str]) -> str:
    """The role of a text read under several roles (a key given twice or in several cases, of
    which upstreams read different ones): the role they all agree on, else `user`, the least
    trusted (never `system`, which Lakera takes as trusted context and does not screen)."""
    found = set(roles)
    return found.pop() if len(found) == 1 else "user"


def turn_role(item: dict[str, object]) -> str:
    """The role of a message by its `role` key, every reading of it (`one_role`)."""
    return one_role(role_name(role) for role in readings(item, "role") or [None])


def append(messages: list[Message], role: str, texts: Iterable[str]) -> None:
    content = " ".join(t for t in texts if t)
    if content and not content.isspace():
        messages.append({"role": role, "content": content})


def append_turn(messages: list[Message], texts: Texts) -> None:
    """One message per role of a turn: its tool output first (what the turn answers), then the
    rest in the order the roles first occur."""
    if len(texts) == 1:
        append(messages, texts[0][0], [texts[0][1]])
        return
    by_role: dict[str, list[str]] = {TOOL: []}
    for role, text in texts:
        by_role.setdefault(role, []).append(text)
    for role, found in by_role.items():
        append(messages, role, found)


def walk(value: object, role: str, visit: Visit) -> Texts:
    """The text of a JSON value in document order: every string, and what `visit` makes of each
    object (which keys are text, under which role). Iterative, whatever the depth."""
    found: Texts = []
    stack: list[tuple[object, str]] = [(value, role)]
    pop, extend = stack.pop, stack.extend
    while stack:
        node, node_role = pop()
        if isinstance(node, str):
            if node and not node.isspace():
                found.append((node_role, node))
        elif isinstance(node, list):
            extend([(item, node_role) for item in reversed(node)])
        elif isinstance(node, dict):
            children = [child for variant in type_readings(node)
                        for child in visit(variant, node_role)]
            children.reverse()
            extend(children)
    return found


def type_readings(obj: dict[str, object]) -> list[dict[str, object]]:
    """The object once per reading of its `type` (a duplicate or case-variant `type` key,
    which upstreams read differently: each is read as every kind it may be); usually itself."""
    if not isinstance(obj, FoldDict) or not obj.ambiguous:
        return [obj]
    kinds = readings(obj, "type")
    distinct = [kind for i, kind in enumerate(kinds) if kind not in kinds[:i]]
    return [obj.reading("type", kind) for kind in distinct] if len(distinct) > 1 else [obj]


def loose_texts(value: object) -> list[str]:
    """Every string in a JSON value of no known shape, in document order: the string values,
    and the keys that are prose rather than identifiers. Iterative, whatever the depth."""
    texts: list[str] = []
    stack: list[object] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if node.strip():
                texts.append(node)
        elif isinstance(node, list):
            stack.extend(reversed(node))
        elif isinstance(node, dict):
            pending: list[object] = []
            for key, item in node.items():
                if isinstance(key, str) and not identifier(key):
                    pending.append(key)
                pending.append(item)
            stack.extend(reversed(pending))
    return texts


def _scalar(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # not a JSON scalar, or an int too long to print
        return json.dumps(str(value), ensure_ascii=False) if isinstance(value, str) else "null"


class _Raw(str):
    """A piece of JSON syntax on the encoder's stack (not a value to encode)."""


def compact(value: object, sort_keys: bool = False) -> str:
    """`json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=...)`, without
    recursion."""
    out: list[str] = []
    stack: list[object] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, _Raw):
            out.append(node)
        elif isinstance(node, dict):
            pending: list[object] = [_Raw("{")]
            pairs = sorted(node.items(), key=lambda pair: str(pair[0])) if sort_keys else (
                node.items())
            for i, (key, item) in enumerate(pairs):
                pending += [_Raw(("," if i else "") + _scalar(str(key)) + ":"), item]
            stack.extend(reversed([*pending, _Raw("}")]))
        elif isinstance(node, list):
            pending = [_Raw("[")]
            for i, item in enumerate(node):
                pending += [_Raw(","), item] if i else [item]
            stack.extend(reversed([*pending, _Raw("]")]))
        else:
            out.append(_scalar(node))
    return "".join(out)


_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:/$@-]{1,64}")


def identifier(text: str) -> bool:
    """A name of the kind APIs allow for functions and keys (64 characters, no spaces): not prose
    that could carry an instruction."""
    return _IDENTIFIER.fullmatch(text) is not None


_EMPTY_JSON = frozenset({"", "{}", "[]", "null", '""'})


def structured_texts(value: object) -> list[str]:
    """The text of a tool's arguments or result: a string as it is (an empty JSON value gives
    nothing); of an object, each value (strings verbatim, anything else as compact JSON) and
    each key that is not a plain identifier; of a list, each item alike."""
    if isinstance(value, str):
        return [] if value.strip() in _EMPTY_JSON else [value]
    if isinstance(value, dict):
        texts: list[str] = []
        for key, item in value.items():
            if isinstance(key, str) and not identifier(key):
                texts.append(key)
            texts.extend(_value_text(item))
        return texts
    if isinstance(value, list):
        return [t for item in value for t in _value_text(item)]
    return _value_text(value)


def _value_text(value: object) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [compact(value)]


# Media types that are binary: the model sees an image, a sound, a PDF, never their bytes as text.
_BINARY_PREFIXES = ("image/", "audio/", "video/", "font/", "model/")
_BINARY_TYPES = frozenset({
    "application/pdf", "application/zip", "application/gzip", "application/x-tar",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
})
_TEXT_TYPES = frozenset({
    "application/json", "application/xml", "application/javascript", "application/x-javascript",
    "application/ecmascript", "application/yaml", "application/x-yaml", "application/toml",
    "application/sql", "application/x-sh", "application/x-python", "application/csv",
    "application/rtf", "application/x-tex", "application/ld+json", "application/graphql",
})
_BASE64 = re.compile(r"[A-Za-z0-9+/]*")
_URLSAFE = str.maketrans("-_", "+/")


def _media_type(value: object) -> tuple[str, str | None]:
    """(media type, charset) of a MIME type string such as `text/plain; charset=utf-8`."""
    if not isinstance(value, str):
        return "", None
    kind, *params = value.split(";")
    charset = None
    for param in params:
        name, _, given = param.partition("=")
        if name.strip().lower() == "charset":
            charset = given.strip().strip('"') or None
    return kind.strip().lower(), charset


def _text_type(kind: str) -> bool:
    return (kind.startswith("text/") or kind in _TEXT_TYPES
            or kind.endswith(("+json", "+xml", "+yaml")))


def _lenient_base64(data: str) -> bytes | None:
    """Base64 as lenient decoders read it: whitespace ignored, the URL-safe alphabet, padding
    optional (proto3 JSON takes all of these)."""
    squeezed = "".join(data.split()).translate(_URLSAFE).rstrip("=")
    if not squeezed or len(squeezed) % 4 == 1 or _BASE64.fullmatch(squeezed) is None:
        return None
    try:
        return base64.b64decode(squeezed + "=" * (-len(squeezed) % 4))
    except (binascii.Error, ValueError):
        return None


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        codec = codecs.lookup(charset or "utf-8").name
    except LookupError:
        codec = "utf-8"
    return raw.decode(codec, "replace")


def _looks_like_text(text: str) -> bool:
    controls = sum(1 for c in text if c < " " and c not in "\t\n\r\f")
    return "\x00" not in text and controls * 100 <= len(text)


def bytes_text(media_type: object, raw: bytes) -> str | None:
    """The text of an attachment's bytes: decoded for a text type; None for a binary type; for
    an unknown or missing type, the bytes if they are clean UTF-8 text (a client may leave the
    type out or name it wrongly; the model may still read it)."""
    kind, charset = _media_type(media_type)
    if kind.startswith(_BINARY_PREFIXES) or kind in _BINARY_TYPES:
        return None
    if _text_type(kind):
        return _decode(raw, charset)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if _looks_like_text(text) else None


def attachment_text(media_type: object, data: object) -> str | None:
    """The text of a base64 attachment (Gemini `inlineData`, an Anthropic base64 source)."""
    if not isinstance(data, str):
        return None
    raw = _lenient_base64(data)
    return None if raw is None else bytes_text(media_type, raw)


def file_text(data: object) -> str | None:
    """The text of a file sent inline: a `data:` URL (`data:text/plain;base64,...`, or
    percent-encoded) or bare base64 (OpenAI `file_data`)."""
    if not isinstance(data, str):
        return None
    if data[:5].lower() != "data:":
        return attachment_text(None, data)
    header, comma, payload = data[5:].partition(",")
    if not comma:
        return None
    media_type, _, last = header.rpartition(";")
    if last.strip().lower() == "base64":
        return attachment_text(media_type, payload)
    return bytes_text(header, unquote_to_bytes(payload))


# Tool definitions: what of a definition is not text the model reads as prose. A key ending in
# `_id`/`_ids`/`_url`, or naming a secret, is skipped too (the text of a credential must never
# leave for Lakera).
_DEFINITION_SKIP = frozenset({
    "type", "$ref", "$schema", "$id", "$anchor", "$dynamic_ref", "required", "cache_control",
    "strict", "defer_loading", "authorization", "headers", "url", "server_url", "endpoint",
    "allowed_domains", "blocked_domains", "exclude_domains", "excluded_predefined_functions",
    "user_location", "container", "model", "size", "data", "file_search_store_names",
    "allowed_callers", "rag_corpora", "index", "filter", "filters", "metadata_filter",
    "search_template", "service_account", "engine", "datastore", "data_store",
})
_SECRET_WORDS = ("secret", "token", "password", "api_key", "apikey", "credential", "auth")
# Keys whose children are named by their keys (JSON Schema): the keys are parameter names.
_NAMED_CHILDREN = frozenset({"properties", "pattern_properties", "$defs", "definitions",
                             "dependent_schemas"})
_SNAKE = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake(key: str) -> str:
    """`parametersJsonSchema` → `parameters_json_schema` (Google's REST takes both spellings)."""
    return _SNAKE.sub(r"_\1", key).lower()


def _definition_skipped(key: str) -> bool:
    name = snake(key)
    return (name in _DEFINITION_SKIP or name.endswith(("_id", "_ids", "_url"))
            or any(word in name for word in _SECRET_WORDS))


def definition_text(definition: object) -> str:
    """The text of one tool definition (or response schema), in document order: names,
    descriptions, parameter names, enum values and every other string of its JSON schemas,
    without identifiers, URLs, credentials and schema keywords."""
    texts: list[str] = []
    stack: list[tuple[object, bool]] = [(definition, False)]
    while stack:
        node, named = stack.pop()
        if isinstance(node, str):
            if node.strip():
                texts.append(node)
        elif isinstance(node, list):
            stack.extend((item, False) for item in reversed(node))
        elif isinstance(node, dict):
            pending: list[tuple[object, bool]] = []
            for key, value in node.items():
                if not isinstance(key, str):
                    continue
                if named or not identifier(key):
                    pending.append((key, False))  # a parameter name, or a key that is prose
                if named or not _definition_skipped(key):
                    pending.append((value, snake(key) in _NAMED_CHILDREN and not named))
            stack.extend(reversed(pending))
    return " ".join(texts)


def definition_messages(definitions: Iterable[object]) -> list[Message]:
    """One `tool` message per definition that has any text."""
    messages: list[Message] = []
    for definition in definitions:
        append(messages, TOOL, [definition_text(definition)])
    return messages


def items(value: object) -> list[object]:
    """A list as it is; anything else as no items."""
    return value if isinstance(value, list) else []


def fields(item: object, camel: str) -> list[object]:
    """Every value of a Gemini field: under its camelCase name and its snake_case name (Google
    takes both, and a body may hold both), each in every reading (duplicates, other cases)."""
    if not isinstance(item, dict):
        return []
    found = readings(item, camel)
    if snake(camel) != camel:
        found += readings(item, snake(camel))
    return [value for i, value in enumerate(found) if all(value is not v for v in found[:i])]


def attachment_text_of(media_types: list[object], data: object) -> str | None:
    """`attachment_text` under every MIME type an attachment may be read with (a duplicate or
    case-variant key): its text if any of them makes it text."""
    for media_type in media_types or [None]:
        text = attachment_text(media_type, data)
        if text is not None:
            return text
    return None
