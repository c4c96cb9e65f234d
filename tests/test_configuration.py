"""Configuration: every key with its default, overrides, $env:// keys, and one-line errors."""

from pathlib import Path

import pytest
import yaml

from lakera_addon.config_values import parse_size
from lakera_addon.configuration import BUILTIN_SOURCE
from lakera_addon.configuration import ConfigError
from lakera_addon.configuration import Settings
from lakera_addon.configuration import load_config
from lakera_addon.configuration import parse_config

ENV = {"LAKERA_GUARD_API_KEY": "env-key", "OTHER_KEY": "other-key"}
ROOT = Path(__file__).resolve().parent.parent


def test_builtin_defaults() -> None:
    config = load_config(None, ENV)
    assert config.source == BUILTIN_SOURCE
    names = [r.name for r in config.routes]
    assert names[:2] == ["openai", "anthropic"]
    settings = config.routes[0].settings
    assert settings == Settings(api_key="env-key")
    assert (settings.direction, settings.action, settings.fail_open) == ("input", "block", False)
    assert settings.timeout == 5000
    assert settings.deny_code == 200
    assert settings.max_body_bytes == 8 * 1024 * 1024
    assert settings.lakera_endpoint == "https://api.lakera.ai/v2/guard"


def test_default_example_file_equals_builtin_defaults() -> None:
    assert load_config(str(ROOT / "configs" / "default.yaml"), ENV).routes == (
        load_config(None, ENV).routes
    )


def test_local_example_file_loads() -> None:
    config = load_config(str(ROOT / "configs" / "local.yaml"), {})
    assert config.routes[0].settings.direction == "both"


def test_route_overrides_and_env_keys() -> None:
    config = parse_config(
        {
            "api_key": "$env://OTHER_KEY",
            "fail_open": True,
            "routes": [
                {"name": "a", "hosts": ["API.example.com"], "fail_open": False,
                 "project_id": "project-1", "api_key": "literal"},
                {"name": "b", "hosts": "*.example.org", "paths": ["/v1/*"],
                 "protocol": "openai-chat", "max_body_bytes": "512k"},
            ],
        },
        "f.yaml",
        ENV,
    )
    a, b = config.routes
    assert (a.settings.fail_open, a.settings.project_id, a.settings.api_key) == (
        False, "project-1", "literal")
    assert (b.settings.fail_open, b.settings.api_key) == (True, "other-key")
    assert b.settings.max_body_bytes == 512 * 1024
    assert b.protocol == "openai-chat"
    assert a.hosts == ("api.example.com",)


@pytest.mark.parametrize(
    ("hosts", "path", "expected"),
    [
        (("api.openai.com",), "/v1/chat/completions", "openai"),
        (("API.OPENAI.COM",), "/v1/chat/completions?x=1", "openai"),
        (("api.openai.com",), "/v1/models", None),
        (("x.openai.azure.com",), "/openai/deployments/d/chat/completions", "azure-openai"),
        (("api.anthropic.com",), "/v1/messages", "anthropic"),
        (("example.com",), "/v1/chat/completions", None),
        (("10.0.0.1", "api.openai.com"), "/v1/responses", "openai"),
    ],
)
def test_route_matching_first_match_wins(hosts, path, expected) -> None:
    route = load_config(None, ENV).route_for(hosts, path)
    assert (route.name if route else None) == expected


def test_api_key_is_not_in_repr() -> None:
    settings = Settings(api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(settings)
    config = load_config(None, {"LAKERA_GUARD_API_KEY": "sk-very-secret"})
    assert "sk-very-secret" not in str(config)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), ("8 MiB", 8 << 20), ("512k", 512 << 10), ("1m", 1 << 20), ("2MB", 2 << 20),
     ("1 GiB", 1 << 30)],
)
def test_sizes(value, expected) -> None:
    assert parse_size(value) == expected


