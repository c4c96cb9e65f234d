"""The answer side of mitmweb's LLM view (llm_view.py): an answer's text as the addon assembles
it (assembly.StreamAssembler for SSE and NDJSON streams, answer_text for JSON), and beside it
what the addon does not screen but a person wants to see: tool calls with their arguments, the
finish reason, token usage, an upstream error, embeddings' sizes.

It also keeps what the upstream sent when a deny replaces it (`keep_upstream`, held answers;
`keep_text`, windowed streams cut mid-way): a summary in `flow.metadata["lakera"]
["upstream_answer"]`, bounded (the text to `UPSTREAM_TEXT_CHARS` characters, at most
`UPSTREAM_CALLS` tool calls), tnetstring-serialisable, never a header (so never a key). It is
kept on the flow as a blocked prompt is, never logged nor written to the audit log. Nothing here
raises out of `read_answer`, `keep_upstream` or `keep_text`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from mitmproxy import http

from lakera_addon import answer_text
from lakera_addon import lenient_json
from lakera_addon import protocols
from lakera_addon import reporting
from lakera_addon import routing
from lakera_addon.answer_fields import as_list
from lakera_addon.answer_fields import index
from lakera_addon.assembly import NO_EVENTS
from lakera_addon.assembly import StreamAssembler
from lakera_addon.bodies import maybe_off_loop
from lakera_addon.content_decoding import decode_bounded
from lakera_addon.extract_common import compact
from lakera_addon.llm_view_request import call_line
from lakera_addon.protocols import Protocol

logger = logging.getLogger("lakera_addon")

KEPT_KEY = "upstream_answer"
UPSTREAM_TEXT_CHARS = 20_000  # of the upstream's text kept when a deny replaces it
UPSTREAM_CALLS = 20  # tool calls kept (each line clipped like the view's)
_SLICE = 64 * 1024


@dataclass(slots=True)
class Answer:
    framing: str  # "JSON", "SSE stream", "NDJSON stream", "JSON array of chunks"
    text: str = ""
    chars: int = 0  # the whole text's length (the text may be clipped)
    tool_calls: list[str] = field(default_factory=list)
    finish: list[str] = field(default_factory=list)
    usage: str = ""
    error: str = ""
    embeddings: str = ""
    note: str = ""  # why a stream is not whole, how the text was read

    def empty(self) -> bool:
        return not (self.text or self.tool_calls or self.finish or self.usage or self.error
                    or self.embeddings)


class _Facts:
    """Tool calls, finish reasons, usage and errors of one answer, event by event (a stream) or
    from the whole document (JSON), per protocol."""

    def __init__(self, protocol: Protocol, stream: bool) -> None:
        self.protocol = protocol
        self.stream = stream
        self.calls: dict[tuple[int, ...], list[Any]] = {}  # key -> [name, id, args pieces]
        self.finish: list[str] = []
        self.usage: dict[str, object] = {}
        self.error = ""
        self.embeddings = ""
        self._count = 0

    def call(self, key: tuple[int, ...] | None, name: object, call_id: object,
             arguments: object, replace: bool = False) -> None:
        if key is None:
            self._count += 1
            key = (-1, self._count)
        entry = self.calls.setdefault(key, [None, None, []])
        entry[0] = name if isinstance(name, str) and name else entry[0]
        entry[1] = call_id if isinstance(call_id, str) and call_id else entry[1]
        if isinstance(arguments, str):
            entry[2] = [arguments] if replace else [*entry[2], arguments]
        elif arguments is not None and arguments != {}:
            entry[2] = [compact(arguments)]

    def ended(self, reason: object) -> None:
        if isinstance(reason, str) and reason and reason not in self.finish:
            self.finish.append(reason)

    def failed(self, error: object) -> None:
        if isinstance(error, dict):
            message = error.get("message")
            self.error = message if isinstance(message, str) else compact(error)
        elif isinstance(error, str) and error:
            self.error = error

    def used(self, usage: object) -> None:
        if isinstance(usage, dict):
            self.usage.update({k: v for k, v in usage.items() if isinstance(v, int)
                               and not isinstance(v, bool)})

    def call_lines(self) -> list[str]:
        return [call_line(name, call_id, "".join(args))
                for name, call_id, args in self.calls.values()]

    # --- per protocol ---------------------------------------------------------------------

    def read(self, payload: dict[str, object], name: str = "") -> None:
        reader = {
            protocols.OPENAI_CHAT: self._chat,
            protocols.ANTHROPIC_MESSAGES: self._anthropic,
            protocols.OPENAI_RESPONSES: self._responses,
            protocols.GEMINI_GENERATE: self._gemini,
            protocols.OLLAMA_CHAT: self._ollama,
            protocols.OLLAMA_GENERATE: self._ollama,
            protocols.OPENAI_EMBEDDINGS: self._embeddings,
        }[self.protocol]
        reader(payload, name)

    def _chat(self, payload: dict[str, object], name: str) -> None:
        self.failed(payload.get("error"))
        self.used(payload.get("usage"))
        for choice in as_list(payload.get("choices")):
            if not isinstance(choice, dict):
                continue
            at = index(choice.get("index"))
            for source in (choice.get("delta"), choice.get("message")):
                if not isinstance(source, dict):
                    continue
                for n, call in enumerate(as_list(source.get("tool_calls"))):
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(call, dict) and isinstance(function, dict):
                        key = (at, index(call.get("index", n)) if self.stream else n)
                        self.call(key, function.get("name"), call.get("id"),
                                  function.get("arguments"))
                legacy = source.get("function_call")
                if isinstance(legacy, dict):
                    self.call((at, -1), legacy.get("name"), None, legacy.get("arguments"))
            self.ended(choice.get("finish_reason"))

    def _anthropic(self, payload: dict[str, object], name: str) -> None:
        kind = payload.get("type") if isinstance(payload.get("type"), str) else name
        if kind == "error":
            self.failed(payload.get("error"))
        elif kind == "message_start":
            message = payload.get("message")
            self.used(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "content_block_start":
            self._anthropic_block(index(payload.get("index")), payload.get("content_block"))
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "input_json_delta":
                self.call((index(payload.get("index")),), None, None, delta.get("partial_json"))
        elif kind == "message_delta":
            delta = payload.get("delta")
            self.ended(delta.get("stop_reason") if isinstance(delta, dict) else None)
            self.used(payload.get("usage"))
        elif kind == "message" or not self.stream:  # a whole Message (JSON)
            for n, block in enumerate(as_list(payload.get("content"))):
                self._anthropic_block(n, block)
            self.ended(payload.get("stop_reason"))
            self.used(payload.get("usage"))

    def _anthropic_block(self, at: int, block: object) -> None:
        if isinstance(block, dict) and str(block.get("type")).endswith("tool_use"):
            self.call((at,), block.get("name"), block.get("id"), block.get("input"))

    def _responses(self, payload: dict[str, object], name: str) -> None:
        kind = payload.get("type") if isinstance(payload.get("type"), str) else name
        at = index(payload.get("output_index"))
        if kind == "error":
            self.failed(payload)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            self._responses_item(at, payload.get("item"), kind.endswith("done"))
        elif kind == "response.function_call_arguments.delta":
            self.call((at,), None, None, payload.get("delta"))
        elif kind == "response.function_call_arguments.done":
            self.call((at,), None, None, payload.get("arguments"), replace=True)
        response = payload if not self.stream else payload.get("response")
        if isinstance(response, dict) and (not self.stream or kind in (
                "response.completed", "response.incomplete", "response.failed")):
            if not self.calls:
                for n, item in enumerate(as_list(response.get("output"))):
                    self._responses_item(n, item, True)
            details = response.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            status = response.get("status")
            self.ended(f"{status}: {reason}" if reason else status)
            self.used(response.get("usage"))
            self.failed(response.get("error"))

    def _responses_item(self, at: int, item: object, done: bool) -> None:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            return
        kind = str(item["type"])
        if kind in ("function_call", "custom_tool_call", "mcp_call"):
            arguments = item.get("arguments", item.get("input"))
            self.call((at,), item.get("name"), item.get("call_id") or item.get("id"),
                      arguments if done else None, replace=True)
        elif kind.endswith("_call") and done:
            self.call((at,), kind, item.get("id"), item.get("action"), replace=True)

    def _gemini(self, payload: dict[str, object], name: str) -> None:
        self.failed(payload.get("error"))
        for candidate in as_list(payload.get("candidates")):
            if not isinstance(candidate, dict):
                continue
            content = candidate.get("content")
            for part in as_list(content.get("parts") if isinstance(content, dict) else None):
                call = part.get("functionCall") if isinstance(part, dict) else None
                if isinstance(call, dict):
                    self.call(None, call.get("name"), call.get("id"), call.get("args"))
            self.ended(candidate.get("finishReason"))
        feedback = payload.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self.ended(f"prompt blocked: {feedback['blockReason']}")
        if isinstance(payload.get("usageMetadata"), dict):
            self.usage = {}
            self.used(payload["usageMetadata"])

    def _ollama(self, payload: dict[str, object], name: str) -> None:
        self.failed(payload.get("error"))
        message = payload.get("message")
        for call in as_list(message.get("tool_calls") if isinstance(message, dict) else None):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                self.call(None, function.get("name"), None, function.get("arguments"))
        if payload.get("done") is True:
            self.ended(payload.get("done_reason") or "done")
            self.used({k: payload[k] for k in ("prompt_eval_count", "eval_count")
                       if k in payload})

    def _embeddings(self, payload: dict[str, object], name: str) -> None:
        self.failed(payload.get("error"))
        self.used(payload.get("usage"))
        vectors = [item.get("embedding") for item in as_list(payload.get("data"))
                   if isinstance(item, dict)]
        if vectors:
            sizes = sorted({len(v) for v in vectors if isinstance(v, list)})
            dims = f" of {', '.join(map(str, sizes))} dimensions" if sizes else " (base64)"
            self.embeddings = f"{len(vectors)} vector(s){dims}"


class _Reading(StreamAssembler):
    """The addon's own assembler, which also hands every event it reads to `_Facts`."""

    def __init__(self, protocol: Protocol, candidates: int, facts: _Facts) -> None:
        super().__init__(protocol, candidates)
        self.facts = facts

    def _handle(self, payload: dict[str, object], name: str) -> None:
        super()._handle(payload, name)
        self.facts.read(payload, name)


