"""The benchmark's processes (bench/run.py, live.py, streams.py): the stand-ins, a fresh mitmdump
per measurement (plain, or with the addon in one of the VARIANTS), pinned to a core, and what
/proc says of its CPU and memory."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import micro

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "lakera_addon" / "addon.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")
LISTENING = re.compile(r"listening at \S*:(\d+)")
LAKERA_KEY = "bench-lakera-key"
CHAT_PATH = "/v1/chat/completions"
REPLY_PHRASE = micro.WORDS  # 16 words, 91 characters: one SSE event per word
JSON_REPLY_REPEAT = 11  # a ~1 KB answer for non-streamed requests
CLK_TCK = os.sysconf("SC_CLK_TCK")

# name: (addon configuration or None for plain mitmdump, extra mitmdump arguments)
VARIANTS: dict[str, tuple[dict[str, Any] | None, tuple[str, ...]]] = {
    "plain": (None, ()),
    "plain-stream": (None, ("--set", "stream_large_bodies=1")),
    "no-route": ({"routes": [{"name": "elsewhere", "hosts": ["api.example.invalid"]}]}, ()),
    "input-scan": ({"direction": "input", "action": "block"}, ()),
    "held": ({"direction": "output", "action": "block"}, ()),
    "pass-through": ({"direction": "output", "action": "alert", "fail_open": True}, ()),
    "live": ({"direction": "output", "action": "block", "stream_mode": "live"}, ()),
    "windowed": ({"direction": "output", "action": "block", "stream_mode": "windowed"}, ()),
    # the stream modes with small windows, for answers of ~1,000 characters (bench/streams.py)
    "live-200": ({"direction": "output", "action": "block", "stream_mode": "live",
                  "window_chars": 200}, ()),
    "windowed-200": ({"direction": "output", "action": "block", "stream_mode": "windowed",
                      "window_chars": 200}, ()),
    "parallel": ({"direction": "input", "action": "block", "input_mode": "parallel"}, ()),
    # identical requests (a retry storm): every Lakera call after the first is a cache hit
    "input-cached": ({"direction": "input", "action": "block", "verdict_cache_seconds": 300},
                     ()),
    "both": ({"direction": "both", "action": "block"}, ()),
}
# what each variant is compared with (plain mitmdump buffers a stream; plain-stream does not)
BASELINES = {"pass-through": ("plain-stream", "plain"), "live": ("plain-stream", "plain"),
             "windowed": ("plain-stream", "plain"),
             "plain-stream": ("plain",)}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------------------

@dataclass
class Standins:
    lakera: int
    llm: int
    delay_ms: float


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def standins(delay_ms: float) -> Iterator[Standins]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.standins", "--lakera-key", LAKERA_KEY,
         "--lakera-delay-ms", str(delay_ms)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True)
    pin(process.pid, proxy=False)
    try:
        assert process.stdout is not None
        ports = json.loads(process.stdout.readline())
        yield Standins(ports["lakera"], ports["llm"], delay_ms)
    finally:
        end_process(process)


def end_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


PROXY_CPU: set[int] = set()  # the proxy's core when pinned; the other processes get the rest


def pin(pid: int, proxy: bool) -> None:
    if not PROXY_CPU:
        return
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(pid, PROXY_CPU if proxy else (cpus - PROXY_CPU) or cpus)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def addon_config(variant: dict[str, Any], ports: Standins) -> dict[str, Any]:
    config: dict[str, Any] = {
        "api_key": LAKERA_KEY,
        "lakera_endpoint": f"http://127.0.0.1:{ports.lakera}/v2/guard",
        "timeout": 30000,
        "max_body_bytes": 64 * 1024 * 1024,  # the 10 MB streams must fit (default 8 MiB)
        "routes": [{"name": "bench", "hosts": ["127.0.0.1"]}],
        # the load repeats one request: without this every call after the first would be a
        # cache hit (the input-cached variant shows that case)
        "verdict_cache_seconds": 0,
    }
    return {**config, **variant}


@contextmanager
def proxy(variant: str, ports: Standins, workdir: Path, metrics_port: int = 0
          ) -> Iterator[tuple[int, int]]:
    """(pid, port) of a fresh mitmdump for `variant`; with the addon's metrics on
    `metrics_port` if not 0 (lakera_calls reads them)."""
    config, extra = VARIANTS[variant]
    command = [str(MITMDUMP), "--mode", f"reverse:http://127.0.0.1:{ports.llm}@0",
               "--listen-host", "127.0.0.1", "--set", f"confdir={workdir / 'confdir'}",
               "--set", "connection_strategy=lazy", *extra]
    if config is not None:
        path = workdir / f"{variant}.yaml"
        path.write_text(yaml.safe_dump(addon_config(config, ports)), encoding="utf-8")
        command += ["-s", str(ADDON), "--set", f"lakera_config={path}"]
        if metrics_port:
            command += ["--set", f"lakera_metrics_port={metrics_port}"]
    log_path = workdir / f"mitmdump-{variant}.log"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=workdir)
    pin(process.pid, proxy=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mitmdump ({variant}) exited:\n{log_path.read_text()}")
            match = LISTENING.search(log_path.read_text(errors="replace"))
            if match:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"mitmdump ({variant}) did not start")
            time.sleep(0.02)
        if config is not None and "lakera guard active" not in log_path.read_text():
            time.sleep(0.2)
        yield process.pid, int(match.group(1))
    finally:
        end_process(process)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                              for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"
            for r in rows]
    return "\n".join([line, rule, *body])
