#!/usr/bin/env bash
# The benchmark: plain mitmdump against mitmdump with lakera_addon, on loopback, with the LLM and
# Lakera stand-ins (docs/performance.md). Sets up .venv by itself. Arguments go to the benchmark:
#   bash scripts/bench.sh                 # the full run (~10 min on 2 cores)
#   bash scripts/bench.sh --quick         # ~2 min
#   bash scripts/bench.sh --lakera-delay-ms 100 --axes none --only held
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" bench
cd "$ROOT"
exec .venv/bin/python -m bench "$@"
