"""The benchmark's orchestrator: `python -m bench [--quick]` (or `bash scripts/bench.sh`).

Three kinds of process, so that none steals the others' interpreter lock: the stand-ins
(bench.standins), the proxy under test (a fresh `mitmdump` per measurement, plain or with the
addon, in reverse mode to the LLM stand-in) and the load generator (bench.loadgen). The proxy's
CPU is read from /proc/<pid>/stat (user + system, all threads) around the measured part only;
its peak RSS is VmHWM from /proc/<pid>/status at the end (and its growth during the measured
part). Figures are compared as ratios to plain mitmdump measured in the same run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import httpx

from bench import live
from bench import micro
from bench import shapes
from bench import streams
from bench.processes import BASELINES
from bench.processes import CHAT_PATH
from bench.processes import JSON_REPLY_REPEAT
from bench.processes import PROXY_CPU
from bench.processes import REPLY_PHRASE
from bench.processes import ROOT
from bench.processes import VARIANTS
from bench.processes import Standins
from bench.processes import cpu_seconds
from bench.processes import end_process
from bench.processes import log
from bench.processes import peak_rss_mib
from bench.processes import pin
from bench.processes import proxy
from bench.processes import standins
from bench.processes import table

# --- workloads ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    stream: bool
    conversation: int = 2_000  # request body bytes
    repeat: int = JSON_REPLY_REPEAT  # answer: the reply phrase this many times
    protocol: str = "openai-chat"  # a name of bench.shapes.PROTOCOLS

    @property
    def kind(self) -> str:
        if not self.stream:
            return "json"
        return "ndjson" if self.protocol.startswith("ollama") else "sse"


@dataclass
class Figures:
    variant: str
    load: Load
    concurrency: int
    requests: int
    rps: float
    sse_mb_s: float | None
    ttfb: tuple[float, float]  # p50, p95 in ms
    ttlb: tuple[float, float]
    cpu_per_1k: float  # proxy CPU seconds per 1,000 requests
    cpu_per_mb: float | None  # proxy CPU seconds per MB streamed
    peak_rss: float  # MiB
    rss_growth: float  # MiB, during the measured part
    resp_kb: float  # mean response size
    errors: int
    extra: dict[str, Any] = field(default_factory=dict)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def measure(variant: str, load: Load, concurrency: int, requests: int, ports: Standins,
            workdir: Path) -> Figures:
    body = json.dumps(shapes.body(load.protocol, load.conversation, load.stream))
    headers = {
        "x-standin-reply-b64": base64.b64encode(REPLY_PHRASE.encode()).decode(),
        "x-standin-mode": f"repeat={load.repeat}",
    }
    with proxy(variant, ports, workdir) as (pid, port):
        spec = {"url": f"http://127.0.0.1:{port}{shapes.path(load.protocol, load.stream)}",
                "body": body,
                "headers": headers, "concurrency": concurrency, "requests": requests,
                "warmup": min(20, requests)}
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        gen = subprocess.Popen([sys.executable, "-m", "bench.loadgen", str(spec_path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               cwd=ROOT)
        pin(gen.pid, proxy=False)
        try:
            assert gen.stdin is not None and gen.stdout is not None
            if gen.stdout.readline().strip() != "READY":
                raise RuntimeError("load generator failed during warm-up")
            time.sleep(0.2)  # let the warm-up's background work (pass-through scans) end
            cpu0, rss0 = cpu_seconds(pid), peak_rss_mib(pid)
            gen.stdin.write("\n")
            gen.stdin.flush()
            result = json.loads(gen.stdout.readline())
            gen.wait(30)
        finally:
            end_process(gen)
        # background work after the last byte (a pass-through scan) is the proxy's cost too
        last = cpu_seconds(pid)
        for _ in range(20):
            time.sleep(0.1)
            now = cpu_seconds(pid)
            if now - last < 0.011:
                break
            last = now
        cpu = cpu_seconds(pid) - cpu0
        rss1 = peak_rss_mib(pid)
    n = len(result["ttlb"])
    total_mb = sum(result["bytes"]) / 1e6
    wall = result["wall"]
    return Figures(
        variant=variant, load=load, concurrency=concurrency, requests=n,
        rps=n / wall,
        sse_mb_s=total_mb / wall if load.stream else None,
        ttfb=(_pct(result["ttfb"], 0.5), _pct(result["ttfb"], 0.95)),
        ttlb=(_pct(result["ttlb"], 0.5), _pct(result["ttlb"], 0.95)),
        cpu_per_1k=cpu / n * 1000,
        cpu_per_mb=cpu / total_mb if load.stream and total_mb else None,
        peak_rss=rss1, rss_growth=rss1 - rss0,
        resp_kb=sum(result["bytes"]) / n / 1000,
        errors=sum(1 for s in result["status"] if s != 200),
    )


def median_figures(runs: list[Figures]) -> Figures:
    """Per-figure medians of repeated measurements of one scenario."""
    if len(runs) == 1:
        return runs[0]

    def med(values: list[float]) -> float:
        return statistics.median(values)

    first = runs[0]
    return Figures(
        variant=first.variant, load=first.load, concurrency=first.concurrency,
        requests=sum(r.requests for r in runs),
        rps=med([r.rps for r in runs]),
        sse_mb_s=med([r.sse_mb_s for r in runs if r.sse_mb_s is not None])
        if first.sse_mb_s is not None else None,
        ttfb=(med([r.ttfb[0] for r in runs]), med([r.ttfb[1] for r in runs])),
        ttlb=(med([r.ttlb[0] for r in runs]), med([r.ttlb[1] for r in runs])),
        cpu_per_1k=med([r.cpu_per_1k for r in runs]),
        cpu_per_mb=med([r.cpu_per_mb for r in runs if r.cpu_per_mb is not None])
        if first.cpu_per_mb is not None else None,
        peak_rss=max(r.peak_rss for r in runs),
        rss_growth=max(r.rss_growth for r in runs),
        resp_kb=first.resp_kb,
        errors=sum(r.errors for r in runs),
    )


# --- tables ---------------------------------------------------------------------------------

COLUMNS = ("req/s", "SSE MB/s", "TTFB p50", "TTFB p95", "TTLB p50", "TTLB p95",
           "CPU s/1k req", "CPU s/MB", "peak RSS MiB")


def _values(f: Figures) -> list[float | None]:
    return [f.rps, f.sse_mb_s, f.ttfb[0], f.ttfb[1], f.ttlb[0], f.ttlb[1], f.cpu_per_1k,
            f.cpu_per_mb, f.peak_rss]


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def figures_table(results: list[Figures], axis: str | None = None) -> str:
    headers = ([axis] if axis else []) + ["scenario", "load", "resp KB", *COLUMNS]
    rows = []
    for f in results:
        lead = [_axis_value(f, axis)] if axis else []
        err = f" ({f.errors} errors)" if f.errors else ""
        rows.append([*lead, f.variant + err, f"{f.load.kind} c={f.concurrency}",
                     _num(f.resp_kb), *(_num(v) for v in _values(f))])
    return table(headers, rows)


def ratio_table(results: list[Figures], axis: str | None = None) -> str:
    """Each addon figure divided by the same figure of its baseline(s) in the same group."""
    headers = ([axis] if axis else []) + ["scenario / baseline", "load", *COLUMNS]
    rows = []
    for f in results:
        if f.variant == "plain":
            continue
        for base_name in BASELINES.get(f.variant, ("plain",)):
            base = next((b for b in results if b.variant == base_name and b.load == f.load
                         and b.concurrency == f.concurrency), None)
            if base is None:
                continue
            ratios = [None if a is None or b is None or not b else a / b
                      for a, b in zip(_values(f), _values(base), strict=True)]
            lead = [_axis_value(f, axis)] if axis else []
            rows.append([*lead, f"{f.variant} / {base_name}", f"{f.load.kind} c={f.concurrency}",
                         *(f"{r:.3f}" if r is not None else "-" for r in ratios)])
    return table(headers, rows) if rows else ""


def _axis_value(f: Figures, axis: str | None) -> str:
    if axis == "conversation":
        return _size(f.load.conversation)
    if axis == "stream":
        return _size(int(f.resp_kb * 1000))
    if axis == "protocol":
        return f.load.protocol
    return str(f.concurrency)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


# --- the plan -------------------------------------------------------------------------------

@dataclass
class Plan:
    rounds: int
    main_c: int
    main_requests: dict[str, int]
    conversations: dict[int, int]  # size: requests
    conv_c: int
    streams: dict[int, int]  # target SSE bytes: requests
    stream_c: int
    concurrency: dict[int, int]  # concurrency: requests
    protocol_requests: dict[str, int]  # json / streamed: requests per measurement


FULL = Plan(rounds=2, main_c=10, main_requests={"json": 800, "sse": 300},
            conversations={1_000: 400, 10_000: 400, 100_000: 200, 1_000_000: 40}, conv_c=4,
            streams={1_000: 300, 100_000: 100, 1_000_000: 24, 10_000_000: 4}, stream_c=2,
            concurrency={1: 100, 10: 400, 50: 400, 200: 600},
            protocol_requests={"json": 400, "stream": 150})
QUICK = Plan(rounds=1, main_c=10, main_requests={"json": 200, "sse": 100},
             conversations={1_000: 100, 1_000_000: 10}, conv_c=4,
             streams={1_000: 100, 1_000_000: 8}, stream_c=2,
             concurrency={1: 40, 50: 200},
             protocol_requests={"json": 100, "stream": 50})

MAIN = [("plain", False), ("plain", True), ("plain-stream", True), ("no-route", False),
        ("no-route", True), ("input-scan", False), ("input-scan", True), ("held", True),
        ("pass-through", True), ("live", True), ("windowed", True), ("both", False),
        ("input-cached", False), ("parallel", False)]
SSE_MAIN_REPEAT = 20  # ~64 KB of SSE: 320 events
PROTOCOL_SCENARIOS = [("plain", False), ("input-scan", False), ("both", False), ("plain", True),
                      ("held", True), ("plain-stream", True), ("pass-through", True),
                      ("live", True), ("windowed", True)]


def stream_repeat(target: int, ports: Standins) -> int:
    """How many times the reply phrase gives an SSE answer of about `target` bytes."""
    def size(repeat: int) -> int:
        body = json.dumps(micro.conversation(200, True))
        headers = {"content-type": "application/json",
                   "x-standin-reply-b64": base64.b64encode(REPLY_PHRASE.encode()).decode(),
                   "x-standin-mode": f"repeat={repeat}"}
        response = httpx.post(f"http://127.0.0.1:{ports.llm}{CHAT_PATH}", content=body,
                              headers=headers, trust_env=False)
        return len(response.content)

    one, eleven = size(1), size(11)
    per = (eleven - one) / 10
    return max(1, round((target - (one - per)) / per))


class Bench:
    def __init__(self, plan: Plan, ports: Standins, workdir: Path, only: set[str] | None,
                 requests: int | None) -> None:
        self.plan, self.ports, self.workdir = plan, ports, workdir
        self.only, self.requests = only, requests
        self.count = 0

    def run(self, variant: str, load: Load, concurrency: int, requests: int) -> Figures:
        requests = self.requests or requests
        self.count += 1
        started = time.monotonic()
        f = measure(variant, load, concurrency, requests, self.ports, self.workdir)
        log(f"{self.count:3d} {variant:<12} {load.protocol:<16} {load.kind:<6} "
            f"c={concurrency:<3} n={requests:<4} "
            f"resp={_num(f.resp_kb)} KB  {f.rps:7.1f} req/s  TTLB p50 {f.ttlb[0]:7.1f} ms  "
            f"CPU {f.cpu_per_1k:.2f} s/1k  RSS {f.peak_rss:.0f} MiB"
            f"{f'  {f.errors} ERRORS' if f.errors else ''}  ({time.monotonic() - started:.1f} s)")
        return f

    def wanted(self, variant: str) -> bool:
        return self.only is None or variant in self.only or variant == "plain" or (
            variant == "plain-stream" and bool({"pass-through", "live", "windowed"} & self.only))

    def main_table(self) -> list[Figures]:
        scenarios = [(v, s) for v, s in MAIN if self.wanted(v)]
        runs: dict[tuple[str, bool], list[Figures]] = {k: [] for k in scenarios}
        for _ in range(self.plan.rounds):  # rounds alternate the variants
            for variant, stream in scenarios:
                load = Load(stream, repeat=SSE_MAIN_REPEAT if stream else JSON_REPLY_REPEAT)
                kind = load.kind
                runs[(variant, stream)].append(self.run(
                    variant, load, self.plan.main_c, self.plan.main_requests[kind]))
        return [median_figures(r) for r in runs.values()]

    def conversation_axis(self) -> list[Figures]:
        out = []
        for size, n in self.plan.conversations.items():
            for variant in ("plain", "input-scan"):
                out.append(self.run(variant, Load(False, conversation=size), self.plan.conv_c, n))
        return out

    def stream_axis(self) -> list[Figures]:
        out = []
        for target, n in self.plan.streams.items():
            load = Load(True, repeat=stream_repeat(target, self.ports))
            for variant in ("plain", "held", "plain-stream", "pass-through", "live", "windowed"):
                out.append(self.run(variant, load, self.plan.stream_c, n))
        return out

    def protocol_axis(self) -> list[Figures]:
        """Each protocol the addon reads, JSON and streamed, at the main table's concurrency."""
        out = []
        for name in shapes.PROTOCOLS:
            for variant, stream in PROTOCOL_SCENARIOS:
                load = Load(stream, repeat=SSE_MAIN_REPEAT if stream else JSON_REPLY_REPEAT,
                            protocol=name)
                n = self.plan.protocol_requests["stream" if stream else "json"]
                out.append(self.run(variant, load, self.plan.main_c, n))
        return out

    def concurrency_axis(self) -> list[Figures]:
        out = []
        for c, n in self.plan.concurrency.items():
            for variant, stream in (("plain", False), ("input-scan", False), ("both", False),
                                    ("plain", True), ("held", True), ("plain-stream", True),
                                    ("pass-through", True), ("live", True),
                                    ("windowed", True)):
                load = Load(stream, repeat=SSE_MAIN_REPEAT if stream else JSON_REPLY_REPEAT)
                out.append(self.run(variant, load, c, max(n, c)))
        return out


