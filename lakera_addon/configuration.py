"""Loading and validating the addon's YAML configuration (SPEC sections 1 and 2).

Pure functions: `load_config` reads a file (or nothing, for the built-in defaults) and returns
an immutable `Config`, or raises `ConfigError` with one line naming the file, the key and what
is allowed. The mitmproxy addon turns that into an `OptionsError`.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import yaml

from lakera_addon import protocols
from lakera_addon import routing
from lakera_addon.config_values import PARSERS
from lakera_addon.config_values import Action
from lakera_addon.config_values import DetectorAction
from lakera_addon.config_values import Direction
from lakera_addon.config_values import FailMode
from lakera_addon.config_values import InputMode
from lakera_addon.config_values import InputScope
from lakera_addon.config_values import StreamMode
from lakera_addon.config_values import api_key
from lakera_addon.config_values import shown_value
from lakera_addon.config_values import string

DEFAULT_ENDPOINT = "https://api.lakera.ai/v2/guard"
API_KEY_ENV = "LAKERA_GUARD_API_KEY"
BUILTIN_SOURCE = "<built-in defaults>"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective settings of one route (top-level keys, overridden per route)."""

    api_key: str | None = None
    lakera_endpoint: str = DEFAULT_ENDPOINT
    project_id: str | None = None
    direction: Direction = "input"
    action: Action = "block"
    fail_open: bool = False
    timeout: int = 5000
    ssl_verify: bool = True
    deny_code: int = 200
    request_failure_message: str = "Request blocked by Lakera Guard"
    response_failure_message: str = "Response blocked by Lakera Guard"
    reveal_failure_categories: bool = False
    fail_mode: FailMode = "skip"
    max_body_bytes: int = 8 * 1024 * 1024
    max_screen_bytes: int = 128_000  # Lakera's documented content limit per call (128 kB)
    input_scope: InputScope = "conversation"  # or "latest": system + what the turn adds
    # streamed answers on a route that can block: held whole; released window by window after
    # each window is screened (windowed); or forwarded live and screened behind the stream
    # every `window_chars` characters, cut with the protocol's own ending on a flag (live)
    stream_mode: StreamMode = "held"
    window_chars: int = 1000
    # prompts: screened before they go upstream (sequential), or sent at once while Lakera is
    # asked, the answer held back until the verdict (parallel)
    input_mode: InputMode = "sequential"
    verdict_cache_seconds: int = 300  # identical Lakera calls within this reuse the verdict
    # screen the request's tool definitions (where MCP "tool poisoning" arrives), once per
    # distinct set of tools (lakera_client.LakeraClient.screen_tool_set)
    screen_tool_definitions: bool = False
    # (detector-type glob, block|alert|mask), in the file's order
    detector_actions: tuple[tuple[str, DetectorAction], ...] = ()

    @property
    def scans_input(self) -> bool:
        return self.direction in ("input", "both")

    @property
    def scans_output(self) -> bool:
        return self.direction in ("output", "both")

    @property
    def shadow(self) -> bool:
        """Nothing can block or change a flow: alert mode that lets Lakera failures through,
        with no detector that blocks or masks."""
        return (self.action == "alert" and self.fail_open
                and all(a == "alert" for _, a in self.detector_actions))

    @property
    def masks(self) -> bool:
        """Whether a flag can lead to masking (then Lakera is asked for its payload)."""
        return any(a == "mask" for _, a in self.detector_actions)

    @property
    def live(self) -> bool:
        """Streamed answers stay live and are screened behind the stream: only where a flag
        can block and cannot mask (text already sent cannot be masked; mask routes hold)."""
        return self.stream_mode == "live" and not self.shadow and not self.masks

    @property
    def windowed(self) -> bool:
        """Streamed answers are released window by window after screening (relay.py): only
        where a flag can block and cannot mask (mask routes hold)."""
        return self.stream_mode == "windowed" and not self.shadow and not self.masks

    @property
    def parallel(self) -> bool:
        """The prompt goes upstream while Lakera is asked (relay.py); where nothing can block,
        it goes at once anyway (shadow)."""
        return self.input_mode == "parallel" and self.scans_input and not self.shadow

    def action_for(self, detector_type: str) -> DetectorAction:
        """The action of the first glob matching a detector type, else `action`."""
        for glob, action in self.detector_actions:
            if fnmatch.fnmatchcase(detector_type, glob):
                return action
        return self.action

    def __repr__(self) -> str:  # never show the key
        shown = {k: getattr(self, k) for k in self.__slots__ if k != "api_key"}
        key = "set" if self.api_key else "unset"
        return f"Settings(api_key=<{key}>, {shown})"


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    hosts: tuple[str, ...]
    paths: tuple[str, ...]
    protocol: str  # "auto" or a protocols.Protocol
    settings: Settings

    def matches(self, host: str, path: str) -> bool:
        """Whether the host and the path match. Hosts and path globs match without regard to
        case; the path in any form an upstream may route it as (routing.path_forms)."""
        host = host.lower().rstrip(".")
        if not any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hosts):
            return False
        if not self.paths:
            return True
        forms = routing.path_forms(path)
        return any(fnmatch.fnmatchcase(form, glob.lower())
                   for glob in self.paths for form in forms)


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    routes: tuple[Route, ...]

    def route_for(
        self, destination: Sequence[str], path: str, named: Sequence[str] = ()
    ) -> Route | None:
        """The first route matching a name of the host the connection goes to (`destination`);
        only if none does, the first matching a name the client gives it (`named`: the Host
        header), which cannot take a flow past the route of where it really goes."""
        for hosts in (destination, named):
            for route in self.routes:
                if any(route.matches(host, path) for host in hosts if host):
                    return route
        return None


