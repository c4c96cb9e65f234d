"""The deny shapes (SPEC section 6) read by the real openai, anthropic, google-genai and ollama
SDKs through their HTTP client's MockTransport: a 2xx deny reads as a normal answer carrying the
deny text, any other status raises the SDK's status error, never retried, with the text in it.
(Integration: the SDKs take seconds to import; tests/test_deny.py checks the wire format.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import httpx2
import ollama
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from lakera_addon.deny import DenyResponse
from lakera_addon.deny import build_deny
from lakera_addon.protocols import Protocol
from lakera_addon.routing import gemini_json_array
from tests.test_deny import GEMINI_PATH
from tests.test_deny import GEMINI_SSE_PATH
from tests.test_deny import MODEL
from tests.test_deny import TEXT

STATUSES = [200, 403, 503]
RETRIED = [408, 409, 429, 500, 502, 503]


class Server:
    """Answers every request with one deny and counts the calls."""

    def __init__(self, deny: DenyResponse) -> None:
        self.deny = deny
        self.calls: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.calls.append(request)
        return httpx2.Response(self.deny.status, headers=self.deny.headers, content=self.deny.body)

    def http_client(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self))


def openai_client(server: Server, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://test/v1",
        api_key="x",
        max_retries=max_retries,
        http_client=server.http_client(),
    )


def anthropic_client(server: Server, max_retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url="http://test",
        api_key="x",
        max_retries=max_retries,
        http_client=server.http_client(),
    )


# --- one way to call each protocol through its SDK, returning (text, model) ----------------

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def chat_plain(server: Server, model: str, retries: int = 0) -> tuple[str, str]:
    answer = openai_client(server, retries).chat.completions.create(model=model, messages=MESSAGES)
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-")
    assert isinstance(answer.created, int)
    (choice,) = answer.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.refusal is None
    assert answer.usage is not None and answer.usage.total_tokens == 0
    return choice.message.content or "", answer.model


def chat_stream(server: Server, model: str, retries: int = 0) -> tuple[str, str]:
    chunks = list(
        openai_client(server, retries).chat.completions.create(
            model=model, messages=MESSAGES, stream=True
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert len({c.id for c in chunks}) == 1
    return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].model


def responses_plain(server: Server, model: str, retries: int = 0) -> tuple[str, str]:
    answer = openai_client(server, retries).responses.create(model=model, input="hi")
    assert answer.object == "response" and answer.status == "completed"
    assert answer.id.startswith("resp_")
    (item,) = answer.output
    assert item.type == "message" and item.id.startswith("msg_") and item.status == "completed"
    assert answer.usage is not None and answer.usage.total_tokens == 0
    assert answer.error is None
    return answer.output_text, str(answer.model)


def responses_stream(server: Server, model: str, retries: int = 0) -> tuple[str, str]:
    events = list(
        openai_client(server, retries).responses.create(model=model, input="hi", stream=True)
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    for expected in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
    ):
        assert expected in types
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == deltas
    assert completed.response.id == events[0].response.id
    return deltas, str(completed.response.model)


def responses_stream_helper(server: Server, model: str, retries: int = 0) -> tuple[str, str]:
    with openai_client(server, retries).responses.stream(model=model, input="hi") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text
    return final.output_text, str(final.model)


def messages_plain(server: Server, model: str, retries: int = 0) -> tuple[str, str]:
    answer = anthropic_client(server, retries).messages.create(
        model=model, max_tokens=16, messages=MESSAGES
    )
    assert answer.type == "message" and answer.role == "assistant"
    assert answer.id.startswith("msg_")
    assert answer.stop_reason == "end_turn" and answer.stop_sequence is None
    assert answer.usage.input_tokens == 0 and answer.usage.output_tokens == 0
    (block,) = answer.content
    assert block.type == "text"
    return block.text, str(answer.model)


def messages_stream(server: Server, model: str, retries: int = 0) -> tuple[str, str]:
    with anthropic_client(server, retries).messages.stream(
        model=model, max_tokens=16, messages=MESSAGES
    ) as stream:
        text = stream.get_final_text()
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    return text, str(final.model)


def messages_raw_stream(server: Server, model: str, retries: int = 0) -> tuple[str, str]:
    events = list(
        anthropic_client(server, retries).messages.create(
            model=model, max_tokens=16, messages=MESSAGES, stream=True
        )
    )
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]
    assert start.type == "message_start"
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    return text, str(start.message.model)


Reader = Callable[[Server, str, int], tuple[str, str]]

READERS: dict[tuple[Protocol, bool], list[Reader]] = {
    ("openai-chat", False): [chat_plain],
    ("openai-chat", True): [chat_stream],
    ("openai-responses", False): [responses_plain],
    ("openai-responses", True): [responses_stream, responses_stream_helper],
    ("anthropic-messages", False): [messages_plain],
    ("anthropic-messages", True): [messages_stream, messages_raw_stream],
}

CASES = [
    pytest.param(protocol, stream, reader, id=f"{protocol}-{reader.__name__}")
    for (protocol, stream), readers in READERS.items()
    for reader in readers
]

STATUS_ERRORS: dict[int, tuple[type[Exception], type[Exception]]] = {
    403: (openai.PermissionDeniedError, anthropic.PermissionDeniedError),
    503: (openai.InternalServerError, anthropic.InternalServerError),
}


def strings_in(value: object) -> list[str]:
    """Every string inside a decoded JSON value, or inside the JSON of an SSE body's events."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    if not isinstance(value, str):
        return []
    found = [value]
    for line in value.splitlines():
        if line.startswith("data: {"):
            found += strings_in(json.loads(line.removeprefix("data: ")))
    return found


