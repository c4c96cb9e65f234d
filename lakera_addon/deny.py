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

import json
import secrets
import time
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import Final
from typing import assert_never

from lakera_addon import protocols
from lakera_addon import routing
from lakera_addon.protocols import Protocol

DEFAULT_MODEL: Final = "lakera-guard"
JSON_CONTENT_TYPE: Final = "application/json"
SSE_CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
NDJSON_CONTENT_TYPE: Final = "application/x-ndjson"
ERROR_TYPE: Final = "content_policy_violation"
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
    path: str = "",
) -> DenyResponse:
    """Build the deny for `protocol` carrying `text`, answered with `status`.

    `stream` asks for the protocol's streamed form (ignored for embeddings); `model` is the
    request's model, echoed back (DEFAULT_MODEL when unknown); `path` is the request's path,
    which chooses the shape of a Gemini answer (`:streamGenerateContent` without `alt=sse`
    answers a JSON array)."""
    model_name = model or DEFAULT_MODEL
    if protocol == "openai-embeddings":
        status = status if status >= 400 else 400
        return _response(status, _json_bytes(_openai_error(text)), streamed=False)
    if protocol == "gemini-generate":
        return _gemini_deny(text, status, stream, model_name, path)
    if protocol == "ollama-chat" or protocol == "ollama-generate":
        return _ollama_deny(protocol, text, status, stream, model_name)
    if stream:
        if protocol == "openai-chat":
            body = _sse_data(_chat_chunks(text, model_name))
        elif protocol == "anthropic-messages":
            body = _sse_named(_anthropic_events(text, model_name))
        elif protocol == "openai-responses":
            body = _sse_named(_responses_events(text, model_name))
        else:
            assert_never(protocol)
        return _response(status, body, streamed=True)
    if protocol == "openai-chat":
        answer = _chat_completion(text, model_name)
    elif protocol == "anthropic-messages":
        answer = _anthropic_message(text, model_name)
    elif protocol == "openai-responses":
        answer = _responses_response(text, model_name, _new_id("resp_"), _new_id("msg_"))
    else:
        assert_never(protocol)
    if status >= 400 and protocol != "anthropic-messages":
        # The openai SDK raises on such a status and reads only `error` from the body (the
        # whole body when there is no `error` key): without this a Response object's
        # `"error": null` would drop the text, and a chat completion's would not reach the
        # exception's message.
        answer.update(_openai_error(text))
    return _response(status, _json_bytes(answer), streamed=False)


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


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_bytes(value: Any) -> bytes:
    return _json(value).encode("utf-8")


def _sse_data(payloads: Iterable[Mapping[str, Any] | str]) -> bytes:
    """Bare `data:` events (openai chat style); a str payload is sent verbatim (`[DONE]`)."""
    datas = (p if isinstance(p, str) else _json(p) for p in payloads)
    return "".join(f"data: {d}\n\n" for d in datas).encode("utf-8")


def _sse_named(events: Iterable[Mapping[str, Any]]) -> bytes:
    """`event: <type>` + `data:` events, the type taken from each payload's `type`."""
    return "".join(f"event: {e['type']}\ndata: {_json(e)}\n\n" for e in events).encode("utf-8")


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


# --- openai errors ---------------------------------------------------------------------------


def _openai_error(text: str) -> dict[str, Any]:
    """OpenAI's error envelope: the SDK raises with `message` in the exception text."""
    return {"error": {"message": text, "type": ERROR_TYPE, "param": None, "code": ERROR_TYPE}}


# --- openai chat completions -----------------------------------------------------------------


def _chat_completion(text: str, model: str) -> dict[str, Any]:
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _chat_chunks(text: str, model: str) -> list[dict[str, Any] | str]:
    base = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice]}

    return [
        chunk({"role": "assistant", "content": "", "refusal": None}, None),
        chunk({"content": text}, None),
        chunk({}, "stop"),
        "[DONE]",
    ]


