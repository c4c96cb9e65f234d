#!/usr/bin/env bash
# Creates .venv with a Python >= 3.12 (mitmproxy 12 needs it) and installs lakera_addon into it,
# editable, with the extras named in $1 (e.g. "test" or "demo"). Sourced by test.sh and demo.sh.
# Interpreters are tried by running them, not by `command -v`: a pyenv shim can exist and fail.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-test}"

say() { printf '[setup] %s\n' "$*" >&2; }

python_ok() {  # usable: runs, is >= 3.12, has venv and ensurepip
  "$1" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 12) else 1)' \
    >/dev/null 2>&1
}

candidates() {
  [ -n "${LAKERA_PYTHON:-}" ] && echo "$LAKERA_PYTHON"
  for v in 3.13 3.12 3.14; do echo "python$v"; done
  echo python3
  echo python
  local root
  root="$( (pyenv root) 2>/dev/null || echo "$HOME/.pyenv")"
  ls -d "$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV || true
  for v in 3.13 3.12 3.14; do
    for d in /usr/local/bin /usr/bin /opt/homebrew/bin "$HOME/.local/bin"; do
      echo "$d/python$v"
    done
  done
}

find_python() {
  local c
  while read -r c; do
    [ -n "$c" ] || continue
    if python_ok "$c"; then echo "$c"; return 0; fi
  done < <(candidates)
  return 1
}

if [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python"; then
  :
else
  if ! PY="$(find_python)"; then
    cat >&2 <<'MSG'
[setup] No Python 3.12 or newer with the venv module was found (mitmproxy 12 needs >= 3.12).
[setup] Install one, then run this command again, for example:
[setup]   Debian/Ubuntu: sudo apt install python3.12 python3.12-venv   (or python3.13)
[setup]   macOS:         brew install python@3.13
[setup]   pyenv:         pyenv install 3.13
[setup]   Windows/other: https://www.python.org/downloads/
[setup] Or point LAKERA_PYTHON at an interpreter: LAKERA_PYTHON=/path/to/python3.13
MSG
    exit 1
  fi
  say "creating .venv with $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.installed-$EXTRAS-$(cat "$ROOT/pyproject.toml" | cksum | cut -d' ' -f1)"
if [ ! -e "$STAMP" ]; then
  say "installing lakera_addon[$EXTRAS] and its dependencies into .venv (first run takes a minute)"
  LOG="$VENV/pip-install.log"
  if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
         "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$ROOT[$EXTRAS]"; } \
       >"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    say "installing failed; the whole pip output is in $LOG"
    exit 1
  fi
  rm -f "$VENV"/.installed-"$EXTRAS"-*
  touch "$STAMP"
  say "installed: $("$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -iE '^(mitmproxy|aiohttp|openai|anthropic) ' | tr -s ' ' | paste -sd, -)"
fi
