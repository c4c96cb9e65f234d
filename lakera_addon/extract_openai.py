"""Request text of OpenAI's protocols: Chat Completions (and the OpenAI-compatible servers that
speak it), the Responses API and embeddings. docs/security.md lists every field and what is
done with it."""

from __future__ import annotations

from functools import lru_cache

from lakera_addon import protocols
from lakera_addon.extract_common import TOOL
from lakera_addon.extract_common import BodyShapeError
from lakera_addon.extract_common import Message
from lakera_addon.extract_common import Texts
from lakera_addon.extract_common import append
from lakera_addon.extract_common import append_turn
from lakera_addon.extract_common import file_text
from lakera_addon.extract_common import items
from lakera_addon.extract_common import loose_texts
from lakera_addon.extract_common import one_role
from lakera_addon.extract_common import structured_texts
from lakera_addon.extract_common import turn_role
from lakera_addon.extract_common import walk
from lakera_addon.lenient_json import readings

# Keys whose values are never text the model reads as prose: ids, names of functions and
# participants (APIs restrict them to identifiers), URLs and file ids the addon cannot fetch,
# images and audio, encrypted or signed state (OpenRouter's `reasoning_details` data),
# log probabilities the API returned, image generation settings.
_OPAQUE = frozenset({
    "type", "id", "role", "status", "name", "namespace", "server_label", "caller", "detail",
    "image_url", "file_url", "url", "input_audio", "audio", "logprobs", "encrypted_content",
    "cache_control", "format", "size", "quality", "background", "output_format", "model",
    "environment", "tools", "agent", "author", "recipient", "param", "moderation_details",
    "fingerprint", "data", "signature",
})
# Keys of a model's item that hold what a tool returned (an MCP call's output, file search
# results, code interpreter logs, an error the tool reported; Bedrock Converse's `toolResult`
# block, lowercased)
_OUTPUT_KEYS = frozenset({"output", "outputs", "results", "result", "error", "toolresult"})


@lru_cache(maxsize=1024)
def _opaque(key: str) -> bool:
    """Whether a key (lowercased: a lenient server matches keys in any case) is not prose."""
    return key in _OPAQUE or key.endswith(("_id", "_url")) or key.startswith("encrypted_")


def _values(value: object) -> list[object]:
    """The values of an object whose keys are the client's own names (template variables)."""
    return list(value.values()) if isinstance(value, dict) else [value]


def _visit(obj: dict[str, object], role: str) -> list[tuple[object, str]]:
    kind = obj.get("type")
    children: list[tuple[object, str]] = []
    for key, value in obj.items():
        name = key.lower()
        if _opaque(name) or (kind == "image_generation_call" and name == "result"):
            continue  # an image generation's result is the image, base64
        if name == "arguments":
            children += [(text, role) for text in structured_texts(value)]
        elif name in ("file_data", "bytes"):  # a file inline: a data URL or base64 (Bedrock
            children.append((file_text(value), role))  # Converse's document `bytes`)
        else:
            children.append((value, TOOL if name in _OUTPUT_KEYS else role))
    return children


# Fields of OpenAI-compatible servers (vLLM) that their chat template renders into the prompt:
# a template of the client's own (its literal text lands anywhere in the prompt, a user turn
# included), its variables, RAG documents. All are the client's text: `user`, never `system`.
_CHAT_EXTRAS = ("chat_template", "chat_template_kwargs", "documents")
# The top-level keys of a Chat Completions request: the SDK's (`CompletionCreateParams`) and
# vLLM's extras that the extractor reads. Any other key is screened whole (extract.py).
CHAT_BEYOND_SDK = frozenset(_CHAT_EXTRAS)
CHAT_FIELDS = CHAT_BEYOND_SDK | {
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model",
    "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty",
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
    "verbosity", "web_search_options"}
RESPONSES_FIELDS = frozenset({
    "access_programs", "background", "background_options", "context_management",
    "conversation", "image", "include", "input", "instructions", "max_output_tokens",
    "max_tool_calls", "metadata", "model", "moderation", "multi_agent", "openai-beta",
    "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key",
    "prompt_cache_options", "prompt_cache_retention", "reasoning", "safety_identifier",
    "service_tier", "store", "stream", "stream_options", "temperature", "text", "tool_choice",
    "tools", "top_logprobs", "top_p", "truncation", "user"})
EMBEDDINGS_FIELDS = frozenset({"dimensions", "encoding_format", "input", "model", "user"})
# A message with only these keys and a string content is that string
_PLAIN = frozenset({"role", "content", "name", "tool_call_id"})


def openai_chat(body: dict[str, object]) -> list[Message]:
    """Every message, whole: its content (string or parts; text, refusal, text files), the
    assistant's refusal and the arguments of its tool calls, and whatever else a lenient
    server's chat template may read (`reasoning_content`, ...) but ids, names and media."""
    value = body.get("messages")
    if not isinstance(value, list):
        raise BodyShapeError(f"{protocols.OPENAI_CHAT} body has no 'messages' list")
    messages: list[Message] = []
    for key in _CHAT_EXTRAS:  # vLLM's chat template, its variables, RAG documents
        if key in body:
            append(messages, "user", [t for _, t in walk(_values(body[key]) if key.endswith(
                "kwargs") else body[key], "user", _visit)])
    for item in value:
        if not isinstance(item, dict):
            raise BodyShapeError(f"{protocols.OPENAI_CHAT} message is not an object")
        content = item.get("content")
        if isinstance(content, str) and _PLAIN.issuperset(item):  # the common case, quickly
            append(messages, turn_role(item), [content])
        else:
            append_turn(messages, walk(item, turn_role(item), _visit))
    return messages


