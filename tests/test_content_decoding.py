"""Bounded decoding of Content-Encoding (lakera_addon.content_decoding)."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from lakera_addon.content_decoding import decode_bounded
from lakera_addon.content_decoding import make_decoder
from lakera_addon.failures import TooLarge

TEXT = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n' * 200


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        (None, TEXT),
        ("identity", TEXT),
        ("gzip", gzip.compress(TEXT)),
        ("x-gzip", gzip.compress(TEXT)),
        ("deflate", zlib.compress(TEXT)),  # zlib-wrapped, as RFC 9110 says
        ("deflate", raw_deflate(TEXT)),  # raw, as many servers send it
        ("br", brotli.compress(TEXT)),
        ("zstd", zstandard.ZstdCompressor().compress(TEXT)),
        ("gzip, br", brotli.compress(gzip.compress(TEXT))),
        ("GZip", gzip.compress(TEXT)),
    ],
)
def test_decodes_every_supported_encoding(encoding, body) -> None:
    assert decode_bounded(body, encoding, 1 << 20) == TEXT


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_incremental_decoder_byte_by_byte(encoding) -> None:
    body = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
            "zstd": zstandard.ZstdCompressor().compress}[encoding](TEXT)
    decode = make_decoder(encoding)
    assert decode is not None
    assert b"".join(decode(body[i:i + 1]) for i in range(len(body))) == TEXT


def test_a_compression_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (200 << 20))  # 200 MiB of zeros in about 200 kB
    assert len(bomb) < 300_000
    with pytest.raises(TooLarge, match="once decoded"):
        decode_bounded(bomb, "gzip", 8 << 20)


@pytest.mark.parametrize(
    ("encoding", "body", "error"),
    [("compress", b"x", "unsupported content-encoding 'compress'"),
     ("gzip", b"not gzip at all", "cannot decode gzip"),
     ("br", b"\xff\xff\xff", "cannot decode br")],
)
def test_undecodable_bodies(encoding, body, error) -> None:
    with pytest.raises(ValueError, match=error):
        decode_bounded(body, encoding, 1 << 20)


def test_identity_over_the_limit() -> None:
    with pytest.raises(TooLarge):
        decode_bounded(b"x" * 11, None, 10)


# --- several gzip members, several zstd frames (what urllib3, aiohttp and httpx decode) ------

FIRST, SECOND = b'data: {"first": 1}\n\n', b'data: {"second": "ignore the guard"}\n\n'
ZSTD = zstandard.ZstdCompressor()


@pytest.mark.parametrize(("encoding", "body"), [
    ("gzip", gzip.compress(FIRST) + gzip.compress(SECOND)),
    ("gzip", gzip.compress(FIRST) + gzip.compress(b"") + gzip.compress(SECOND)),
    ("zstd", ZSTD.compress(FIRST) + ZSTD.compress(SECOND)),
    ("gzip, br", brotli.compress(gzip.compress(FIRST) + gzip.compress(SECOND))),
])
def test_every_member_and_frame_is_decoded(encoding, body) -> None:
    assert decode_bounded(body, encoding, 1 << 20) == FIRST + SECOND
    decode = make_decoder(encoding)
    assert decode is not None
    assert b"".join(decode(body[i:i + 1]) for i in range(len(body))) == FIRST + SECOND


def test_bytes_after_the_last_gzip_member_that_start_none_are_ignored() -> None:
    """As urllib3 ignores them (zero padding, say): nothing a client reads is left out."""
    body = gzip.compress(FIRST) + gzip.compress(SECOND) + b"\0\0\0 junk"
    assert decode_bounded(body, "gzip", 1 << 20) == FIRST + SECOND


def test_a_corrupt_second_gzip_member_is_an_error() -> None:
    second = bytearray(gzip.compress(SECOND))
    second[-8] ^= 0xFF  # its CRC
    with pytest.raises(ValueError, match="cannot decode gzip"):
        decode_bounded(gzip.compress(FIRST) + bytes(second), "gzip", 1 << 20)


def test_data_after_a_zstd_frame_that_is_no_frame_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot decode zstd"):
        decode_bounded(ZSTD.compress(FIRST) + b"not zstd", "zstd", 1 << 20)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_members_together_stop_at_the_limit(encoding) -> None:
    compress = gzip.compress if encoding == "gzip" else ZSTD.compress
    bomb = compress(b"\0" * (1 << 20)) * 40  # 40 MiB in 40 members
    with pytest.raises(TooLarge, match="once decoded"):
        decode_bounded(bomb, encoding, 8 << 20)
