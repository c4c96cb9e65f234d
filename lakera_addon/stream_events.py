"""The text and the end of a streamed answer, event by event, per protocol (SPEC section 3,
"Text of a response"; section 5, held streams). assembly.py frames the stream into events and
hands each event's JSON payload here.

Every text an event carries that an SDK shows its caller is kept (answer_fields.py has the
fields), wherever the event comes in the stream: also after the protocol's terminal event and
after an upstream error, which the SDKs read on past (only OpenAI's stop at `[DONE]`, and clients
that read the raw stream stop nowhere). The terminal event and the error decide only whether a
held stream is complete.

Snapshots: some events repeat text the deltas already carried, and the SDKs build what they
show from them (the openai SDK's final Responses object from `response.completed`,
`output_item.done` and `output_text.done`; a content part's start text): a snapshot that is the
same as the deltas of its part adds nothing; one that differs is kept as text of its own.
Start texts (`content_block_start`, `message_start`'s content, `*.added` parts) are where an
SDK's snapshot starts from: they are text of their part, before its deltas.

An upstream error counts only when it is one the SDK raises on: openai-chat `error` a non-empty
object or string; anthropic and Responses a payload `type: "error"` (not the event's name);
Gemini `error` a non-empty object; Ollama `error` a non-empty string.
"""

from __future__ import annotations

from typing import Final

from lakera_addon import answer_fields as fields
from lakera_addon import protocols
from lakera_addon.protocols import Protocol

SEPARATOR: Final = "\n\n"

Key = tuple[int, int, int]
EXTRAS: Key = (-1, -1, -1)  # the part of the snapshots that differ from their deltas

_RESPONSES_TERMINAL: Final = frozenset(
    {"response.completed", "response.failed", "response.incomplete"}
)
_RESPONSES_DELTAS: Final = {  # event type -> (slot, its index field, answer text?)
    "response.output_text.delta": (fields.RESPONSES_CONTENT, "content_index", True),
    "response.refusal.delta": (fields.RESPONSES_CONTENT, "content_index", True),
    "response.reasoning_text.delta": (fields.RESPONSES_CONTENT, "content_index", False),
    "response.reasoning_summary_text.delta": (fields.RESPONSES_SUMMARY, "summary_index", False),
}
_RESPONSES_DONE: Final = {  # event type -> (slot, its index field, its text field)
    "response.output_text.done": (fields.RESPONSES_CONTENT, "content_index", "text"),
    "response.refusal.done": (fields.RESPONSES_CONTENT, "content_index", "refusal"),
    "response.reasoning_text.done": (fields.RESPONSES_CONTENT, "content_index", "text"),
    "response.reasoning_summary_text.done": (fields.RESPONSES_SUMMARY, "summary_index", "text"),
}
_RESPONSES_PARTS: Final = {  # event type -> (slot, its index field, a start text?)
    "response.content_part.added": (fields.RESPONSES_CONTENT, "content_index", True),
    "response.content_part.done": (fields.RESPONSES_CONTENT, "content_index", False),
    "response.reasoning_summary_part.added": (fields.RESPONSES_SUMMARY, "summary_index", True),
    "response.reasoning_summary_part.done": (fields.RESPONSES_SUMMARY, "summary_index", False),
}
_AUDIO: Final = 1 << 62  # the Responses audio transcript: after every output item
_STRAY: Final = 1 << 61  # anthropic deltas for a block the SDK has not got


def join_pieces(pieces: dict[Key, list[str]], keys: set[Key] | None = None) -> str:
    """The pieces' texts, each key's concatenated, keys in order, joined with a blank line;
    only those of `keys` when given."""
    chosen = sorted(pieces) if keys is None else sorted(k for k in pieces if k in keys)
    texts = ("".join(pieces[key]) for key in chosen)
    return SEPARATOR.join(text for text in texts if text)


