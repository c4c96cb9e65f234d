"""Scale-out: `python -m bench.scaleout` (or `bash scripts/bench-scaleout.sh`).

One mitmproxy process runs its flows on one event-loop thread, so it uses about one core; more
throughput means more processes behind a TCP load balancer. This measures, with the addon
screening every prompt against the Lakera stand-in (`input-scan` unless `--variant`):

  direct-1    the load generator straight to one mitmdump (HAProxy's own cost is the difference)
  haproxy-1   through HAProxy (mode tcp) to one mitmdump
  haproxy-2   through HAProxy to two mitmdumps, each on its own port

for a JSON answer and a streamed SSE answer (bench.shapes, openai-chat; the bench's main-table
sizes), fresh mitmdumps and HAProxy per measurement, rounds alternating the setups, medians over
the rounds. Each mitmdump is pinned to a core of its own (all its threads; `--no-pin` leaves
them free); HAProxy, the stand-ins and the load generator are not pinned: on a 2-core machine
they share the cores with the proxies, so the CPU of every process is read from /proc and
printed with the figures. To leave the proxies as much CPU as possible, the LLM upstream is by
default not the Python stand-in (which spends more CPU per SSE answer than the proxy) but a
second HAProxy whose Lua service sends the stand-in's recorded answer byte for byte (same
headers, same chunk per SSE event); `--upstream standin` uses the stand-in itself. The Lakera
stand-in (bench.standins) answers every screening call after `--lakera-delay-ms`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import shapes
from bench.processes import CLK_TCK
from bench.processes import JSON_REPLY_REPEAT
from bench.processes import LAKERA_KEY
from bench.processes import REPLY_PHRASE
from bench.processes import ROOT
from bench.processes import VARIANTS
from bench.processes import Standins
from bench.processes import cpu_seconds
from bench.processes import end_process
from bench.processes import free_port
from bench.processes import log
from bench.processes import proxy
from bench.processes import table
from bench.run import SSE_MAIN_REPEAT
from bench.run import Load

SETUPS = ("direct-1", "haproxy-1", "haproxy-2")
LOADS = {"json": Load(False, repeat=JSON_REPLY_REPEAT), "sse": Load(True, repeat=SSE_MAIN_REPEAT)}
FIRST_REQUESTS = {"json": 2000, "sse": 600}  # the first round's n; later rounds aim at --seconds


# --- HAProxy --------------------------------------------------------------------------------

def haproxy_config(port: int, backends: list[int], balance: str = "leastconn") -> str:
    """HAProxy in TCP mode: one frontend on `port`, one server per mitmdump port."""
    servers = "\n".join(f"    server mitmdump{i} 127.0.0.1:{p}"
                        for i, p in enumerate(backends, 1))
    return f"""global
    maxconn 4096
    nbthread 1

defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s

frontend llm
    bind 127.0.0.1:{port}
    default_backend mitmdumps

backend mitmdumps
    balance {balance}
{servers}
"""


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None)


def ensure_haproxy() -> str | None:
    """The haproxy binary, installed with apt-get (Debian's package) if missing and root."""
    found = find_haproxy()
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log("haproxy not found: apt-get install -y haproxy")
    if subprocess.run(["apt-get", "install", "-y", "haproxy"], env=env).returncode:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "haproxy"], env=env, check=False)
    return find_haproxy()


