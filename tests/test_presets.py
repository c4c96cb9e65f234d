"""The provider presets in configs/: each loads, screens its provider's typical request URLs and
nothing else, and `lakera-allow-hosts` turns its routes into a pattern for exactly its hosts."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lakera_addon.cli import allow_hosts_regex
from lakera_addon.cli import config_hosts
from lakera_addon.configuration import Config
from lakera_addon.configuration import ConfigError
from lakera_addon.configuration import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
KEY = "preset-test-key"
ENV = {"LAKERA_GUARD_API_KEY": KEY}

# preset file -> (route name, request URLs its clients send)
PRESETS: dict[str, tuple[str, list[str]]] = {
    "openai": ("openai", [
        "https://api.openai.com/v1/chat/completions",
        "https://api.openai.com/v1/responses",
        "https://api.openai.com/v1/embeddings",
    ]),
    "anthropic": ("anthropic", [
        "https://api.anthropic.com/v1/messages",
        "https://api.anthropic.com/v1/chat/completions",  # OpenAI-SDK compatibility layer
    ]),
    "azure-openai": ("azure-openai", [
        "https://myres.openai.azure.com/openai/deployments/gpt4o/chat/completions"
        "?api-version=2024-10-21",
        "https://myres.openai.azure.com/openai/deployments/emb/embeddings?api-version=2024-10-21",
        "https://myres.openai.azure.com/openai/v1/chat/completions",
        "https://myres.openai.azure.com/openai/v1/responses",
        "https://myres.openai.azure.com/openai/responses?api-version=2025-04-01-preview",
        "https://myres.cognitiveservices.azure.com/openai/deployments/gpt4o/chat/completions"
        "?api-version=2025-01-01-preview",
        "https://myres.services.ai.azure.com/models/chat/completions?api-version=2024-05-01-preview",
    ]),
    "openrouter": ("openrouter", [
        "https://openrouter.ai/api/v1/chat/completions",
        "https://openrouter.ai/api/v1/responses",
        "https://openrouter.ai/api/v1/messages",
        "https://openrouter.ai/api/v1/embeddings",
    ]),
    "gemini": ("gemini", [
        "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
        "https://generativelanguage.googleapis.com/v1beta/openai/embeddings",
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
        ":streamGenerateContent?alt=sse",
        "https://generativelanguage.googleapis.com/v1/models/gemini-2.5-pro:streamGenerateContent",
        "https://generativelanguage.googleapis.com/v1alpha/models/gemini-2.5-flash:generateContent",
        "https://generativelanguage.googleapis.com/v1beta/tunedModels/my-model-x1:generateContent",
    ]),
    "groq": ("groq", [
        "https://api.groq.com/openai/v1/chat/completions",
        "https://api.groq.com/openai/v1/responses",
    ]),
    "mistral": ("mistral", [
        "https://api.mistral.ai/v1/chat/completions",
        "https://api.mistral.ai/v1/agents/completions",
        "https://api.mistral.ai/v1/embeddings",
    ]),
    "deepseek": ("deepseek", [
        "https://api.deepseek.com/chat/completions",
        "https://api.deepseek.com/v1/chat/completions",
        "https://api.deepseek.com/anthropic/v1/messages",
    ]),
    "together": ("together", [
        "https://api.together.xyz/v1/chat/completions",
        "https://api.together.xyz/v1/embeddings",
    ]),
    "ollama": ("ollama", [
        "http://localhost:11434/v1/chat/completions",
        "http://127.0.0.1:11434/v1/chat/completions",
        "http://localhost:11434/v1/responses",
        "http://localhost:11434/v1/embeddings",
        "http://localhost:11434/v1/messages",
        "http://localhost:11434/api/chat",
        "http://127.0.0.1:11434/api/generate",
    ]),
    "lmstudio": ("lmstudio", [
        "http://localhost:1234/v1/chat/completions",
        "http://localhost:1234/v1/responses",
        "http://localhost:1234/v1/embeddings",
        "http://127.0.0.1:1234/v1/messages",
    ]),
}

# URLs no preset screens: other hosts, look-alike hosts, and the providers' other endpoints
UNRELATED = [
    "https://example.com/v1/chat/completions",
    "https://api.openai.com.evil.example/v1/chat/completions",
    "https://evilapi.openai.com/v1/chat/completions",
    "https://openai.azure.com.evil.example/openai/v1/chat/completions",
    "https://api.openai.com/v1/models",
    "https://api.openai.com/v1/files",
    "https://api.anthropic.com/v1/models",
    "https://api.anthropic.com/v1/messages/count_tokens",
    "https://myres.openai.azure.com/openai/models?api-version=2024-10-21",
    "https://openrouter.ai/api/v1/models",
    "https://generativelanguage.googleapis.com/v1beta/models",
    "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash",
    "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:countTokens",
    "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:embedContent",
    "https://generativelanguage.googleapis.com/v1beta/files",
    "https://api.mistral.ai/v1/fim/completions",
    "https://api.groq.com/openai/v1/audio/transcriptions",
    "http://localhost:11434/api/tags",
    "http://localhost:11434/api/embed",
    "http://localhost:11434/api/pull",
    "http://localhost:11434/api/chat/extra",
    "http://localhost:1234/api/v1/chat",
    "http://localhost:8080/health",
]

PRESET_FILES = [*PRESETS, "all-providers"]


def load(name: str) -> Config:
    return load_config(str(CONFIGS / f"{name}.yaml"), ENV)


def host_and_path(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    assert parts.hostname
    return parts.hostname, parts.path + (f"?{parts.query}" if parts.query else "")


def route_name(config: Config, url: str) -> str | None:
    host, path = host_and_path(url)
    route = config.route_for((host,), path)
    return route.name if route else None


def test_every_preset_file_is_tested() -> None:
    files = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert files - {"default", "local"} == set(PRESET_FILES)


@pytest.mark.parametrize("name", PRESET_FILES)
def test_preset_loads_with_defaults_that_guard(name: str) -> None:
    config = load(name)
    assert config.routes
    for route in config.routes:
        settings = route.settings
        assert settings.api_key == KEY  # api_key: $env://LAKERA_GUARD_API_KEY
        assert settings.lakera_endpoint == "https://api.lakera.ai/v2/guard"
        assert settings.direction in ("input", "both")
        assert settings.action == "block"
        assert settings.fail_open is False
        assert route.protocol == "auto"


@pytest.mark.parametrize("name", PRESET_FILES)
def test_preset_needs_the_lakera_key(name: str) -> None:
    with pytest.raises(ConfigError, match="LAKERA_GUARD_API_KEY is not set"):
        load_config(str(CONFIGS / f"{name}.yaml"), {})


@pytest.mark.parametrize(("name", "url"), [
    (name, url) for name, (_, urls) in PRESETS.items() for url in urls
])
def test_preset_screens_its_providers_urls(name: str, url: str) -> None:
    assert route_name(load(name), url) == PRESETS[name][0]


@pytest.mark.parametrize("url", [url for _, urls in PRESETS.values() for url in urls])
def test_all_providers_screens_every_presets_urls(url: str) -> None:
    assert route_name(load("all-providers"), url) is not None


@pytest.mark.parametrize("name", PRESET_FILES)
def test_preset_leaves_unrelated_urls_alone(name: str) -> None:
    config = load(name)
    matched = {url: route_name(config, url) for url in UNRELATED}
    assert {url: r for url, r in matched.items() if r} == {}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_leaves_other_providers_alone(name: str) -> None:
    config = load(name)
    own_hosts = {host_and_path(url)[0] for url in PRESETS[name][1]}
    for other, (_, urls) in PRESETS.items():
        for url in urls:
            if other != name and host_and_path(url)[0] not in own_hosts:
                assert route_name(config, url) is None, (other, url)


def test_all_providers_is_the_union_of_the_presets() -> None:
    """Every preset's route is in all-providers: a route with its hosts and at least its paths
    (Ollama and LM Studio share one route for localhost)."""
    combined = load("all-providers")
    for name in PRESETS:
        for route in load(name).routes:
            assert any(r.hosts == route.hosts and set(route.paths) <= set(r.paths)
                       for r in combined.routes), name


@pytest.mark.parametrize("name", PRESET_FILES)
def test_allow_hosts_of_preset_intercepts_exactly_its_hosts(name: str) -> None:
    # no Lakera key in the environment: printing the hosts does not need it
    pattern = allow_hosts_regex(config_hosts(str(CONFIGS / f"{name}.yaml")))
    globs = [h for route in load(name).routes for h in route.hosts]
    for url in [u for _, urls in PRESETS.values() for u in urls] + UNRELATED:
        host = host_and_path(url)[0]
        port = urlsplit(url).port or 443
        intercepted = re.search(pattern, f"{host}:{port}", re.IGNORECASE) is not None
        assert intercepted == any(fnmatch.fnmatchcase(host, g) for g in globs), (name, url)


@pytest.mark.parametrize("url", [url for name in ("openai", "gemini")
                                 for url in PRESETS[name][1]])
def test_builtin_defaults_screen_the_main_providers_urls(url: str) -> None:
    """Without a file (SPEC section 1), the well-known providers are guarded, Gemini's native
    API (google-genai) included: its host is intercepted either way."""
    assert route_name(load_config(None, ENV), url) is not None