class Texts:
    """The texts of an answer, by part (key), and the snapshots that differ from them."""

    def __init__(self) -> None:
        self.pieces: dict[Key, list[str]] = {}
        self.answer_keys: set[Key] = set()  # the parts of the visible answer (not reasoning)
        self.extras: list[str] = []  # snapshots that differ from the deltas of their part
        self._extra_set: set[str] = set()
        self._measured: dict[Key, tuple[int, int]] = {}  # key -> (pieces measured, length)
        self.chars = 0  # the length of all of it, kept as it grows
        self.answer_chars = 0
        # the answer's pieces in the order they came (windowed.py: a cut ending repeats those
        # of the events the client has, and only those)
        self.answer_arrival: list[str] = []
        # each part's length as it grows (the snapshots that differ: part EXTRAS), and the
        # parts grown since the last `take_grown` with their new lengths (windowed.py holds
        # back the tail of each part, not of the whole)
        self.part_chars: dict[Key, int] = {}
        self.grown: dict[Key, int] = {}

    def add(self, key: Key, text: object, answer: bool = False) -> None:
        if not text or not isinstance(text, str):
            return
        pieces = self.pieces.get(key)
        if pieces is None:
            self.pieces[key] = [text]
        else:
            pieces.append(text)
        self.chars += len(text)
        self._grow(key, len(text))
        if answer:
            self.answer_chars += len(text)
            self.answer_keys.add(key)
            self.answer_arrival.append(text)

    def snapshot(self, key: Key | None, text: object) -> None:
        """A text that should be the same as the deltas of part `key` (None: of no part)."""
        if not text or not isinstance(text, str) or text in self._extra_set:
            return
        if key is not None and self._length(key) == len(text) and (
                "".join(self.pieces[key]) == text):
            return  # (lengths first: a differing snapshot costs no join)
        self._extra_set.add(text)
        self.extras.append(text)
        self.chars += len(text)
        self._grow(EXTRAS, len(text))

    def _grow(self, key: Key, by: int) -> None:
        length = self.part_chars.get(key, 0) + by
        self.part_chars[key] = length
        self.grown[key] = length

    def take_grown(self) -> dict[Key, int]:
        """The parts grown since the last call, with their lengths now."""
        grown, self.grown = self.grown, {}
        return grown

    def _length(self, key: Key) -> int:
        """The length of part `key`'s text, measuring only the pieces added since the last
        time (however many snapshots a hostile stream sends, each piece is measured once)."""
        pieces = self.pieces.get(key)
        if pieces is None:
            return 0
        counted, length = self._measured.get(key, (0, 0))
        if counted < len(pieces):
            length += sum(map(len, pieces[counted:]))
            self._measured[key] = (len(pieces), length)
        return length

    @property
    def text(self) -> str:
        joined = join_pieces(self.pieces)
        return SEPARATOR.join(t for t in (joined, *self.extras) if t)

    @property
    def answer_text(self) -> str:
        return join_pieces(self.pieces, self.answer_keys)


class EventReader:
    """One protocol's events: their texts into `texts`, and whether the stream has ended."""

    def __init__(self, texts: Texts) -> None:
        self.texts = texts
        self.ended = False  # the terminal event (or an error event) was seen
        self.errored = False

    @property
    def terminated(self) -> bool:
        return self.ended

    def handle(self, payload: dict[str, object], name: str) -> None:
        raise NotImplementedError

    def _error(self) -> None:
        self.ended = True
        self.errored = True


def _kind(payload: dict[str, object], name: str) -> str:
    kind = payload.get("type")
    return kind if isinstance(kind, str) else name


class ChatReader(EventReader):
    """openai-chat: `choices[].delta` per choice `index`; terminal `data: [DONE]` (framing)."""

    def handle(self, payload: dict[str, object], name: str) -> None:
        error = payload.get("error")
        if error and isinstance(error, (dict, str)):
            self._error()
        choices = payload.get("choices")
        if not isinstance(choices, list):
            return
        add = self.texts.add
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            at = choice.get("index", 0)
            if type(at) is not int:
                at = 0
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if len(delta) == 1 and isinstance(content, str):  # the usual delta
                    add((at, fields.CHAT_CONTENT, 0), content, True)
                else:
                    self._texts_of(at, delta)
            if "message" in choice:  # (not OpenAI's shape; some servers send it)
                self._texts_of(at, choice["message"])

    def _texts_of(self, at: int, source: object) -> None:
        for slot, text in fields.chat_texts(source):
            self.texts.add((at, slot, 0), text, slot in (fields.CHAT_CONTENT, fields.CHAT_REFUSAL))


class AnthropicReader(EventReader):
    """anthropic-messages: blocks as the SDK's message snapshot numbers them (its list: those of
    `message_start`, then one per `content_block_start`; a delta goes to the block at its
    `index` in that list); terminal `message_stop`."""

    def __init__(self, texts: Texts) -> None:
        super().__init__(texts)
        self._blocks = 0
        self._started = False

    def handle(self, payload: dict[str, object], name: str) -> None:
        if payload.get("type") == "error":
            self._error()
            return
        kind = _kind(payload, name)
        if kind == "content_block_delta":
            text, answer = fields.anthropic_delta_text(payload.get("delta"))
            if text:
                self.texts.add(self._block_key(payload.get("index")), text, answer)
        elif kind == "content_block_start":
            block = payload.get("content_block")
            answer = isinstance(block, dict) and block.get("type") == "text"
            self.texts.add((self._blocks, 0, 0), fields.anthropic_block_text(block), answer)
            self._blocks += 1
        elif kind == "message_stop":
            self.ended = True
        elif kind == "message_start":
            message = payload.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            for block in fields.as_list(content):
                text = fields.anthropic_block_text(block)
                if self._started:  # the SDK's snapshot starts from the first one only
                    self.texts.snapshot(None, text)
                    continue
                self.texts.add((self._blocks, 0, 0), text,
                               isinstance(block, dict) and block.get("type") == "text")
                self._blocks += 1
            self._started = True

    def _block_key(self, value: object) -> Key:
        at = fields.index(value)
        if -self._blocks <= at < self._blocks:
            return (at % self._blocks, 0, 0)
        return (_STRAY, at, 0)  # a block the SDK does not have (it raises); screened still


