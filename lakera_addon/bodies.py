"""Reading bodies without stalling mitmproxy's event loop: JSON parsed in a worker thread when
it is large."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from lakera_addon.failures import TooDeep

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