SETTING_KEYS = frozenset(PARSERS) | {"api_key"}
ROUTE_KEYS = frozenset({"name", "hosts", "paths", "protocol"})
PROTOCOL_CHOICES = ("auto", *protocols.ALL)

# The well-known providers, guarded when no file is given (SPEC section 1).
DEFAULT_ROUTES: tuple[dict[str, Any], ...] = (
    {"name": "openai", "hosts": ["api.openai.com"],
     "paths": ["/v1/chat/completions", "/v1/responses", "/v1/embeddings"]},
    {"name": "anthropic", "hosts": ["api.anthropic.com"], "paths": ["/v1/messages"]},
    {"name": "azure-openai", "hosts": ["*.openai.azure.com", "*.cognitiveservices.azure.com"],
     "paths": ["*/chat/completions", "*/responses", "*/embeddings"]},
    {"name": "openrouter", "hosts": ["openrouter.ai"],
     "paths": ["/api/v1/chat/completions", "/api/v1/responses"]},
    {"name": "gemini", "hosts": ["generativelanguage.googleapis.com"],
     "paths": ["/v1beta/openai/chat/completions", "/v1beta/openai/embeddings",
               "/v1*/models/*:generateContent", "/v1*/models/*:streamGenerateContent",
               "/v1*/tunedModels/*:generateContent",
               "/v1*/tunedModels/*:streamGenerateContent"]},
    {"name": "groq", "hosts": ["api.groq.com"], "paths": ["/openai/v1/chat/completions"]},
    {"name": "mistral", "hosts": ["api.mistral.ai"],
     "paths": ["/v1/chat/completions", "/v1/embeddings"]},
    {"name": "deepseek", "hosts": ["api.deepseek.com"],
     "paths": ["/chat/completions", "/v1/chat/completions"]},
    {"name": "together", "hosts": ["api.together.xyz"],
     "paths": ["/v1/chat/completions", "/v1/embeddings"]},
)


