"""Markers by kind of test, so that `scripts/test.sh --quick` can run the unit tests alone:
- `e2e`: a real mitmdump (tests/e2e), the demo, the benchmark's smoke run;
- `integration`: servers on loopback, the official SDKs, or mitmproxy's own test master;
- `load`: long load runs (deselected by default, run by .ci/run).
Unmarked tests are unit tests: pure functions, no sockets, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
E2E = {HERE / "test_demo.py", HERE / "test_bench_smoke.py"}
INTEGRATION = {HERE / "test_standins.py", HERE / "test_hooks_fuzz.py",
               HERE / "test_guard_hooks.py", HERE / "test_cli_allow_hosts.py",
               HERE / "test_field_inventory.py",
               HERE / "test_deployment.py"}  # (runs the linters as processes)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.parent == HERE / "e2e" or path in E2E:
            item.add_marker(pytest.mark.e2e)
        elif path in INTEGRATION:
            item.add_marker(pytest.mark.integration)
