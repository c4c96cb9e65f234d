#!/usr/bin/env bash
# What the browser test (tests/e2e/test_mitmweb_views.py) needs: Debian's Chromium and
# playwright-core from npm (it drives that Chromium; it downloads no browser of its own).
# Installs what is missing where it can (apt-get needs root); exits 0 either way, saying what
# is still missing: the test then skips with that reason.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHROMIUM="${LAKERA_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[browser-setup] installing Debian's chromium" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
      >/dev/null 2>&1 || echo "[browser-setup] apt-get could not install chromium" >&2
  else
    echo "[browser-setup] no $CHROMIUM and no root to install it: the browser test skips" >&2
  fi
fi
if [ ! -d "$ROOT/tests/e2e/browser/node_modules/playwright-core" ]; then
  if command -v npm >/dev/null; then
    echo "[browser-setup] installing playwright-core (npm ci)" >&2
    (cd "$ROOT/tests/e2e/browser" && timeout 600 npm ci --no-audit --no-fund >/dev/null 2>&1) \
      || echo "[browser-setup] npm could not install playwright-core" >&2
  else
    echo "[browser-setup] no npm: the browser test skips" >&2
  fi
fi
exit 0