# --- anthropic messages ----------------------------------------------------------------------


def _anthropic_message(text: str, model: str) -> dict[str, Any]:
    return {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


def _anthropic_events(text: str, model: str) -> list[dict[str, Any]]:
    message = _anthropic_message(text, model)
    message.update(content=[], stop_reason=None)
    return [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 0},
        },
        {"type": "message_stop"},
    ]


# --- openai responses ------------------------------------------------------------------------


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _output_message(item_id: str, text: str | None) -> dict[str, Any]:
    """The assistant message item; `text` None is the item as first announced (no content)."""
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "in_progress" if text is None else "completed",
        "content": [] if text is None else [_output_text(text)],
    }


def _responses_response(
    text: str, model: str, response_id: str, item_id: str, *, done: bool = True
) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": response_id,
        "object": "response",
        "created_at": now,
        "status": "completed" if done else "in_progress",
        "completed_at": now if done else None,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": [_output_message(item_id, text)] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0,
        }
        if done
        else None,
        "metadata": {},
        "user": None,
    }


def _responses_events(text: str, model: str) -> list[dict[str, Any]]:
    response_id = _new_id("resp_")
    item_id = _new_id("msg_")
    at = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": _responses_response(text, model, response_id, item_id, done=False),
        },
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": _output_message(item_id, None),
        },
        {"type": "response.content_part.added", **at, "part": _output_text("")},
        {"type": "response.output_text.delta", **at, "delta": text, "logprobs": []},
        {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": _output_text(text)},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": _output_message(item_id, text),
        },
        {
            "type": "response.completed",
            "response": _responses_response(text, model, response_id, item_id),
        },
    ]
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]


# --- gemini generateContent ------------------------------------------------------------------

