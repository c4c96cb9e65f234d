"""The answers of each protocol, in the shapes its official SDK parses (SPEC section 6), for the
addon's own answers: denies, cut endings and masked releases (deny.py). Built only from the text
given and constants; ids are new, never echoed from the client.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any
from typing import Final

from lakera_addon import protocols
from lakera_addon.protocols import Protocol

ERROR_TYPE: Final = "content_policy_violation"


# --- framing -------------------------------------------------------------------------------


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def utf8(text: str) -> bytes:
    """UTF-8 that never fails: a lone surrogate (JSON allows "\\ud800", and a client or upstream
    can send one in any field the addon echoes) is written as its JSON escape, valid inside
    the JSON string it came from."""
    return text.encode("utf-8", "backslashreplace")


def json_bytes(value: Any) -> bytes:
    return utf8(json_text(value))


def sse_data(payloads: Iterable[Mapping[str, Any] | str]) -> bytes:
    """Bare `data:` events (openai chat style); a str payload is sent verbatim (`[DONE]`)."""
    datas = (p if isinstance(p, str) else json_text(p) for p in payloads)
    return utf8("".join(f"data: {d}\n\n" for d in datas))


def sse_named(events: Iterable[Mapping[str, Any]]) -> bytes:
    """`event: <type>` + `data:` events, the type taken from each payload's `type`."""
    return utf8("".join(f"event: {e['type']}\ndata: {json_text(e)}\n\n" for e in events))


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


# --- openai errors ---------------------------------------------------------------------------


def openai_error(text: str) -> dict[str, Any]:
    """OpenAI's error envelope: the SDK raises with `message` in the exception text."""
    return {"error": {"message": text, "type": ERROR_TYPE, "param": None, "code": ERROR_TYPE}}


# --- openai chat completions -----------------------------------------------------------------


def chat_completion(text: str, model: str) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl-"),
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


def chat_chunks(text: str, model: str) -> list[dict[str, Any] | str]:
    base = {
        "id": new_id("chatcmpl-"),
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


def anthropic_message(text: str, model: str) -> dict[str, Any]:
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


def anthropic_events(text: str, model: str) -> list[dict[str, Any]]:
    message = anthropic_message(text, model)
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


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def output_message(item_id: str, text: str | None) -> dict[str, Any]:
    """The assistant message item; `text` None is the item as first announced (no content)."""
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "in_progress" if text is None else "completed",
        "content": [] if text is None else [output_text(text)],
    }


def responses_response(
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
        "output": [output_message(item_id, text)] if done else [],
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


def responses_events(text: str, model: str) -> list[dict[str, Any]]:
    response_id = new_id("resp_")
    item_id = new_id("msg_")
    at = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": responses_response(text, model, response_id, item_id, done=False),
        },
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": output_message(item_id, None),
        },
        {"type": "response.content_part.added", **at, "part": output_text("")},
        {"type": "response.output_text.delta", **at, "delta": text, "logprobs": []},
        {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": output_text(text)},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": output_message(item_id, text),
        },
        {
            "type": "response.completed",
            "response": responses_response(text, model, response_id, item_id),
        },
    ]
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]


# --- gemini generateContent ------------------------------------------------------------------

# google.rpc.Code names of the HTTP statuses, as Gemini's error envelope carries them
GOOGLE_STATUS: Final = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
    501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def gemini_response(text: str, model: str) -> dict[str, Any]:
    return {
        "candidates": [{
            "content": {"parts": [{"text": text}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0},
        "modelVersion": model,
        "responseId": new_id(""),
    }


# --- ollama /api/chat and /api/generate ------------------------------------------------------


def ollama_answer(protocol: Protocol, text: str, model: str, done: bool) -> dict[str, Any]:
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


def ndjson(lines: Iterable[Mapping[str, Any]]) -> bytes:
    return utf8("".join(json_text(line) + "\n" for line in lines))
