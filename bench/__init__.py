"""The benchmark: plain mitmdump against mitmdump with lakera_addon, on loopback.

`bash scripts/bench.sh` (or `.venv/bin/python -m bench`) runs it; docs/performance.md has the
figures and how to read them.
"""
