"""Routes and protocols read the path as upstreams route it, and the route is chosen by where
the connection goes, not by the Host header (lakera_addon.routing, configuration.route_for)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from lakera_addon import protocols
from lakera_addon.configuration import parse_config
from lakera_addon.routing import detect_protocol
from lakera_addon.routing import gemini_model
from lakera_addon.routing import gemini_streams
from lakera_addon.routing import guess_protocol
from lakera_addon.routing import path_forms
from tests.fuzz import examples

CONFIG = parse_config({"api_key": "k", "routes": [
    {"name": "weak", "hosts": ["weak.example"], "action": "alert", "fail_open": True},
    {"name": "chat", "hosts": ["api.example"], "paths": ["/v1/chat/completions"]},
    {"name": "gemini", "hosts": ["g.example"], "paths": ["/v1*/models/*:generateContent"]},
]}, "test.yaml", {})

SAME_ENDPOINT = [
    "/v1/chat/completions", "/V1/Chat/Completions", "/v1//chat/completions",
    "/v1/chat/completions/", "/v1/./chat/completions", "/v1/x/../chat/completions",
    "/%76%31/chat/completions", "/v1/chat%2Fcompletions", "/v1/chat/%2563ompletions",
    "/v1/chat/completions;jsessionid=1", "/v1\\chat\\completions",
    "/v1/chat/completions?stream=true", "/v1/chat/completions#x",
]


@pytest.mark.parametrize("path", SAME_ENDPOINT)
def test_a_path_spelled_another_way_still_matches_its_route(path: str) -> None:
    route = CONFIG.route_for(("api.example",), path)
    assert route is not None and route.name == "chat"


@pytest.mark.parametrize("path", ["/v1/chat/completion", "/v2/chat/completions", "/v1/chat"])
def test_other_paths_do_not(path: str) -> None:
    assert CONFIG.route_for(("api.example",), path) is None


@pytest.mark.parametrize("path", ["/v1beta/models/g:generateContent",
                                  "/V1BETA/models/g:GENERATECONTENT",
                                  "/v1beta/models/g%3AgenerateContent"])
def test_gemini_paths_in_any_spelling(path: str) -> None:
    route = CONFIG.route_for(("g.example",), path)
    assert route is not None and route.name == "gemini"


def test_the_destination_chooses_the_route_not_the_host_header() -> None:
    route = CONFIG.route_for(("api.example",), "/v1/chat/completions", ("weak.example",))
    assert route is not None and route.name == "chat"


def test_the_host_header_counts_only_where_the_destination_matches_no_route() -> None:
    route = CONFIG.route_for(("10.0.0.1",), "/v1/chat/completions", ("api.example",))
    assert route is not None and route.name == "chat"
    assert CONFIG.route_for(("10.0.0.1",), "/x", ("nowhere.example",)) is None


@pytest.mark.parametrize(("path", "expected"), [
    ("/V1/MESSAGES/", protocols.ANTHROPIC_MESSAGES),
    ("/v1//messages", protocols.ANTHROPIC_MESSAGES),
    ("/v1/Responses", protocols.OPENAI_RESPONSES),
    ("/API/CHAT/", protocols.OLLAMA_CHAT),
    ("/api/%67enerate", protocols.OLLAMA_GENERATE),
    ("/v1beta/models/g:StreamGenerateContent", protocols.GEMINI_GENERATE),
])
def test_protocol_detection_reads_the_path_the_same_way(path: str, expected: str) -> None:
    body = {"model": "m", "input": "x", "messages": [], "prompt": "p"}
    assert detect_protocol("auto", path, body) == expected


def test_gemini_method_and_model_in_any_case() -> None:
    assert gemini_streams("/v1beta/models/m:STREAMGENERATECONTENT?alt=sse")
    assert gemini_model("/v1beta/models/Gemini%2D2:generateContent") == "Gemini-2"


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=60))
def test_path_forms_never_raise_and_are_lowercase(path: str) -> None:
    forms = path_forms(path)
    assert forms and all(form == form.lower() for form in forms)


@pytest.mark.parametrize(("path", "body", "expected"), [
    # the Responses API's other endpoints (`client.responses.compact`, `.input_tokens`)
    ("/v1/responses/compact", {"model": "m", "input": [{"role": "user", "content": "x"}]},
     protocols.OPENAI_RESPONSES),
    ("/v1/responses/input_tokens", {"input": "x"}, protocols.OPENAI_RESPONSES),
    ("/openai/v1/Responses/compact/", {"input": ["x"], "instructions": "i"},
     protocols.OPENAI_RESPONSES),
    ("/v1/responses", {"messages": []}, protocols.OPENAI_CHAT),
    ("/v1/embeddings", {"input": "x"}, protocols.OPENAI_EMBEDDINGS),
    # Anthropic bodies on Bedrock's and Vertex's paths
    ("/model/anthropic.claude-v2/invoke", {"anthropic_version": "bedrock-2023-05-31",
                                           "messages": []}, protocols.ANTHROPIC_MESSAGES),
    ("/model/anthropic.claude-v2/invoke-with-response-stream",
     {"anthropic_version": "bedrock-2023-05-31", "messages": []},
     protocols.ANTHROPIC_MESSAGES),
    ("/v1/projects/p/locations/l/publishers/anthropic/models/c:rawPredict",
     {"anthropic_version": "vertex-2023-10-16", "messages": []},
     protocols.ANTHROPIC_MESSAGES),
    ("/v1/projects/p/locations/l/publishers/anthropic/models/c:streamRawPredict",
     {"anthropic_version": "vertex-2023-10-16", "system": "s"},
     protocols.ANTHROPIC_MESSAGES),
    # a native path stays native (Ollama's server reads its own fields)
    ("/api/chat", {"model": "m", "anthropic_version": "x", "messages": []},
     protocols.OLLAMA_CHAT),
    # Bedrock Converse: read as chat (its other fields are screened as unknown keys)
    ("/model/x/converse", {"messages": [], "system": [{"text": "s"}]}, protocols.OPENAI_CHAT),
    ("/model/x/converse-stream", {"messages": []}, protocols.OPENAI_CHAT),
])
def test_protocols_of_other_endpoints(path: str, body: dict[str, object],
                                      expected: str) -> None:
    assert detect_protocol("auto", path, body) == expected


def test_guess_protocol_of_responses_subpaths() -> None:
    assert guess_protocol("/v1/responses/compact") == protocols.OPENAI_RESPONSES
    assert guess_protocol("/v1/embeddings") == protocols.OPENAI_EMBEDDINGS