def openai_chat_tools(body: dict[str, object]) -> list[object]:
    """`tools`, the deprecated `functions`, and the `response_format` schema."""
    definitions = [*items(body.get("tools")), *items(body.get("functions"))]
    return [*definitions, *_response_format(body.get("response_format"))]


def _response_format(value: object) -> list[object]:
    return [value] if isinstance(value, dict) and value.get("type") not in (
        "text", "json_object") else []


# Items the client sends that hold tool definitions, not turns (tool_definitions reads them)
_DEFINITION_ITEMS = frozenset({"additional_tools", "tool_search_output", "configuration_update"})
# Items of the model's own turn that carry what a server-side tool returned: not the model's
# turn that hides them (latest_turn)
_SERVER_OUTPUT_ITEMS = frozenset({"mcp_call", "mcp_list_tools", "file_search_call",
                                  "code_interpreter_call"})


def _item_role(item: dict[str, object]) -> str:
    """An input item's role by its type and role, every reading of both (`one_role`)."""
    return one_role(_kind_role(item, kind) for kind in readings(item, "type") or [None])


def _kind_role(item: dict[str, object], kind: object) -> str:
    if kind is None or kind == "message":
        return turn_role(item)
    if kind in ("mcp_approval_response", "agent_message"):
        return "user"  # the user's approval and its reason; another agent's message
    if isinstance(kind, str) and kind.endswith("_output"):
        return TOOL
    return "assistant"  # the model's calls, reasoning and server tool calls


def _responses_item(item: object) -> Texts:
    if isinstance(item, str):
        return [("user", item)] if item.strip() else []
    if not isinstance(item, dict):
        raise BodyShapeError(f"{protocols.OPENAI_RESPONSES} input item is not an object")
    kinds = readings(item, "type")
    if kinds and all(isinstance(kind, str) and kind in _DEFINITION_ITEMS for kind in kinds):
        return []
    return walk(item, _item_role(item), _visit)


def openai_responses(body: dict[str, object]) -> list[Message]:
    """`instructions` as system; `input` (a string, or items by type: messages by role, the
    model's calls and reasoning as assistant, every tool output as tool); the variables of a
    stored prompt as user."""
    messages: list[Message] = []
    append(messages, "system", [t for _, t in walk(body.get("instructions"), "system", _visit)])
    value = body.get("input")
    if isinstance(value, str):
        append(messages, "user", [value])
    elif isinstance(value, list):
        for item in value:
            append_turn(messages, _responses_item(item))
    elif value is not None:
        raise BodyShapeError(f"{protocols.OPENAI_RESPONSES} 'input' is neither a string nor a list")
    prompt = body.get("prompt")
    if isinstance(prompt, dict):
        append_turn(messages, walk(_values(prompt.get("variables")), "user", _visit))
    return messages


def openai_responses_tools(body: dict[str, object]) -> list[object]:
    """`tools`, the `text.format` schema, and the tool lists in `input`: an MCP server's listed
    tools (`mcp_list_tools`), `additional_tools`, a tool search's output, a configuration
    update's response format."""
    definitions: list[object] = [*items(body.get("tools"))]
    text = body.get("text")
    if isinstance(text, dict):
        definitions += _response_format(text.get("format"))
    for item in items(body.get("input")):
        if not isinstance(item, dict):
            continue
        if item.get("type") in ("mcp_list_tools", "additional_tools", "tool_search_output"):
            definitions += items(item.get("tools"))
        elif item.get("type") == "configuration_update":
            text = item.get("text")
            if isinstance(text, dict):
                definitions += _response_format(text.get("format"))
    return definitions


def responses_model_turn(item: object) -> bool:
    """Whether an input item is the model's own (an assistant message, a call, reasoning), in
    every reading of its type and role. An item that carries a server-side tool's output (an
    MCP call and its output) is not."""
    if not isinstance(item, dict):
        return False
    return all(_model_kind(item, kind) for kind in readings(item, "type") or [None])


def _model_kind(item: dict[str, object], kind: object) -> bool:
    if kind is None or kind == "message":
        return turn_role(item) == "assistant"
    return (isinstance(kind, str) and not kind.endswith("_output")
            and kind not in _SERVER_OUTPUT_ITEMS | _DEFINITION_ITEMS
            and kind not in ("mcp_approval_response", "agent_message", "item_reference"))


def responses_server_output(item: object) -> object | None:
    """The item itself if it carries a server-side tool's output, else None."""
    kind = item.get("type") if isinstance(item, dict) else None
    return item if isinstance(kind, str) and kind in _SERVER_OUTPUT_ITEMS else None


def openai_embeddings(body: dict[str, object]) -> list[Message]:
    """Each item of `input`: a string, or every string in an object or a list (a lenient
    server's own shapes); token-id arrays carry no text to screen."""
    value = body.get("input")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise BodyShapeError(f"{protocols.OPENAI_EMBEDDINGS} body has no 'input' string or list")
    messages: list[Message] = []
    for item in value:
        append(messages, "user", [item] if isinstance(item, str) else loose_texts(item))
    return messages
