"""Every text field of every request type the official SDKs define is classified, and the
classification is true.

The walk starts at each protocol's request parameter type (openai, anthropic, google-genai,
ollama, as installed) and follows TypedDicts, pydantic models, unions, lists, mappings,
literals and annotations down to every field that can hold text: `str`, base64 `bytes`, and
free-form JSON (`object`, `Any`). Each such path must match a row of tests/field_inventory.py,
so a text field a new SDK release adds fails here until it is classified. Then, per path, a
minimal body with a unique phrase in exactly that field proves the row: a screened field's
phrase comes out of `extract.request_messages` with the row's role (or out of
`extract.tool_definitions` for tool definitions), a field that is not screened gives it to
neither. docs/security.md must name every row.
"""

from __future__ import annotations

import base64
import datetime
import enum
import os
import re
import types
import typing
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import MutableMapping
from collections.abc import MutableSequence
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pydantic
import pytest
import typing_extensions

from lakera_addon import extract
from lakera_addon import protocols
from lakera_addon.extract_common import snake
from tests.field_inventory import DEFINITION
from tests.field_inventory import INVENTORY
from tests.field_inventory import NOT_SCREENED
from tests.field_inventory import TURN
from tests.field_inventory import Row
from tests.field_inventory import rule_for

STR, BYTES, JSON = "str", "bytes", "json"
_SEQUENCES = {list, tuple, set, frozenset, Sequence, Iterable, MutableSequence,
              typing.Collection}
_MAPPINGS = {dict, Mapping, MutableMapping}
_NOT_TEXT = {int, float, bool, type(None), datetime.datetime, datetime.date, datetime.time,
             datetime.timedelta}


# -- walking the SDKs' types ------------------------------------------------------------------

def _alias(metadata: Iterable[object]) -> str | None:
    for item in metadata:
        alias = getattr(item, "alias", None)
        if isinstance(alias, str):
            return alias
    return None


def _bare(tp: Any) -> Any:
    """The type without Required / NotRequired / ReadOnly / Annotated / aliases / NewType."""
    while True:
        origin = typing.get_origin(tp)
        if origin in (typing.Required, typing.NotRequired, typing_extensions.Required,
                      typing_extensions.NotRequired, typing_extensions.ReadOnly,
                      typing.Annotated):
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, (typing.TypeAliasType, typing_extensions.TypeAliasType)):
            tp = tp.__value__
        elif isinstance(tp, typing.NewType):
            tp = tp.__supertype__
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and (typing_extensions.is_typeddict(tp)
                                     or issubclass(tp, pydantic.BaseModel))


def _serialises_itself(tp: Any) -> bool:
    """A pydantic model with a plain serializer (ollama's `Image`): its JSON is not its fields."""
    if not (isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)):
        return False
    return any(d.info.mode == "plain"
               for d in tp.__pydantic_decorators__.model_serializers.values())


