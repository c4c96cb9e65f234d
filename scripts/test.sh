#!/usr/bin/env bash
# The test command: sets up .venv by itself, then lint, type checks and the test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k stream -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" test
cd "$ROOT"
echo "[test] ruff check" >&2
.venv/bin/ruff check lakera_addon tests bench
echo "[test] mypy" >&2
.venv/bin/mypy
echo "[test] pytest" >&2
exec .venv/bin/pytest "$@"
