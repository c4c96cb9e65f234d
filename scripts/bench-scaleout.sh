#!/usr/bin/env bash
# Scale-out: 1 and 2 mitmdump processes with lakera_addon behind HAProxy (TCP mode), and 1
# directly, on loopback with the LLM and Lakera stand-ins (docs/performance.md, "Scale-out").
# Installs haproxy with apt-get when missing and run as root. Arguments go to bench.scaleout:
#   bash scripts/bench-scaleout.sh                       # json and sse, c=128, 3 rounds (~5.5 min)
#   bash scripts/bench-scaleout.sh --shapes json --rounds 1 --seconds 5
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" bench
cd "$ROOT"
exec .venv/bin/python -m bench.scaleout "$@"
