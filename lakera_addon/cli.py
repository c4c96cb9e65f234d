"""Console scripts `lakera-mitmdump` and `lakera-mitmweb` (SPEC section 1).

mitmproxy keeps serving traffic when a script fails to import, so these entries import the
addon and validate its configuration first, exit non-zero when either fails, and only then
start mitmdump or mitmweb with the addon loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path

ADDON_FILE = Path(__file__).with_name("addon.py")


def config_path(argv: Sequence[str]) -> str | None:
    """The value of `--set lakera_config=...` in mitmproxy's arguments (last one wins)."""
    value = None
    for i, arg in enumerate(argv):
        option = None
        if arg == "--set" and i + 1 < len(argv):
            option = argv[i + 1]
        elif arg.startswith("--set="):
            option = arg[len("--set="):]
        if option and option.startswith("lakera_config="):
            value = option.split("=", 1)[1]
    return value


def preflight(argv: Sequence[str]) -> str | None:
    """Import the addon and load its configuration; an error message, or None if fine."""
    try:
        from lakera_addon.configuration import ConfigError
        from lakera_addon.configuration import load_config
        from lakera_addon.guard_addon import LakeraGuard  # noqa: F401
    except Exception as e:
        return f"lakera_addon cannot be imported: {type(e).__name__}: {e}"
    try:
        load_config(config_path(argv) or None)
    except ConfigError as e:
        return f"lakera_config: {e}"
    return None


def _run(tool: Callable[[Sequence[str] | None], int | None], argv: Sequence[str]) -> int:
    problem = preflight(argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return tool(["-s", str(ADDON_FILE), *argv]) or 0


def mitmdump_main() -> int:
    from mitmproxy.tools.main import mitmdump

    return _run(mitmdump, sys.argv[1:])


def mitmweb_main() -> int:
    from mitmproxy.tools.main import mitmweb

    return _run(mitmweb, sys.argv[1:])
