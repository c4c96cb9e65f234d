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
