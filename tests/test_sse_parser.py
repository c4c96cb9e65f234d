"""The incremental SSE parser: WHATWG event-stream rules, whatever the chunking; and Gemini
streams, read as google-genai reads them."""

from __future__ import annotations

import time

import httpx
import pytest
from google.genai import _api_client as genai_api_client
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from lakera_addon.sse_parser import GeminiChunks
from lakera_addon.sse_parser import SSEEvent
from lakera_addon.sse_parser import SSEParser
from tests.fuzz import examples


def ev(
    data: str, event: str = "message", id: str | None = None, retry: int | None = None
) -> SSEEvent:
    return SSEEvent(event=event, data=data, id=id, retry=retry)


def parse(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    parser.finish()
    return events


RULES = [
    ("LF", [b"data: a\n\ndata: b\n\n"], [ev("a"), ev("b")]),
    ("CRLF", [b"data: a\r\n\r\ndata: b\r\n\r\n"], [ev("a"), ev("b")]),
    ("CR", [b"data: a\r\rdata: b\r\r"], [ev("a"), ev("b")]),
    ("mixed line ends", [b"data: a\r\ndata: b\rdata: c\n\r\n"], [ev("a\nb\nc")]),
    ("CRLF split across chunks is one line end",
     [b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"], [ev("a\nb")]),
    ("CR at chunk end then CR is two line ends", [b"data: a\r", b"\r"], [ev("a")]),
    ("CR at chunk end, empty chunk, then LF", [b"data: a\r", b"", b"\n\r\n"], [ev("a")]),
    ("multi-line data joined with LF", [b"data: one\ndata: two\ndata: three\n\n"],
     [ev("one\ntwo\nthree")]),
    ("empty data line counts", [b"data\n\n"], [ev("")]),
    ("two empty data lines", [b"data:\ndata:\n\n"], [ev("\n")]),
    ("comments ignored", [b": keep-alive\n\n:x\ndata: a\n: mid\n\n"], [ev("a")]),
    ("BOM stripped", [b"\xef\xbb\xbfdata: a\n\n"], [ev("a")]),
    ("BOM split across chunks", [b"\xef", b"\xbb", b"\xbfdata: a\n\n"], [ev("a")]),
    ("only the first BOM stripped", [b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n"], []),
    ("BOM later in the stream kept", [b"data: a\n\n\xef\xbb\xbfdata: b\n\n"], [ev("a")]),
    ("event type", [b"event: ping\ndata: {}\n\n"], [ev("{}", event="ping")]),
    ("event type reset after dispatch", [b"event: x\ndata: 1\n\ndata: 2\n\n"],
     [ev("1", event="x"), ev("2")]),
    ("empty event type is message", [b"event:\ndata: a\n\n"], [ev("a")]),
    ("id kept across events", [b"id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\n"],
     [ev("a", id="7"), ev("b", id="7"), ev("c", id="")]),
    ("id with NUL ignored", [b"id: 1\ndata: a\n\nid: 2\x00\ndata: b\n\n"],
     [ev("a", id="1"), ev("b", id="1")]),
    ("retry digits", [b"retry: 3000\ndata: a\n\n"], [ev("a", retry=3000)]),
    ("retry not digits ignored", [b"retry: 3s\ndata: a\n\nretry: \xc2\xb2\ndata: b\n\n"],
     [ev("a"), ev("b")]),
    ("retry with too many digits ignored", [b"retry: " + b"9" * 5000 + b"\ndata: a\n\n"],
     [ev("a")]),
    ("only one leading space removed", [b"data:  two\n\ndata:none\n\n"], [ev(" two"), ev("none")]),
    ("colon in value kept", [b'data: {"a": 1}\n\n'], [ev('{"a": 1}')]),
    ("no colon: field with empty value", [b"data\ndata\n\n"], [ev("\n")]),
    ("unknown fields ignored", [b"foo: bar\ndata: a\nDATA: b\n\n"], [ev("a")]),
    ("event without data not dispatched", [b"event: x\nid: 1\nretry: 5\n\ndata: a\n\n"],
     [ev("a", id="1")]),
    ("trailing incomplete event not dispatched", [b"data: a\n\ndata: b\n"], [ev("a")]),
    ("trailing unterminated line not dispatched", [b"data: a\n\ndata: b"], [ev("a")]),
    ("blank lines alone dispatch nothing", [b"\n\n\r\n\r"], []),
    ("other Unicode line separators do not end lines",
     ["data: a\x0bb\x1cc\x85d\u2028e\u2029f\x0cg\n\n".encode()],
     [ev("a\x0bb\x1cc\x85d\u2028e\u2029f\x0cg")]),
    ("UTF-8 split across chunks", [b"data: \xc3", b"\xa9t\xc3\xa9\n\n"], [ev("été")]),
    ("invalid UTF-8 replaced", [b"data: \xff\xfe\n\n"], [ev("\ufffd\ufffd")]),
    ("line split across many chunks", [b"da", b"ta", b": ", b"he", b"llo", b"\n", b"\n"],
     [ev("hello")]),
]


@pytest.mark.parametrize(("chunks", "expected"), [(c, e) for _, c, e in RULES],
                         ids=[name for name, _, _ in RULES])
def test_rules(chunks: list[bytes], expected: list[SSEEvent]) -> None:
    assert parse(chunks) == expected


@pytest.mark.parametrize(("chunks", "expected"), [(c, e) for _, c, e in RULES],
                         ids=[name for name, _, _ in RULES])
def test_rules_byte_by_byte(chunks: list[bytes], expected: list[SSEEvent]) -> None:
    whole = b"".join(chunks)
    assert parse([whole[i:i + 1] for i in range(len(whole))]) == expected


PENDING = [
    ("nothing fed", [], False),
    ("complete event", [b"data: a\n\n"], False),
    ("partial line", [b"data: a"], True),
    ("line but no blank line", [b"data: a\n"], True),
    ("event field only", [b"event: x\n"], True),
    ("partial UTF-8 sequence", [b"\xc3"], True),
    ("comment line only", [b": hi\n"], False),
    ("event without data dispatched away", [b"event: x\n\n"], False),
]


@pytest.mark.parametrize(("chunks", "pending"), [(c, p) for _, c, p in PENDING],
                         ids=[name for name, _, _ in PENDING])
def test_pending(chunks: list[bytes], pending: bool) -> None:
    parser = SSEParser()
    for chunk in chunks:
        parser.feed(chunk)
    assert parser.pending is pending
    parser.finish()
    assert parser.pending is False
    assert parser.feed(b"\n\n") == []  # what was pending is gone, not dispatched later


def test_bytes_seen() -> None:
    parser = SSEParser()
    parser.feed(b"data: a")
    parser.feed(b"")
    parser.feed(b"\n\n\xc3")
    assert parser.bytes_seen == 10


def test_events_returned_by_the_chunk_that_completes_them() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b\n\ndata: c\n") == [ev("a"), ev("b")]
    assert parser.feed(b"\n") == [ev("c")]


def test_large_stream_in_small_chunks_is_linear() -> None:
    # one 4 MB line fed 64 bytes at a time, then many small events
    line = b"data: " + b"x" * (4 * 1024 * 1024) + b"\n\n"
    events = b"".join(b"data: %d\n\n" % i for i in range(50_000))
    body = line + events
    parser = SSEParser()
    start = time.perf_counter()
    out: list[SSEEvent] = []
    for i in range(0, len(body), 64):
        out.extend(parser.feed(body[i:i + 64]))
    elapsed = time.perf_counter() - start
    assert len(out) == 50_001
    assert len(out[0].data) == 4 * 1024 * 1024
    assert out[-1].data == "49999"
    assert elapsed < 10


# --- properties ---------------------------------------------------------------------------

_PIECES = st.sampled_from([
    b"data: ", b"data:", b"data", b"event: ", b"id: ", b"retry: ", b": c", b"x", b"12",
    b"\r", b"\n", b"\r\n", b"\xef\xbb\xbf", b"\xc3\xa9", b"\xc3", b"\xff", b" ", b":",
    b"\x00", "\u2028".encode(),
])
_STREAMS = st.one_of(st.binary(max_size=300), st.lists(_PIECES, max_size=60).map(b"".join))


@settings(max_examples=examples(200), deadline=None)
@given(body=_STREAMS, data=st.data())
def test_any_chunking_gives_the_same_events(body: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=20)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert parse(chunks) == parse([body])


@settings(max_examples=examples(200), deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=20))
def test_random_bytes_never_raise(chunks: list[bytes]) -> None:
    parser = SSEParser()
    for chunk in chunks:
        for event in parser.feed(chunk):
            assert isinstance(event.data, str)
    parser.finish()
    assert parser.pending is False
    assert parser.bytes_seen == sum(len(c) for c in chunks)


# --- Gemini streams, read as google-genai reads them ---------------------------------------


def gemini_chunks(chunks: list[bytes]) -> list[str]:
    reader = GeminiChunks()
    out: list[str] = []
    for chunk in chunks:
        out.extend(reader.feed(chunk))
    return out + reader.finish()


def google_genai_chunks(chunks: list[bytes]) -> list[str]:
    """What google-genai itself makes of the same bytes (its HttpResponse over httpx)."""
    response = httpx.Response(200, content=iter(chunks))
    reader = genai_api_client.HttpResponse(headers={}, response_stream=response)
    return list(reader._iter_response_stream())


GEMINI_RULES = [
    ("data events", [b'data: {"a":1}\r\n\r\ndata: {"b":2}\r\n\r\n'], ['{"a":1}', '{"b":2}']),
    ("a bare JSON line is a chunk", [b'data: {"a":1}\n\n{"b":2}\n\n'], ['{"a":1}', '{"b":2}']),
    ("a last event needs no blank line", [b'data: {"a":1}\n\ndata: {"b":2}'],
     ['{"a":1}', '{"b":2}']),
    ("a last event ended by a lone CR", [b'data: {"a":1}\r'], ['{"a":1}']),
    ("raw JSON over several lines, until its braces balance",
     [b'{\n  "error": {\n    "code": 500, "message": "a } in a string"\n  }\n}\n'],
     ['{  "error": {    "code": 500, "message": "a } in a string"  }}']),
    ("an escaped quote in a raw string", [b'{"a": "x\\"}"}\n{"b": 1}\n'],
     ['{"a": "x\\"}"}', '{"b": 1}']),
    ("a raw line is a chunk at once, before the event it interrupts",
     [b'data: {"a":\n{"b":2}\ndata: 1}\n\n'], ['{"b":2}', '{"a":\n1}']),
    ("data: without its space is not data", [b'data:{"a":1}\n\n'], ['data:{"a":1}']),
    ("event and comment lines are raw chunks",
     [b'event: x\n: ping\ndata: {"a":1}\n\n'], ["event: x", ": ping", '{"a":1}']),
    ("no BOM is stripped", [b'\xef\xbb\xbfdata: {"a":1}\n\n'], ['\ufeffdata: {"a":1}']),
    ("unbalanced raw JSON is flushed at the end", [b'{"a": {\n'], ['{"a": {']),
    ("a CRLF split across chunks", [b'data: {"a":1}\r', b'\n\r', b'\n'], ['{"a":1}']),
    ("invalid UTF-8 replaced", [b'data: {"a":"\xff"}\n\n'], ['{"a":"\ufffd"}']),
]


@pytest.mark.parametrize(("chunks", "expected"), [r[1:] for r in GEMINI_RULES],
                         ids=[r[0] for r in GEMINI_RULES])
def test_gemini_chunks(chunks: list[bytes], expected: list[str]) -> None:
    assert gemini_chunks(chunks) == expected
    assert google_genai_chunks(chunks) == expected
    body = b"".join(chunks)
    assert gemini_chunks([body[i:i + 1] for i in range(len(body))]) == expected


_GEMINI_FRAGMENTS = st.sampled_from([
    b"data: ", b"data:", b"event: x", b": c", b"\n", b"\r", b"\r\n", b"{", b"}", b'"', b"\\",
    b'"text"', b":", b"1", b" ", b"\xff", b"\xc3", b"[", b"]", b"a",
])


@settings(max_examples=examples(300), deadline=None)
@given(parts=st.lists(_GEMINI_FRAGMENTS, max_size=40), data=st.data())
def test_gemini_chunks_are_google_genais(parts: list[bytes], data: st.DataObject) -> None:
    body = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert gemini_chunks(chunks) == google_genai_chunks([c for c in chunks if c])
