"""How many examples a property test tries: all of them in a full run, a quarter in a quick one
(`pytest --quick`, tests/conftest.py), where the unit tests must run in under 30 s."""

from __future__ import annotations

import os

QUICK_ENV = "LAKERA_QUICK_TESTS"
QUICK_SHARE = 4  # a quick run tries 1/QUICK_SHARE of the examples (at least MIN_EXAMPLES)
MIN_EXAMPLES = 25


def examples(full: int) -> int:
    """`full` examples, or a quarter of them in a quick run."""
    if os.environ.get(QUICK_ENV) == "1":
        return max(MIN_EXAMPLES, full // QUICK_SHARE)
    return full
