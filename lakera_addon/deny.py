"""The answer a deny sends back to the client (SPEC section 6).

A deny is shaped like a normal answer of the client's protocol, streamed or not, so that the
official SDKs parse it as an ordinary reply (status 200) or raise their usual status error
(any other status). Embeddings have no place for a refusal, so their deny is always an error.

The native protocols (verified with the google-genai and ollama Python packages):
- gemini-generate: a GenerateContentResponse, one candidate with the text and `finishReason:
  "STOP"` (what the SDK hands back as ordinary text; "SAFETY" is Gemini's own filter and
  documents an empty content); streamed (`?alt=sse`) as one SSE event; for
  `:streamGenerateContent` without `alt=sse` a JSON array of that one chunk. Status >= 400:
  Gemini's error envelope `{"error": {"code", "message", "status"}}`, never streamed.
- ollama-chat / ollama-generate: the final answer object (`message` / `response`, `done:
  true`, `done_reason: "stop"`); streamed as NDJSON, the text line then the `done` line.
  Status >= 400: Ollama's `{"error": text}`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import Final
from typing import assert_never

from lakera_addon import protocols
from lakera_addon import sdk_answers as answers
from lakera_addon.protocols import Protocol

DEFAULT_MODEL: Final = "lakera-guard"
JSON_CONTENT_TYPE: Final = "application/json"
SSE_CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
NDJSON_CONTENT_TYPE: Final = "application/x-ndjson"
# Statuses the openai/anthropic SDKs retry on their own (besides connection errors).
_RETRIED_STATUSES: Final = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class DenyResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def build_deny(
    protocol: Protocol,
    text: str,
    *,
    status: int,
    stream: bool,
    model: str | None,
    json_array: bool = False,
) -> DenyResponse:
    """Build the deny for `protocol` carrying `text`, answered with `status`.

    `stream` asks for the protocol's streamed form (ignored for embeddings); `model` is the
    request's model, echoed back (DEFAULT_MODEL when unknown); `json_array` says a Gemini
    stream was asked for as one JSON array (`:streamGenerateContent` without `alt=sse`,
    routing.gemini_json_array)."""
    model_name = _echo_str(model, DEFAULT_MODEL)
    if protocol == protocols.OPENAI_EMBEDDINGS:
        status = status if status >= 400 else 400
        return _response(status, answers.json_bytes(answers.openai_error(text)), streamed=False)
    if protocol == protocols.GEMINI_GENERATE:
        return _gemini_deny(text, status, stream, model_name, json_array)
    if protocol == protocols.OLLAMA_CHAT or protocol == protocols.OLLAMA_GENERATE:
        return _ollama_deny(protocol, text, status, stream, model_name)
    if stream:
        if protocol == protocols.OPENAI_CHAT:
            body = answers.sse_data(answers.chat_chunks(text, model_name))
        elif protocol == protocols.ANTHROPIC_MESSAGES:
            body = answers.sse_named(answers.anthropic_events(text, model_name))
        elif protocol == protocols.OPENAI_RESPONSES:
            body = answers.sse_named(answers.responses_events(text, model_name))
        else:
            assert_never(protocol)
        return _response(status, body, streamed=True)
    if protocol == protocols.OPENAI_CHAT:
        answer = answers.chat_completion(text, model_name)
    elif protocol == protocols.ANTHROPIC_MESSAGES:
        answer = answers.anthropic_message(text, model_name)
    elif protocol == protocols.OPENAI_RESPONSES:
        answer = answers.responses_response(text, model_name, answers.new_id("resp_"),
                                            answers.new_id("msg_"))
    else:
        assert_never(protocol)
    if status >= 400 and protocol != protocols.ANTHROPIC_MESSAGES:
        # The openai SDK raises on such a status and reads only `error` from the body (the
        # whole body when there is no `error` key): without this a Response object's
        # `"error": null` would drop the text, and a chat completion's would not reach the
        # exception's message.
        answer.update(answers.openai_error(text))
    return _response(status, answers.json_bytes(answer), streamed=False)


def sdk_would_retry(status: int) -> bool:
    """Whether the SDKs retry `status` unless the answer says `x-should-retry: false`."""
    return status in _RETRIED_STATUSES or status >= 500


# --- framing -------------------------------------------------------------------------------


def _response(
    status: int, body: bytes, streamed: bool, stream_type: str = SSE_CONTENT_TYPE
) -> DenyResponse:
    headers = {
        "content-type": stream_type if streamed else JSON_CONTENT_TYPE,
        "x-lakera-guard": "blocked",
    }
    if streamed:
        headers["cache-control"] = "no-cache"
    if sdk_would_retry(status):
        headers["x-should-retry"] = "false"
    return DenyResponse(status=status, headers=headers, body=body)


def _gemini_deny(
    text: str, status: int, stream: bool, model: str, json_array: bool
) -> DenyResponse:
    if status >= 400:  # the SDK raises its APIError with `message`; errors are never streamed
        error = {"code": status, "message": text,
                 "status": answers.GOOGLE_STATUS.get(status, "UNKNOWN")}
        return _response(status, answers.json_bytes({"error": error}), streamed=False)
    answer = answers.gemini_response(text, model)
    if json_array:
        return _response(status, answers.json_bytes([answer]), streamed=False)
    if stream:
        return _response(status, answers.sse_data([answer]), streamed=True)
    return _response(status, answers.json_bytes(answer), streamed=False)


def _ollama_deny(
    protocol: Protocol, text: str, status: int, stream: bool, model: str
) -> DenyResponse:
    if status >= 400:  # the SDK raises ResponseError with `error`
        return _response(status, answers.json_bytes({"error": text}), streamed=False)
    if not stream:
        answer = answers.ollama_answer(protocol, text, model, True)
        return _response(status, answers.json_bytes(answer), streamed=False)
    body = answers.ndjson([answers.ollama_answer(protocol, text, model, False),
                    answers.ollama_answer(protocol, "", model, True)])
    return _response(status, body, streamed=True, stream_type=NDJSON_CONTENT_TYPE)


# --- the ending of a live stream cut short --------------------------------------------

CUT_SEPARATOR: Final = "\n\n"
CUT_PROTOCOLS: Final = frozenset(p for p in protocols.ALL if p != protocols.OPENAI_EMBEDDINGS)
# protocols whose cut ending parses only after the stream's own start went out
CUT_NEEDS_START: Final = frozenset({protocols.ANTHROPIC_MESSAGES, protocols.OPENAI_RESPONSES})
# Ollama has no "filtered" done_reason of its own (it sends "stop", "length", "load", "unload");
# its SDKs type the field as a plain string
OLLAMA_CUT_REASON: Final = "content_filter"


def cut_ending(
    protocol: Protocol,
    text: str,
    last_event: Mapping[str, Any] | None,
    model: str | None,
    *,
    sent_text: str = "",
) -> bytes:
    """The events that end a live stream the addon cuts short (`stream_mode: live`):
    the refusal `text` as one more delta of the text being streamed, then the protocol's own
    ending with its "filtered" reason, so that the SDKs end the stream normally:
    - openai-chat: a delta with `finish_reason: "content_filter"`, then `[DONE]`;
    - anthropic-messages: a `text_delta`, `content_block_stop`, `message_delta` with
      `stop_reason: "refusal"`, `message_stop`;
    - openai-responses: `response.output_text.delta`, then `response.incomplete` (reason
      `content_filter`) and `[DONE]`;
    - gemini-generate (SSE): one more chunk with the text and `finishReason: "SAFETY"` (a
      Gemini stream has no terminal event; the finish reason ends it);
    - ollama-chat / ollama-generate (NDJSON): a line with the text, then the `done: true` line
      with `done_reason: "content_filter"`.
    `last_event` is the payload of the last event that carried text (its ids and indices are
    reused); `sent_text` is the text the client already has (the incomplete response's output).
    """
    last = last_event or {}
    model_name = _echo_str(model, DEFAULT_MODEL)
    delta = CUT_SEPARATOR + text
    if protocol == protocols.OPENAI_CHAT:
        index = _first_index(last.get("choices"))
        chunk = {
            "id": _echo_str(last.get("id"), answers.new_id("chatcmpl-")),
            "object": "chat.completion.chunk",
            "created": _echo_int(last.get("created"), int(time.time())),
            "model": _echo_str(last.get("model"), model_name),
            "choices": [{"index": index, "delta": {"content": delta}, "logprobs": None,
                         "finish_reason": "content_filter"}],
        }
        return answers.sse_data([chunk, "[DONE]"])
    if protocol == protocols.ANTHROPIC_MESSAGES:
        index = _echo_int(last.get("index"))
        return answers.sse_named([
            {"type": "content_block_delta", "index": index,
             "delta": {"type": "text_delta", "text": delta}},
            {"type": "content_block_stop", "index": index},
            {"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_sequence": None},
             "usage": {"output_tokens": 0}},
            {"type": "message_stop"},
        ])
    if protocol == protocols.OPENAI_RESPONSES:
        item_id = _echo_str(last.get("item_id"), answers.new_id("msg_"))
        at = {"item_id": item_id, "output_index": _echo_int(last.get("output_index")),
              "content_index": _echo_int(last.get("content_index"))}
        sequence = _echo_int(last.get("sequence_number"), -1) + 1
        response = answers.responses_response(sent_text + delta, model_name,
                                              answers.new_id("resp_"), item_id)
        response.update(status="incomplete", completed_at=None,
                        incomplete_details={"reason": "content_filter"})
        response["output"][0]["status"] = "incomplete"
        # then `[DONE]`, which the Responses API itself does not send: the openai SDKs stop
        # reading there; without it they read on until the upstream's discarded answer ends
        return answers.sse_named([
            {"type": "response.output_text.delta", **at, "delta": delta, "logprobs": [],
             "sequence_number": sequence},
            {"type": "response.incomplete", "response": response,
             "sequence_number": sequence + 1},
        ]) + answers.sse_data(["[DONE]"])
    if protocol == protocols.GEMINI_GENERATE:
        return answers.sse_data([_gemini_cut(last, delta, model_name)])
    if protocol == protocols.OLLAMA_CHAT or protocol == protocols.OLLAMA_GENERATE:
        model_name = _echo_str(last.get("model"), model_name)
        # the done line without the counts and durations of a whole answer, which the addon
        # does not know (zeros would be read as such)
        whole = answers.ollama_answer(protocol, "", model_name, True)
        done = {key: value for key, value in whole.items()
                if key in ("model", "created_at", "message", "response", "done")}
        return answers.ndjson([answers.ollama_answer(protocol, delta, model_name, False),
                        {**done, "done_reason": OLLAMA_CUT_REASON}])
    raise ValueError(f"{protocol} streams cannot be cut")


def _first_index(items: object) -> int:
    """The `index` of the first choice / candidate of an upstream event (0 if none)."""
    first = items[0] if isinstance(items, list) and items else {}
    return _echo_int(first.get("index")) if isinstance(first, dict) else 0


# --- what is echoed from the client or the upstream ------------------------------------------

_ECHO_MAX_CHARS: Final = 200


def _echo_str(value: object, default: str) -> str:
    """A string field echoed into an answer (a model name, an id), as a string of modest
    length; anything else is replaced by `default`. (Lone surrogates are escaped when the
    answer is encoded, sdk_answers.utf8.)"""
    if not isinstance(value, str) or not value:
        return default
    return value[:_ECHO_MAX_CHARS]


def _echo_int(value: object, default: int = 0) -> int:
    """An index or counter echoed into an answer: a plain non-negative int, else `default`."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    return default


def _gemini_cut(last: Mapping[str, Any], delta: str, model: str) -> dict[str, Any]:
    """The chunk that ends a Gemini stream cut short, with the ids of the last one."""
    chunk = answers.gemini_response(delta, _echo_str(last.get("modelVersion"), model))
    chunk["candidates"][0].update(index=_first_index(last.get("candidates")),
                                  finishReason="SAFETY")
    del chunk["usageMetadata"]  # the answer's usage is not known: no zeros in its place
    chunk["responseId"] = _echo_str(last.get("responseId"), chunk["responseId"])
    return chunk


# --- the last resort -------------------------------------------------------------------------

LAST_RESORT_TEXT: Final = "Blocked by Lakera Guard"


def _last_resorts() -> dict[tuple[Protocol, bool, bool], DenyResponse]:
    return {(protocol, stream, array): build_deny(protocol, LAST_RESORT_TEXT, status=200,
                                                  stream=stream, model=None, json_array=array)
            for protocol in protocols.ALL for stream in (False, True) for array in (False, True)}


# built once, at import, from constants only: what a deny falls back to if building the
# proper one failed, so that a deny can never fail (SPEC section 5, the invariant)
_LAST_RESORT: Final = _last_resorts()
_LAST_RESORT_CUT: Final[dict[Protocol, bytes]] = {
    protocol: cut_ending(protocol, LAST_RESORT_TEXT, None, None) for protocol in CUT_PROTOCOLS}


def last_resort(protocol: Protocol, stream: bool, json_array: bool = False) -> DenyResponse:
    """The deny built ahead of time for `protocol`: status 200, a fixed text."""
    return _LAST_RESORT[(protocol, stream, json_array)]


def last_resort_cut(protocol: Protocol) -> bytes:
    """The cut ending built ahead of time for `protocol`, with a fixed text (b"" for a
    protocol whose answers do not stream)."""
    return _LAST_RESORT_CUT.get(protocol, b"")