# (document, the message's expected parts)
BAD_DOCUMENTS = [
    ({"bogus": 1}, ["f.yaml", "bogus", "unknown key; allowed:", "api_key"]),
    ({"direction": "sideways"}, ["f.yaml", "direction", "input or output or both"]),
    ({"input_scope": "all"}, ["input_scope", "conversation or latest"]),
    ({"stream_mode": "fast"}, ["stream_mode", "'fast' is not allowed", "held, windowed or live"]),
    ({"input_mode": "eager"}, ["input_mode", "sequential or parallel"]),
    ({"screen_tool_definitions": "yes"}, ["screen_tool_definitions", "true or false"]),
    ({"input_mode": "parallel", "detector_actions": {"pii/*": "mask"}},
     ["input_mode", "'parallel' is not allowed with detector_actions that mask"]),
    ({"window_chars": 99}, ["window_chars", "from 100 to 1000000 characters"]),
    ({"window_chars": "1000"}, ["window_chars", "an integer"]),
    ({"verdict_cache_seconds": -1}, ["verdict_cache_seconds", "from 0 to 86400"]),
    ({"verdict_cache_seconds": True}, ["verdict_cache_seconds", "an integer"]),
    ({"action": "deny"}, ["action", "block or alert"]),
    ({"fail_open": "yes"}, ["fail_open", "true or false"]),
    ({"ssl_verify": 1}, ["ssl_verify", "true or false"]),
    ({"timeout": 0}, ["timeout", "from 1 to 600000 milliseconds"]),
    ({"timeout": "5s"}, ["timeout", "an integer"]),
    ({"timeout": True}, ["timeout", "an integer"]),
    ({"deny_code": 99}, ["deny_code", "from 200 to 599"]),
    ({"deny_code": 700}, ["deny_code", "from 200 to 599"]),
    ({"deny_code": 204}, ["deny_code", "has a body (not 204, 205, 304)"]),
    ({"detector_actions": {"pii/*": "redact"}}, ["detector_actions", "block, alert or mask"]),
    ({"detector_actions": ["pii/*"]}, ["detector_actions", "a mapping from detector-type"]),
    ({"detector_actions": {}}, ["detector_actions", "a mapping"]),
    ({"api_key": "sk-lk\u2019abc"}, ["api_key", "printable ASCII without spaces"]),
    ({"api_key": "sk-lk abc\n"}, ["api_key", "printable ASCII without spaces"]),
    ({"lakera_endpoint": "http://127.0.0.1:99999/v2/guard"}, ["lakera_endpoint", "URL"]),
    ({"lakera_endpoint": "http://127.0.0.1:0/v2/guard"}, ["lakera_endpoint", "URL"]),
    ({"fail_mode": "explode"}, ["fail_mode", "skip or warn or error"]),
    ({"max_body_bytes": "lots"}, ["max_body_bytes", "a size in bytes"]),
    ({"max_body_bytes": 0}, ["max_body_bytes", "a size in bytes"]),
    ({"lakera_endpoint": "ftp://x/v2/guard"}, ["lakera_endpoint", "http:// or https:// URL"]),
    ({"request_failure_message": ""}, ["request_failure_message", "non-empty string"]),
    ({"project_id": 12}, ["project_id", "non-empty string"]),
    ({"api_key": "$env://NOT_SET_ANYWHERE"}, ["api_key", "NOT_SET_ANYWHERE is not set"]),
    ({"api_key": ""}, ["api_key", "non-empty string"]),
    ({"routes": []}, ["routes", "non-empty list"]),
    ({"routes": "openai"}, ["routes", "non-empty list"]),
    ({"routes": [{"hosts": ["a"]}]}, ["routes[0]", "name", "non-empty string"]),
    ({"routes": [{"name": "a"}]}, ["routes[0] (a)", "hosts", "non-empty list of host globs"]),
    ({"routes": [{"name": "a", "hosts": ["a"], "paths": ["v1"]}]}, ["paths", "start with /"]),
    ({"routes": [{"name": "a", "hosts": ["a"], "protocol": "grpc"}]},
     ["protocol", "auto, openai-chat"]),
    ({"routes": [{"name": "a", "hosts": ["a"], "colour": "red"}]}, ["routes[0] (a)", "colour"]),
    ({"routes": [{"name": "a", "hosts": ["a"], "action": "nope"}]}, ["routes[0] (a)", "action"]),
    ({"routes": [{"name": "a", "hosts": ["a"]}, {"name": "a", "hosts": ["b"]}]},
     ["routes", "unique"]),
    ({"routes": ["openai"]}, ["routes[0]", "mapping"]),
    (["not", "a", "mapping"], ["f.yaml", "mapping"]),
]


