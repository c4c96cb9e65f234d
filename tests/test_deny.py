"""The deny shapes (SPEC section 6) on the wire: headers, compact UTF-8 JSON, the SSE and
NDJSON framing of each protocol, Gemini's JSON array, the addon reading its own denies back, and
a deny that cannot fail to build (the last resort, odd echoed fields). The official SDKs reading
them: tests/test_deny_sdks.py."""

from __future__ import annotations

import json

import pytest

from lakera_addon.answer_text import response_text
from lakera_addon.assembly import assemble
from lakera_addon.deny import CUT_PROTOCOLS
from lakera_addon.deny import LAST_RESORT_TEXT
from lakera_addon.deny import build_deny
from lakera_addon.deny import cut_ending
from lakera_addon.deny import last_resort
from lakera_addon.deny import last_resort_cut
from lakera_addon.protocols import ALL
from lakera_addon.protocols import Protocol
from lakera_addon.routing import gemini_json_array

TEXT = 'Request blocked by Lakera Guard. Flagged: "prompt_attack" — ü 🚫 \\ end'
MODEL = "gpt-test-model"
RETRIED = [408, 409, 429, 500, 502, 503]
NOT_RETRIED = [200, 201, 400, 401, 403, 404, 422]


NATIVE = ("gemini-generate", "ollama-chat", "ollama-generate")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("protocol", ALL)
@pytest.mark.parametrize("status", RETRIED + NOT_RETRIED)
def test_headers(protocol: Protocol, stream: bool, status) -> None:
    deny = build_deny(protocol, TEXT, status=status, stream=stream, model=MODEL)
    # the native protocols answer an error status with a JSON error, streamed or not
    streamed = stream and protocol != "openai-embeddings" and not (
        protocol in NATIVE and status >= 400)
    stream_type = ("application/x-ndjson" if protocol.startswith("ollama")
                   else "text/event-stream; charset=utf-8")
    expected = {
        "content-type": stream_type if streamed else "application/json",
        "x-lakera-guard": "blocked",
    }
    if streamed:
        expected["cache-control"] = "no-cache"
    if status in RETRIED:
        expected["x-should-retry"] = "false"
    assert deny.headers == expected
    if protocol != "openai-embeddings":
        assert deny.status == status


@pytest.mark.parametrize("protocol", ALL)
def test_non_streamed_body_is_compact_utf8_json(protocol: Protocol) -> None:
    deny = build_deny(protocol, TEXT, status=200, stream=False, model=MODEL)
    decoded = deny.body.decode("utf-8")
    assert TEXT.replace("\\", "\\\\").replace('"', '\\"') in decoded  # not \\u-escaped
    assert json.dumps(json.loads(decoded), ensure_ascii=False, separators=(",", ":")) == decoded


def sse_events(body: bytes) -> list[tuple[str | None, str]]:
    text = body.decode("utf-8")
    assert text.endswith("\n\n")
    events = []
    for block in text[:-2].split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(fields) <= {"event", "data"}
        events.append((fields.get("event"), fields["data"]))
    return events


def test_chat_stream_wire_format() -> None:
    deny = build_deny("openai-chat", TEXT, status=200, stream=True, model=None)
    events = sse_events(deny.body)
    assert all(event is None for event, _ in events)
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": TEXT},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert {c["model"] for c in chunks} == {"lakera-guard"}


@pytest.mark.parametrize("protocol", ["anthropic-messages", "openai-responses"])
def test_named_stream_wire_format(protocol: Protocol) -> None:
    deny = build_deny(protocol, TEXT, status=200, stream=True, model=MODEL)
    for event, data in sse_events(deny.body):
        assert json.loads(data)["type"] == event


@pytest.mark.parametrize("protocol", ["openai-chat", "openai-responses", "anthropic-messages"])
def test_model_defaults_and_ids_differ(protocol: Protocol) -> None:
    first = json.loads(build_deny(protocol, TEXT, status=200, stream=False, model=None).body)
    second = json.loads(build_deny(protocol, TEXT, status=200, stream=False, model=None).body)
    assert first["model"] == "lakera-guard"
    assert first["id"] != second["id"]


# --- the native protocols: Gemini and ollama ----------------------------------------------