# --- targets --------------------------------------------------------------------------------

def _find(results: list[Figures], variant: str, stream: bool,
          concurrency: int | None = None) -> Figures | None:
    return next((f for f in results if f.variant == variant and f.load.stream == stream
                 and (concurrency is None or f.concurrency == concurrency)), None)


def targets(main: list[Figures], streams: list[Figures], conc: list[Figures],
            micro_1mb: dict[str, float] | None, delay_ms: float) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(what: str, value: str, goal: str, met: bool | None) -> None:
        rows.append([what, value, goal, "-" if met is None else "met" if met else "NOT met"])

    for stream in (False, True):
        a, p = _find(main, "no-route", stream), _find(main, "plain", stream)
        if a and p:
            r = a.rps / p.rps
            add(f"no route, {'sse' if stream else 'json'}: throughput / plain", f"{r:.3f}",
                ">= 0.97", r >= 0.97)
    t, ps, pb = (_find(main, "pass-through", True), _find(main, "plain-stream", True),
                 _find(main, "plain", True))
    if t and ps:
        r = t.rps / ps.rps
        add("pass-through: throughput / plain-stream", f"{r:.3f}", ">= 0.9", r >= 0.9)
        if pb:
            r = t.rps / pb.rps
            add("pass-through: throughput / plain (buffered)", f"{r:.3f}", ">= 0.9", r >= 0.9)
    for c in sorted({f.concurrency for f in conc}):
        t, ps = _find(conc, "pass-through", True, c), _find(conc, "plain-stream", True, c)
        if t and ps:
            r = t.ttfb[0] / ps.ttfb[0]
            add(f"pass-through c={c}: TTFB p50 / plain-stream", f"{r:.3f}", "<= 1.05", r <= 1.05)
            d = t.ttlb[0] - ps.ttlb[0]
            add(f"pass-through c={c}: TTLB p50 - plain-stream", f"{d:+.1f} ms",
                f"< Lakera delay ({delay_ms:.0f} ms)", d < delay_ms)
    for variant, stream in (("input-scan", False), ("held", True), ("both", False)):
        for c in sorted({f.concurrency for f in conc}):
            a, p = _find(conc, variant, stream, c), _find(conc, "plain", stream, c)
            if a and p:
                d = a.ttlb[0] - p.ttlb[0]
                calls = 2 if variant == "both" else 1
                limit = calls * delay_ms + 2
                add(f"{variant} c={c}: TTLB p50 - plain", f"{d:+.1f} ms",
                    f"<= {calls} x delay + 2 = {limit:.0f} ms"
                    + (" (two Lakera calls)" if calls == 2 else ""),
                    d <= limit if c == 1 else None)
    held = [f for f in streams if f.variant == "held"]
    if held:
        big = max(held, key=lambda f: f.resp_kb)
        plain = next((f for f in streams if f.variant == "plain" and f.load == big.load), None)
        size_mib = big.resp_kb * 1000 / 2**20
        per = big.rss_growth / big.concurrency
        add(f"held {_size(int(big.resp_kb * 1000))} stream: RSS growth / stream",
            f"{per:.1f} MiB = {per / size_mib:.2f} x size"
            + (f" (plain: {plain.rss_growth / plain.concurrency / size_mib:.2f} x)"
               if plain else ""), "<= 2 x size", per <= 2 * size_mib)
    if micro_1mb:
        add("1 MB conversation: extract + fit + encode",
            f"{micro_1mb['extract'] + micro_1mb['fit'] + micro_1mb['encode']:.2f} ms "
            f"(+ parse {micro_1mb['parse']:.2f} = {micro_1mb['total']:.2f} ms)", "<= 5 ms",
            micro_1mb["total"] <= 5)
    return rows


