"""Reading bodies: request bodies as leniently as any upstream reads them, and large bodies
parsed in a worker thread, without stalling mitmproxy's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from lakera_addon import content_decoding
from lakera_addon import lenient_json
from lakera_addon.failures import TooDeep
from lakera_addon.failures import TooLarge
from lakera_addon.failures import UnreadableBody
from lakera_addon.lenient_json import LenientBody

OFF_LOOP_BYTES = 256 * 1024  # parse bodies larger than this in a worker thread


async def off_loop[T](function: Callable[..., T], *args: Any) -> T:
    """Run CPU-heavy parsing of a large body without stalling mitmproxy's event loop."""
    return await asyncio.to_thread(function, *args)


async def maybe_off_loop[T](size: int, function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` here for a small body, in a worker thread for a large one."""
    return await off_loop(function, *args) if size > OFF_LOOP_BYTES else function(*args)


_TOO_DEEP = object()


async def parse_json(content: bytes) -> Any:
    """The parsed body, or None if it is not JSON; TooDeep if it nests too deeply."""

    def parse() -> Any:
        try:
            return json.loads(content)
        except RecursionError:
            return _TOO_DEEP
        except ValueError:
            return None

    body = await maybe_off_loop(len(content), parse)
    if body is _TOO_DEEP:
        raise TooDeep("nests too deeply to be screened")
    return body


def _readings(raw: bytes, content_encoding: str | None, limit: int) -> list[bytes]:
    """The bytes an upstream may read a request body as: decoded by its Content-Encoding and,
    when that header is there, as sent too (many servers ignore Content-Encoding on requests).
    TooLarge past `limit`."""
    readings: list[bytes] = []
    # a body that cannot be decoded (or an unknown coding) may still be read as sent
    with contextlib.suppress(ValueError):
        readings.append(content_decoding.decode_bounded(raw, content_encoding, limit))
    if content_encoding and content_encoding.strip().lower() not in ("", "identity"):
        if len(raw) > limit:
            raise TooLarge(f"larger than max_body_bytes ({limit} bytes)")
        if raw not in readings:
            readings.append(raw)
    return readings


def read_json_body(raw: bytes, content_encoding: str | None, limit: int) -> LenientBody:
    """A request body read as leniently as any upstream reads it (lenient_json): the JSON object
    of its first reading that is one, with the strings of every other reading added to what
    is hidden. TooLarge, TooDeep (a failure: fail_open decides) or UnreadableBody (no reading
    is a JSON object: fail_mode decides)."""
    parsed: list[LenientBody] = []
    for reading in _readings(raw, content_encoding, limit):
        try:
            body = lenient_json.loads(reading)
        except RecursionError:
            raise TooDeep("nests too deeply to be screened") from None
        if body is not None:
            parsed.append(body)
    objects = [body for body in parsed if isinstance(body.value, dict)]
    if not objects:
        raise UnreadableBody("request body is not a JSON object" if parsed
                             else "request body is not JSON")
    chosen = objects[0]
    for other in parsed:
        if other is not chosen:
            chosen.hidden_strings.extend(lenient_json.strings(other.value))
            chosen.hidden_strings.extend(other.hidden_strings)
            chosen.notes.append("read both as sent and decoded")
    return chosen
