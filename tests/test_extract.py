"""Request text extraction per protocol: what Lakera is sent (SPEC section 3)."""

import pytest

from lakera_addon import protocols
from lakera_addon.extract import BodyShapeError
from lakera_addon.extract import latest_turn
from lakera_addon.extract import request_messages
from lakera_addon.extract import request_streams
from lakera_addon.routing import detect_protocol

CASES = [
    (
        "chat: roles kept, developer as system, parts joined, tool kept",
        protocols.OPENAI_CHAT,
        {"messages": [
            {"role": "developer", "content": "be nice"},
            {"role": "system", "content": [{"type": "text", "text": "sys"}]},
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "image_url", "image_url": {"url": "x"}},
                                         {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "tool", "tool_call_id": "1", "content": "tool says"},
        ]},
        [("system", "be nice"), ("system", "sys"), ("user", "a b"), ("tool", "tool says")],
    ),
    (
        "chat: empty messages",
        protocols.OPENAI_CHAT,
        {"messages": [{"role": "user", "content": ""}]},
        [],
    ),
    (
        "anthropic: system string, text blocks, tool_result text as tool",
        protocols.ANTHROPIC_MESSAGES,
        {"system": "you are", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "yo"},
                                              {"type": "tool_use", "id": "t", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t",
                 "content": [{"type": "text", "text": "web page"}]},
                {"type": "tool_result", "tool_use_id": "u", "content": "plain"},
                {"type": "text", "text": "go on"}]},
        ]},
        [("system", "you are"), ("user", "hi"), ("assistant", "yo"),
         ("tool", "web page plain"), ("user", "go on")],
    ),
    (
        "anthropic: system as a list of blocks",
        protocols.ANTHROPIC_MESSAGES,
        {"system": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
         "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
        [("system", "one two")],
    ),
    (
        "responses: instructions, input string",
        protocols.OPENAI_RESPONSES,
        {"instructions": "inst", "input": "question"},
        [("system", "inst"), ("user", "question")],
    ),
    (
        "responses: items by role, function_call_output as tool, developer as system",
        protocols.OPENAI_RESPONSES,
        {"input": [
            {"role": "developer", "content": "dev"},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "q"},
                         {"type": "input_image", "image_url": "x"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "result text"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "ans"}]},
        ]},
        [("system", "dev"), ("user", "q"), ("tool", "result text"), ("assistant", "ans")],
    ),
    (
        "embeddings: string and list, token arrays skipped",
        protocols.OPENAI_EMBEDDINGS,
        {"input": ["one", [1, 2, 3], "two"]},
        [("user", "one"), ("user", "two")],
    ),
    ("embeddings: a single string", protocols.OPENAI_EMBEDDINGS, {"input": "x"}, [("user", "x")]),
]


@pytest.mark.parametrize(("name", "protocol", "body", "expected"), CASES, ids=[c[0] for c in CASES])
def test_request_messages(name, protocol, body, expected) -> None:
    messages = request_messages(protocol, body)
    assert [(m["role"], m["content"]) for m in messages] == expected


@pytest.mark.parametrize(
    ("protocol", "body"),
    [
        (protocols.OPENAI_CHAT, {"messages": "hi"}),
        (protocols.OPENAI_CHAT, {"messages": ["hi"]}),
        (protocols.ANTHROPIC_MESSAGES, {"system": "s"}),
        (protocols.OPENAI_RESPONSES, {"input": 5}),
        (protocols.OPENAI_RESPONSES, {"input": [5]}),
        (protocols.OPENAI_EMBEDDINGS, {"input": {"a": 1}}),
    ],
)
def test_wrong_shapes_raise(protocol, body) -> None:
    with pytest.raises(BodyShapeError):
        request_messages(protocol, body)


@pytest.mark.parametrize(
    ("declared", "path", "body", "expected"),
    [
        ("auto", "/v1/messages", {"messages": []}, protocols.ANTHROPIC_MESSAGES),
        ("auto", "/v1/messages?beta=true", {}, protocols.ANTHROPIC_MESSAGES),
        ("auto", "/v1/responses", {"input": "x"}, protocols.OPENAI_RESPONSES),
        ("auto", "/v1/responses", {"messages": []}, protocols.OPENAI_CHAT),
        ("auto", "/openai/deployments/x/chat/completions", {"messages": []},
         protocols.OPENAI_CHAT),
        ("auto", "/v1/embeddings", {"input": "x"}, protocols.OPENAI_EMBEDDINGS),
        ("auto", "/v1/whatever", {"prompt": "x"}, None),
        ("openai-chat", "/v1/messages", {}, protocols.OPENAI_CHAT),
    ],
)
def test_detect_protocol(declared, path, body, expected) -> None:
    assert detect_protocol(declared, path, body) == expected


def test_stream_flag() -> None:
    assert request_streams(protocols.OPENAI_CHAT, {"stream": True})
    assert not request_streams(protocols.OPENAI_CHAT, {"stream": "true"})
    assert not request_streams(protocols.OPENAI_EMBEDDINGS, {"stream": True})


@pytest.mark.parametrize(
    ("protocol", "body", "texts"),
    [
        ("openai-chat", {"messages": [
            {"role": "system", "content": "S"}, {"role": "user", "content": "old"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "tool", "content": "T1"}, {"role": "user", "content": "new"}]},
         ["S", "T1", "new"]),
        ("openai-chat", {"messages": [{"role": "user", "content": "only"}]}, ["only"]),
        ("openai-chat", {"messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a"}]}, []),
        ("anthropic-messages", {"system": "S", "messages": [
            {"role": "user", "content": "old"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t"}]},
            {"role": "user", "content": [{"type": "tool_result", "content": "R"}]}]},
         ["S", "R"]),
        ("openai-responses", {"instructions": "I", "input": [
            {"role": "user", "content": "old"},
            {"type": "function_call", "call_id": "c", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "O"}]}, ["I", "O"]),
        ("openai-responses", {"input": "just a string"}, ["just a string"]),
    ],
)
def test_latest_turn(protocol, body, texts) -> None:
    trimmed = latest_turn(protocol, body)
    assert [m["content"] for m in request_messages(protocol, trimmed)] == texts
