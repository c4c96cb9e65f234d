"""Console scripts `lakera-mitmdump`, `lakera-mitmweb` (SPEC section 1) and
`lakera-allow-hosts` (section 8).

mitmproxy keeps serving traffic when a script fails to import, so these entries import the
addon and validate its configuration first, exit non-zero when either fails, and only then
start mitmdump or mitmweb with the addon loaded.
"""

from __future__ import annotations

import os
import re
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

    return _run(mitmweb, web_arguments(sys.argv[1:]))


def web_arguments(argv: Sequence[str]) -> list[str]:
    """mitmweb's arguments: `store_streamed_bodies` on unless they set it, so that mitmweb's LLM
    view (llm_view.py) can show streamed answers that went out live (pass-through, `live`,
    `windowed`): mitmproxy keeps no body of a streamed response otherwise."""
    if any("store_streamed_bodies" in arg or "store-streamed-bodies" in arg for arg in argv):
        return list(argv)
    return ["--set", "store_streamed_bodies=true", *argv]


# --- lakera-allow-hosts: mitmproxy's --allow-hosts built from the routes (SPEC section 8) ---

# Stands in for unset `$env://` variables and the Lakera key while reading routes: printing the
# hosts needs no key, and every other check of the file still applies.
_PLACEHOLDER = "lakera-allow-hosts-placeholder"


class _EnvironWithPlaceholders(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return _PLACEHOLDER

    def get(self, key: str, default: object = None) -> str:
        return self[key]


def glob_to_regex(glob: str) -> str:
    """One route host glob (fnmatch syntax, as `Route.matches` uses it) as a regex fragment.

    `*` matches any run of characters, dots included, and `?` any one character, exactly as
    fnmatch does, so the proxy intercepts every host a route can match; `[seq]` and `[!seq]`
    keep their meaning. Everything else is literal."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            if not out or out[-1] != ".*":  # `**` is the same as `*`
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal `[`, as in fnmatch
                out.append(re.escape(c))
                continue
            body = glob[i:j]
            i = j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[{'^' if negate else ''}{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def allow_hosts_regex(hosts: Sequence[str]) -> str:
    """mitmproxy's `allow_hosts` pattern for these host globs.

    mitmproxy 12 searches each pattern (case-insensitively) in `host:port` strings: the
    CONNECT target, the server address, the TLS SNI and the Host header, each with its port
    (mitmproxy/addons/next_layer.py, `_ignore_connection`). So the pattern is anchored, takes
    an optional trailing dot (routes ignore it too) and an optional `:port`."""
    unique = list(dict.fromkeys(h.lower() for h in hosts))
    if not unique:
        raise ValueError("no hosts")
    return "^(" + "|".join(glob_to_regex(h) for h in unique) + r")\.?(:\d+)?$"


def config_hosts(path: str | None) -> list[str]:
    """The host globs of every route of a configuration file (None: the built-in defaults)."""
    from lakera_addon.configuration import load_config

    environ = _EnvironWithPlaceholders(os.environ)
    config = load_config(path, environ)
    return [host for route in config.routes for host in route.hosts]


def allow_hosts_main(argv: Sequence[str] | None = None) -> int:
    """`lakera-allow-hosts [--config FILE]`: print the `--allow-hosts` regex for the routes."""
    import argparse

    from lakera_addon.configuration import ConfigError

    parser = argparse.ArgumentParser(
        prog="lakera-allow-hosts",
        description="Print a mitmproxy --allow-hosts regex that matches the hosts of the "
        "addon's routes, so that regular-proxy mode intercepts TLS only to those hosts. "
        "Example: lakera-mitmdump --allow-hosts \"$(lakera-allow-hosts --config my.yaml)\" "
        "--set lakera_config=my.yaml",
    )
    parser.add_argument(
        "--config", metavar="FILE",
        help="the addon's YAML configuration (default: the built-in routes); the Lakera key "
        "need not be set",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        print(allow_hosts_regex(config_hosts(args.config)))
    except ConfigError as e:
        print(f"error: lakera_config: {e}", file=sys.stderr)
        return 2
    return 0
