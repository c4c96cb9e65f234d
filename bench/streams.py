"""The stream and input modes in figures (issue 14; docs/stream-modes.md): `python -m bench
--axes streams`.

- Growth with the upstream's speed: a ~1,000-character answer streamed by the LLM stand-in at
  50, 500 and ~4,000 characters a second and all at once, through plain mitmdump (streaming),
  held, live and windowed (window_chars 200), c=1: time to the first text, end of stream, Lakera
  calls per answer, and, for the same answer with a flagged phrase in the middle, what reached
  the client of the text from the phrase's first character on.
- Parallel against sequential input: time to the first byte of a JSON answer at c=1, Lakera at
  20, 100 and 300 ms, the upstream taking 50, 300 and 1,000 ms to its first byte; the
  target for parallel: added time ≤ max(0, Lakera − upstream) + 3 ms over plain mitmdump.
"""

from __future__ import annotations

import base64
import json
import math
import re
import statistics
import time
from pathlib import Path

import httpx

from bench.processes import Standins
from bench.processes import free_port
from bench.processes import log
from bench.processes import proxy
from bench.processes import standins
from bench.processes import table
from lakera_addon.standins.lakera_guard import ATTACK_TRIGGER

CHAT = "/v1/chat/completions"
DENY = b"Response blocked by Lakera Guard"
WINDOW = 200
SPEEDS = {"50 ch/s": 160, "500 ch/s": 16, "~4,000 ch/s": 2, "instant": 0}  # ms per 8-ch word
MODES = ("plain-stream", "held", "live-200", "windowed-200")
_CALLS = re.compile(r"^lakera_guard_lakera_latency_seconds_count (\S+)$", re.MULTILINE)


def words(n: int, tag: str) -> str:
    return "".join(f"{tag}{i:06d} " for i in range(n))  # 8 characters per word


def _request(port: int, reply: str, mode: str, stream: bool = True
             ) -> tuple[bytes, float, float, float]:
    """(body, ms to the first byte, ms to the first text of the reply, ms to the last byte)."""
    marker = reply.split(" ", 1)[0].encode()
    headers = {"content-type": "application/json", "x-standin-mode": mode,
               "x-standin-reply-b64": base64.b64encode(reply.encode()).decode()}
    body = json.dumps({"model": "m", "stream": stream,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    received = bytearray()
    first = first_text = 0.0
    started = time.perf_counter()
    with httpx.Client(trust_env=False, timeout=300) as client, client.stream(
            "POST", f"http://127.0.0.1:{port}{CHAT}", content=body, headers=headers) as answer:
        for chunk in answer.iter_raw():
            now = (time.perf_counter() - started) * 1000
            first = first or now
            received += chunk
            if not first_text and (marker in received or DENY in received):
                first_text = now
    return bytes(received), first, first_text, (time.perf_counter() - started) * 1000


def lakera_calls(metrics_port: int) -> int:
    """Lakera calls the proxy made so far: every window's scan, not one per answer (the
    addon's `lakera_guard_lakera_latency_seconds` histogram, lakera_metrics_port)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", trust_env=False).text
    found = _CALLS.search(text)
    return int(float(found.group(1))) if found else 0


def growth_rows(ports: Standins, workdir: Path, speeds: dict[str, int],
                repeats: int) -> list[list[str]]:
    clean = words(125, "w")  # 1,000 characters
    flagged = words(60, "a") + ATTACK_TRIGGER + " " + words(60, "b")
    rows = []
    for speed, pace in speeds.items():
        for variant in MODES:
            firsts, ends, leaks = [], [], []
            calls = 0.0
            metrics = free_port() if variant != "plain-stream" else 0
            with proxy(variant, ports, workdir, metrics) as (_, port):
                for _ in range(repeats):
                    _, _, first_text, end = _request(port, clean, f"delay-ms={pace}")
                    firsts.append(first_text)
                    ends.append(end)
                if metrics:
                    calls = lakera_calls(metrics) / repeats
            if variant != "plain-stream":
                with proxy(variant, ports, workdir) as (_, port):
                    for _ in range(repeats):
                        data, _, _, _ = _request(port, flagged, f"delay-ms={pace}")
                        leaks.append(_leak(data, len(words(60, "a"))))
            rows.append([speed, variant, f"{statistics.median(firsts):.0f}",
                         f"{statistics.median(ends):.0f}",
                         "-" if variant == "plain-stream" else f"{calls:.1f}",
                         f"{max(leaks)}" if leaks else "-"])
            log(f"streams {speed} {variant}: first text {statistics.median(firsts):.0f} ms, "
                f"end {statistics.median(ends):.0f} ms, leak {max(leaks) if leaks else '-'}")
    return rows


def _leak(data: bytes, before: int) -> int:
    """Characters of the reply from the flagged phrase on that reached the client (the
    deltas' text up to the deny text)."""
    text = "".join(re.findall(r'"content":"((?:[^"\\]|\\.)*)"', data.decode(errors="replace")))
    text = text.split(DENY.decode())[0]
    return max(0, len(text) - before)


def parallel_rows(workdir: Path, repeats: int, quick: bool) -> list[list[str]]:
    rows = []
    delays = (20.0, 300.0) if quick else (20.0, 100.0, 300.0)
    stalls = (50, 1000) if quick else (50, 300, 1000)
    for delay in delays:
        with standins(delay) as ports:
            for stall in stalls:
                firsts: dict[str, float] = {}
                for variant in ("plain", "input-scan", "parallel"):
                    with proxy(variant, ports, workdir) as (_, port):
                        samples = [_request(port, "hello there", f"ttfb-ms={stall}",
                                            stream=False)[1] for _ in range(repeats)]
                    firsts[variant] = statistics.median(samples)
                plain = firsts["plain"]
                target = max(0.0, delay - stall) + 3
                added = firsts["parallel"] - plain
                rows.append([f"{delay:g} ms", f"{stall} ms", f"{plain:.0f}",
                             f"{firsts['input-scan'] - plain:+.0f}", f"{added:+.0f}",
                             f"<= {target:.0f}", "met" if added <= target else "NOT met"])
                log(f"parallel Lakera {delay:g} ms upstream {stall} ms: sequential "
                    f"{firsts['input-scan'] - plain:+.0f} ms, parallel {added:+.0f} ms")
    return rows


def sections(workdir: Path, quick: bool) -> list[tuple[str, str]]:
    speeds = {k: v for k, v in SPEEDS.items() if not quick or v <= 16}
    repeats = 1 if quick else 3
    with standins(20.0) as ports:
        growth = growth_rows(ports, workdir, speeds, repeats)
    calls_goal = math.ceil(1000 / WINDOW) + 1
    return [
        ("Stream modes against the upstream's speed (a 1,000-character answer, c=1, Lakera "
         f"20 ms, window_chars {WINDOW}; median of {repeats}; calls per answer: the goal for "
         f"windowed is <= ceil(1000 / {WINDOW}) + 1 = {calls_goal}; leak: characters from a "
         "flagged phrase on that reached the client)",
         table(["upstream speed", "mode", "first text ms", "end ms", "Lakera calls / answer",
                "leak (max)"], growth)),
        ("Parallel against sequential input: added time to the first byte over plain mitmdump "
         f"(JSON answer, c=1, median of {repeats})",
         table(["Lakera", "upstream first byte", "plain ms", "sequential", "parallel",
                "goal (parallel)", ""], parallel_rows(workdir, repeats, quick))),
    ]