# HAProxy's Lua, as a TCP service: reads each request (head and body, keep-alive) and sends the
# LLM stand-in's recorded answer for its x-scaleout-shape header, byte for byte (status line,
# headers and, for a stream, one HTTP chunk per SSE event as the stand-in sends them)
STATIC_LUA = """
local answers = {}
for shape, path in pairs(ANSWERS) do
  local f = assert(io.open(path, "rb"))
  answers[shape] = f:read("a")
  f:close()
end
local missing = "HTTP/1.1 404 Not Found\\r\\ncontent-length: 0\\r\\n\\r\\n"

core.register_service("llm", "tcp", function(applet)
  while true do
    local line = applet:getline()
    if line == nil or line == "" then return end
    local shape, length = nil, 0
    while true do
      line = applet:getline()
      if line == nil or line == "" then return end
      if line == "\\r\\n" or line == "\\n" then break end
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name then
        name = name:lower()
        if name == "content-length" then length = tonumber(value) end
        if name == "x-scaleout-shape" then shape = value end
      end
    end
    while length > 0 do
      local got = applet:receive(length)
      if got == nil or got == "" then return end
      length = length - #got
    end
    applet:send(answers[shape] or missing)
  end
end)
"""


def static_upstream_config(port: int, answers: dict[str, Path], workdir: Path) -> str:
    """HAProxy as a nearly free LLM upstream (STATIC_LUA); writes the Lua file to `workdir`."""
    table = ", ".join(f'["{shape}"] = "{path}"' for shape, path in answers.items())
    lua = workdir / "llm-static.lua"
    lua.write_text(f"local ANSWERS = {{{table}}}\n{STATIC_LUA}", encoding="utf-8")
    return f"""global
    maxconn 4096
    nbthread 1
    lua-load {lua}

defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s

frontend llm_static
    bind 127.0.0.1:{port}
    tcp-request content use-service lua.llm
"""


@contextmanager
def haproxy(binary: str, text: str, port: int, workdir: Path,
            name: str = "haproxy") -> Iterator[int]:
    """The pid of HAProxy in the foreground (`-db`) with configuration `text` listening on
    `port`; stopped softly (SIGUSR1), then hard."""
    config = workdir / f"{name}.cfg"
    config.write_text(text, encoding="utf-8")
    check = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True,
                           text=True)
    if check.returncode:
        raise RuntimeError(f"haproxy refused its configuration:\n{check.stderr}")
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("haproxy did not start")
            time.sleep(0.02)
        yield process.pid
    finally:
        if process.poll() is None:  # soft stop: stop listening, end when connections have
            process.send_signal(signal.SIGUSR1)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                end_process(process)  # SIGTERM: hard stop


# --- processes and CPU ----------------------------------------------------------------------

@contextmanager
def standins_process(delay_ms: float) -> Iterator[tuple[Standins, int]]:
    """bench.standins (as bench.processes.standins), with its pid for the CPU figures."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.standins", "--lakera-key", LAKERA_KEY,
         "--lakera-delay-ms", str(delay_ms)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        assert process.stdout is not None
        ports = json.loads(process.stdout.readline())
        yield Standins(ports["lakera"], ports["llm"], delay_ms), process.pid
    finally:
        end_process(process)


def request_body(shape: str) -> str:
    load = LOADS[shape]
    return json.dumps(shapes.body(load.protocol, load.conversation, load.stream))


def request_headers(shape: str) -> dict[str, str]:
    return {"x-standin-reply-b64": base64.b64encode(REPLY_PHRASE.encode()).decode(),
            "x-standin-mode": f"repeat={LOADS[shape].repeat}", "x-scaleout-shape": shape}


def record_answers(llm_port: int, wanted: list[str], workdir: Path) -> dict[str, Path]:
    """Each shape's whole HTTP response from the LLM stand-in, raw (chunk framing kept, any
    `connection` header dropped so that the upstream connection is kept alive), to a file."""
    out = {}
    for shape in wanted:
        load = LOADS[shape]
        body = request_body(shape).encode()
        head = [f"POST {shapes.path(load.protocol, load.stream)} HTTP/1.1",
                f"host: 127.0.0.1:{llm_port}", "content-type: application/json",
                f"content-length: {len(body)}", "connection: close",
                *(f"{k}: {v}" for k, v in request_headers(shape).items())]
        raw = b""
        with socket.create_connection(("127.0.0.1", llm_port), 10) as s:
            s.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
            while chunk := s.recv(65536):
                raw += chunk
        top, _, rest = raw.partition(b"\r\n\r\n")
        lines = [h for h in top.split(b"\r\n") if not h.lower().startswith(b"connection:")]
        if not lines[0].startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"LLM stand-in answered {lines[0]!r}")
        path = workdir / f"answer-{shape}.http"
        path.write_bytes(b"\r\n".join(lines) + b"\r\n\r\n" + rest)
        out[shape] = path
    return out


def pin_all(pid: int, cpu: int) -> None:
    """`taskset -a -p -c CPU PID`: every thread of the process, and those it starts later."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), {cpu})


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    total = sum(values[:8])  # guest time is already counted in user
    return (total - values[3] - values[4]) / CLK_TCK, total / CLK_TCK