def error_texts(error: Exception) -> list[str]:
    """What a status error carries that a user might read: its message and its body."""
    return [str(error), *strings_in(getattr(error, "body", None))]


@pytest.mark.integration
@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize(("protocol", "stream", "reader"), CASES)
def test_sdk_reads_the_deny(protocol: Protocol, stream: bool, reader: Reader, status) -> None:
    server = Server(build_deny(protocol, TEXT, status=status, stream=stream, model=MODEL))
    if status < 300:
        assert reader(server, MODEL, 0) == (TEXT, MODEL)
    else:
        openai_error, anthropic_error = STATUS_ERRORS[status]
        expected = anthropic_error if protocol == "anthropic-messages" else openai_error
        with pytest.raises(expected) as raised:
            reader(server, MODEL, 0)
        assert getattr(raised.value, "status_code", None) == status
        assert TEXT in error_texts(raised.value)  # verbatim, not escaped
        if protocol != "anthropic-messages" and not stream:
            assert str(raised.value) == f"Error code: {status} - {TEXT}"
    assert len(server.calls) == 1


@pytest.mark.integration
@pytest.mark.parametrize("max_retries", [0, 2])
@pytest.mark.parametrize("status", [*RETRIED, 403])
@pytest.mark.parametrize(("protocol", "stream", "reader"), CASES)
def test_deny_is_never_retried(
    protocol: Protocol, stream: bool, reader: Reader, status, max_retries
) -> None:
    server = Server(build_deny(protocol, TEXT, status=status, stream=stream, model=MODEL))
    with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as raised:
        reader(server, MODEL, max_retries)
    assert len(server.calls) == 1
    assert TEXT in error_texts(raised.value)  # verbatim, not escaped