def _finish(answer: Answer, facts: _Facts) -> Answer:
    answer.chars = len(answer.text)
    answer.tool_calls = facts.call_lines()
    answer.finish = facts.finish
    answer.usage = ", ".join(f"{k} {v}" for k, v in facts.usage.items())
    answer.error, answer.embeddings = facts.error, facts.embeddings
    return answer


def _read_stream(protocol: Protocol, data: bytes, candidates: int) -> Answer | None:
    facts = _Facts(protocol, stream=True)
    reading = _Reading(protocol, candidates, facts)
    view = memoryview(data)
    for at in range(0, len(data), _SLICE):
        reading.feed(view[at : at + _SLICE])
    result = reading.finish()
    if result.reason == NO_EVENTS:
        return None
    framing = "NDJSON stream" if protocol in protocols.NDJSON else "SSE stream"
    answer = _finish(Answer(framing, reading.text), facts)
    if not result.complete:
        answer.note = f"{result.reason} (shown: what was read)"
    return None if answer.empty() else answer


def _read_json(protocol: Protocol, data: bytes) -> Answer | None:
    body = lenient_json.loads(data)
    if body is None or not isinstance(body.value, (dict, list)):
        return None
    facts = _Facts(protocol, stream=False)
    chunks = body.value if isinstance(body.value, list) else [body.value]
    if isinstance(body.value, list) and protocol != protocols.GEMINI_GENERATE:
        return None
    for chunk in chunks:
        if isinstance(chunk, dict):
            facts.read(chunk)
    framing = "JSON array of chunks" if isinstance(body.value, list) else "JSON"
    answer = _finish(Answer(framing, answer_text.response_text(protocol, body.value)), facts)
    if body.hidden_strings:
        answer.note = (f"{len(body.hidden_strings)} more string(s) under duplicate keys or "
                       "after the JSON value (screened with the text)")
    return None if answer.empty() else answer


