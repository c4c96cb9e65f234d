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

from collections.abc import Callable
from typing import Final

from lakera_addon import answer_fields as fields
from lakera_addon import protocols
from lakera_addon.protocols import Protocol

SEPARATOR: Final = "\n\n"

Key = tuple[int, int, int]
EXTRAS: Key = (-1, -1, -1)  # the part of the snapshots that differ from their deltas
# Views of the deltas in the order they came, each screened once its kind has more than one
# part. A client that prints deltas as they come joins the parts in that order, so a phrase two
# parts split, or that interleaved parts interleave, is whole there and in no part: the answer's
# (anthropic's `text_stream`, `chunk.choices[0].delta.content`, google-genai's `chunk.text`,
# Responses' `output_text.delta` events), the others' (a reasoning display: thinking blocks,
# summary parts), and all of them (a client that prints reasoning and answer as they come).
ARRIVAL: Key = (-2, -2, -2)  # the answer's
OTHER_ARRIVAL: Key = (-3, -3, -3)  # the reasoning's, thinking's, summaries', transcripts'
ALL_ARRIVAL: Key = (-4, -4, -4)  # all of them


class _ArrivalView:
    """The deltas of one kind of part (the answer's, the others', all) in the order they
    came; screened as a view of its own (`key`) once it differs from each part and from the
    other views (from its second part on; all of them: once there are answer and other
    parts)."""

    def __init__(self, key: Key) -> None:
        self.key = key
        self.parts: set[Key] = set()
        self.pieces: list[str] = []
        self.chars = 0
        self.active = False  # screened: it differs from every part, and from the other views

    @property
    def text(self) -> str:
        return "".join(self.pieces) if self.active else ""

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


def one_stream(key: Key) -> int:
    """The parts of an answer come one after the other (a content block, an output item or a
    message's reasoning ends before the next begins): one group."""
    return 0


def per_choice(key: Key) -> int:
    """The choices of `n` > 1 (openai-chat) and Gemini's candidates interleave: a group each
    (the first of a key is the choice's index); the parts of one come one after the other."""
    return key[0]


def part_groups(protocol: Protocol) -> Callable[[Key], int]:
    """The groups of parts of a protocol's answer within which parts come one after the
    other."""
    return per_choice if protocol in (protocols.OPENAI_CHAT, protocols.GEMINI_GENERATE) \
        else one_stream


def join_pieces(pieces: dict[Key, list[str]], keys: set[Key] | None = None) -> str:
    """The pieces' texts, each key's concatenated, keys in order, joined with a blank line;
    only those of `keys` when given."""
    chosen = sorted(pieces) if keys is None else sorted(k for k in pieces if k in keys)
    texts = ("".join(pieces[key]) for key in chosen)
    return SEPARATOR.join(text for text in texts if text)


