"""Loading: a bad configuration stops mitmdump at start-up with its one-line message; a good
one logs that the guard is active; the console script refuses before starting mitmproxy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import run_mitmdump_once

BAD_FILES = [
    ("unknown key", "bogus: 1\n", "bogus: unknown key; allowed:"),
    ("wrong type", "fail_open: maybe\n",
     "fail_open: 'maybe' is not allowed; must be true or false"),
    ("out of range", "timeout: 0\n",
     "timeout: 0 is not allowed; must be an integer from 1 to 600000"),
    ("not a choice", "direction: sideways\n",
     "direction: 'sideways' is not allowed; must be input or output or both"),
    ("unreadable YAML", "routes: [\n", "not valid YAML at line"),
    ("no API key", "direction: both\n", "api_key: required for the hosted endpoint"),
    ("bad route", "api_key: k\nroutes:\n  - name: x\n",
     "routes[0] (x): hosts: None is not allowed; must be"),
    ("bad protocol", "api_key: k\nroutes:\n  - {name: x, hosts: [h], protocol: grpc}\n",
     "routes[0] (x): protocol: 'grpc' is not allowed; must be auto, openai-chat"),
]


def env_without_key() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LAKERA_GUARD_API_KEY", None)
    return env


@pytest.mark.parametrize(("name", "text", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_config_stops_mitmdump(tmp_path: Path, name: str, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    code, output = run_mitmdump_once(config, tmp_path, env=env_without_key())
    assert code not in (None, 0), f"mitmdump ran with a bad config:\n{output}"
    lines = [line for line in output.splitlines() if f"lakera_config: {config}:" in line]
    assert lines and message in lines[0], output
    assert len(lines) == 1 and "Traceback" not in output, output  # one line, nothing chained
    assert "Error logged during startup, exiting" in output


def test_missing_file_stops_mitmdump(tmp_path: Path) -> None:
    code, output = run_mitmdump_once(tmp_path / "nope.yaml", tmp_path)
    assert code not in (None, 0)
    assert "nope.yaml: cannot be read" in output


def test_no_option_and_no_key_stops_mitmdump(tmp_path: Path) -> None:
    code, output = run_mitmdump_once(None, tmp_path, env=env_without_key())
    assert code not in (None, 0)
    assert "<built-in defaults>" in output and "LAKERA_GUARD_API_KEY" in output


def test_console_script_refuses_before_starting(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("action: deny\n")
    script = Path(sys.executable).with_name("lakera-mitmdump")
    done = subprocess.run(
        [str(script), "--set", f"lakera_config={config}", "--listen-port", "0"],
        capture_output=True, text=True, timeout=60, env=env_without_key(),
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: lakera_config: {config}: action: 'deny' is not allowed; must be block or alert")


def test_good_config_announces_the_guard(proxy) -> None:
    lines = proxy.wait_for_log("lakera guard active: config ")
    assert "routes: block, block-input" in lines[0]
