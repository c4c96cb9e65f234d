"""Markers by kind of test, so that `scripts/test.sh --quick` (`pytest --quick`) can run the unit
tests alone:
- `e2e`: a real mitmdump (tests/e2e), the demo, the benchmark's smoke run;
- `integration`: servers on loopback, the official SDKs, or mitmproxy's own test master;
- `load`: long load runs (deselected by default, run by .ci/run).
Unmarked tests are unit tests: pure functions, no sockets, no processes.

`--quick` deselects the marked tests and does not even import the modules that hold only marked
ones (tests/e2e, the files below): their imports (the SDKs, mitmproxy's test master) took a third
of a quick run. Property tests try a quarter of their examples (tests/fuzz.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from tests.fuzz import MIN_EXAMPLES
from tests.fuzz import QUICK_ENV

HERE = Path(__file__).resolve().parent
E2E = {HERE / "test_demo.py", HERE / "test_bench_smoke.py"}
INTEGRATION = {HERE / "test_standins.py", HERE / "test_hooks_fuzz.py",
               HERE / "test_guard_hooks.py", HERE / "test_cli_allow_hosts.py",
               HERE / "test_field_inventory.py", HERE / "test_deny_sdks.py",
               HERE / "test_deployment.py"}  # (runs the linters as processes)


QUICK_DESELECT = "not e2e and not integration and not load"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--quick", action="store_true",
                     help=f"the unit tests only (-m '{QUICK_DESELECT}'), without importing "
                          "the modules of end-to-end and integration tests")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--quick"):
        config.option.markexpr = QUICK_DESELECT
        os.environ[QUICK_ENV] = "1"  # fewer examples per property test (tests/fuzz.py)
        settings.register_profile("quick", max_examples=MIN_EXAMPLES)
        settings.load_profile("quick")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not config.getoption("--quick"):
        return None
    path = collection_path.resolve()
    if path == HERE / "e2e" or path in E2E or path in INTEGRATION:
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.parent == HERE / "e2e" or path in E2E:
            item.add_marker(pytest.mark.e2e)
        elif path in INTEGRATION:
            item.add_marker(pytest.mark.integration)