def read_answer(protocol: Protocol, content_type: str | None, data: bytes,
                candidates: int = 1) -> Answer | None:
    """An answer body (decoded) of `protocol`; None if the view cannot read it (then mitmproxy's
    own views show it)."""
    try:
        if routing.is_streamed_answer(content_type):
            if protocol == protocols.OPENAI_EMBEDDINGS:
                return None
            return _read_stream(protocol, data, candidates)
        return _read_json(protocol, data)
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return None


# --- what the upstream sent, kept when a deny replaces it --------------------------------------

def _record(answer: Answer | None, status: int, content_type: str, note: str = "") -> dict[
        str, Any]:
    record: dict[str, Any] = {"status": status, "content_type": content_type}
    if answer is None:
        record["note"] = note or "the body could not be read as an answer of its protocol"
        return record
    record.update({
        "framing": answer.framing, "text": answer.text[:UPSTREAM_TEXT_CHARS],
        "chars": len(answer.text), "tool_calls": answer.tool_calls[:UPSTREAM_CALLS],
        "finish": list(answer.finish), "usage": answer.usage, "error": answer.error,
        "note": note or answer.note})
    return record


def from_record(record: object) -> Answer | None:
    """The kept summary as an Answer (its text clipped as kept)."""
    if not isinstance(record, dict) or "framing" not in record:
        return None
    answer = Answer(str(record.get("framing")), str(record.get("text") or ""))
    chars = record.get("chars")
    answer.chars = chars if isinstance(chars, int) else len(answer.text)
    calls = record.get("tool_calls")
    answer.tool_calls = [str(c) for c in calls] if isinstance(calls, list) else []
    answer.finish = [str(f) for f in record.get("finish") or [] if isinstance(f, str)]
    answer.usage, answer.error = str(record.get("usage") or ""), str(record.get("error") or "")
    answer.note = str(record.get("note") or "")
    return answer


