"""Decoding `Content-Encoding` (gzip, deflate, br, zstd) with a bound on the decoded size.

mitmproxy's `get_content()` decodes a whole body at once: a small gzip body can expand to
gigabytes before the addon sees its size. The addon decodes incrementally instead, the same
decoders for held bodies and for the pass-through stream function, and stops at
`max_body_bytes` of decoded output.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli
import zstandard

from lakera_addon.failures import TooLarge

Decoder = Callable[[bytes], bytes]
_SLICE = 16 * 1024  # input per step: bounds the output of one step (deflate expands <= ~1032x)


def _inflater() -> Decoder:
    """deflate as servers send it: zlib-wrapped (RFC 9110) or, commonly, raw deflate."""
    state: dict[str, zlib._Decompress] = {}
    head = bytearray()  # the first two bytes tell a zlib header from raw deflate

    def decode(data: bytes) -> bytes:
        if "d" not in state:
            head.extend(data)
            if len(head) < 2:
                return b""
            data = bytes(head)
            zlib_header = (data[0] & 0x0F) == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            state["d"] = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        return state["d"].decompress(data)

    return decode


def make_decoder(content_encoding: str | None) -> Decoder | None:
    """An incremental decoder for a Content-Encoding (None for identity); ValueError if the
    encoding is not supported. Several codings ("gzip, br") are undone in reverse order."""
    names = [n.strip().lower() for n in (content_encoding or "").split(",") if n.strip()]
    steps: list[Decoder] = []
    for name in reversed(names):
        if name == "identity":
            continue
        if name in ("gzip", "x-gzip"):
            steps.append(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress)
        elif name == "deflate":
            steps.append(_inflater())
        elif name == "br":
            decompressor = brotli.Decompressor()

            def brotli_decode(data: bytes, d: brotli.Decompressor = decompressor) -> bytes:
                return bytes(d.process(data))

            steps.append(brotli_decode)
        elif name == "zstd":
            steps.append(zstandard.ZstdDecompressor().decompressobj().decompress)
        else:
            raise ValueError(f"unsupported content-encoding {name!r}")
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]

    def chain(data: bytes) -> bytes:
        for step in steps:
            data = step(data)
        return data

    return chain


def decode_bounded(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The decoded body; TooLarge past `limit` bytes, ValueError if it cannot be decoded."""
    decode = make_decoder(content_encoding)
    if decode is None:
        if len(raw) > limit:
            raise TooLarge(f"larger than max_body_bytes ({limit} bytes)")
        return raw
    out = bytearray()
    for at in range(0, len(raw), _SLICE):
        try:
            out += decode(raw[at : at + _SLICE])
        except Exception as e:  # zlib.error, brotli.error, zstd errors
            raise ValueError(f"cannot decode {content_encoding}: {type(e).__name__}") from e
        if len(out) > limit:
            raise TooLarge(f"larger than max_body_bytes ({limit} bytes) once decoded")
    return bytes(out)