def _fail(source: str, key: str, allowed: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {allowed}")


def _bad(value: object, allowed: object) -> str:
    """`<value> is not allowed; must be <what is allowed>`."""
    return f"{shown_value(value)} is not allowed; must be {allowed}"


def _parse_settings(
    raw: Mapping[str, Any], base: Settings, where: str, environ: Mapping[str, str]
) -> Settings:
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in SETTING_KEYS:
            continue
        try:
            if key == "api_key":
                changes[key] = api_key(value, environ)
            else:
                changes[key] = PARSERS[key](value)
        except ValueError as e:  # the value is named, except the key's (never echoed)
            if key == "api_key":  # never echoed
                raise _fail(where, key, f"must be {e}") from e
            raise _fail(where, key, _bad(value, e)) from e
    return replace(base, **changes)


def _string_list(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(
        isinstance(v, str) and v for v in value
    ):
        raise ValueError(f"a non-empty list of {what}")
    return tuple(value)


def _parse_route(
    raw: object, index: int, base: Settings, source: str, environ: Mapping[str, str]
) -> Route:
    where = f"{source}: routes[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping with name, hosts and optional paths")
    try:
        name = string(raw.get("name"))
    except ValueError as e:
        raise _fail(where, "name", _bad(raw.get("name"), e)) from e
    where = f"{source}: routes[{index}] ({name})"
    unknown = sorted(str(k) for k in raw if k not in ROUTE_KEYS | SETTING_KEYS)
    if unknown:
        raise _fail(where, unknown[0], _unknown_key_help(ROUTE_KEYS | SETTING_KEYS))
    try:
        hosts = tuple(h.lower() for h in _string_list(raw.get("hosts"), "host globs"))
    except ValueError as e:
        raise _fail(where, "hosts", _bad(raw.get("hosts"), e)) from e
    paths: tuple[str, ...] = ()
    if raw.get("paths") is not None:
        try:
            paths = _string_list(raw["paths"], "path globs")
        except ValueError as e:
            raise _fail(where, "paths", _bad(raw["paths"], e)) from e
        bad = [p for p in paths if not p.startswith(("/", "*"))]
        if bad:
            raise _fail(where, "paths", f"globs must start with / or * (got {bad[0]!r})")
    protocol = raw.get("protocol", "auto")
    if protocol not in PROTOCOL_CHOICES:
        raise _fail(where, "protocol", _bad(protocol, ", ".join(PROTOCOL_CHOICES)))
    settings = _parse_settings(raw, base, where, environ)
    return Route(name, hosts, paths, protocol, settings)


def _unknown_key_help(allowed: frozenset[str]) -> str:
    return "unknown key; allowed: " + ", ".join(sorted(allowed))


def _check_api_key(route: Route, source: str) -> None:
    settings = route.settings
    host = (urlsplit(settings.lakera_endpoint).hostname or "").lower()
    hosted = host == "lakera.ai" or host.endswith(".lakera.ai")
    if hosted and not settings.api_key:
        raise _fail(
            f"{source}: routes ({route.name})",
            "api_key",
            f"required for the hosted endpoint {host}: set api_key or {API_KEY_ENV}",
        )


def parse_config(
    document: object, source: str, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate a parsed YAML document (a mapping, or None for an empty file)."""
    env = os.environ if environ is None else environ
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: the file must hold a mapping of keys (SPEC section 2)")
    unknown = sorted(str(k) for k in document if k not in SETTING_KEYS | {"routes"})
    if unknown:
        raise _fail(source, unknown[0], _unknown_key_help(SETTING_KEYS | {"routes"}))
    base = Settings(api_key=env.get(API_KEY_ENV) or None)
    base = _parse_settings(document, base, source, env)
    raw_routes = document.get("routes", list(DEFAULT_ROUTES))
    if not isinstance(raw_routes, list) or not raw_routes:
        raise _fail(source, "routes", "must be a non-empty list of routes")
    routes = tuple(
        _parse_route(raw, i, base, source, env) for i, raw in enumerate(raw_routes)
    )
    names = [r.name for r in routes]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise _fail(source, "routes", f"route names must be unique ({duplicate!r} repeats)")
    for route in routes:
        _check_api_key(route, source)
        if route.settings.input_mode == "parallel" and route.settings.masks:
            raise _fail(f"{source}: routes[{routes.index(route)}] ({route.name})", "input_mode",
                        "'parallel' is not allowed with detector_actions that mask: the model "
                        "would see what masking hides; use sequential")
    return Config(source, routes)


MAX_CONFIG_BYTES = 1 << 20  # a policy is a few kB; more is a mistake (or a device)


def _read_file(path: str) -> str:
    """The text of a regular file of at most MAX_CONFIG_BYTES. Opened without blocking and
    checked before reading: a FIFO, a device or a directory would block or never end (the
    file watch reads in a thread, the lakera.reload command on the event loop)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    return data.decode("utf-8")


def load_config(
    path: str | None, environ: Mapping[str, str] | None = None, allow_empty: bool = True
) -> Config:
    """Read and validate the file at `path`; no path means the built-in defaults. An empty
    file means them too, except with `allow_empty=False` (a reload, config_watch.py: there an
    empty file is most likely one caught between its truncation and its new content)."""
    if not path:
        return parse_config(None, BUILTIN_SOURCE, environ)
    try:
        document = yaml.safe_load(_read_file(path))
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text") from e
    if document is None and not allow_empty:
        raise ConfigError(f"{path}: the file is empty (being written?); it must hold the "
                          "configuration's keys")
    return parse_config(document, path, environ)
