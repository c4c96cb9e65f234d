"""`stream_mode: live` (formerly progressive) in figures: what a flagged stream leaks, and
time to first token.

- Leak: a streamed answer with a flagged phrase in the middle, at a given pace (the stand-in's
  delay between word-sized events) and Lakera delay; what reached the client of the text from
  the flagged phrase's first character on, before the protocol's ending (the client stops
  reading at the ending, as the SDKs do).
- First token: a clean paced stream at c=1 through plain mitmdump (streaming), pass-through,
  live, windowed and held; time to first body byte and to the last.
Run by `python -m bench` (axis `live`); figures in docs/stream-modes.md.
"""

from __future__ import annotations

import base64
import json
import statistics
import time
from pathlib import Path

import httpx

from bench import shapes
from bench.processes import Standins
from bench.processes import log
from bench.processes import proxy
from bench.processes import standins
from bench.processes import table
from lakera_addon.assembly import assemble
from lakera_addon.protocols import Protocol
from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER

DENY = "Response blocked by Lakera Guard"
# name: (path, protocol) of every protocol a live stream can be cut in
PROTOCOLS: dict[str, tuple[str, Protocol]] = {
    name: (shapes.path(name, True), protocol) for name, protocol in shapes.PROTOCOLS.items()}
# what the cut's ending carries after the deny text, per protocol
ENDINGS = (b"[DONE]", b"response.incomplete", b"message_stop", b'"finishReason":"SAFETY"',
           b'"done":true')


def words(n: int, tag: str) -> str:
    return "".join(f"{tag}{i:03d} " for i in range(n))  # 7-8 characters per word


def body(name: str) -> bytes:
    return json.dumps(shapes.body(name, 200, True)).encode()


def stream_once(port: int, name: str, reply: str, pace_ms: int,
                stop_at_ending: bool) -> tuple[bytes, float, float]:
    """(bytes received, time to first byte, time to last) of one streamed answer."""
    path, _ = PROTOCOLS[name]
    headers = {"content-type": "application/json", "x-standin-mode": f"delay-ms={pace_ms}",
               "x-standin-reply-b64": base64.b64encode(reply.encode()).decode()}
    received = bytearray()
    started = time.perf_counter()
    first = 0.0
    with httpx.Client(trust_env=False, timeout=120) as client, client.stream(
            "POST", f"http://127.0.0.1:{port}{path}", content=body(name),
            headers=headers) as response:
        for chunk in response.iter_raw():
            if not first:
                first = time.perf_counter() - started
            received += chunk
            if stop_at_ending and DENY.encode() in received and any(
                    e in received[received.rfind(DENY.encode()):] for e in ENDINGS):
                break  # the client has the ending: like the SDKs, stop reading
    return bytes(received), first * 1000, (time.perf_counter() - started) * 1000


def leak_rows(ports: Standins, workdir: Path, paces: tuple[int, ...],
              repeats: int) -> list[list[str]]:
    rows = []
    with proxy("live", ports, workdir) as (_, port):
        for name, (_, protocol) in PROTOCOLS.items():
            for pace in paces:
                leaks: list[int] = []
                for k in range(repeats):
                    before = words(120 + 37 * k, "a")  # the flag lands at varied window offsets
                    reply = before + ATTACK_TRIGGER + " " + words(250, "b")
                    data, _, _ = stream_once(port, name, reply, pace, stop_at_ending=True)
                    text = assemble(protocol, data).text
                    if not text.endswith(DENY):
                        raise RuntimeError(f"{name}: the flagged stream was not cut")
                    shown = text[: -len(DENY)].rstrip("\n")
                    leaks.append(max(0, len(shown) - len(before)))
                rate = 8 / pace * 1000  # characters per second the stand-in streams
                rows.append([name, f"{ports.delay_ms:g} ms", f"{pace} ms (~{rate:.0f} ch/s)",
                             f"{statistics.median(leaks):.0f}", f"{max(leaks)}",
                             f"{max(leaks) / 8:.0f}", f"{len(leaks)}"])
                log(f"live leak {name} Lakera {ports.delay_ms:g} ms pace {pace} ms: "
                    f"median {statistics.median(leaks):.0f}, max {max(leaks)} characters")
    return rows


def first_token_rows(ports: Standins, workdir: Path, repeats: int) -> list[list[str]]:
    reply = words(100, "w")  # 100 events, 20 ms apart: ~2 s of streaming
    rows = []
    for variant in ("plain-stream", "pass-through", "live", "windowed", "held"):
        with proxy(variant, ports, workdir) as (_, port):
            for name in PROTOCOLS:
                firsts, lasts = [], []
                for _ in range(repeats):
                    _, first, last = stream_once(port, name, reply, 20, False)
                    firsts.append(first)
                    lasts.append(last)
                rows.append([name, variant, f"{statistics.median(firsts):.0f}",
                             f"{statistics.median(lasts):.0f}"])
                log(f"first token {name} {variant}: {statistics.median(firsts):.0f} ms")
    rows.sort(key=lambda row: list(PROTOCOLS).index(row[0]))  # grouped by protocol
    return rows


def sections(workdir: Path, quick: bool) -> list[tuple[str, str]]:
    paces = (5,) if quick else (5, 20)
    repeats = 2 if quick else 4
    leak: list[list[str]] = []
    ttfb: list[list[str]] = []
    for delay in (20.0, 300.0):
        with standins(delay) as ports:
            leak += leak_rows(ports, workdir, paces, repeats)
            if delay == 300.0:
                ttfb = first_token_rows(ports, workdir, 1 if quick else 3)
    return [
        ("Live streams: text leaked per flagged stream (window_chars 1000; characters "
         "from the flagged phrase's first one on that reached the client before the ending)",
         table(["protocol", "Lakera delay", "pace (8-character words)", "median",
                "max", "max ~words", "streams"], leak)),
        ("Live streams: time to first byte / last byte, ms (100 events 20 ms apart, "
         f"Lakera 300 ms, c=1, median of {1 if quick else 3})",
         table(["protocol", "scenario", "first byte", "last byte"], ttfb)),
    ]
