"""Which protocol a screened request speaks (SPEC section 3, `auto` detection), what the path
and the answer's Content-Type say about its framing, and the path as upstreams route it.

Paths are read the way the most lenient upstream routes them (SPEC section 5, the invariant):
percent-decoded, `\\` as `/`, repeated slashes, `.` and `..` segments, `;parameters` and a
trailing slash dropped, and without regard to case; a client cannot take a screened endpoint
past a route or the protocol detection by spelling its path another way."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs
from urllib.parse import unquote

from lakera_addon import protocols
from lakera_addon.protocols import Protocol

_GEMINI_METHODS: Final = ("generateContent", "streamGenerateContent")
_STREAMED_TYPES: Final = frozenset(
    {"text/event-stream", "application/x-ndjson", "application/ndjson"}
)


_DECODE_ROUNDS: Final = 3  # %2541 → %41 → A: servers decode once, proxies in front again


def _without_query(path: str) -> str:
    return path.split("?", 1)[0].split("#", 1)[0]


def _decoded(path: str) -> list[str]:
    """The path as sent, then percent-decoded, again while that changes it."""
    forms = [path]
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(forms[-1])
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    return forms


def _normalized(path: str) -> str:
    """Segments cleaned: `\\` as `/`, empty and `.` segments dropped, `..` resolved,
    `;parameters` dropped; one leading slash, none trailing."""
    segments: list[str] = []
    for segment in path.replace("\\", "/").split("/"):
        segment = segment.split(";", 1)[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def path_forms(path: str) -> tuple[str, ...]:
    """Every form in which an upstream may route `path` (without query), lowercased: as sent,
    decoded, normalized. A route's path globs match if they match any of them."""
    forms = _decoded(_without_query(path))
    return tuple(dict.fromkeys(f.lower() for form in forms for f in (form, _normalized(form))))


def _clean_path(path: str) -> str:
    """The path fully decoded and normalized, case kept: what protocol detection reads."""
    return _normalized(_decoded(_without_query(path))[-1])


def _gemini_call(path: str) -> tuple[str, str] | None:
    """(model, method) of a Gemini path whose last segment is `{model}:generateContent` or
    `{model}:streamGenerateContent` (`.../models/gemini-2.5-flash:generateContent`)."""
    last = _clean_path(path).rsplit("/", 1)[-1]
    model, colon, method = last.rpartition(":")
    for known in _GEMINI_METHODS:
        if colon and model and method.lower() == known.lower():
            return model, known
    return None


def gemini_model(path: str) -> str | None:
    """The model a Gemini path names (Gemini's request body has none)."""
    call = _gemini_call(path)
    return call[0] if call else None


def gemini_streams(path: str) -> bool:
    """Whether a Gemini path asks for a streamed answer (`:streamGenerateContent`)."""
    call = _gemini_call(path)
    return call is not None and call[1] == "streamGenerateContent"


def gemini_sse(path: str) -> bool:
    """Whether a Gemini stream is asked for as SSE (`?alt=sse`); without it the answer is one
    JSON array of the chunks."""
    if not gemini_streams(path):
        return False
    query = parse_qs(path.partition("?")[2])
    return "sse" in (query.get("alt", []) + query.get("$alt", []))


def gemini_json_array(path: str) -> bool:
    """Whether a Gemini stream is asked for as one JSON array of the chunks (no `alt=sse`)."""
    return gemini_streams(path) and not gemini_sse(path)


def _native_protocol(path: str, body: dict[str, object] | None) -> Protocol | None:
    """The native protocols, told by their path (`body` None: the path alone). `/api/chat` and
    `/api/generate` are common names for a web app's own endpoints too: a body is taken for
    Ollama's first only with the `model` Ollama requires (a chat UI's backend often sends its own
    shape without one); without it, only when no other rule matches (detect_protocol)."""
    if _gemini_call(path) is not None:
        return protocols.GEMINI_GENERATE
    if body is not None and not isinstance(body.get("model"), str):
        return None
    stripped = _clean_path(path).lower()
    if stripped.endswith("/api/chat"):
        return protocols.OLLAMA_CHAT
    if stripped.endswith("/api/generate"):
        return protocols.OLLAMA_GENERATE
    return None


def _responses_path(path: str) -> bool:
    """A path of the Responses API: a `responses` segment, last (`/v1/responses`) or not
    (`/v1/responses/compact`, `/v1/responses/input_tokens`), whose bodies carry `input` items."""
    return "responses" in path.split("/")


def detect_protocol(declared: str, path: str, body: dict[str, object]) -> Protocol | None:
    """The route's declared protocol, or the first `auto` rule that matches; None if none.
    Beyond SPEC's rules: a body with `anthropic_version` is Anthropic's Messages API on any path
    but a native one (Bedrock's `/model/{id}/invoke`, Vertex's `:rawPredict`), and any path
    with a `responses` segment is the Responses API."""
    if declared != "auto":
        for known in protocols.ALL:
            if known == declared:
                return known
        return None
    native = _native_protocol(path, body)
    if native is not None:
        return native
    path = _clean_path(path).lower()
    if path.endswith("/messages") or "anthropic_version" in body:
        return protocols.ANTHROPIC_MESSAGES
    if _responses_path(path) and "input" in body:
        return protocols.OPENAI_RESPONSES
    if "messages" in body:
        return protocols.OPENAI_CHAT
    if "input" in body:
        return protocols.OPENAI_EMBEDDINGS
    return _native_protocol(path, None)  # an Ollama path whose body names no model


def guess_protocol(path: str) -> Protocol:
    """The protocol a path suggests, for a deny when the body could not be read."""
    native = _native_protocol(path, None)
    if native is not None:
        return native
    path = _clean_path(path).lower()
    if path.endswith("/messages"):
        return protocols.ANTHROPIC_MESSAGES
    if _responses_path(path):
        return protocols.OPENAI_RESPONSES
    if path.endswith("/embeddings"):
        return protocols.OPENAI_EMBEDDINGS
    return protocols.OPENAI_CHAT


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_streamed_answer(content_type: str | None) -> bool:
    """Whether a response's Content-Type is a stream of events the addon assembles: SSE
    (`text/event-stream`, SPEC section 5) or newline-delimited JSON (`application/x-ndjson`,
    Ollama's native API). Anything else is screened as one JSON answer."""
    return _media_type(content_type) in _STREAMED_TYPES
