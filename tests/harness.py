"""Starting and stopping a real `mitmdump -s lakera_addon/addon.py` for end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "lakera_addon" / "addon.py"
OBSERVER = Path(__file__).resolve().parent / "flow_observer.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")
LISTENING = re.compile(r"listening at \S*:(\d+)")


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Proxy:
    port: int
    log_path: Path
    observer_path: Path
    process: subprocess.Popen[bytes]

    def url(self, prefix: str = "") -> str:
        return f"http://127.0.0.1:{self.port}" + (f"/{prefix}" if prefix else "")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_lines(self, needle: str) -> list[str]:
        return [line for line in self.log().splitlines() if needle in line]

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> list[str]:
        result: list[str] = wait_until(
            lambda: self.log_lines(needle), timeout, f"{needle!r} in mitmdump's log"
        )
        return result

    def records(self, test_id: str) -> list[dict[str, Any]]:
        if not self.observer_path.exists():
            return []
        text = self.observer_path.read_text(encoding="utf-8")
        # mitmdump may be writing a line right now: only complete lines are read
        lines = text.split("\n")[:-1]
        return [r for r in map(json.loads, lines) if r["id"] == test_id]

    def logged(self, needle: str) -> list[str]:
        """Levels of the addon's log records whose message contains `needle`."""
        return [r["level"] for r in self.records("log") if needle in r["message"]]

    def wait_for_logged(self, needle: str, timeout: float = 10.0) -> list[str]:
        result: list[str] = wait_until(
            lambda: self.logged(needle), timeout, f"a log record with {needle!r}"
        )
        return result

    def lakera_tasks(self) -> int:
        """The addon's live asyncio tasks, as the observer last counted them (-1: not yet)."""
        ticks = self.records("tasks")
        return int(ticks[-1]["lakera"]) if ticks else -1

    def rss_kib(self) -> int:
        """mitmdump's resident memory."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmRSS:")))

    def last_record(self, test_id: str) -> dict[str, Any]:
        records = self.records(test_id)
        assert records, f"no flow recorded for {test_id}"
        return records[-1]

    def wait_for_record(
        self, test_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((r for r in reversed(self.records(test_id)) if check(r)), None)

        result: dict[str, Any] = wait_until(found, timeout, f"a flow record for {test_id}")
        return result


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def mitmdump_command(
    config: Path | None,
    upstream: str,
    confdir: Path,
    extra: tuple[str, ...] = (),
    mode: str | None = None,
) -> list[str]:
    """The mitmdump command line: reverse mode to `upstream` unless another `mode` is given."""
    command = [
        str(MITMDUMP),
        "--mode", mode or f"reverse:{upstream}@0",
        "--listen-host", "127.0.0.1",
        "-s", str(ADDON),
        "-s", str(OBSERVER),
        "--set", f"confdir={confdir}",
        "--set", "connection_strategy=lazy",
    ]
    if config is not None:
        command += ["--set", f"lakera_config={config}"]
    return command + list(extra)


@contextmanager
def run_mitmdump(
    config: Path | None,
    upstream: str,
    workdir: Path,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    mode: str | None = None,
) -> Iterator[Proxy]:
    """Start mitmdump on a free port, wait until it listens, always stop it."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "mitmdump.log"
    observer_path = workdir / "flows.jsonl"
    environment = {**os.environ, **(env or {}), "LAKERA_TEST_OBSERVER": str(observer_path)}
    # Proof that the Lakera client ignores proxy variables: if it honoured them, every Lakera
    # call would go to this dead address and fail.
    environment.setdefault("HTTP_PROXY", "http://127.0.0.1:9")
    environment.setdefault("HTTPS_PROXY", "http://127.0.0.1:9")
    environment.setdefault("ALL_PROXY", "http://127.0.0.1:9")
    command = mitmdump_command(config, upstream, workdir / "confdir", extra, mode)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=workdir
        )
    try:
        def listening() -> int | None:
            if process.poll() is not None:
                raise AssertionError(
                    f"mitmdump exited with {process.returncode}:\n{log_path.read_text()}"
                )
            match = LISTENING.search(log_path.read_text(errors="replace"))
            return int(match.group(1)) if match else None

        port = wait_until(listening, 30, "mitmdump to listen")
        yield Proxy(port, log_path, observer_path, process)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def run_mitmdump_once(
    config: Path | None,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    extra: tuple[str, ...] = (),
) -> tuple[int | None, str]:
    """Start mitmdump expecting it to refuse to start; (exit code or None if it ran, output)."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = mitmdump_command(config, "http://127.0.0.1:9", workdir / "confdir", extra)
    environment = {**os.environ, **(env or {})}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment, cwd=workdir
    )
    try:
        out, _ = process.communicate(timeout=timeout)
        return process.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        stop(process)
        out = process.stdout.read() if process.stdout else b""
        return None, out.decode(errors="replace")


# --- mitmweb, as `lakera-mitmweb` starts it (tests/e2e/test_mitmweb_views.py) -----------------

LAKERA_MITMWEB = Path(sys.executable).with_name("lakera-mitmweb")
WEB_LISTENING = re.compile(r"Web server listening at (http://\S+?)/")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WebProxy(Proxy):
    web_url: str = ""
    password: str = ""

    def api(self, path: str) -> Any:
        """GET mitmweb's HTTP API with the password; the JSON answer."""
        import httpx

        response = httpx.get(f"{self.web_url}{path}", trust_env=False, timeout=30,
                             headers={"Authorization": f"Bearer {self.password}"})
        response.raise_for_status()
        return response.json()


@contextmanager
def run_mitmweb(
    config: Path, upstream: str, workdir: Path, password: str, extra: tuple[str, ...] = ()
) -> Iterator[WebProxy]:
    """`lakera-mitmweb` in reverse mode to `upstream` on free ports (proxy and web), its web
    API behind `password`, no browser opened; always stopped."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "mitmweb.log"
    web_port = free_port()
    command = [
        str(LAKERA_MITMWEB),
        "--mode", f"reverse:{upstream}@0",
        "--listen-host", "127.0.0.1",
        "--set", f"confdir={workdir / 'confdir'}",
        "--set", "connection_strategy=lazy",
        "--set", f"lakera_config={config}",
        "--set", "web_host=127.0.0.1",
        "--set", f"web_port={web_port}",
        "--set", "web_open_browser=false",
        "--set", f"web_password={password}",
        *extra,
    ]  # fmt: skip
    environment = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9",
                   "HTTPS_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=environment, cwd=workdir)
    try:
        def listening() -> tuple[int, str] | None:
            if process.poll() is not None:
                raise AssertionError(
                    f"mitmweb exited with {process.returncode}:\n{log_path.read_text()}")
            text = log_path.read_text(errors="replace")
            proxy, web = LISTENING.search(text), WEB_LISTENING.search(text)
            return (int(proxy.group(1)), web.group(1)) if proxy and web else None

        port, web_url = wait_until(listening, 60, "mitmweb to listen")
        yield WebProxy(port, log_path, workdir / "no-observer.jsonl", process, web_url,
                       password)
    finally:
        stop(process)