class Texts:
    """The texts of an answer, by part (key), and the snapshots that differ from them."""

    def __init__(self, arrival: bool = False,
                 group_of: Callable[[Key], int] | None = None) -> None:
        self._arrival = arrival  # the ARRIVAL view (streams; a JSON answer has no order)
        # with `group_of` (windowed.py): the parts of a group come one after the other; a part
        # is closed, with its final length, once the next part of its group has text, and a
        # closed part that gets text again is `resumed` (the stream is not read as it should)
        self._group_of = group_of
        self._current: dict[int, Key] = {}
        self.closed: dict[Key, int] = {}
        self.resumed: Key | None = None
        self.pieces: dict[Key, list[str]] = {}
        self.answer_keys: set[Key] = set()  # the parts of the visible answer (not reasoning)
        self.extras: list[str] = []  # snapshots that differ from the deltas of their part
        self._extra_set: set[str] = set()
        self._measured: dict[Key, tuple[int, int]] = {}  # key -> (pieces measured, length)
        self.chars = 0  # the length of all of it, kept as it grows
        # the answer's pieces and the others' in the order they came (ARRIVAL, OTHER_ARRIVAL;
        # windowed.py: a cut ending repeats the answer's of the events the client has)
        self._answer_view = _ArrivalView(ARRIVAL)
        self._other_view = _ArrivalView(OTHER_ARRIVAL)
        self._all_view = _ArrivalView(ALL_ARRIVAL)
        self.answer_arrival = self._answer_view.pieces
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
        if self._group_of is not None:
            self._follow(key)
        if answer:
            self.answer_keys.add(key)
        kind = self._answer_view if answer else self._other_view
        for view in (kind, self._all_view):
            view.pieces.append(text)
            view.parts.add(key)
            view.chars += len(text)
            if view.active:
                self._grow(view.key, len(text))
            elif self._arrival and len(view.parts) > 1 and (
                    view is kind or (self._answer_view.parts and self._other_view.parts)):
                view.active = True  # whole at first
                self._grow(view.key, view.chars)

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

    def _follow(self, key: Key) -> None:
        assert self._group_of is not None
        group = self._group_of(key)
        current = self._current.get(group)
        if current == key:
            return
        if key in self.closed and self.resumed is None:
            self.resumed = key
        if current is not None:
            self.closed[current] = self.part_chars[current]
        self._current[group] = key

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
    def answer_chars(self) -> int:
        """The length of the visible answer's deltas so far."""
        return self._answer_view.chars

    @property
    def arrival_chars(self) -> int:
        """The length of all the deltas so far, in the order they came (ALL_ARRIVAL's, whether
        it is screened as a view of its own or, with parts of one kind only, as that kind's)."""
        return self._all_view.chars

    def _arrival_views(self) -> list[tuple[Key, str]]:
        """ARRIVAL, OTHER_ARRIVAL and ALL_ARRIVAL, once each has more than one part (streams
        only)."""
        if not self._arrival:
            return []
        return [(view.key, view.text)
                for view in (self._answer_view, self._other_view, self._all_view)]

    @property
    def text(self) -> str:
        joined = join_pieces(self.pieces)
        arrivals = (text for _, text in self._arrival_views())
        return SEPARATOR.join(t for t in (joined, *self.extras, *arrivals) if t)

    def views(self) -> list[tuple[Key, str]]:
        """What `text` is made of, each with the key its length is counted under in
        `part_chars` (windowed.py screens each from where its clean scans reached, once all
        of it no longer fits one call); only the ones with text."""
        found = [(key, "".join(self.pieces[key])) for key in sorted(self.pieces)]
        found += [(EXTRAS, SEPARATOR.join(self.extras)), *self._arrival_views()]
        return [(key, text) for key, text in found if text]

    @property
    def answer_text(self) -> str:
        return join_pieces(self.pieces, self.answer_keys)


class EventReader:
    """One protocol's events: their texts into `texts`, and whether the stream has ended."""

    def __init__(self, texts: Texts) -> None:
        self.texts = texts
        self.ended = False  # the terminal event (or an error event) was seen
        self.errored = False
        # why the stream is not one of the answer asked for (a choice or candidate index the
        # request did not ask for): read as unreadable, so a fail-closed route cuts or denies
        self.odd: str | None = None

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
    """openai-chat: `choices[].delta` per choice `index`; terminal `data: [DONE]` (framing).
    An index outside the `n` choices the request asked for is odd: a client's
    `chunk.choices[0].delta.content` shows it as the first choice's, the SDK's stream helper
    reads -1 as its last choice, and the parts would no longer be what the client joins."""

    def __init__(self, texts: Texts, choices: int = 1) -> None:
        super().__init__(texts)
        self._choices = choices

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
            if not 0 <= at < self._choices and self.odd is None:
                self.odd = f"a choice the request did not ask for (index {str(at)[:20]})"
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
        if self.odd is None and any(not 0 <= at < self._candidates for at in seen):
            # google-genai's `chunk.text` is the first candidate's, whatever its index
            self.odd = "a candidate the request did not ask for"
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
        return ChatReader(texts, candidates)
    if protocol == protocols.ANTHROPIC_MESSAGES:
        return AnthropicReader(texts)
    if protocol == protocols.OPENAI_RESPONSES:
        return ResponsesReader(texts)
    if protocol == protocols.GEMINI_GENERATE:
        return GeminiReader(texts, candidates)
    if protocol in (protocols.OLLAMA_CHAT, protocols.OLLAMA_GENERATE):
        return OllamaReader(texts, protocol == protocols.OLLAMA_CHAT)
    return None
