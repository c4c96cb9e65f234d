"""Names of the client protocols the addon understands."""

from typing import Final
from typing import Literal

Protocol = Literal["openai-chat", "openai-responses", "anthropic-messages", "openai-embeddings"]

OPENAI_CHAT: Final = "openai-chat"
OPENAI_RESPONSES: Final = "openai-responses"
ANTHROPIC_MESSAGES: Final = "anthropic-messages"
OPENAI_EMBEDDINGS: Final = "openai-embeddings"

ALL: Final[tuple[Protocol, ...]] = (
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    ANTHROPIC_MESSAGES,
    OPENAI_EMBEDDINGS,
)
