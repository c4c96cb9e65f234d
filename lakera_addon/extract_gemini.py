"""Request text of Gemini's `generateContent` / `streamGenerateContent` (REST JSON: camelCase
names, and the snake_case ones Google also accepts). docs/security.md lists every field and
what is done with it."""

from __future__ import annotations

import re
from functools import lru_cache

from lakera_addon import protocols
from lakera_addon.extract_common import TOOL
from lakera_addon.extract_common import BodyShapeError
from lakera_addon.extract_common import Message
from lakera_addon.extract_common import Texts
from lakera_addon.extract_common import append_turn
from lakera_addon.extract_common import attachment_text_of
from lakera_addon.extract_common import fields
from lakera_addon.extract_common import items
from lakera_addon.extract_common import one_role
from lakera_addon.extract_common import structured_texts
from lakera_addon.extract_common import walk
from lakera_addon.lenient_json import readings

_CAMEL = re.compile(r"_([a-z0-9])")
# The top-level keys of a generateContent body (REST, camelCase; snake_case is taken too), as
# google-genai sends it. Any other key is screened whole (extract.py).
GENERATE_FIELDS = frozenset({
    "cachedContent", "contents", "continuationToken", "generationConfig", "labels",
    "modelArmorConfig", "safetySettings", "serviceTier", "store", "systemInstruction",
    "toolConfig", "tools"})


# Part fields that are never prose: ids and function names, MIME types, file URIs (the addon
# cannot fetch them), signatures, media and speech settings, offsets, outcomes, languages
_OPAQUE = frozenset({
    "role", "mimeType", "fileUri", "thoughtSignature", "thought", "id", "name", "language",
    "outcome", "toolType", "jsonPath", "videoMetadata", "mediaResolution", "mediaProcessing",
    "speaker", "visibleCells", "languageCode", "speakerLabel", "startOffset", "endOffset",
    "scheduling", "willContinue", "audioMetadata",
})
# Parts that carry a tool's output: a function's response, a server-side tool's response, the
# output of code the model ran
_TOOL_PARTS = frozenset({"functionResponse", "toolResponse", "codeExecutionResult"})
# Free-form JSON values: a call's arguments, a tool's response, a part's metadata
_STRUCTURED = frozenset({"args", "response", "partMetadata"})


@lru_cache(maxsize=1024)
def _name(key: str) -> str:
    return _CAMEL.sub(lambda m: m.group(1).upper(), key)


def _visit(obj: dict[str, object], role: str) -> list[tuple[object, str]]:
    children: list[tuple[object, str]] = []
    for key, value in obj.items():
        name = _name(key)
        if name in _OPAQUE:
            continue
        if name in _STRUCTURED:
            children += [(text, role) for text in structured_texts(value)]
        elif name == "data":  # inlineData: base64 bytes, text when its MIME type is text
            children.append((attachment_text_of(fields(obj, "mimeType"), value), role))
        else:
            children.append((_repeated(value), TOOL if name in _TOOL_PARTS else role))
    return children


def _repeated(value: object) -> object:
    """A repeated Gemini field: Google's REST API also takes a single object for a list of one
    (its own docs send `"contents": {"parts": {"text": ...}}`)."""
    return [value] if isinstance(value, dict) else value


_ROLES = {"model": "assistant", "function": TOOL}


def _role(content: dict[str, object]) -> str:
    """A content's role, every reading of it (`one_role`): `model` is the assistant, any other
    role (`system` included) the user."""
    return one_role(_ROLES.get(role, "user") if isinstance(role, str) else "user"
                    for role in readings(content, "role") or [None])


def _content(content: dict[str, object], role: str) -> Texts:
    return walk(_repeated(content.get("parts")), role, _visit)


def gemini_generate(body: dict[str, object]) -> list[Message]:
    """`systemInstruction` as system; each content's parts by its role (`model` as assistant):
    text, function call arguments, executable code, text attachments (`inlineData` of a text
    type, decoded); function and tool responses and code execution output as tool."""
    messages: list[Message] = []
    for system in fields(body, "systemInstruction"):  # camelCase and snake_case: both, if both
        if isinstance(system, dict):
            append_turn(messages, _content(system, "system"))
        else:  # a string, or a shape of its own: all of its text
            append_turn(messages, walk(system, "system", _visit))
    for config in fields(body, "generationConfig"):
        for transcription in fields(config, "audioTranscriptionConfig"):
            for source in fields(transcription, "sourceText"):  # text the model rewrites by
                append_turn(messages, walk(source, "user", _visit))  # voice instructions
    contents = _repeated(body.get("contents"))
    if not isinstance(contents, list):
        raise BodyShapeError(f"{protocols.GEMINI_GENERATE} body has no 'contents' list")
    for item in contents:
        if not isinstance(item, dict):
            raise BodyShapeError(f"{protocols.GEMINI_GENERATE} content is not an object")
        append_turn(messages, _content(item, _role(item)))
    return messages


def gemini_tools(body: dict[str, object]) -> list[object]:
    """Each function declaration of `tools`, and the response schema of `generationConfig`
    (`responseSchema`, `responseJsonSchema`, `responseFormat`)."""
    definitions: list[object] = []
    for tool in items(_repeated(body.get("tools"))):
        for declarations in fields(tool, "functionDeclarations"):
            definitions += items(_repeated(declarations))
    for config in fields(body, "generationConfig"):
        schemas = [*fields(config, "responseSchema"), *fields(config, "responseJsonSchema")]
        for response_formats in fields(config, "responseFormat"):
            for response_format in items(_repeated(response_formats)):
                for text in fields(response_format, "text"):
                    schemas += fields(text, "schema")
        definitions += [s for s in schemas if s is not None]
    return definitions


def model_turn(content: object) -> bool:
    return isinstance(content, dict) and _role(content) == "assistant"


def server_output(content: object) -> object | None:
    """A model turn cut to the output of server-side tools (code execution, tool responses),
    or None if it holds none."""
    if not model_turn(content) or not isinstance(content, dict):
        return None
    outputs = [part for part in items(_repeated(content.get("parts"))) if isinstance(part, dict)
               and any(_name(key) in _TOOL_PARTS for key in part)]
    return {**content, "parts": outputs} if outputs else None
