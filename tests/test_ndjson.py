"""The incremental NDJSON splitter (Ollama's streamed answers): whatever the chunking, the same
lines."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from lakera_addon.ndjson import NDJSONSplitter
from tests.fuzz import examples

BOM = b"\xef\xbb\xbf"


def split(chunks: list[bytes]) -> list[str]:
    splitter = NDJSONSplitter()
    lines: list[str] = []
    for chunk in chunks:
        lines.extend(splitter.feed(chunk))
    lines.extend(splitter.finish())
    return lines


def reference(body: bytes) -> list[str]:
    """What the splitter must give for a whole body: its non-blank lines, one leading BOM
    stripped, decoded with invalid UTF-8 replaced."""
    body = body.removeprefix(BOM)
    return [line.decode("utf-8", "replace") for line in body.split(b"\n") if line.strip()]


RULES = [
    ("LF-terminated lines", [b'{"a":1}\n{"b":2}\n'], ['{"a":1}', '{"b":2}']),
    ("CRLF: the CR stays (JSON whitespace)", [b'{"a":1}\r\n{"b":2}\r\n'],
     ['{"a":1}\r', '{"b":2}\r']),
    ("a lone CR does not end a line", [b'{"a":1}\r{"b":2}\n'], ['{"a":1}\r{"b":2}']),
    ("blank and whitespace lines skipped", [b'\n\n  \n{"a":1}\n\t\r\n'], ['{"a":1}']),
    ("last line without LF handed back by finish", [b'{"a":1}\n{"b":2}'], ['{"a":1}', '{"b":2}']),
    ("line split across many chunks", [b'{"a', b'":', b" 1", b"}", b"\n"], ['{"a": 1}']),
    ("UTF-8 character split across chunks", [b'{"t":"\xc3', b'\xa9t\xc3\xa9"}\n'],
     ['{"t":"été"}']),
    ("invalid UTF-8 replaced", [b"\xff\xfe\n"], ["\ufffd\ufffd"]),
    ("BOM stripped", [BOM + b'{"a":1}\n'], ['{"a":1}']),
    ("BOM split across chunks", [b"\xef", b"\xbb", b'\xbf{"a":1}\n'], ['{"a":1}']),
    ("only the first BOM stripped", [BOM + BOM + b"x\n"], ["\ufeffx"]),
    ("the start of a BOM alone is data", [b"\xef\xbb"], ["\ufffd"]),
    ("other Unicode line separators do not end lines", ['a\u2028b\x85c\n'.encode()],
     ["a\u2028b\x85c"]),
    ("nothing", [], []),
    ("empty chunks", [b"", b"", b"x", b"", b"\n"], ["x"]),
]


@pytest.mark.parametrize(("chunks", "expected"), [(c, e) for _, c, e in RULES],
                         ids=[name for name, _, _ in RULES])
def test_rules(chunks: list[bytes], expected: list[str]) -> None:
    assert split(chunks) == expected
    assert reference(b"".join(chunks)) == expected


@pytest.mark.parametrize(("chunks", "expected"), [(c, e) for _, c, e in RULES],
                         ids=[name for name, _, _ in RULES])
def test_rules_byte_by_byte(chunks: list[bytes], expected: list[str]) -> None:
    whole = b"".join(chunks)
    assert split([whole[i:i + 1] for i in range(len(whole))]) == expected


def test_lines_returned_by_the_chunk_that_completes_them() -> None:
    splitter = NDJSONSplitter()
    assert splitter.feed(b'{"a":') == []
    assert splitter.pending
    assert splitter.feed(b'1}\n{"b":2}\n{"c"') == ['{"a":1}', '{"b":2}']
    assert splitter.feed(b":3}\n") == ['{"c":3}']
    assert not splitter.pending
    assert splitter.finish() == []
    assert splitter.bytes_seen == 24


def test_large_stream_in_small_chunks_is_linear() -> None:
    # one 4 MB line fed 64 bytes at a time, then many small lines
    line = b'{"response":"' + b"x" * (4 * 1024 * 1024) + b'"}\n'
    body = line + b"".join(b'{"n":%d}\n' % i for i in range(50_000))
    splitter = NDJSONSplitter()
    start = time.perf_counter()
    out: list[str] = []
    for i in range(0, len(body), 64):
        out.extend(splitter.feed(body[i:i + 64]))
    elapsed = time.perf_counter() - start
    assert len(out) == 50_001
    assert len(out[0]) == len(line) - 1
    assert out[-1] == '{"n":49999}'
    assert elapsed < 10


# --- properties ---------------------------------------------------------------------------

_PIECES = st.sampled_from([
    b"{", b"}", b'"done"', b":", b"true", b"false", b",", b'"x"', b" ", b"\n", b"\r", b"\r\n",
    BOM, b"\xc3\xa9", b"\xc3", b"\xff", b"\x00", "\u2028".encode(),
])
_BODIES = st.one_of(st.binary(max_size=300), st.lists(_PIECES, max_size=60).map(b"".join))


@settings(max_examples=examples(300), deadline=None)
@given(body=_BODIES, data=st.data())
def test_any_chunking_gives_the_same_lines(body: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=20)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert split(chunks) == reference(body)