@pytest.mark.integration
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "error"),
    [
        (200, openai.BadRequestError),
        (204, openai.BadRequestError),
        (400, openai.BadRequestError),
        (403, openai.PermissionDeniedError),
        (429, openai.RateLimitError),
        (503, openai.InternalServerError),
    ],
)
def test_embeddings_deny_raises(status, error, stream) -> None:
    deny = build_deny("openai-embeddings", TEXT, status=status, stream=stream, model=MODEL)
    assert deny.status == max(status, 400)
    assert deny.headers["content-type"] == "application/json"
    server = Server(deny)
    with pytest.raises(error) as raised:
        openai_client(server, max_retries=2).embeddings.create(model=MODEL, input="hi")
    assert raised.value.status_code == deny.status
    assert raised.value.message == f"Error code: {deny.status} - {TEXT}"
    assert raised.value.body == {
        "message": TEXT,
        "type": "content_policy_violation",
        "param": None,
        "code": "content_policy_violation",
    }
    assert raised.value.code == "content_policy_violation"
    assert len(server.calls) == 1


@pytest.mark.integration
@pytest.mark.parametrize("text", ["", "x", "multi\nline\n\ntext\r\n", "data: [DONE]\n\n"])
@pytest.mark.parametrize(("protocol", "stream", "reader"), CASES)
def test_awkward_texts_survive(protocol: Protocol, stream: bool, reader: Reader, text) -> None:
    server = Server(build_deny(protocol, text, status=200, stream=stream, model=MODEL))
    assert reader(server, MODEL, 0) == (text, MODEL)


# --- the native protocols: google-genai and ollama (both on httpx) --------------------------

class NativeServer:
    """Answers every request with one deny, over httpx (which both SDKs use)."""

    def __init__(self, deny: DenyResponse) -> None:
        self.deny = deny
        self.calls: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        return httpx.Response(self.deny.status, headers=self.deny.headers, content=self.deny.body)


def genai_client(server: NativeServer) -> genai.Client:
    # the SDK's default: no retry options, one attempt
    return genai.Client(api_key="x", http_options=genai_types.HttpOptions(
        base_url="http://test", api_version="v1beta",
        client_args={"transport": httpx.MockTransport(server)}))


def ollama_client(server: NativeServer) -> ollama.Client:
    return ollama.Client(host="http://test", transport=httpx.MockTransport(server))


def gemini_plain(server: NativeServer, model: str) -> tuple[str, str]:
    client = genai_client(server)  # kept: the client closes its connections when collected
    answer = client.models.generate_content(model=model, contents="hi")
    assert server.calls[-1].url.path == f"/v1beta/models/{model}:generateContent"
    (candidate,) = answer.candidates or []
    assert candidate.finish_reason == genai_types.FinishReason.STOP
    assert answer.usage_metadata is not None and answer.usage_metadata.total_token_count == 0
    return answer.text or "", str(answer.model_version)


def gemini_stream(server: NativeServer, model: str) -> tuple[str, str]:
    client = genai_client(server)
    chunks = list(client.models.generate_content_stream(model=model, contents="hi"))
    assert server.calls[-1].url.params["alt"] == "sse"
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    return "".join(c.text or "" for c in chunks), str(chunks[-1].model_version)


def gemini_chat(server: NativeServer, model: str) -> tuple[str, str]:
    """The chat helper keeps a valid answer as the model's turn of its history."""
    client = genai_client(server)
    chat = client.chats.create(model=model)
    answer = chat.send_message("hi")
    history = chat.get_history(curated=True)
    assert [c.role for c in history] == ["user", "model"]
    assert history[1].parts[0].text == answer.text
    return answer.text or "", str(answer.model_version)


def ollama_chat_plain(server: NativeServer, model: str) -> tuple[str, str]:
    answer = ollama_client(server).chat(model=model, messages=[{"role": "user", "content": "hi"}])
    assert answer.done is True and answer.done_reason == "stop"
    assert answer.message.role == "assistant"
    return answer.message.content or "", str(answer.model)


