#!/usr/bin/env bash
# The test command: sets up .venv by itself, then lint, type checks and the whole test suite.
#   bash scripts/test.sh            # ruff, mypy, then every test (unit, integration, end-to-end)
#   bash scripts/test.sh --quick    # ruff, then the unit tests only (no servers, no mitmdump)
# Other arguments go to pytest (e.g. scripts/test.sh -k stream -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" test
cd "$ROOT"
echo "[test] ruff check" >&2
.venv/bin/ruff check lakera_addon tests bench
if [ "${1:-}" = "--quick" ]; then
  shift
  echo "[test] pytest, unit tests only (markers e2e, integration and load deselected)" >&2
  exec .venv/bin/pytest --quick "$@"
fi
echo "[test] mypy" >&2
.venv/bin/mypy
echo "[test] pytest" >&2
exec .venv/bin/pytest "$@"
