"""Reading a request body the way the most lenient LLM upstream would (SPEC section 5, the
invariant: "a body a lenient upstream would read is read leniently and screened").

Python's `json.loads` refuses bodies that real upstreams take: Go's encoding/json (Ollama, many
local servers) replaces invalid UTF-8 with U+FFFD, matches object keys case-insensitively
("Messages" is "messages"), takes the last of duplicate keys, and its streaming decoder (which
gin's JSON binding uses) reads the first JSON value and ignores what follows it; Node and Python
servers take the last duplicate too; some servers ignore `Content-Encoding` on requests and read
the raw bytes. A guard that reads a body more strictly than its upstream forwards what it could
not read, and the upstream reads it. So this module reads every reading at once:

- bytes: UTF-8, UTF-16 or UTF-32 as JSON allows (detected like `json.loads`), a BOM skipped,
  invalid sequences replaced (U+FFFD, as Go does) and lone surrogates kept;
- the first JSON value is the body; JSON values after it are read too ("trailing");
- objects are `FoldDict`s: `get` and `in` fall back to a case-insensitive match when the exact
  key is missing; every value a duplicate or case-variant key hides ("shadowed") is kept;
- integers too long for Python's int() are kept as floats, never an error.

Whatever an upstream might read from the shadowed and trailing values is returned as strings, for
the caller to screen with the rest.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any

_MAX_INT_DIGITS = 4000  # Python's int() refuses more than 4300 digits by default


class FoldDict(dict[str, Any]):
    """A JSON object whose keys are also found case-insensitively, as Go's encoding/json finds
    struct fields: the exact key first, else the last key that folds to the same. It also
    remembers every value a key had when the object was read (`readings`): a key given twice,
    or in several cases, has several readings, and upstreams disagree on which one counts (Go
    takes the last case-insensitively, first-wins readers the first)."""

    __slots__ = ("_folded", "_many")

    def __init__(self) -> None:
        super().__init__()
        self._folded: dict[str, str] = {}
        self._many: dict[str, list[Any]] = {}  # folded key -> its values, when more than one

    def _add(self, key: str, value: Any) -> None:
        self[key] = value
        self._folded[key.casefold()] = key

    def _key(self, key: str) -> str:
        if dict.__contains__(self, key):
            return key
        return self._folded.get(key.casefold(), key)

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, self._key(key), default) if isinstance(key, str) else default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, self._key(key))

    @property
    def ambiguous(self) -> bool:
        """Whether some key of the object had several values when it was read."""
        return bool(self._many)

    def readings(self, key: str) -> list[Any]:
        """Every value the object was read with under `key` or a key that folds to it (a
        duplicate, another case), in document order; [] if there is none."""
        many = self._many.get(key.casefold())
        if many is not None:
            return list(many)
        found = self._key(key)
        return [dict.__getitem__(self, found)] if dict.__contains__(self, found) else []

    def reading(self, key: str, value: Any) -> FoldDict:
        """A copy of the object read with `value` as the one value of `key` (and of every key
        that folds to it): one reading of an object whose key has several."""
        folded = key.casefold()
        copy = FoldDict()
        for name, item in self.items():
            if name.casefold() == folded:
                continue
            copy._add(name, item)
        copy._add(key, value)
        copy._many = {k: v for k, v in self._many.items() if k != folded}
        return copy


def with_value(obj: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of a JSON object with `value` as the value of `key` (a FoldDict stays one, its
    keys still found in any case)."""
    return obj.reading(key, value) if isinstance(obj, FoldDict) else {**obj, key: value}


def readings(obj: dict[str, Any], key: str) -> list[Any]:
    """`FoldDict.readings` of any JSON object (a plain dict has at most the exact key's)."""
    if isinstance(obj, FoldDict):
        return obj.readings(key)
    return [obj[key]] if key in obj else []


@dataclass(slots=True)
class LenientBody:
    """A body read leniently: the first JSON value, and every string an upstream might read
    that the value does not show (shadowed keys, values after the first)."""

    value: Any
    hidden_strings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was lenient, for the record


def _decode_text(data: bytes) -> tuple[str, list[str]]:
    """The body as text, as leniently as an upstream would decode it; notes of what was odd."""
    notes = []
    encoding = json.detect_encoding(data)
    if encoding == "utf-8" and data.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding, "surrogatepass")
    except UnicodeDecodeError:
        text = data.decode(encoding, "replace")
        notes.append(f"invalid {encoding.removesuffix('-sig')} replaced")
    if text.startswith("\ufeff"):  # a BOM of another encoding than the one detected
        text = text[1:]
    if encoding != "utf-8":
        notes.append(f"read as {encoding}")
    return text, notes


def _int(digits: str) -> int | float:
    return int(digits) if len(digits) <= _MAX_INT_DIGITS else float(digits)


def _whitespace_end(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def loads(data: bytes) -> LenientBody | None:
    """The lenient reading of a body; None if not even its start is a JSON value. RecursionError
    (nested deeper than the parser goes) propagates."""
    text, notes = _decode_text(data)
    shadowed: list[Any] = []

    def pairs(items: list[tuple[str, Any]]) -> FoldDict:
        obj = FoldDict()
        seen: dict[str, list[Any]] = {}
        for key, value in items:
            seen.setdefault(key.casefold(), []).append(value)
            obj._add(key, value)
        for folded, values in seen.items():
            if len(values) > 1:  # duplicates, or one key in several cases: an upstream may
                shadowed.extend(values)  # read any of them; all are screened
                obj._many[folded] = values
        return obj

    decoder = json.JSONDecoder(object_pairs_hook=pairs, parse_int=_int)
    at = _whitespace_end(text, 0)
    try:
        value, at = decoder.raw_decode(text, at)
    except ValueError:
        return None
    trailing: list[Any] = []
    at = _whitespace_end(text, at)
    while at < len(text):  # what a streaming decoder leaves unread; read what is JSON of it
        try:
            extra, at = decoder.raw_decode(text, at)
        except ValueError:
            notes.append("data after the JSON value")
            break
        trailing.append(extra)
        at = _whitespace_end(text, at)
    if trailing:
        notes.append(f"{len(trailing)} JSON value(s) after the first")
    if shadowed:
        notes.append(f"{len(shadowed)} value(s) under duplicate or case-variant keys")
    hidden = [s for node in [*shadowed, *trailing] for s in strings(node)]
    return LenientBody(value, hidden, notes)


def strings(node: Any) -> Iterator[str]:
    """Every string in a JSON value (keys of objects included), depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key, value in reversed(list(item.items())):
                stack.append(value)
                stack.append(key)
        elif isinstance(item, list):
            stack.extend(reversed(item))


def string_values(node: Any) -> Iterator[str]:
    """Every string value in a JSON value (not the keys of objects), depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
