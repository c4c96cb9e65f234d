"""The demo's proxy (demo.py): mitmdump or mitmweb with the addon and the demo observer, in
front of the LLM stand-in, on a free local port, always stopped at the end."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import yaml

from lakera_addon.demo_observer import OBSERVER_ENV

if TYPE_CHECKING:
    pass



# --- the proxy -----------------------------------------------------------------------------

PACKAGE_DIR = Path(__file__).resolve().parent
ADDON_FILE = PACKAGE_DIR / "addon.py"
OBSERVER_FILE = PACKAGE_DIR / "demo_observer.py"
LAKERA_KEY = "demo-standin-key"
PROXY_LISTENING = re.compile(r"proxy to \S+ listening at \S*:(\d+)")
WEB_LISTENING = re.compile(r"Web server listening at (\S+)")
START_TIMEOUT_S = 30.0


class DemoError(Exception):
    """Something the demo needs did not work (not a wrong verdict: that is a failed row)."""


@dataclass(slots=True)
class Proxy:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    web_url: str | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def write_config(path: Path, lakera_url: str) -> None:
    config = {
        "api_key": LAKERA_KEY,
        "lakera_endpoint": f"{lakera_url}/v2/guard",
        "direction": "both",
        "action": "block",
        "fail_open": False,
        "timeout": 2000,
        "routes": [
            # streamed answers released window by window, each after a clean verdict
            {"name": "windowed", "hosts": ["127.0.0.1", "localhost"], "paths": ["/windowed/*"],
             "stream_mode": "windowed", "window_chars": 100},
            # prompts sent upstream at once, the answer held back until their verdict
            {"name": "parallel", "hosts": ["127.0.0.1", "localhost"], "paths": ["/parallel/*"],
             "input_mode": "parallel"},
            {"name": "local-llm", "hosts": ["127.0.0.1", "localhost"]},
        ],
    }
    path.write_text(
        "# written by lakera_addon.demo: the addon in front of the local stand-ins\n"
        + yaml.safe_dump(config, sort_keys=False),
        encoding="utf-8",
    )


def free_port(preferred: int) -> int:
    """`preferred` if it is free on loopback, else any free port."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DemoError("no free port on 127.0.0.1")


def tool_path(name: str) -> Path:
    """mitmdump/mitmweb next to this Python (the one with lakera_addon installed)."""
    path = Path(sys.executable).with_name(name)
    if path.exists():
        return path
    found = shutil.which(name)
    if found:
        return Path(found)
    raise DemoError(f"{name} not found next to {sys.executable}; install mitmproxy there")


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def run_proxy(
    upstream: str, config: Path, workdir: Path, observer: Path, web_port: int | None
) -> Iterator[Proxy]:
    """mitmdump (or mitmweb with `web_port`) with the addon on a free port; always stopped."""
    tool = "mitmdump" if web_port is None else "mitmweb"
    command = [
        str(tool_path(tool)),
        "--mode", f"reverse:{upstream}@0",
        "--listen-host", "127.0.0.1",
        "-s", str(ADDON_FILE),
        "-s", str(OBSERVER_FILE),
        "--set", f"confdir={workdir / 'confdir'}",
        "--set", "connection_strategy=lazy",
        "--set", f"lakera_config={config}",
    ]  # fmt: skip
    if web_port is not None:
        command += [
            "--web-host", "127.0.0.1", "--web-port", str(web_port), "--no-web-open-browser",
            "--set", "store_streamed_bodies=true",  # streamed answers in the LLM view too
        ]  # fmt: skip
    log_path = workdir / f"{tool}.log"
    env = {**os.environ, OBSERVER_ENV: str(observer)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=workdir,
        )  # fmt: skip
    try:

        def listening() -> re.Match[str] | None:
            text = log_path.read_text(encoding="utf-8", errors="replace")
            if process.poll() is not None:
                raise DemoError(f"{tool} exited with status {process.returncode}:\n{text}")
            match = PROXY_LISTENING.search(text)
            if match and web_port is not None and not WEB_LISTENING.search(text):
                return None
            return match

        match: re.Match[str] = wait_for(listening, START_TIMEOUT_S, f"{tool} to listen")
        text = log_path.read_text(encoding="utf-8", errors="replace")
        web = WEB_LISTENING.search(text)
        if "lakera guard active" not in text:
            raise DemoError(f"{tool} started without the addon:\n{text}")
        yield Proxy(process, int(match.group(1)), log_path, web.group(1) if web else None)
    finally:
        stop_process(process)
