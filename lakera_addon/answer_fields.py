"""Where an LLM answer carries text the official SDKs hand to their caller (SPEC section 3,
"Text of a response"), one function per shape, shared by streamed answers (stream_events.py) and
JSON answers (answer_text.py).

The assistant's text is every text the model wrote that an SDK shows, not only the visible
answer: its refusal, its reasoning and thinking, the transcript of its audio. Each text has a
slot, so that an answer's texts are joined in a stable order (reasoning before the answer):

- openai-chat (a `message`, or a stream's `delta`): `reasoning_content` (DeepSeek, vLLM),
  `reasoning` (OpenRouter, Groq, Ollama's `/v1`), `content` (a string or text parts),
  `refusal`, `audio.transcript`;
- anthropic-messages: a `text` block's `text`, a `thinking` block's `thinking`;
- openai-responses: a `message` item's `output_text` and `refusal` parts, a `reasoning` item's
  `summary` texts and `content` (`reasoning_text`) texts;
- gemini-generate: every `text` part of a candidate, `thought: true` ones too;
- ollama: `thinking`, and `message.content` (chat) or `response` (generate).

Not text: tool and function calls (their arguments are the model's request to the client's
code, and "tool calls only passes unscanned", SPEC section 3), signatures and encrypted
reasoning, media. Nothing here raises, whatever the shapes.
"""

from __future__ import annotations

from typing import Final

# slots of an openai-chat message or delta, in the order they are joined
CHAT_FIELDS: Final = ("reasoning_content", "reasoning", "content", "refusal")
CHAT_CONTENT: Final = 2  # the slot of `content`
CHAT_REFUSAL: Final = 3
CHAT_AUDIO: Final = 4  # `audio.transcript`

# slots of a Responses output item: a reasoning item's summary parts, then content parts
RESPONSES_SUMMARY: Final = 0
RESPONSES_CONTENT: Final = 1

GEMINI_THOUGHT: Final = 0
GEMINI_TEXT: Final = 1

OLLAMA_THINKING: Final = 0
OLLAMA_ANSWER: Final = 1

_CHAT_PARTS: Final = {"text": "text", "output_text": "text"}
_RESPONSES_PARTS: Final = {"output_text": "text", "refusal": "refusal", "reasoning_text": "text",
                           "summary_text": "text"}


def index(value: object) -> int:
    """An index field; anything but an int counts as 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 0


def as_list(value: object) -> list[object]:
    """A repeated field: a list as it is, a lone object as a list of one (lenient readers take
    it so), anything else as no items."""
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, dict) else []


def part_text(part: object, kinds: dict[str, str]) -> str:
    """The text of a typed part (`kinds` maps a part type to its text field); "" if none."""
    if not isinstance(part, dict):
        return ""
    kind = part.get("type")
    field = kinds.get(kind) if isinstance(kind, str) else None
    text = part.get(field) if field is not None else None
    return text if isinstance(text, str) else ""


def _content_texts(content: object) -> list[str]:
    """A chat `content`: a string, or a list of text parts."""
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        return []
    return [text for text in (part_text(part, _CHAT_PARTS) for part in content) if text]


def chat_texts(message: object) -> list[tuple[int, str]]:
    """(slot, text) of an openai-chat `message` or stream `delta`."""
    if not isinstance(message, dict):
        return []
    texts: list[tuple[int, str]] = []
    for slot, name in enumerate(CHAT_FIELDS):
        value = message.get(name)
        if value is None:
            continue
        if slot == CHAT_CONTENT:
            texts.extend((slot, text) for text in _content_texts(value))
        elif isinstance(value, str) and value:
            texts.append((slot, value))
    audio = message.get("audio")
    transcript = audio.get("transcript") if isinstance(audio, dict) else None
    if isinstance(transcript, str) and transcript:
        texts.append((CHAT_AUDIO, transcript))
    return texts


def anthropic_block_text(block: object) -> str:
    """The text of an Anthropic content block: a text block's, a thinking block's."""
    return part_text(block, {"text": "text", "thinking": "thinking"})


def anthropic_delta_text(delta: object) -> tuple[str, bool]:
    """(text, whether it is answer text) of a `content_block_delta`'s delta: `text_delta`,
    `thinking_delta`."""
    if not isinstance(delta, dict):
        return "", False
    kind = delta.get("type")
    if kind == "text_delta":
        text = delta.get("text")
        return (text, True) if isinstance(text, str) else ("", False)
    if kind == "thinking_delta":
        text = delta.get("thinking")
        return (text, False) if isinstance(text, str) else ("", False)
    return "", False


def responses_part_text(part: object) -> str:
    """The text of a Responses content part (`output_text`, `refusal`, `reasoning_text`) or
    reasoning summary part (`summary_text`)."""
    return part_text(part, _RESPONSES_PARTS)


def responses_item_texts(item: object) -> list[tuple[int, int, str]]:
    """(slot, part index, text) of a Responses output item: a message's content parts, a
    reasoning item's summary and content parts. Other items (tool calls and their results) have
    none."""
    if not isinstance(item, dict) or item.get("type") not in ("message", "reasoning"):
        return []
    texts: list[tuple[int, int, str]] = []
    for slot, name in ((RESPONSES_SUMMARY, "summary"), (RESPONSES_CONTENT, "content")):
        for at, part in enumerate(as_list(item.get(name))):
            text = responses_part_text(part)
            if text:
                texts.append((slot, at, text))
    return texts


def gemini_candidate_texts(candidate: dict[str, object]) -> list[tuple[int, str]]:
    """(slot, text) of a Gemini candidate's parts: thoughts (`thought: true`) and text."""
    content = candidate.get("content")
    if not isinstance(content, dict):
        return []
    texts: list[tuple[int, str]] = []
    for part in as_list(content.get("parts")):
        if isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str) and text:
                texts.append((GEMINI_THOUGHT if lax_bool(part.get("thought")) else GEMINI_TEXT,
                              text))
    return texts


_TRUE_STRINGS: Final = frozenset({"1", "on", "t", "true", "y", "yes"})


def lax_bool(value: object) -> bool:
    """Whether a JSON value reads as true to pydantic's lax bool (google-genai's models): true,
    1, 1.0, and "1", "on", "t", "true", "y", "yes" in any case (red team, round 5: `"thought":
    1` is a thought to the SDK, which skips it in `chunk.text`)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS


def ollama_texts(payload: dict[str, object], chat: bool) -> list[tuple[int, str]]:
    """(slot, text) of an Ollama answer or stream line: `thinking`, then the answer
    (`message.content` for chat, `response` for generate)."""
    source = payload.get("message") if chat else payload
    if not isinstance(source, dict):
        return []
    texts: list[tuple[int, str]] = []
    for slot, name in ((OLLAMA_THINKING, "thinking"),
                       (OLLAMA_ANSWER, "content" if chat else "response")):
        text = source.get(name)
        if isinstance(text, str) and text:
            texts.append((slot, text))
    return texts
