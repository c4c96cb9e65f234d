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
