"""The values a configuration key takes: one parser per key, each returning the parsed value or
raising ValueError("what is allowed") (configuration.py names the file, the key and the value)."""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import Literal
from urllib.parse import urlsplit

Direction = Literal["input", "output", "both"]
Action = Literal["block", "alert"]
DetectorAction = Literal["block", "alert", "mask"]
InputScope = Literal["conversation", "latest"]
StreamMode = Literal["held", "windowed", "live"]
InputMode = Literal["sequential", "parallel"]
FailMode = Literal["skip", "warn", "error"]

ENV_PREFIX = "$env://"


def shown_value(value: object) -> str:
    """A configured value as an error message shows it: short, on one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string")
    return value


def _optional_string(value: object) -> str | None:
    return None if value is None else string(value)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _choice(*allowed: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value not in allowed:
            raise ValueError(" or ".join(allowed))
        assert isinstance(value, str)
        return value

    return parse


def _int_range(low: int, high: int, unit: str = "") -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"an integer from {low} to {high}{unit}")
        return value

    return parse


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_MAX_BODY_LIMIT = 1024**3


def parse_size(value: object) -> int:
    """Bytes from an integer or a size such as `8 MiB`, `512k`, `1m` (binary multiples)."""
    allowed = "a size in bytes from 1 to 1 GiB, e.g. 8388608 or '8 MiB'"
    if isinstance(value, bool):
        raise ValueError(allowed)
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    else:
        raise ValueError(allowed)
    if not 1 <= size <= _MAX_BODY_LIMIT:
        raise ValueError(allowed)
    return size


def _screen_size(value: object) -> int:
    size = parse_size(value)
    if size < 1024:
        raise ValueError("a size in bytes from 1024 to 1 GiB, e.g. 128000 or '1 MiB'")
    return size


def _detector_actions(value: object) -> tuple[tuple[str, DetectorAction], ...]:
    allowed = ("a mapping from detector-type globs to block, alert or mask, e.g. "
               "{prompt_attack: block, 'pii/*': mask}")
    if not isinstance(value, dict) or not value:
        raise ValueError(allowed)
    pairs: list[tuple[str, DetectorAction]] = []
    for glob, action in value.items():
        if not isinstance(glob, str) or not glob or action not in ("block", "alert", "mask"):
            raise ValueError(allowed)
        pairs.append((glob, action))
    return tuple(pairs)


def _stream_mode(value: object) -> str:
    """held, windowed or live; `progressive` is live's former name and still read as it."""
    if value == "progressive":
        return "live"
    if value not in ("held", "windowed", "live"):
        raise ValueError("held, windowed or live")
    assert isinstance(value, str)
    return value


def _deny_code(value: object) -> int:
    code = _int_range(200, 599)(value)
    if code in (204, 205, 304):  # statuses that cannot carry the refusal's body
        raise ValueError("an HTTP status from 200 to 599 that has a body (not 204, 205, 304)")
    return code


def _endpoint(value: object) -> str:
    allowed = "an http:// or https:// URL"
    if not isinstance(value, str):
        raise ValueError(allowed)
    try:
        parts = urlsplit(value)
        port = parts.port  # raises for a port out of range or not a number
    except ValueError:
        raise ValueError(allowed) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ValueError(allowed)
    return value


_HEADER_SAFE = re.compile(r"[!-~]+")


def api_key(value: object, environ: Mapping[str, str]) -> str | None:
    if value is None:
        return None
    allowed = f"a non-empty string or {ENV_PREFIX}NAME of a set environment variable"
    if not isinstance(value, str) or not value:
        raise ValueError(allowed)
    if value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX) :]
        resolved = environ.get(name)
        if not name or not resolved:
            raise ValueError(f"{allowed} ({value} is not set)")
        value = resolved
    if not _HEADER_SAFE.fullmatch(value):  # it goes into an HTTP header; never echo it
        raise ValueError("printable ASCII without spaces (a pasted key with a typographic "
                         "quote or a line break?)")
    return value


PARSERS: dict[str, Callable[[object], Any]] = {
    "lakera_endpoint": _endpoint,
    "project_id": _optional_string,
    "direction": _choice("input", "output", "both"),
    "action": _choice("block", "alert"),
    "fail_open": _bool,
    "timeout": _int_range(1, 600_000, " milliseconds"),
    "ssl_verify": _bool,
    "deny_code": _deny_code,
    "request_failure_message": string,
    "response_failure_message": string,
    "reveal_failure_categories": _bool,
    "fail_mode": _choice("skip", "warn", "error"),
    "max_body_bytes": parse_size,
    "max_screen_bytes": _screen_size,
    "input_scope": _choice("conversation", "latest"),
    "stream_mode": _stream_mode,
    "input_mode": _choice("sequential", "parallel"),
    "window_chars": _int_range(100, 1_000_000, " characters"),
    "verdict_cache_seconds": _int_range(0, 86_400, " seconds (0: no cache)"),
    "screen_tool_definitions": _bool,
    "detector_actions": _detector_actions,
}
