"""Decoding `Content-Encoding` (gzip, deflate, br, zstd) with a bound on the decoded size.

mitmproxy's `get_content()` decodes a whole body at once: a small gzip body can expand to
gigabytes before the addon sees its size. The addon decodes incrementally instead, the same
decoders for held bodies and for the stream functions, and stops at `max_body_bytes` of decoded
output.

A body is decoded as far as the most thorough client decodes it (SPEC section 5, the invariant:
a body read differently from its reader is never forwarded unscreened):
- gzip: every member of a multi-member body (RFC 1952 section 2.2), as urllib3 (and so
  `requests`) and aiohttp decode it; bytes after the last member that do not start another
  member are ignored, as urllib3 ignores them; a member that starts but is corrupt is an error;
- zstd: every frame, as httpx and urllib3 decode them; anything else after a frame is an error;
- br: one stream; data after its end is an error (brotli itself refuses it);
- deflate: one stream (zlib-wrapped or raw).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Final

import brotli
import zstandard

from lakera_addon.failures import TooLarge

Decoder = Callable[[bytes], bytes]
_SLICE: Final = 16 * 1024  # input per step: bounds the output of one step (deflate <= ~1032x)
_GZIP_MAGIC: Final = b"\x1f\x8b"


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


class _Gzip:
    """gzip, every member: when one member ends, what follows starts the next."""

    def __init__(self) -> None:
        self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._members = 0  # members finished
        self._head = b""  # the first bytes of the current member (up to the magic's length)
        self._trailing = False  # bytes after the last member that are no member: ignored

    def __call__(self, data: bytes) -> bytes:
        out = bytearray()
        while data and not self._trailing:
            if self._member.eof:  # the previous member ended: this data starts the next
                self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._members += 1
                self._head = b""
            if len(self._head) < len(_GZIP_MAGIC):
                self._head += data[: len(_GZIP_MAGIC) - len(self._head)]
            try:
                out += self._member.decompress(data)
            except zlib.error:
                if self._members and not _GZIP_MAGIC.startswith(
                        self._head[: len(_GZIP_MAGIC)]):
                    self._trailing = True  # not a member: ignored, as urllib3 does
                    break
                raise
            data = self._member.unused_data if self._member.eof else b""
        return bytes(out)


class _Zstd:
    """zstd, every frame: when one frame ends, what follows starts the next."""

    def __init__(self) -> None:
        self._frame = zstandard.ZstdDecompressor().decompressobj()

    def __call__(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            if self._frame.eof:
                self._frame = zstandard.ZstdDecompressor().decompressobj()
            out += self._frame.decompress(data)
            data = self._frame.unused_data if self._frame.eof else b""
        return bytes(out)


def make_decoder(content_encoding: str | None) -> Decoder | None:
    """An incremental decoder for a Content-Encoding (None for identity); ValueError if the
    encoding is not supported. Several codings ("gzip, br") are undone in reverse order."""
    names = [n.strip().lower() for n in (content_encoding or "").split(",") if n.strip()]
    steps: list[Decoder] = []
    for name in reversed(names):
        if name == "identity":
            continue
        if name in ("gzip", "x-gzip"):
            steps.append(_Gzip())
        elif name == "deflate":
            steps.append(_inflater())
        elif name == "br":
            decompressor = brotli.Decompressor()

            def brotli_decode(data: bytes, d: brotli.Decompressor = decompressor) -> bytes:
                return bytes(d.process(data))

            steps.append(brotli_decode)
        elif name == "zstd":
            steps.append(_Zstd())
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