# --- main -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and requests (~2 min)")
    parser.add_argument("--lakera-delay-ms", type=float, default=20.0,
                        help="the Lakera stand-in's answer delay (default 20)")
    parser.add_argument("--only", action="append", choices=sorted(VARIANTS),
                        help="the main table for these scenarios only (plain always runs)")
    parser.add_argument("--axes",
                        default="protocols,conversation,stream,concurrency,micro,live,streams",
                        help="which further tables: comma-separated subset of protocols,"
                             "conversation,stream,concurrency,micro,live,streams, or 'none'")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the proxy to one core and the rest to the others")
    parser.add_argument("--requests", type=int, help="requests per measurement (override)")
    parser.add_argument("--rounds", type=int, help="rounds of the main table (median)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan.rounds = args.rounds
    cpus = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(cpus) >= 2:
        PROXY_CPU.add(cpus[0])
    axes = set() if args.axes == "none" else set(args.axes.split(","))
    only = set(args.only) if args.only else None
    started = time.monotonic()
    out: list[str] = []

    def section(title: str, text: str) -> None:
        if text:
            out.append(f"\n### {title}\n\n{text}")
            print(out[-1], flush=True)

    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info
                    if line.startswith("model name")), "?")
    log(f"machine: {os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}; "
        f"Lakera stand-in delay {args.lakera_delay_ms:g} ms; {'quick' if args.quick else 'full'}; "
        + (f"proxy pinned to CPU {min(PROXY_CPU)}, stand-ins and load generator to the rest"
           if PROXY_CPU else "not pinned"))
    main_results: list[Figures] = []
    stream_results: list[Figures] = []
    conc_results: list[Figures] = []
    micro_1mb = None
    with tempfile.TemporaryDirectory(prefix="lakera-bench-") as tmp, \
            standins(args.lakera_delay_ms) as ports:
        bench = Bench(plan, ports, Path(tmp), only, args.requests)
        main_results = bench.main_table()
        section(f"Side by side (c={plan.main_c}, median of {plan.rounds} round(s))",
                figures_table(main_results))
        section("Ratios addon / plain (same run)", ratio_table(main_results))
        if "protocols" in axes:
            results = bench.protocol_axis()
            section(f"Protocols (c={plan.main_c}; a 2 KB conversation; the answer ~1 KB of "
                    "text, streamed as 320 events, 38-85 KB by protocol; 'SSE MB/s' is NDJSON "
                    "MB/s for Ollama's streams)",
                    figures_table(results, "protocol") + "\n\n"
                    + ratio_table(results, "protocol"))
        if "conversation" in axes:
            results = bench.conversation_axis()
            section(f"Conversation size (json, c={plan.conv_c})",
                    figures_table(results, "conversation")
                    + "\n\n" + ratio_table(results, "conversation"))
        if "stream" in axes:
            stream_results = bench.stream_axis()
            section(f"Stream length (sse, c={plan.stream_c}; RSS growth per stream in the "
                    "targets)", figures_table(stream_results, "stream") + "\n\n"
                    + ratio_table(stream_results, "stream") + "\n\n"
                    + table(["stream", "scenario", "RSS growth MiB"],
                            [[_axis_value(f, "stream"), f.variant, _num(f.rss_growth)]
                             for f in stream_results]))
        if "concurrency" in axes:
            conc_results = bench.concurrency_axis()
            section("Concurrency", figures_table(conc_results, "c") + "\n\n"
                    + ratio_table(conc_results, "c"))
    for axis in ("live", "streams"):
        if axis in axes:
            module = live if axis == "live" else streams
            with tempfile.TemporaryDirectory(prefix="lakera-bench-") as tmp:
                for title, text in module.sections(Path(tmp), args.quick):
                    section(title, text)
    if "micro" in axes:
        rows = []
        for size in (1_000, 100_000, 1_000_000):
            m = micro.request_side(size)
            micro_1mb = m if size == 1_000_000 else micro_1mb
            rows.append([_size(size), *(f"{m[k]:.3f}" for k in
                                        ("parse", "extract", "fit", "encode", "total"))])
        section("Request side in-process, ms (best of 20)",
                table(["conversation", "json.loads", "extract", "fit", "encode", "total"], rows))
        rows = []
        for repeat in (10, 100, 1000) if args.quick else (10, 100, 1000, 2500):
            s = micro.stream_side(repeat)
            rows.append([_size(int(s["bytes"])), f"{s['events']:.0f}",
                         f"{s['held_mb_s']:.1f}", f"{s['tap_mb_s']:.1f}", f"{s['peak_x']:.2f}"])
        section("Stream side in-process (openai-chat SSE)",
                table(["stream", "events", "held assembly MB/s", "pass-through tap MB/s",
                       "held peak memory / size"], rows))
    section(f"Targets (Lakera stand-in delay {args.lakera_delay_ms:g} ms)",
            table(["target", "measured", "goal", ""],
                  targets(main_results, stream_results, conc_results, micro_1mb,
                          args.lakera_delay_ms)))
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0
