"""The benchmark's quickest run for one scenario, so that bench/ cannot rot unnoticed.

No timing is asserted here: timings are the benchmark's business, read as ratios to plain
mitmdump from the same run (docs/performance.md). This only checks that it runs end to end
(stand-ins, plain mitmdump, mitmdump with the addon, the load generator) and prints its tables.
"""

from __future__ import annotations

import subprocess
import sys

from tests.harness import ROOT


def test_bench_quick_one_scenario() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "no-route", "--requests", "10",
         "--rounds", "1", "--axes", "micro", "--no-pin"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| no-route / plain " in out
    assert "Request side in-process" in out
    assert "errors" not in out  # every request answered 200
    assert result.stderr.count("[bench] ") >= 5  # one progress line per measurement


def test_scaleout_haproxy_config_has_every_backend(tmp_path) -> None:
    """bench/scaleout.py's HAProxy configuration: TCP mode, one server per mitmdump; checked
    by haproxy itself (`-c`) when it is installed."""
    from bench.scaleout import find_haproxy
    from bench.scaleout import haproxy_config

    text = haproxy_config(18080, [18081, 18082], "leastconn")
    assert "mode tcp" in text
    assert "bind 127.0.0.1:18080" in text
    assert "balance leastconn" in text
    assert "server mitmdump1 127.0.0.1:18081" in text
    assert "server mitmdump2 127.0.0.1:18082" in text
    binary = find_haproxy()
    if binary:
        path = tmp_path / "haproxy.cfg"
        path.write_text(text, encoding="utf-8")
        check = subprocess.run([binary, "-c", "-q", "-f", str(path)], capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0, check.stderr
