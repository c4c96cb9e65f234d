"""Names of the client protocols the addon understands."""

from typing import Final
from typing import Literal

Protocol = Literal[
    "openai-chat",
    "openai-responses",
    "anthropic-messages",
    "openai-embeddings",
    "gemini-generate",
    "ollama-chat",
    "ollama-generate",
]

OPENAI_CHAT: Final = "openai-chat"
OPENAI_RESPONSES: Final = "openai-responses"
ANTHROPIC_MESSAGES: Final = "anthropic-messages"
OPENAI_EMBEDDINGS: Final = "openai-embeddings"
GEMINI_GENERATE: Final = "gemini-generate"  # models/{model}:generateContent, :streamGenerateContent
OLLAMA_CHAT: Final = "ollama-chat"  # Ollama's native /api/chat
OLLAMA_GENERATE: Final = "ollama-generate"  # Ollama's native /api/generate

ALL: Final[tuple[Protocol, ...]] = (
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    ANTHROPIC_MESSAGES,
    OPENAI_EMBEDDINGS,
    GEMINI_GENERATE,
    OLLAMA_CHAT,
    OLLAMA_GENERATE,
)

# Protocols whose streamed answers are newline-delimited JSON (application/x-ndjson), not SSE.
NDJSON: Final[frozenset[Protocol]] = frozenset({OLLAMA_CHAT, OLLAMA_GENERATE})
