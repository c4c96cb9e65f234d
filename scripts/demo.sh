#!/usr/bin/env bash
# The main job: a local end-to-end demo that needs no Lakera account. It starts the local
# stand-ins (an LLM upstream and a Lakera Guard stand-in), mitmdump with the addon, and sends
# prompts through the proxy with the official SDKs. Arguments go to the demo (see --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" demo
exec "$ROOT/.venv/bin/python" -m lakera_addon.demo "$@"
