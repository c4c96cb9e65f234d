"""Request text of Anthropic's Messages API (`/v1/messages`, and its beta, which Claude Code
speaks: `/v1/messages?beta=true`). docs/security.md lists every field and what is done with
it."""

from __future__ import annotations

from functools import lru_cache

from lakera_addon import protocols
from lakera_addon.extract_common import TOOL
from lakera_addon.extract_common import BodyShapeError
from lakera_addon.extract_common import Message
from lakera_addon.extract_common import append
from lakera_addon.extract_common import append_turn
from lakera_addon.extract_common import attachment_text_of
from lakera_addon.extract_common import items
from lakera_addon.extract_common import structured_texts
from lakera_addon.extract_common import turn_role
from lakera_addon.extract_common import walk
from lakera_addon.lenient_json import readings

# Blocks with no text the model reads as text: images, encrypted thinking, file uploads, tool
# references by name, tool definitions (tool_definitions reads those), model fallbacks.
_SKIPPED = frozenset({"image", "redacted_thinking", "container_upload", "tool_reference",
                      "mcp_tool_listing", "tool_addition", "tool_removal", "fallback"})
_TOOL_USES = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
# Keys that are never prose: ids, tool and server names, signatures, media types, URLs, dates,
# error codes, the tools a compaction changed (definitions)
_OPAQUE = frozenset({
    "type", "id", "name", "signature", "media_type", "cache_control", "url", "page_age",
    "retrieved_at", "error_code", "stop_reason", "file_type", "caller", "tool_changes",
    "model", "trigger",
})


@lru_cache(maxsize=1024)
def _opaque(key: str) -> bool:
    """Whether a key (lowercased: a lenient server matches keys in any case) is not prose."""
    return key in _OPAQUE or key.endswith(("_id", "_url", "_name")) or key.startswith(
        "encrypted_")


# The top-level keys of a Messages request: the SDK's (`MessageCreateParams` and the beta's),
# and those of Bedrock's and Vertex's Anthropic bodies (`anthropic_version`, `anthropic_beta`)
# and the older `output_format` the extractor reads. Any other key is screened whole (extract.py).
MESSAGES_BEYOND_SDK = frozenset({"anthropic_version", "anthropic_beta", "output_format"})
MESSAGES_FIELDS = MESSAGES_BEYOND_SDK | {
    "betas", "billing_policy", "cache_control", "compaction", "container", "context_management",
    "diagnostics", "fallback_credit_token", "fallbacks", "inference_geo", "max_tokens",
    "mcp_servers", "messages", "metadata", "model", "output_config", "service_tier", "speed",
    "stop_sequences", "stream", "system", "thinking", "thread", "tool_choice", "tools",
    "user_profile_id", "workspace_id"}


def _visit(block: dict[str, object], role: str) -> list[tuple[object, str]]:
    """A content block (or anything inside one). Every `*tool_result` block, the client's and
    the server tools' (web search and fetch, code execution, MCP), is tool output."""
    kind = block.get("type")
    kind = kind if isinstance(kind, str) else None  # (a list or an object is unhashable)
    if kind in _SKIPPED:
        return []
    if isinstance(kind, str) and kind.endswith("tool_result"):
        role = TOOL
    children: list[tuple[object, str]] = []
    for key, value in block.items():
        name = key.lower()
        if _opaque(name):
            continue
        if name == "input" and kind in _TOOL_USES:
            children += [(text, role) for text in structured_texts(value)]
        elif name == "data" and kind == "base64":  # a base64 source: a PDF, or a text file
            children.append((attachment_text_of(readings(block, "media_type"), value), role))
        else:
            children.append((value, role))
    return children


def anthropic_messages(body: dict[str, object]) -> list[Message]:
    """`system` (a string or blocks) as system; each message's blocks by the message's role:
    text, thinking, documents (text and content sources, titles, context), search results,
    citations, tool inputs; tool results of every kind (nested documents and search results
    included) as tool. The beta's compaction instructions as user (the client's own text, not
    a system prompt)."""
    messages: list[Message] = []
    append(messages, "system", [t for _, t in walk(body.get("system"), "system", _visit)])
    instructions = [_instructions(body.get("compaction"))]
    management = body.get("context_management")
    if isinstance(management, dict):
        instructions += [_instructions(edit) for edit in items(management.get("edits"))]
    append(messages, "user", [t for t in instructions if t])
    value = body.get("messages")
    if not isinstance(value, list):
        raise BodyShapeError(f"{protocols.ANTHROPIC_MESSAGES} body has no 'messages' list")
    for item in value:
        if not isinstance(item, dict):
            raise BodyShapeError(f"{protocols.ANTHROPIC_MESSAGES} message is not an object")
        content = item.get("content")
        if isinstance(content, str):  # the common case, quickly
            append(messages, turn_role(item), [content])
        else:
            append_turn(messages, walk(content, turn_role(item), _visit))
    return messages


def _instructions(value: object) -> str:
    text = value.get("instructions") if isinstance(value, dict) else None
    return text if isinstance(text, str) else ""


def anthropic_tools(body: dict[str, object]) -> list[object]:
    """`tools`, the response schema (`output_config.format`, the older `output_format`, and
    the fallbacks'), and the definitions inside messages (the beta's MCP tool listings, tools a
    message or a compaction adds)."""
    definitions: list[object] = [*items(body.get("tools"))]
    configs = [body, *items(body.get("fallbacks"))]
    for config in configs:
        if isinstance(config, dict):
            output = config.get("output_config")
            if isinstance(output, dict) and isinstance(output.get("format"), dict):
                definitions.append(output["format"])
            if config is body and isinstance(body.get("output_format"), dict):
                definitions.append(body["output_format"])
    for message in items(body.get("messages")):
        if isinstance(message, dict):
            for block in items(message.get("content")):
                definitions += _block_definitions(block)
    return definitions


def _block_definitions(block: object) -> list[object]:
    if not isinstance(block, dict):
        return []
    kind = block.get("type")
    if kind == "mcp_tool_listing":
        return items(block.get("tools"))
    changes = items(block.get("tool_changes")) if kind == "compaction" else [block]
    found: list[object] = []
    for change in changes:
        if isinstance(change, dict) and change.get("type") == "tool_addition":
            tool = change.get("tool")
            if isinstance(tool, dict) and tool.get("type") == "tool_definition":
                found.append(tool.get("definition"))
    return found


# Blocks of the model's turn that carry what a server-side tool returned (web search and fetch,
# code execution, MCP, the advisor): never screened on the way in when they arrived
_SERVER_RESULT_SUFFIX = "tool_result"


def server_output(message: object) -> object | None:
    """An assistant message cut to its server tool results, or None if it holds none."""
    if not isinstance(message, dict) or turn_role(message) != "assistant":
        return None
    results = [block for block in items(message.get("content")) if isinstance(block, dict)
               and str(block.get("type")).endswith(_SERVER_RESULT_SUFFIX)]
    return {**message, "content": results} if results else None