GEMINI_PATH = f"/v1beta/models/{MODEL}:generateContent"
GEMINI_SSE_PATH = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
GEMINI_ARRAY_PATH = f"/v1beta/models/{MODEL}:streamGenerateContent"


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_stream_without_alt_sse_is_a_json_array(stream: bool) -> None:
    """`:streamGenerateContent` without `alt=sse` answers one JSON array of chunks, whether the
    deny is for the request (streams: the path says so) or for a JSON answer."""
    deny = build_deny("gemini-generate", TEXT, status=200, stream=stream, model=MODEL,
                      json_array=gemini_json_array(f"/block{GEMINI_ARRAY_PATH}?key=k"))
    assert deny.headers["content-type"] == "application/json"
    chunks = json.loads(deny.body)
    assert isinstance(chunks, list) and len(chunks) == 1
    assert chunks[0]["candidates"][0]["finishReason"] == "STOP"
    assert response_text("gemini-generate", chunks) == TEXT


@pytest.mark.parametrize(("protocol", "path"), [
    ("openai-chat", ""), ("anthropic-messages", ""), ("openai-responses", ""),
    ("gemini-generate", GEMINI_SSE_PATH), ("ollama-chat", "/api/chat"),
    ("ollama-generate", "/api/generate")])
def test_streamed_deny_assembles_to_its_text(protocol: Protocol, path: str) -> None:
    """What the addon reads back of its own streamed deny (a held stream re-framed by masking
    goes through build_deny): the whole text, a complete stream."""
    deny = build_deny(protocol, TEXT, status=200, stream=True, model=MODEL,
                      json_array=gemini_json_array(path))
    result = assemble(protocol, deny.body)
    assert (result.text, result.complete) == (TEXT, True)


@pytest.mark.parametrize(("protocol", "path"), [
    ("gemini-generate", GEMINI_PATH), ("ollama-chat", "/api/chat"),
    ("ollama-generate", "/api/generate")])
def test_native_json_deny_reads_as_its_text(protocol: Protocol, path: str) -> None:
    deny = build_deny(protocol, TEXT, status=200, stream=False, model=None,
                      json_array=gemini_json_array(path))
    body = json.loads(deny.body)
    assert response_text(protocol, body) == TEXT
    model = body["modelVersion"] if protocol == "gemini-generate" else body["model"]
    assert model == "lakera-guard"


def test_ollama_ndjson_wire_format() -> None:
    deny = build_deny("ollama-chat", TEXT, status=200, stream=True, model=MODEL)
    lines = deny.body.decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 3  # every line ends with LF
    first, last = (json.loads(line) for line in lines[:2])
    assert first["message"] == {"role": "assistant", "content": TEXT}
    assert first["done"] is False
    assert last["done"] is True and last["done_reason"] == "stop"
    assert last["message"]["content"] == ""


# --- a deny can never fail -----------------------------------------------------------------

SURROGATE = "\ud800"


@pytest.mark.parametrize("protocol", ALL)
@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_surrogate_in_the_model_is_escaped_not_fatal(protocol: Protocol,
                                                            stream: bool) -> None:
    deny = build_deny(protocol, TEXT + SURROGATE, status=200, stream=stream, model=SURROGATE)
    deny.body.decode("utf-8")  # valid UTF-8
    if protocol != "openai-embeddings":
        assert b"\\ud800" in deny.body


@pytest.mark.parametrize("protocol", sorted(CUT_PROTOCOLS))
@pytest.mark.parametrize("last", [
    {"id": SURROGATE, "model": SURROGATE, "item_id": SURROGATE, "responseId": SURROGATE,
     "modelVersion": SURROGATE},
    {"id": {"a": [1]}, "created": "x", "index": [], "sequence_number": True,
     "output_index": -4, "choices": [{"index": {"deep": 1}}], "candidates": "no"},
    {"id": "x" * 100_000, "created": 2**80},
])
def test_cut_endings_take_only_safe_echoed_fields(protocol: Protocol,
                                                  last: dict[str, object]) -> None:
    ending = cut_ending(protocol, TEXT, last, SURROGATE, sent_text="so far")
    ending.decode("utf-8")
    assert len(ending) < 5000  # an echoed id is cut to a modest length
    assert b"{'a'" not in ending and b'"deep"' not in ending  # odd types are not echoed


@pytest.mark.parametrize("protocol", ALL)
@pytest.mark.parametrize("stream", [False, True])
def test_the_last_resort_is_built_ahead_for_every_protocol(protocol: Protocol,
                                                           stream: bool) -> None:
    deny = last_resort(protocol, stream)
    assert deny.headers["x-lakera-guard"] == "blocked" and LAST_RESORT_TEXT.encode() in deny.body
    if protocol in CUT_PROTOCOLS:
        assert LAST_RESORT_TEXT.encode() in last_resort_cut(protocol)