# google.rpc.Code names of the HTTP statuses, as Gemini's error envelope carries them
_GOOGLE_STATUS: Final = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
    501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def _gemini_response(text: str, model: str) -> dict[str, Any]:
    return {
        "candidates": [{
            "content": {"parts": [{"text": text}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0},
        "modelVersion": model,
        "responseId": _new_id(""),
    }


def _gemini_deny(text: str, status: int, stream: bool, model: str, path: str) -> DenyResponse:
    if status >= 400:  # the SDK raises its APIError with `message`; errors are never streamed
        error = {"code": status, "message": text, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
        return _response(status, _json_bytes({"error": error}), streamed=False)
    answer = _gemini_response(text, model)
    if routing.gemini_streams(path) and not routing.gemini_sse(path):
        return _response(status, _json_bytes([answer]), streamed=False)
    if stream:
        return _response(status, _sse_data([answer]), streamed=True)
    return _response(status, _json_bytes(answer), streamed=False)


# --- ollama /api/chat and /api/generate ------------------------------------------------------


def _ollama_answer(protocol: Protocol, text: str, model: str, done: bool) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    answer: dict[str, Any] = {"model": model, "created_at": now}
    if protocol == protocols.OLLAMA_CHAT:
        answer["message"] = {"role": "assistant", "content": text}
    else:
        answer["response"] = text
    answer["done"] = done
    if done:
        answer.update(done_reason="stop", total_duration=0, load_duration=0,
                      prompt_eval_count=0, prompt_eval_duration=0, eval_count=0,
                      eval_duration=0)
    return answer


def _ollama_deny(
    protocol: Protocol, text: str, status: int, stream: bool, model: str
) -> DenyResponse:
    if status >= 400:  # the SDK raises ResponseError with `error`
        return _response(status, _json_bytes({"error": text}), streamed=False)
    if not stream:
        return _response(status, _json_bytes(_ollama_answer(protocol, text, model, True)),
                         streamed=False)
    body = _ndjson([_ollama_answer(protocol, text, model, False),
                    _ollama_answer(protocol, "", model, True)])
    return _response(status, body, streamed=True, stream_type=NDJSON_CONTENT_TYPE)


def _ndjson(lines: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(_json(line) + "\n" for line in lines).encode("utf-8")


# --- the ending of a progressive stream cut short --------------------------------------------

CUT_SEPARATOR: Final = "\n\n"
CUT_PROTOCOLS: Final = frozenset({"openai-chat", "anthropic-messages", "openai-responses",
                                  "gemini-generate", "ollama-chat", "ollama-generate"})
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
    """The events that end a live stream the addon cuts short (`stream_mode: progressive`):
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
    model_name = model or DEFAULT_MODEL
    delta = CUT_SEPARATOR + text
    if protocol == "openai-chat":
        index = _first_index(last.get("choices"))
        chunk = {
            "id": last.get("id") or _new_id("chatcmpl-"),
            "object": "chat.completion.chunk",
            "created": last.get("created") or int(time.time()),
            "model": last.get("model") or model_name,
            "choices": [{"index": index, "delta": {"content": delta}, "logprobs": None,
                         "finish_reason": "content_filter"}],
        }
        return _sse_data([chunk, "[DONE]"])
    if protocol == "anthropic-messages":
        index = last.get("index", 0)
        return _sse_named([
            {"type": "content_block_delta", "index": index,
             "delta": {"type": "text_delta", "text": delta}},
            {"type": "content_block_stop", "index": index},
            {"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_sequence": None},
             "usage": {"output_tokens": 0}},
            {"type": "message_stop"},
        ])
    if protocol == "openai-responses":
        item_id = str(last.get("item_id") or _new_id("msg_"))
        at = {"item_id": item_id, "output_index": last.get("output_index", 0),
              "content_index": last.get("content_index", 0)}
        sequence = last.get("sequence_number")
        sequence = sequence + 1 if isinstance(sequence, int) else 0
        response = _responses_response(sent_text + delta, model_name, _new_id("resp_"), item_id)
        response.update(status="incomplete", completed_at=None,
                        incomplete_details={"reason": "content_filter"})
        response["output"][0]["status"] = "incomplete"
        # then `[DONE]`, which the Responses API itself does not send: the openai SDKs stop
        # reading there; without it they read on until the upstream's discarded answer ends
        return _sse_named([
            {"type": "response.output_text.delta", **at, "delta": delta, "logprobs": [],
             "sequence_number": sequence},
            {"type": "response.incomplete", "response": response,
             "sequence_number": sequence + 1},
        ]) + _sse_data(["[DONE]"])
    if protocol == "gemini-generate":
        return _sse_data([_gemini_cut(last, delta, model_name)])
    if protocol == "ollama-chat" or protocol == "ollama-generate":
        model_name = str(last.get("model") or model_name)
        # the done line without the counts and durations of a whole answer, which the addon
        # does not know (zeros would be read as such)
        done = {key: value for key, value in _ollama_answer(protocol, "", model_name, True).items()
                if key in ("model", "created_at", "message", "response", "done")}
        return _ndjson([_ollama_answer(protocol, delta, model_name, False),
                        {**done, "done_reason": OLLAMA_CUT_REASON}])
    raise ValueError(f"{protocol} streams cannot be cut")


def _first_index(items: object) -> object:
    """The `index` of the first choice / candidate of an upstream event (0 if none)."""
    first = items[0] if isinstance(items, list) and items else {}
    return first.get("index", 0) if isinstance(first, dict) else 0


def _gemini_cut(last: Mapping[str, Any], delta: str, model: str) -> dict[str, Any]:
    """The chunk that ends a Gemini stream cut short, with the ids of the last one."""
    chunk = _gemini_response(delta, str(last.get("modelVersion") or model))
    chunk["candidates"][0].update(index=_first_index(last.get("candidates")),
                                  finishReason="SAFETY")
    del chunk["usageMetadata"]  # the answer's usage is not known: no zeros in its place
    if last.get("responseId"):
        chunk["responseId"] = last["responseId"]
    return chunk