def ollama_chat_stream(server: NativeServer, model: str) -> tuple[str, str]:
    parts = list(ollama_client(server).chat(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert [p.done for p in parts] == [False, True]
    assert parts[-1].done_reason == "stop"
    return "".join(p.message.content or "" for p in parts), str(parts[-1].model)


def ollama_generate_plain(server: NativeServer, model: str) -> tuple[str, str]:
    answer = ollama_client(server).generate(model=model, prompt="hi")
    assert answer.done is True and answer.done_reason == "stop"
    assert answer.response is not None
    return answer.response, str(answer.model)


def ollama_generate_stream(server: NativeServer, model: str) -> tuple[str, str]:
    parts = list(ollama_client(server).generate(model=model, prompt="hi", stream=True))
    assert [p.done for p in parts] == [False, True]
    assert all(p.response is not None for p in parts)
    return "".join(p.response or "" for p in parts), str(parts[-1].model)


NativeReader = Callable[[NativeServer, str], tuple[str, str]]
# (protocol, the request's path, streamed?, reader)
NATIVE_READERS: list[tuple[Protocol, str, bool, NativeReader]] = [
    ("gemini-generate", GEMINI_PATH, False, gemini_plain),
    ("gemini-generate", GEMINI_PATH, False, gemini_chat),
    ("gemini-generate", GEMINI_SSE_PATH, True, gemini_stream),
    ("ollama-chat", "/api/chat", False, ollama_chat_plain),
    ("ollama-chat", "/api/chat", True, ollama_chat_stream),
    ("ollama-generate", "/api/generate", False, ollama_generate_plain),
    ("ollama-generate", "/api/generate", True, ollama_generate_stream),
]
NATIVE_CASES = [pytest.param(*case, id=f"{case[0]}-{case[3].__name__}")
                for case in NATIVE_READERS]


def native_error(protocol: Protocol, reader: NativeReader, server: NativeServer
                 ) -> tuple[int, str]:
    """(status, message) of the error the SDK raises."""
    if protocol == "gemini-generate":
        with pytest.raises(genai_errors.APIError) as gemini_raised:
            reader(server, MODEL)
        return gemini_raised.value.code, str(gemini_raised.value.message)
    with pytest.raises(ollama.ResponseError) as ollama_raised:
        reader(server, MODEL)
    assert str(ollama_raised.value) == f"{TEXT} (status code: {ollama_raised.value.status_code})"
    return ollama_raised.value.status_code, ollama_raised.value.error


@pytest.mark.integration
@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize(("protocol", "path", "stream", "reader"), NATIVE_CASES)
def test_native_sdk_reads_the_deny(protocol: Protocol, path: str, stream: bool,
                                   reader: NativeReader, status) -> None:
    server = NativeServer(build_deny(protocol, TEXT, status=status, stream=stream, model=MODEL,
                                     json_array=gemini_json_array(path)))
    if status < 300:
        assert reader(server, MODEL) == (TEXT, MODEL)
    else:
        assert native_error(protocol, reader, server) == (status, TEXT)
    assert len(server.calls) == 1  # neither SDK retries by default


@pytest.mark.integration
@pytest.mark.parametrize("status", [403, 429, 503])
def test_gemini_error_envelope(status) -> None:
    deny = build_deny("gemini-generate", TEXT, status=status, stream=True, model=MODEL,
                      json_array=gemini_json_array(GEMINI_SSE_PATH))
    expected = {403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}[status]
    assert json.loads(deny.body) == {"error": {"code": status, "message": TEXT,
                                               "status": expected}}
    server = NativeServer(deny)
    with pytest.raises(genai_errors.APIError) as raised:
        gemini_stream(server, MODEL)
    assert raised.value.status == expected


@pytest.mark.integration
@pytest.mark.parametrize("text", ["", "x", "multi\nline\n\ntext\r\n", "data: [DONE]\n\n",
                                  '{"done": true}\n'])
@pytest.mark.parametrize(("protocol", "path", "stream", "reader"), NATIVE_CASES)
def test_native_awkward_texts_survive(protocol: Protocol, path: str, stream: bool,
                                      reader: NativeReader, text) -> None:
    server = NativeServer(build_deny(protocol, text, status=200, stream=stream, model=MODEL,
                                     json_array=gemini_json_array(path)))
    assert reader(server, MODEL) == (text, MODEL)