@cache
def _fields(tp: Any) -> tuple[tuple[str, Any], ...]:
    """(JSON key, type) of a TypedDict's or pydantic model's fields."""
    if typing_extensions.is_typeddict(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        out = []
        for name, hint in hints.items():
            alias = None
            probe = hint
            while typing.get_origin(probe) in (typing.Required, typing.NotRequired,
                                               typing_extensions.Required,
                                               typing_extensions.NotRequired,
                                               typing_extensions.ReadOnly, typing.Annotated):
                if typing.get_origin(probe) is typing.Annotated:
                    alias = alias or _alias(probe.__metadata__)
                probe = typing.get_args(probe)[0]
            out.append((alias or name, hint))
        return tuple(out)
    return tuple((f.serialization_alias or f.alias or name, f.annotation)
                 for name, f in tp.model_fields.items())


def _single_literal(tp: Any) -> str | None:
    tp = _bare(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(
        tp) in (typing.Union, types.UnionType) else [tp]
    if len(args) == 1 and typing.get_origin(_bare(args[0])) is typing.Literal:
        values = typing.get_args(_bare(args[0]))
        if len(values) == 1 and isinstance(values[0], str):
            return values[0]
    return None


def _discriminator(tp: Any) -> str:
    """`type=text` / `role=user` for a variant that names itself with a one-value literal."""
    for wanted in ("type", "role"):
        for key, hint in _fields(tp):
            value = _single_literal(hint) if key == wanted else None
            if value is not None:
                return f"{wanted}={value}"
    return ""


def walk_type(tp: Any, path: str, found: dict[str, set[str]],
              stack: tuple[Any, ...] = (), variant: bool = False) -> None:
    """Collect into `found` the path of every text-bearing field under `tp` (and its kind)."""
    tp = _bare(tp)
    origin = typing.get_origin(tp)
    if tp is str:
        found.setdefault(path, set()).add(STR)
    elif tp in (bytes, bytearray) or origin is typing.IO or tp is typing.IO or (
            isinstance(tp, type) and issubclass(tp, os.PathLike)):
        found.setdefault(path, set()).add(BYTES)
    elif tp in (object, typing.Any) or isinstance(tp, typing.TypeVar):
        found.setdefault(path, set()).add(JSON)
    elif tp in _NOT_TEXT or origin is typing.Literal or (
            isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return  # numbers, flags, dates and constants are not text
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            walk_type(arg, path, found, stack, variant=True)
    elif origin in _SEQUENCES or getattr(origin, "__name__", "") == "SequenceNotStr":
        args = typing.get_args(tp)
        walk_type(args[0] if args else Any, path + "[]", found, stack)
    elif origin in _MAPPINGS or tp is dict:
        args = typing.get_args(tp)
        walk_type(args[1] if len(args) == 2 else Any, path + "{}", found, stack)
    elif tp is list:
        walk_type(Any, path + "[]", found, stack)
    elif _is_model(tp):
        if _serialises_itself(tp):
            found.setdefault(path, set()).add(JSON)
            return
        if tp in stack:
            return  # a recursive type (a JSON schema): its fields are already on the path
        named = _discriminator(tp)
        if named and path.endswith("[]"):
            path = f"{path[:-2]}[{named}]"
        elif named and variant:
            path = f"{path}({named})"
        for key, hint in _fields(tp):
            walk_type(hint, f"{path}.{key}" if path else key, found, (*stack, tp))
    else:
        raise TypeError(f"the walk does not know {tp!r} (at {path or 'the root'})")


def _gemini_root() -> Any:
    """The REST body of `generateContent`, as google-genai sends it (camelCase): the SDK's
    `GenerateContentConfig` is split between the body's top level and `generationConfig`
    (typed as the SDK's REST-shaped `GenerationConfig`, plus the config fields it lacks)."""
    from google.genai import types as g

    generation = {f.alias or name: f.annotation
                  for name, f in g.GenerationConfig.model_fields.items()}
    for name, f in g.GenerateContentConfig.model_fields.items():
        if name not in g.GenerationConfig.model_fields and name not in (
                GEMINI_TOP_LEVEL | GEMINI_SDK_ONLY):
            generation[f.alias or name] = f.annotation
    return typing.TypedDict("GenerateContentRequest", {
        "contents": list[g.Content],
        "systemInstruction": g.Content,
        "tools": list[g.Tool],
        "toolConfig": g.ToolConfig,
        "safetySettings": list[g.SafetySetting],
        "cachedContent": str,
        "labels": dict[str, str],
        "serviceTier": g.ServiceTier,
        "store": bool,
        "modelArmorConfig": g.ModelArmorConfig,
        "continuationToken": bytes,
        "generationConfig": typing.TypedDict(  # type: ignore[operator]
            "GenerationConfig", generation, total=False),
    }, total=False)


# GenerateContentConfig fields the SDK puts at the body's top level, or keeps for itself
GEMINI_TOP_LEVEL = {"system_instruction", "tools", "tool_config", "safety_settings", "labels",
                    "cached_content", "service_tier", "store", "model_armor_config",
                    "continuation_token"}
GEMINI_SDK_ONLY = {"http_options", "should_return_http_response", "automatic_function_calling",
                   "automatic_continuation"}


def _roots() -> dict[str, list[Any]]:
    from anthropic.types import message_create_params as anthropic_params
    from anthropic.types.beta import message_create_params as anthropic_beta_params
    from ollama import _types as ollama_types
    from openai.types import embedding_create_params
    from openai.types.beta import response_create_params as beta_responses
    from openai.types.chat import completion_create_params
    from openai.types.responses import response_create_params

    return {
        protocols.OPENAI_CHAT: [completion_create_params.CompletionCreateParams],
        protocols.OPENAI_RESPONSES: [response_create_params.ResponseCreateParams,
                                     beta_responses.ResponseCreateParams],  # ?beta=true
        protocols.OPENAI_EMBEDDINGS: [embedding_create_params.EmbeddingCreateParams],
        # Claude Code speaks the beta (`/v1/messages?beta=true`), the SDK's `client.beta`
        protocols.ANTHROPIC_MESSAGES: [anthropic_params.MessageCreateParams,
                                       anthropic_beta_params.MessageCreateParams],
        protocols.GEMINI_GENERATE: [_gemini_root()],
        protocols.OLLAMA_CHAT: [ollama_types.ChatRequest],
        protocols.OLLAMA_GENERATE: [ollama_types.GenerateRequest],
    }


@cache
def sdk_paths() -> dict[str, dict[str, frozenset[str]]]:
    """protocol → path → kinds (str, bytes, json), from the installed SDKs."""
    paths: dict[str, dict[str, frozenset[str]]] = {}
    for protocol, roots in _roots().items():
        found: dict[str, set[str]] = {}
        for root in roots:
            walk_type(root, "", found)
        paths[protocol] = {path: frozenset(kinds) for path, kinds in sorted(found.items())}
    return paths


# -- building a body with a phrase in one field ----------------------------------------------

_SEGMENT = re.compile(r"([^.\[\]({}]+)((?:\[\]|\[[^\]]*\]|\([^)]*\)|\{\})*)")
_SUFFIX = re.compile(r"\[\]|\[([^\]=]*)=([^\]]*)\]|\(([^)=]*)=([^)]*)\)|\{\}")
_BASES: dict[str, dict[str, object]] = {
    protocols.OPENAI_CHAT: {"messages": []},
    protocols.ANTHROPIC_MESSAGES: {"messages": []},
    protocols.OPENAI_EMBEDDINGS: {"input": []},
    protocols.GEMINI_GENERATE: {"contents": []},
}


def _segments(path: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """`a[type=x].b(k=v){}` → [("a", [("[]", "type", "x")]), ("b", [("()", "k", "v"),
    ("{}", "", "")])]."""
    out = []
    for match in _SEGMENT.finditer(path):
        suffixes = []
        for s in _SUFFIX.finditer(match.group(2)):
            if s.group(0) == "[]":
                suffixes.append(("[]", "", ""))
            elif s.group(0) == "{}":
                suffixes.append(("{}", "", ""))
            elif s.group(0).startswith("["):
                suffixes.append(("[]", s.group(1), s.group(2)))
            else:
                suffixes.append(("()", s.group(3), s.group(4)))
        out.append((match.group(1), suffixes))
    return out


def build_body(protocol: str, path: str, leaf: object, fill: Mapping[str, object]) -> dict[str,
                                                                                          Any]:
    """The smallest body of `protocol` with `leaf` at `path` (and `fill` beside it)."""
    segments = _segments(path)
    value: Any = leaf
    for index in range(len(segments) - 1, -1, -1):
        name, suffixes = segments[index]
        last = index == len(segments) - 1
        for kind, key, given in reversed(suffixes):
            if kind == "[]":
                if key:
                    value = {key: given, **value} if isinstance(value, dict) else {key: given}
                value = [value]
            elif kind == "{}":
                value = {"k": value}
            else:
                value = {key: given, **value} if isinstance(value, dict) else {key: given}
        value = {name: value, **(fill if last else {})}
    return {**_BASES.get(protocol, {}), **value}


def _snake_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {(snake(k) if k != "k" else k): _snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake_keys(v) for v in value]
    return value


def _turn_role(path: str) -> str:
    found = re.findall(r"role=(\w+)", path)
    role = found[-1] if found else "user"
    return {"developer": "system", "function": "tool"}.get(role, role)


def _phrase(index: int) -> str:
    return f"Phrase {index} reads like a sentence"


def _leaf(row: Row, kinds: frozenset[str], phrase: str) -> str:
    """The phrase as the field holds it: base64 for bytes (and for `base64` rows), a `data:`
    URL for `data-url` rows, else as it is (a JSON field holds it as a string)."""
    encoded = base64.b64encode(phrase.encode()).decode()
    if row.encode == "data-url":
        return "data:text/plain;base64," + encoded
    return encoded if row.encode == "base64" or BYTES in kinds else phrase


def paths(protocol: str) -> dict[str, frozenset[str]]:
    """The SDK's text paths of `protocol`, and the fields beyond them the addon reads."""
    extra = {row.pattern: frozenset({STR}) for row in INVENTORY[protocol] if row.beyond_sdk}
    return {**sdk_paths()[protocol], **extra}


def _found(messages: list[extract.Message], phrase: str) -> list[str]:
    return [m["role"] for m in messages if phrase in m["content"]]


# -- the tests --------------------------------------------------------------------------------

def test_every_sdk_text_field_is_classified() -> None:
    unclassified = [f"{protocol}: {path}" for protocol in protocols.ALL
                    for path in paths(protocol) if rule_for(protocol, path) is None]
    assert not unclassified, "classify these in tests/field_inventory.py:\n" + "\n".join(
        unclassified)


def test_the_gemini_root_has_the_top_level_fields() -> None:
    """The `GenerateContentConfig` fields google-genai sends at the body's top level are in the
    walk's root (every other one is walked inside `generationConfig`)."""
    from google.genai import types as g

    root = {snake(k) for k in typing.get_type_hints(_gemini_root())}
    assert root >= GEMINI_TOP_LEVEL
    assert set(g.GenerateContentConfig.model_fields) >= GEMINI_TOP_LEVEL | GEMINI_SDK_ONLY


# Top-level keys the addon knows beyond the SDKs' request types: vLLM's chat template fields
# (screened as user), Bedrock's and Vertex's Anthropic body fields (a version and beta names)
# and the older `output_format` (a response schema)
BEYOND_SDK_FIELDS: dict[str, set[str]] = {
    protocols.OPENAI_CHAT: {"chat_template", "chat_template_kwargs", "documents"},
    protocols.ANTHROPIC_MESSAGES: {"anthropic_version", "anthropic_beta", "output_format"},
}


def _top_level(tp: Any) -> set[str]:
    tp = _bare(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return set().union(*(_top_level(arg) for arg in typing.get_args(tp)))
    return {key for key, _ in _fields(tp)}


@pytest.mark.parametrize("protocol", protocols.ALL)
def test_the_known_top_level_fields_are_the_sdks(protocol: str) -> None:
    """`extract.KNOWN_FIELDS` (every other top-level key is screened whole, as `user`) are the
    top-level fields of the SDK's request type and the few the addon knows beyond it: a field
    a new SDK release adds fails here until it is classified (here and in field_inventory)."""
    sdk = set().union(*(_top_level(root) for root in _roots()[protocol]))
    expected = sdk | BEYOND_SDK_FIELDS.get(protocol, set())
    known = set(extract.KNOWN_FIELDS[protocol])
    assert known == expected, (f"not in extract.KNOWN_FIELDS: {sorted(expected - known)}; "
                               f"not in the SDK: {sorted(known - expected)}")


def _check(protocol: str, path: str, kinds: frozenset[str], row: Row, phrase: str) -> str:
    """'' if the field is handled as `row` says, else what happened."""
    body = build_body(protocol, path, _leaf(row, kinds, phrase), row.fill)
    bodies = [body, _snake_keys(body)] if protocol == protocols.GEMINI_GENERATE else [body]
    if row.how == NOT_SCREENED:
        expected: tuple[list[str], list[str]] = ([], [])
    elif row.how == DEFINITION:
        expected = ([], ["tool"])
    else:
        expected = ([_turn_role(path) if row.how == TURN else row.how], [])
    for sent in bodies:
        proto = typing.cast(protocols.Protocol, protocol)
        got = (_found(extract.request_messages(proto, sent), phrase),
               _found(extract.tool_definitions(proto, sent), phrase))
        if got != expected:
            return f"{path}: (request roles, definition roles) {got} != {expected} for {sent}"
    return ""


@pytest.mark.parametrize("protocol", protocols.ALL)
def test_the_classification_is_true(protocol: str) -> None:
    """Each field, with a phrase of its own in a minimal body, is screened as its row says
    (with the row's role), is a tool definition, or is not screened at all; and every row
    still classifies some field (a row that matches none is stale or mistyped)."""
    failures, used = [], set()
    for i, (path, kinds) in enumerate(paths(protocol).items()):
        row = rule_for(protocol, path)
        assert row is not None, f"{path} is not classified"
        used.add(id(row))
        failures.append(_check(protocol, path, kinds, row, _phrase(i)))
    failures += [f"no field matches {row.pattern}" for row in INVENTORY[protocol]
                 if id(row) not in used]
    assert not [f for f in failures if f], "\n".join(f for f in failures if f)


def _doc_sections() -> dict[str, str]:
    text = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    section = text.split("\n## What is screened, field by field\n", 1)[1].split("\n## ", 1)[0]
    sections = {}
    for part in re.split(r"^(?=### )", section, flags=re.M):
        named = re.match(r"### [^\n`]*`([a-z-]+)`", part)
        if named:
            sections[named.group(1)] = part
    return sections


_HOW = {TURN: "the turn's role", DEFINITION: "tool definition", NOT_SCREENED: "not screened"}


@pytest.mark.parametrize("protocol", protocols.ALL)
def test_the_doc_names_every_row(protocol: str) -> None:
    """Every row is in the protocol's table of docs/security.md, classified the same way."""
    section = _doc_sections().get(protocol, "")
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    wrong = [f"{row.pattern}: {rows.get(row.pattern, 'missing')}" for row in INVENTORY[protocol]
             if rows.get(row.pattern) != _HOW.get(row.how, f"`{row.how}`")]
    assert not wrong, f"docs/security.md ({protocol}) differs:\n" + "\n".join(wrong)