async def keep_upstream(flow: http.HTTPFlow, protocol: Protocol, candidates: int,
                        limit: int) -> None:
    """Before a held answer's deny replaces it: keep a bounded summary of what the upstream
    sent (its text, tool calls, finish reason, usage) for mitmweb's view. Never raises."""
    try:
        response = flow.response
        if response is None or response.raw_content is None:
            return
        content_type = response.headers.get("content-type", "")
        try:
            content = decode_bounded(response.raw_content,
                                     response.headers.get("content-encoding"), limit)
        except ValueError as e:  # (TooLarge is not one: it propagates to the catch-all)
            reporting.metadata(flow)[KEPT_KEY] = _record(None, response.status_code,
                                                         content_type, str(e))
            return
        answer = await maybe_off_loop(len(content), read_answer, protocol, content_type,
                                      content, candidates)
        reporting.metadata(flow)[KEPT_KEY] = _record(answer, response.status_code, content_type)
    except Exception:
        logger.debug("lakera_addon could not keep the upstream's answer for the view",
                     exc_info=True)


def keep_text(flow: http.HTTPFlow, protocol: Protocol, text: str, note: str) -> None:
    """A streamed answer cut before its end (windowed): the upstream's text as read. Never
    raises."""
    try:
        framing = "NDJSON stream" if protocol in protocols.NDJSON else "SSE stream"
        record = _record(Answer(framing, text), 200, "", note)
        reporting.metadata(flow)[KEPT_KEY] = record
    except Exception:
        logger.debug("lakera_addon could not keep the upstream's text for the view",
                     exc_info=True)


def clip_note(answer: Answer) -> str:
    """How much of a kept text is shown."""
    if answer.chars > len(answer.text):
        return f"the first {len(answer.text)} of {answer.chars} characters"
    return ""