@pytest.mark.parametrize(("document", "parts"), BAD_DOCUMENTS)
def test_bad_documents_are_refused_with_one_line(document, parts) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(document, "f.yaml", ENV)
    message = str(raised.value)
    assert "\n" not in message
    for part in parts:
        assert part in message
    key = document.get("api_key") if isinstance(document, dict) else None
    if isinstance(key, str) and key and not key.startswith("$env://"):
        assert key.strip() not in message  # a refused key is never echoed


def test_hosted_endpoint_needs_a_key() -> None:
    with pytest.raises(ConfigError, match=r"api_key: required for the hosted endpoint"):
        parse_config({}, "f.yaml", {})
    with pytest.raises(ConfigError, match=r"routes \(eu\)"):
        parse_config({"api_key": "k", "routes": [
            {"name": "eu", "hosts": ["a"], "api_key": None,
             "lakera_endpoint": "https://eu-west-1.api.lakera.ai/v2/guard"}]}, "f.yaml", {})
    # a self-hosted Guard takes no key
    config = parse_config({"lakera_endpoint": "http://guard.internal:8000/v2/guard"}, "f", {})
    assert config.routes[0].settings.api_key is None


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot be read"):
        load_config(str(missing), ENV)
    broken = tmp_path / "broken.yaml"
    broken.write_text("direction: [input\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line \d+"):
        load_config(str(broken), ENV)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"binary.yaml: not"):
        load_config(str(binary), ENV)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(str(empty), ENV).routes == load_config(None, ENV).routes


def test_yaml_round_trip_of_every_key(tmp_path: Path) -> None:
    every = {
        "api_key": "k", "lakera_endpoint": "https://eu-west-1.api.lakera.ai/v2/guard",
        "project_id": "p", "direction": "both", "action": "alert", "fail_open": True,
        "timeout": 100, "ssl_verify": False, "deny_code": 403,
        "request_failure_message": "no", "response_failure_message": "nope",
        "reveal_failure_categories": True, "fail_mode": "error", "max_body_bytes": 1024,
        "routes": [{"name": "r", "hosts": ["h"]}],
    }
    path = tmp_path / "every.yaml"
    path.write_text(yaml.safe_dump(every))
    settings = load_config(str(path), {}).routes[0].settings
    for key, value in every.items():
        if key != "routes":
            assert getattr(settings, key) == value, key


def test_detector_actions_top_level_and_per_route() -> None:
    config = parse_config({
        "api_key": "k",
        "detector_actions": {"prompt_attack": "block", "pii/*": "mask"},
        "routes": [{"name": "a", "hosts": ["a"]},
                   {"name": "b", "hosts": ["b"], "detector_actions": {"*": "alert"}}],
    }, "f.yaml", ENV)
    a, b = config.routes
    assert a.settings.detector_actions == (("prompt_attack", "block"), ("pii/*", "mask"))
    assert a.settings.masks and not b.settings.masks
    assert a.settings.action_for("pii/email") == "mask"
    assert a.settings.action_for("unknown_links") == "block"  # `action`
    assert b.settings.action_for("pii/email") == "alert"


@pytest.mark.parametrize(
    ("document", "live", "windowed"),
    [
        ({"stream_mode": "live"}, True, False),
        ({"stream_mode": "progressive"}, True, False),  # live's former name
        ({"stream_mode": "windowed"}, False, True),
        ({}, False, False),
        # shadow mode passes streams through anyway; masks need the whole answer
        ({"stream_mode": "live", "action": "alert", "fail_open": True}, False, False),
        ({"stream_mode": "windowed", "action": "alert", "fail_open": True}, False, False),
        ({"stream_mode": "live", "detector_actions": {"pii/*": "mask"}}, False, False),
        ({"stream_mode": "windowed", "detector_actions": {"pii/*": "mask"}}, False, False),
        ({"stream_mode": "live", "detector_actions": {"pii/*": "alert"}}, True, False),
    ],
)
def test_which_routes_stream_live_or_windowed(document, live, windowed) -> None:
    config = parse_config({**document, "routes": [{"name": "r", "hosts": ["h"]}]}, "f", ENV)
    assert config.routes[0].settings.live is live
    assert config.routes[0].settings.windowed is windowed
    assert config.routes[0].settings.stream_mode in ("held", "windowed", "live")
