"""Which protocol a screened request speaks (SPEC section 3, `auto` detection)."""

from __future__ import annotations

from lakera_addon import protocols
from lakera_addon.protocols import Protocol


def detect_protocol(declared: str, path: str, body: dict[str, object]) -> Protocol | None:
    """The route's declared protocol, or the first `auto` rule that matches; None if none."""
    if declared != "auto":
        for known in protocols.ALL:
            if known == declared:
                return known
        return None
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/messages"):
        return protocols.ANTHROPIC_MESSAGES
    if path.endswith("/responses") and "input" in body:
        return protocols.OPENAI_RESPONSES
    if "messages" in body:
        return protocols.OPENAI_CHAT
    if "input" in body:
        return protocols.OPENAI_EMBEDDINGS
    return None


def guess_protocol(path: str) -> Protocol:
    """The protocol a path suggests, for a deny when the body could not be read."""
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/messages"):
        return protocols.ANTHROPIC_MESSAGES
    if path.endswith("/responses"):
        return protocols.OPENAI_RESPONSES
    if path.endswith("/embeddings"):
        return protocols.OPENAI_EMBEDDINGS
    return protocols.OPENAI_CHAT


def is_event_stream(content_type: str | None) -> bool:
    """Whether a response's Content-Type is `text/event-stream` (SPEC section 5)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
