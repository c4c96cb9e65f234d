"""In-process timings of the addon's hot paths, without a proxy: what one flow costs in the
addon's own code. Used by the benchmark's last table and to measure hot-path changes."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from lakera_addon import assembly
from lakera_addon import extract
from lakera_addon import screen_budget
from lakera_addon.configuration import Settings
from lakera_addon.lakera_client import build_payload
from lakera_addon.standins.llm_answers import Mode
from lakera_addon.standins.llm_answers import chat_stream
from lakera_addon.stream_tap import StreamTap

WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua ")


def conversation(size: int, stream: bool = False) -> dict[str, Any]:
    """An openai-chat body of about `size` bytes: a system prompt, then turns of ~2 KB."""
    turn = (WORDS * 20)[:2000]
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "You are a helpful assistant."}]
    body = {"model": "bench-model", "messages": messages, "stream": stream}
    overhead = len(json.dumps(body))
    room = size - overhead
    roles = ("user", "assistant")
    while room > 0:
        text = turn[: max(1, min(len(turn), room - 40))]
        messages.append({"role": roles[(len(messages) + 1) % 2], "content": text})
        room -= len(text) + 40
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": "And then?"})
    return body


def sse_body(repeat: int) -> bytes:
    return b"".join(e for e in chat_stream("bench-model", WORDS * repeat, Mode(), False)
                    if e != b"TERMINAL")


def best_ms(function: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def request_side(size: int, rounds: int = 20) -> dict[str, float]:
    """Milliseconds to parse, extract, fit and encode one conversation of `size` bytes."""
    raw = json.dumps(conversation(size)).encode()
    settings = Settings(api_key="k", lakera_endpoint="http://127.0.0.1:9/v2/guard")
    body = json.loads(raw)
    messages = extract.request_messages("openai-chat", body)
    fitted = screen_budget.fit_request(messages, settings.max_screen_bytes)
    assert fitted is not None

    def encode() -> bytes:
        return json.dumps(build_payload(settings, fitted.messages), ensure_ascii=False).encode()

    def whole() -> bytes:
        parsed = json.loads(raw)
        found = extract.request_messages("openai-chat", parsed)
        kept = screen_budget.fit_request(found, settings.max_screen_bytes)
        assert kept is not None
        return json.dumps(build_payload(settings, kept.messages), ensure_ascii=False).encode()

    return {
        "bytes": len(raw),
        "parse": best_ms(lambda: json.loads(raw), rounds),
        "extract": best_ms(lambda: extract.request_messages("openai-chat", body), rounds),
        "fit": best_ms(lambda: screen_budget.fit_request(messages, settings.max_screen_bytes),
                       rounds),
        "encode": best_ms(encode, rounds),
        "total": best_ms(whole, rounds),
    }


def stream_side(repeat: int, rounds: int = 3) -> dict[str, float]:
    """A chat SSE answer: held assembly (whole body) and pass-through (the tap fed one event
    at a time, the worst chunking), in MB/s, and the held assembly's peak Python memory."""
    body = sse_body(repeat)
    events = [e + b"\n\n" for e in body.split(b"\n\n") if e]
    size_mb = len(body) / 1e6

    def tap() -> None:
        t = StreamTap("openai-chat", None, 1 << 30)
        for event in events:
            t(event)
        t(b"")
        assert t.result().complete

    held_ms = best_ms(lambda: assembly.assemble("openai-chat", body), rounds)
    tap_ms = best_ms(tap, rounds)
    tracemalloc.start()
    result = assembly.assemble("openai-chat", body)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.complete
    return {
        "bytes": len(body),
        "events": len(events),
        "held_ms": held_ms,
        "held_mb_s": size_mb / (held_ms / 1000),
        "tap_ms": tap_ms,
        "tap_mb_s": size_mb / (tap_ms / 1000),
        "peak_x": peak / len(body),
    }


def main() -> None:
    for size in (1_000, 100_000, 1_000_000):
        print("request", size, {k: round(v, 3) for k, v in request_side(size).items()})
    for repeat in (100, 1000, 10_000):
        print("stream", repeat, {k: round(v, 3) for k, v in stream_side(repeat).items()})


if __name__ == "__main__":
    main()