class ResponsesReader(EventReader):
    """openai-responses: deltas per `output_index` and content (or summary) index, snapshots of
    parts, items and the response's `output`; terminal `response.completed`, `.failed`,
    `.incomplete`."""

    def handle(self, payload: dict[str, object], name: str) -> None:
        kind = _kind(payload, name)
        if payload.get("type") == "error":
            self._error()
        elif kind in _RESPONSES_TERMINAL:
            self.ended = True
        texts = self.texts
        at = fields.index(payload.get("output_index"))
        if kind in _RESPONSES_DELTAS:
            slot, field, answer = _RESPONSES_DELTAS[kind]
            texts.add((at, slot, fields.index(payload.get(field))), payload.get("delta"), answer)
        elif kind == "response.audio.transcript.delta":
            texts.add((_AUDIO, 0, 0), payload.get("delta"))
        elif kind in _RESPONSES_DONE:
            slot, field, name_of_text = _RESPONSES_DONE[kind]
            texts.snapshot((at, slot, fields.index(payload.get(field))),
                           payload.get(name_of_text))
        elif kind in _RESPONSES_PARTS:
            slot, field, start = _RESPONSES_PARTS[kind]
            key = (at, slot, fields.index(payload.get(field)))
            text = fields.responses_part_text(payload.get("part"))
            if start:
                texts.add(key, text)
            else:
                texts.snapshot(key, text)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            for slot, part, text in fields.responses_item_texts(payload.get("item")):
                if kind.endswith(".added"):
                    texts.add((at, slot, part), text)
                else:
                    texts.snapshot((at, slot, part), text)
        response = payload.get("response")
        if isinstance(response, dict):  # created, in_progress, completed, incomplete, failed
            for item_at, item in enumerate(fields.as_list(response.get("output"))):
                for slot, part, text in fields.responses_item_texts(item):
                    texts.snapshot((item_at, slot, part), text)


class GeminiReader(EventReader):
    """gemini-generate: each event a GenerateContentResponse chunk, texts per candidate `index`.
    No terminal event: the stream is complete once as many candidates as the request asked for
    (candidateCount) have carried a `finishReason` and none is still open, or the prompt was
    blocked (`promptFeedback.blockReason`)."""

    def __init__(self, texts: Texts, candidates: int) -> None:
        super().__init__(texts)
        self._candidates = candidates
        self._open: set[int] = set()
        self._finished: set[int] = set()
        self._blocked = False

    @property
    def terminated(self) -> bool:
        return self.ended or self._blocked or (
            not self._open and len(self._finished) >= self._candidates)

    def handle(self, payload: dict[str, object], name: str) -> None:
        error = payload.get("error")
        if isinstance(error, dict) and error:  # Gemini's error envelope, sent as an event
            self._error()
        seen, finished = gemini_chunk(self.texts, payload)
        self._finished |= finished
        self._open = (self._open | seen) - self._finished
        feedback = payload.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self._blocked = True


def gemini_chunk(texts: Texts, chunk: object) -> tuple[set[int], set[int]]:
    """Add a GenerateContentResponse's texts, per candidate; (indices of the candidates it
    carries, indices of those with a finishReason)."""
    seen: set[int] = set()
    finished: set[int] = set()
    candidates = chunk.get("candidates") if isinstance(chunk, dict) else None
    for candidate in fields.as_list(candidates):
        if not isinstance(candidate, dict):
            continue
        at = fields.index(candidate.get("index"))  # omitted when 0 (proto3 JSON)
        seen.add(at)
        for slot, text in fields.gemini_candidate_texts(candidate):
            texts.add((at, slot, 0), text, slot == fields.GEMINI_TEXT)
        reason = candidate.get("finishReason")
        if isinstance(reason, str) and reason:
            finished.add(at)
    return seen, finished


class OllamaReader(EventReader):
    """ollama-chat / ollama-generate (NDJSON lines): `thinking`, then `message.content` /
    `response`; terminal: a line with `"done": true`."""

    def __init__(self, texts: Texts, chat: bool) -> None:
        super().__init__(texts)
        self._chat = chat

    def handle(self, payload: dict[str, object], name: str) -> None:
        error = payload.get("error")
        if isinstance(error, str) and error:
            self._error()
        for slot, text in fields.ollama_texts(payload, self._chat):
            self.texts.add((0, slot, 0), text, slot == fields.OLLAMA_ANSWER)
        if payload.get("done") is True:
            self.ended = True


def reader_for(protocol: Protocol, texts: Texts, candidates: int = 1) -> EventReader | None:
    """The event reader of a protocol that streams; None for one that does not (embeddings)."""
    if protocol == protocols.OPENAI_CHAT:
        return ChatReader(texts)
    if protocol == protocols.ANTHROPIC_MESSAGES:
        return AnthropicReader(texts)
    if protocol == protocols.OPENAI_RESPONSES:
        return ResponsesReader(texts)
    if protocol == protocols.GEMINI_GENERATE:
        return GeminiReader(texts, candidates)
    if protocol in (protocols.OLLAMA_CHAT, protocols.OLLAMA_GENERATE):
        return OllamaReader(texts, protocol == protocols.OLLAMA_CHAT)
    return None