@dataclass
class Row:
    setup: str
    shape: str
    concurrency: int
    requests: int
    rps: float
    ttlb: tuple[float, float]  # p50, p95 ms
    cores: dict[str, float]  # process group: CPU seconds / wall seconds
    mitm_ms: float  # mitmdump CPU ms per request (all mitmdumps)
    errors: int
    resp_kb: float  # mean response body size


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def measure(setup: str, shape: str, concurrency: int, requests: int, variant: str,
            ports: Standins, helpers: dict[str, int], binary: str, balance: str,
            cpus: list[int] | None, workdir: Path) -> Row:
    count = 1 if setup.endswith("-1") else 2
    load = LOADS[shape]
    with contextlib.ExitStack() as stack:
        mitm: list[tuple[int, int]] = []
        for i in range(count):
            home = workdir / f"mitmdump{i}"
            home.mkdir(exist_ok=True)
            pid, port = stack.enter_context(proxy(variant, ports, home))
            if cpus:
                pin_all(pid, cpus[i % len(cpus)])
            mitm.append((pid, port))
        pids = {f"mitmdump{i}": pid for i, (pid, _) in enumerate(mitm)}
        pids.update(helpers)
        if setup == "direct-1":
            target = mitm[0][1]
        else:
            target = free_port()
            pids["haproxy"] = stack.enter_context(haproxy(
                binary, haproxy_config(target, [p for _, p in mitm], balance), target,
                workdir))
        spec = {"url": f"http://127.0.0.1:{target}{shapes.path(load.protocol, load.stream)}",
                "body": request_body(shape), "headers": request_headers(shape),
                "concurrency": concurrency, "requests": requests, "warmup": 2 * concurrency}
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        gen = subprocess.Popen([sys.executable, "-m", "bench.loadgen", str(spec_path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               cwd=ROOT)
        try:
            assert gen.stdin is not None and gen.stdout is not None
            if gen.stdout.readline().strip() != "READY":
                raise RuntimeError("load generator failed during warm-up")
            time.sleep(0.2)
            pids["loadgen"] = gen.pid
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            busy0, total0 = machine_busy()
            started = time.monotonic()
            gen.stdin.write("\n")
            gen.stdin.flush()
            line = gen.stdout.readline()
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
            busy1, total1 = machine_busy()
            wall = time.monotonic() - started
            result = json.loads(line)
            gen.wait(30)
        finally:
            end_process(gen)
    n = len(result["ttlb"])
    cores = {name: (after[name] - before[name]) / wall for name in pids}
    cores["machine"] = (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)
    # anything else on the machine (other users' tests), and the kernel's softirq work
    cores["other"] = max(0.0, cores["machine"] - sum(cores[name] for name in pids))
    mitm_cpu = sum(after[k] - before[k] for k in pids if k.startswith("mitmdump"))
    return Row(setup, shape, concurrency, n, n / result["wall"],
               (_pct(result["ttlb"], 0.5), _pct(result["ttlb"], 0.95)), cores,
               mitm_cpu / n * 1000, sum(1 for s in result["status"] if s != 200),
               sum(result["bytes"]) / n / 1000)


def median_row(rows: list[Row]) -> Row:
    first = rows[0]

    def med(values: list[float]) -> float:
        return statistics.median(values)

    return Row(first.setup, first.shape, first.concurrency, sum(r.requests for r in rows),
               med([r.rps for r in rows]),
               (med([r.ttlb[0] for r in rows]), med([r.ttlb[1] for r in rows])),
               {k: med([r.cores.get(k, 0.0) for r in rows]) for k in first.cores},
               med([r.mitm_ms for r in rows]), sum(r.errors for r in rows), first.resp_kb)


def _cores(row: Row) -> str:
    mitm = "+".join(f"{v:.2f}" for k, v in row.cores.items() if k.startswith("mitmdump"))
    return mitm


def progress(count: int, row: Row, seconds: float) -> str:
    c = row.cores
    return (f"{count:3d} {row.setup:<9} {row.shape:<4} c={row.concurrency:<3} "
            f"n={row.requests:<5} resp {row.resp_kb:.1f} KB {row.rps:7.1f} req/s  "
            f"TTLB p50 {row.ttlb[0]:6.1f} ms "
            f"p95 {row.ttlb[1]:6.1f} ms  CPU cores: mitmdump {_cores(row)}"
            f" haproxy {c.get('haproxy', 0.0):.2f} stand-ins {c['stand-ins']:.2f}"
            f" LLM static {c.get('LLM static', 0.0):.2f}"
            f" loadgen {c['loadgen']:.2f} other {c['other']:.2f}"
            f" machine {c['machine']:.2f}/{os.cpu_count()}"
            f"  mitmdump {row.mitm_ms:.2f} ms/req"
            f"{f'  {row.errors} ERRORS' if row.errors else ''}  ({seconds:.1f} s)")


def figures_table(rows: list[Row]) -> str:
    headers = ["setup", "load", "req/s", "TTLB p50", "TTLB p95", "mitmdump CPU ms/req",
               "req/s per mitmdump core", "CPU cores: mitmdump", "haproxy", "stand-ins",
               "LLM static",
               "loadgen", "other", f"machine (of {os.cpu_count()})"]
    body = []
    for r in rows:
        err = f" ({r.errors} errors)" if r.errors else ""
        body.append([r.setup + err, f"{r.shape} c={r.concurrency}", f"{r.rps:.0f}",
                     f"{r.ttlb[0]:.1f}", f"{r.ttlb[1]:.1f}", f"{r.mitm_ms:.2f}",
                     f"{1000 / r.mitm_ms:.0f}", _cores(r),
                     f"{r.cores['haproxy']:.2f}" if "haproxy" in r.cores else "-",
                     f"{r.cores['stand-ins']:.2f}",
                     f"{r.cores['LLM static']:.2f}" if "LLM static" in r.cores else "-",
                     f"{r.cores['loadgen']:.2f}", f"{r.cores['other']:.2f}",
                     f"{r.cores['machine']:.2f}"])
    return table(headers, body)


# --- main -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="input-scan", choices=sorted(VARIANTS),
                        help="the addon configuration of every mitmdump (default input-scan: "
                             "prompts screened against the Lakera stand-in)")
    parser.add_argument("--shapes", default="json,sse", help="comma-separated: json, sse")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help=f"comma-separated subset of {','.join(SETUPS)}")
    parser.add_argument("-c", "--concurrency", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="aim of each measurement after the first round (default 10)")
    parser.add_argument("--requests", type=int,
                        help="requests per measurement, every round (instead of --seconds)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating setups")
    parser.add_argument("--balance", default="leastconn", choices=("leastconn", "roundrobin"))
    parser.add_argument("--lakera-delay-ms", type=float, default=20.0)
    parser.add_argument("--upstream", default="static", choices=("static", "standin"),
                        help="the LLM upstream: 'static' (default) is HAProxy (a Lua TCP "
                             "service) sending the LLM stand-in's recorded answer byte for "
                             "byte, nearly free of CPU; 'standin' is the Python LLM stand-in")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin each mitmdump to a core of its own")
    args = parser.parse_args(argv)
    wanted_shapes = args.shapes.split(",")
    setups = args.setups.split(",")
    if not set(wanted_shapes) <= set(LOADS) or not set(setups) <= set(SETUPS):
        parser.error("unknown shape or setup")
    needs_haproxy = args.upstream == "static" or any(s.startswith("haproxy") for s in setups)
    binary = ensure_haproxy() if needs_haproxy else ""
    if binary is None:
        print("haproxy is not installed: as root, `apt-get install -y haproxy` (Debian's "
              "package), or put a haproxy binary on PATH", file=sys.stderr)
        return 2
    version = (subprocess.run([binary, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
               if binary else "")
    all_cpus = sorted(os.sched_getaffinity(0))
    cpus = None if args.no_pin else all_cpus
    log(f"scale-out: {os.cpu_count()} CPUs, {version or 'no haproxy'}, variant {args.variant}, "
        f"balance {args.balance}, c={args.concurrency}, {args.rounds} round(s), "
        f"LLM upstream {args.upstream}, Lakera stand-in delay {args.lakera_delay_ms:g} ms; "
        + (f"each mitmdump pinned to a core of its own ({', '.join(map(str, all_cpus))}); "
           "haproxy, stand-ins and load generator not pinned" if cpus else "nothing pinned"))
    started = time.monotonic()
    runs: dict[tuple[str, str], list[Row]] = {(sh, se): [] for sh in wanted_shapes
                                              for se in setups}
    count = 0
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="lakera-scaleout-"))
        ports, standins_pid = stack.enter_context(standins_process(args.lakera_delay_ms))
        helpers = {"stand-ins": standins_pid}
        if args.upstream == "static":
            answers = record_answers(ports.llm, wanted_shapes, Path(tmp))
            port = free_port()
            config = static_upstream_config(port, answers, Path(tmp))
            helpers["LLM static"] = stack.enter_context(
                haproxy(binary, config, port, Path(tmp), "llm-static"))
            ports = Standins(ports.lakera, port, ports.delay_ms)
        for _ in range(args.rounds):
            for shape in wanted_shapes:
                for setup in setups:
                    done = runs[(shape, setup)]
                    n = args.requests or (round(done[-1].rps * args.seconds) if done
                                          else FIRST_REQUESTS[shape])
                    n = max(n, args.concurrency)
                    count += 1
                    t0 = time.monotonic()
                    workdir = Path(tmp) / f"{count}"
                    workdir.mkdir()
                    row = measure(setup, shape, args.concurrency, n, args.variant, ports,
                                  helpers, binary, args.balance, cpus, workdir)
                    done.append(row)
                    log(progress(count, row, time.monotonic() - t0))
    rows = [median_row(r) for r in runs.values() if r]
    print(f"\n### Scale-out ({args.variant}, c={args.concurrency}, median of {args.rounds} "
          f"round(s); CPU in cores = CPU seconds / wall seconds)\n")
    print(figures_table(rows))
    print()
    for shape in wanted_shapes:
        found = {r.setup: r for r in rows if r.shape == shape}
        parts = []
        if "haproxy-2" in found and "haproxy-1" in found:
            parts.append(f"2 processes / 1 behind haproxy: "
                         f"{found['haproxy-2'].rps / found['haproxy-1'].rps:.2f} x")
        if "haproxy-1" in found and "direct-1" in found:
            parts.append(f"haproxy-1 / direct-1: "
                         f"{found['haproxy-1'].rps / found['direct-1'].rps:.2f} x")
        if "direct-1" in found:
            parts.append(f"per mitmdump core: {1000 / found['direct-1'].mitm_ms:.0f} req/s")
        print(f"[bench] ratio {shape}: " + "; ".join(parts))
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
