"""Which request fields carry text to the model, per protocol, and what the addon does with each.

Each protocol's rows are matched in order against the path of every text field the official
SDKs' request types define (tests/test_field_inventory.py walks them); the first row whose
pattern matches classifies the field. In a pattern `*` matches anything; `[]` is a list, `{}` a
mapping's values, `[type=x]` a list item of that kind, `(type=x)` a variant of that kind.

`how` is the role a screened field is sent to Lakera as (`system`, `user`, `assistant`,
`tool`), `TURN` (the role of the message or content it is in: `developer` as `system`, Gemini's
`model` as `assistant`), `DEFINITION` (a tool definition: `extract.tool_definitions`, screened
when the route's `screen_tool_definitions` is true), or `NOT_SCREENED` (with the reason).
docs/security.md shows these tables; the test keeps the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from functools import cache
from typing import Any

from lakera_addon import protocols

TURN = "turn"
DEFINITION = "definition"
NOT_SCREENED = "not screened"


@dataclass(frozen=True)
class Row:
    pattern: str
    how: str
    reason: str = ""
    # set beside the field in the test's body (a MIME type that makes the field what it is)
    fill: Mapping[str, object] = field(default_factory=dict)
    # how the test writes its phrase: as it is (base64 for bytes), "base64", a text/plain
    # "data-url"
    encode: str | None = None
    # a field no SDK type declares that the addon reads anyway (a lenient server's, a doc row)
    beyond_sdk: bool = False


def _no(pattern: str, reason: str, **kwargs: Any) -> Row:
    return Row(pattern, NOT_SCREENED, reason, **kwargs)


# Reasons a field is not screened
ID = "an id (issued by the API or chosen by the client), not prose"
NAME = "a name (of a function, tool, server, participant or agent): an identifier, not prose"
MODEL = "a model name"
PARAM = "a setting (sampling, output, service tier, language), not text the model reads"
META = "metadata the provider keeps with the request; it is not given to the model"
SECRET = "a credential: never sent to Lakera (nor logged)"
URL = ("a URL: the provider fetches what it names, the addon cannot (see Known gaps); the URL "
       "itself is not prose")
FILE = "a file uploaded earlier, by id (see Known gaps)"
MEDIA = ("an image, audio or video (binary, base64): the model does not read it as text "
         "(see Known gaps)")
PDF = "a base64 PDF: binary, its text cannot be read without a PDF parser (see Known gaps)"
ENCRYPTED = ("encrypted or signed by the provider: unreadable to the addon, and only the "
             "provider can have produced it")
STATE = ("a reference to state stored at the provider (an earlier response, a conversation, "
         "a stored prompt, a cache): its text never passes the proxy (see Known gaps)")
LOCATION = "a location hint the search engine localises results with, not model input"
DOMAINS = "the domains a server-side tool may or may not visit"
REQUIRED = "parameter names, screened already as the keys of `properties`"
STOP = "stop sequences: matched against the answer, never read by the model"
BUILTIN = ("a setting of a built-in tool (search, retrieval, maps, file search, computer use): "
           "provider configuration, not text the model reads")
LOGPROBS = "log probabilities the API returned; not given back to the model"

# Any top-level key the protocol's SDK does not define (the test puts its phrase under a key
# of this name): a lenient server may put a field of its own into the prompt
OTHER = "<any other key>*"
OTHER_WHY = ("every string (and prose key) under a top-level key the SDK does not define: a "
             "lenient server's own field may reach the prompt (text-generation-webui's "
             "`context`, Bedrock Converse's `system`)")

# What a screened field is
TEXT = "text"
TOOL_ARGS = "the arguments of the model's tool calls, as the client's history claims them"
TOOL_DEF = "tool definition"
SCHEMA = "response schema (structured output), screened with the tool definitions"
TEXT_FILE = ("a text file, decoded (base64 or a `data:` URL of a text type, or of no type when "
             "it is clean UTF-8); a binary file (a PDF) is not: see Known gaps")
TOOL_OUT = "tool output"

_CHAT = [
    _no("messages[*].name", NAME),
    _no("messages[*].tool_call_id", ID),
    _no("messages[*].tool_calls[*].id", ID),
    _no("messages[*].tool_calls[*.name", NAME),
    _no("messages[*].function_call.name", NAME),
    _no("messages[role=assistant].audio.id", "the id of audio the model answered with earlier"),
    _no("messages[*].image_url.url", "an image (a URL or a base64 `data:` URL): " + MEDIA),
    _no("messages[*].input_audio.data", MEDIA),
    _no("messages[*].file.file_id", FILE),
    Row("messages[*].file.file_data", TURN, TEXT_FILE, encode="data-url"),
    Row("messages[*].tool_calls[*", TURN, TOOL_ARGS),
    Row("messages[*].function_call.arguments", TURN, TOOL_ARGS + " (deprecated form)"),
    Row("messages[*].refusal", TURN, "a refusal of the model's, as the history claims it"),
    Row("messages[*]*", TURN, "text: a string, text parts, refusal parts, a file's name; "
        "`tool` and `function` messages as tool"),
    Row("tools[*", DEFINITION, TOOL_DEF + ": name, description, parameters, a custom tool's "
        "grammar"),
    Row("functions[*", DEFINITION, TOOL_DEF + " (deprecated form)"),
    Row("response_format*", DEFINITION, SCHEMA),
    _no("prediction*", "a predicted output: a speculative-decoding hint compared with the "
        "answer as it is generated, not part of the prompt"),
    _no("tool_choice*", NAME),
    _no("function_call.name", NAME),
    _no("web_search_options.user_location*", LOCATION),
    _no("audio.voice*", "a voice name or id"),
    _no("metadata{}", META),
    _no("model", MODEL),
    _no("moderation.model", MODEL),
    _no("prompt_cache_key", ID),
    _no("safety_identifier", ID),
    _no("user", ID),
    _no("stop*", STOP),
    # OpenAI-compatible servers (vLLM) render these into the prompt with the chat template:
    # the client's text wherever the template puts it (a user turn too), so `user`
    Row("chat_template", "user", "vLLM: a chat template of the client's own (its literal "
        "text is prompt, anywhere in it)", beyond_sdk=True),
    Row("chat_template_kwargs{}", "user", "vLLM: variables the chat template renders",
        beyond_sdk=True),
    Row("documents[]{}", "user", "vLLM: documents a RAG chat template renders",
        beyond_sdk=True),
    Row(OTHER, "user", OTHER_WHY, beyond_sdk=True),
]

_RESPONSES = [
    _no("prompt.id", STATE),
    _no("prompt.version", STATE),
    _no("conversation*", STATE),
    _no("previous_response_id", STATE),
    _no("background_options.continuation_id", STATE),
    _no("prompt_cache_options.comparison_response_id", STATE),
    # tool definitions, and what in them is not text
    _no("*.user_location*", LOCATION),
    _no("*.allowed_domains[]", DOMAINS),
    _no("*.filters*", "search filters (attribute keys and values, domains) of a server-side "
        "tool"),
    _no("*.authorization", SECRET),
    _no("*.headers{}", SECRET),
    _no("*.domain_secrets[]*", SECRET),
    _no("*.server_url", URL),
    _no("*.file_ids[]", FILE),
    _no("*_id", ID),
    _no("*_ids[]", ID),
    _no("*.container", "a container id"),
    _no("*.input_image_mask*", MEDIA),
    _no("*.model", MODEL),
    _no("*.size", PARAM),
    _no("*.skills[*].source.data", "a skill's files, base64"),
    _no("*.agent.agent_name", NAME),
    Row("tools[*", DEFINITION, TOOL_DEF + ": name, description, parameters, output schema, a "
        "custom tool's grammar, a namespace's tools, an MCP server's label, description and "
        "allowed tools, shell skills' names and descriptions"),
    Row("input[type=additional_tools].tools[*", DEFINITION, TOOL_DEF + " added mid-conversation"),
    Row("input[type=tool_search_output].tools[*", DEFINITION, TOOL_DEF + " a tool search found"),
    Row("input[type=mcp_list_tools].tools[*", DEFINITION, TOOL_DEF + ": the tools an MCP server "
        "listed (name, description, input schema, annotations)"),
    Row("text.format*", DEFINITION, SCHEMA),
    Row("input[type=configuration_update].text.format*", DEFINITION, SCHEMA),
    # what in the items is not text
    _no("*.id", ID),
    _no("*.name", NAME),
    _no("*.namespace", NAME),
    _no("*.server_label", NAME),
    _no("*.author", NAME),
    _no("*.fingerprint", "a hash of a program"),
    _no("*.recipient", NAME),
    _no("*.url", URL),
    _no("*.image_url", "an image (a URL or a base64 `data:` URL): " + MEDIA),
    _no("*.file_url", URL),
    _no("*.encrypted_content", ENCRYPTED),
    _no("*.logprobs[]*", LOGPROBS),
    _no("*[type=image_generation_call].result", "the generated image, base64"),
    _no("*.error.param", NAME),
    _no("*.error.type", "an error type"),
    _no("*.error.moderation_details*", "moderation categories"),
    _no("input[type=shell_call].environment*", "the shell tool's environment, as `tools` "
        "defines it"),
    # the items, by who wrote them
    Row("input[type=message].content[type=input_file].file_data", TURN, TEXT_FILE,
        encode="data-url"),
    Row("input[type=message]*", TURN, TEXT + ": a string, input and output text, refusals, a "
        "file's name, citation titles"),
    Row("input[type=agent_message]*", "user", "another agent's message"),
    Row("input[type=mcp_approval_response].reason", "user", "the user's reason to approve or "
        "deny an MCP call"),
    Row("input[type=*_output].output[type=input_file].file_data", "tool", TEXT_FILE,
        encode="data-url"),
    Row("input[type=*_output]*", "tool", TOOL_OUT + " of every kind (function, custom tool, "
        "shell, local shell, apply_patch, computer safety checks, program, another agent)"),
    Row("input[type=mcp_call].output", "tool", "an MCP call's output"),
    Row("input[type=mcp_call].error*", "tool", "an MCP call's error"),
    Row("input[type=mcp_list_tools].error", "tool", "an MCP server's error"),
    Row("input[type=file_search_call].results*", "tool", "file search results (text, file "
        "names, attributes)"),
    Row("input[type=code_interpreter_call].outputs*", "tool", "code interpreter logs"),
    Row("input[type=image_generation_call].error*", "tool", "an image generation error"),
    Row("input[type=*]*", "assistant", "the model's own items as the client's history claims "
        "them: call arguments and inputs, code, commands, patches and paths, search queries, "
        "typed text, reasoning summaries and text, a revised image prompt"),
    Row("input", "user", TEXT),
    Row("instructions", "system", TEXT),
    Row("prompt.variables{}(type=input_file).file_data", "user", TEXT_FILE, encode="data-url"),
    Row("prompt.variables{}*", "user", "a stored prompt's variables (text, a file's name)"),
    _no("context_management[].type", PARAM),
    _no("reasoning.mode", PARAM),
    _no("tool_choice*", NAME),
    _no("metadata{}", META),
    _no("model", MODEL),
    _no("prompt_cache_key", ID),
    _no("safety_identifier", ID),
    _no("user", ID),
    Row(OTHER, "user", OTHER_WHY, beyond_sdk=True),
]

_EMBEDDINGS = [
    Row("input", "user", TEXT),
    Row("input[]", "user", TEXT + " (token-id arrays carry none)"),
    Row("input[]{}", "user", "every string of an item given as an object or a list (a "
        "lenient server's own shape)", beyond_sdk=True),
    _no("model", MODEL),
    _no("user", ID),
    Row(OTHER, "user", OTHER_WHY, beyond_sdk=True),
]

_ANTHROPIC = [
    # tool definitions, and what in them is not text
    _no("*.allowed_domains[]", DOMAINS),
    _no("*.blocked_domains[]", DOMAINS),
    _no("*.user_location*", LOCATION),
    _no("*.input_schema*.required[]", REQUIRED),
    _no("*type=advisor_*.model", MODEL),
    _no("*.tool(type=*_reference).*", NAME),
    Row("tools[*", DEFINITION, TOOL_DEF + ": name, description, input schema, input examples; "
        "a web fetch tool's tool names; an MCP toolset's server name and tools"),
    Row("*.tool(type=tool_definition).definition*", DEFINITION, TOOL_DEF + " a message or a "
        "compaction adds (beta)"),
    _no("messages[*].content[type=mcp_tool_listing].mcp_server_name", NAME),
    Row("messages[*].content[type=mcp_tool_listing].tools[*", DEFINITION, TOOL_DEF + ": the "
        "tools an MCP server listed (beta)"),
    Row("output_config.format*", DEFINITION, SCHEMA),
    Row("fallbacks[].output_config.format*", DEFINITION, SCHEMA + " (a fallback's)"),
    _no("mcp_servers[*].authorization_token", SECRET),
    _no("mcp_servers[*].url", URL + "; Anthropic reads the server's tools itself"),
    _no("mcp_servers[*].name", NAME),
    _no("mcp_servers[*].tool_configuration.allowed_tools[]", NAME),
    # what in the blocks is not text
    _no("*.url", URL),
    _no("*_id", ID),
    _no("*.id", ID),
    _no("*.encrypted_*", ENCRYPTED),
    _no("*.signature", ENCRYPTED),
    _no("*[type=redacted_thinking].data", ENCRYPTED),
    _no("*[type=image].source*", MEDIA),
    _no("*.source(type=base64).data", PDF, fill={"media_type": "application/pdf"}),
    _no("*.name", NAME),
    _no("*_name", NAME),
    _no("*.page_age", "a page's age, as the search engine gave it"),
    _no("*.retrieved_at", "a date"),
    _no("*.stop_reason", "why the advisor stopped"),
    _no("*[type=fallback]*", MODEL + " (a model fallback happened)"),
    # the blocks, by who wrote them
    Row("messages[*].content[type=*tool_result]*", "tool", TOOL_OUT + " of every kind: "
        "a tool result's text, documents and search results; server tools' (web search "
        "titles, a fetched page, code execution stdout and stderr, text editor views, an MCP "
        "result, the advisor's answer, tool search errors); a browser's tab titles"),
    Row("messages[*]*", TURN, TEXT + ", thinking, documents (text and content sources, title, "
        "context), search results (title, source, text), citations (cited text, titles, "
        "sources), tool inputs, a compaction's summary"),
    Row("system*", "system", TEXT + " and its citations"),
    Row("compaction(type=summarize).instructions", "user", "instructions for summarising "
        "the conversation (beta): the client's prompt, not a system prompt"),
    Row("context_management.edits[type=compact_*].instructions", "user", "instructions for "
        "summarising the conversation (beta): the client's prompt, not a system prompt"),
    _no("context_management.edits[*].clear_tool_inputs[]", NAME),
    _no("context_management.edits[*].exclude_tools[]", NAME),
    _no("betas[]", "beta names (sent as a header)"),
    _no("container*", "a container and its skills, by id"),
    _no("fallback_credit_token*", SECRET),
    _no("fallbacks[].model", MODEL),
    _no("inference_geo", PARAM),
    _no("model", MODEL),
    _no("stop_sequences[]", STOP),
    Row(OTHER, "user", OTHER_WHY + "; Bedrock's and Vertex's `anthropic_version` and "
        "`anthropic_beta` are fields", beyond_sdk=True),
]

_GEMINI_TOOL_PARTS = "function and tool responses and code execution output"
_GEMINI = [
    # tool definitions
    _no("tools[].functionDeclarations[]*.required[]", REQUIRED),
    Row("tools[].functionDeclarations[]*", DEFINITION, TOOL_DEF + ": name, description, "
        "parameters and response schemas (as `Schema` or JSON Schema)"),
    _no("tools[].mcpServers[]*", "an MCP server's name, URL, headers and timeouts: Google "
        "reads its tools itself (see Known gaps)"),
    _no("tools[].*apiKey*", SECRET),
    _no("tools[].*Secret*", SECRET),
    _no("tools[].*Token", SECRET),
    _no("tools[].*.authConfig*", SECRET),
    _no("tools[].*.customConfigs{}", BUILTIN),
    _no("tools[].googleSearch.*", BUILTIN),
    _no("tools[].enterpriseWebSearch.*", BUILTIN),
    _no("tools[].computerUse.*", BUILTIN),
    _no("tools[].fileSearch.*", BUILTIN),
    _no("tools[].retrieval.*", BUILTIN),
    _no("generationConfig.responseSchema*.required[]", REQUIRED),
    Row("generationConfig.responseSchema*", DEFINITION, SCHEMA),
    Row("generationConfig.responseJsonSchema", DEFINITION, SCHEMA),
    Row("generationConfig.responseFormat[].text.schema", DEFINITION, SCHEMA),
    _no("*.role", "the turn's role"),
    _no("*.id", ID),
    _no("*.name", NAME),
    _no("*.mimeType", "a MIME type"),
    _no("*.fileUri", URL + " (a Files API or Cloud Storage URI)"),
    _no("*.thoughtSignature", ENCRYPTED),
    _no("*.jsonPath", "where in the arguments a streamed value goes"),
    _no("*.videoMetadata*", "offsets into a video"),
    _no("*.audioMetadata*", "offsets into audio"),
    _no("*.speechMetadata.speaker", NAME),
    _no("*.spreadsheetMetadata.visibleCells", "a range of cells"),
    _no("*.languageCode", PARAM),
    _no("*.speakerLabel", NAME),
    _no("*Offset", "an offset into audio"),
    Row("systemInstruction.parts[].functionResponse.parts[].inlineData.data", "tool", TEXT_FILE,
        fill={"mimeType": "text/plain"}),
    Row("systemInstruction.parts[].inlineData.data", "system", TEXT_FILE,
        fill={"mimeType": "text/plain"}),
    Row("systemInstruction.parts[].functionResponse*", "tool", _GEMINI_TOOL_PARTS),
    Row("systemInstruction.parts[].toolResponse*", "tool", _GEMINI_TOOL_PARTS),
    Row("systemInstruction.parts[].codeExecutionResult*", "tool", _GEMINI_TOOL_PARTS),
    Row("systemInstruction*", "system", TEXT + " and every other part, as in `contents`"),
    Row("contents[].parts[].functionResponse.parts[].inlineData.data", "tool", TEXT_FILE,
        fill={"mimeType": "text/plain"}),
    Row("contents[].parts[].inlineData.data", TURN, TEXT_FILE + " (`inlineData` of a text "
        "MIME type)", fill={"mimeType": "text/plain"}),
    Row("contents[].parts[].functionResponse*", "tool", "a function's response (each value; "
        "objects as compact JSON), and the files it returned"),
    Row("contents[].parts[].toolResponse*", "tool", "a server-side tool's response"),
    Row("contents[].parts[].codeExecutionResult*", "tool", "the output of code the model ran"),
    Row("contents[]*", TURN, TEXT + ", function and tool call arguments, executable code, "
        "a file's display name, part metadata, an audio transcription, a speech style"),
    Row("generationConfig.audioTranscriptionConfig.sourceText", "user", "text the model "
        "rewrites by voice instructions"),
    _no("generationConfig.audioTranscriptionConfig.*", "speech recognition vocabulary hints "
        "and languages, not model input"),
    _no("generationConfig.generationOutputConfig.outputUriPrefix", URL),
    _no("generationConfig.imageConfig.*", PARAM),
    _no("generationConfig.responseFormat[].*", PARAM),
    _no("generationConfig.responseMimeType", PARAM),
    _no("generationConfig.routingConfig.*", MODEL),
    _no("generationConfig.speechConfig.*", "voices, and audio of a replicated voice: " + MEDIA),
    _no("generationConfig.stopSequences[]", STOP),
    _no("generationConfig.translationConfig.*", PARAM),
    _no("continuationToken", STATE),
    _no("cachedContent", STATE),
    _no("labels{}", META),
    _no("modelArmorConfig.*", "names of Model Armor templates"),
    _no("toolConfig.functionCallingConfig.allowedFunctionNames[]", NAME),
    Row(OTHER, "user", OTHER_WHY, beyond_sdk=True),
]

_OLLAMA_CHAT = [
    _no("messages[].images[]", MEDIA),
    _no("messages[].role", "the message's role"),
    _no("messages[].tool_name", NAME),
    _no("messages[].tool_calls[].function.name", NAME),
    _no("messages[]{}", "any other key: Ollama's server decodes a fixed set of fields and "
        "ignores the rest"),
    Row("messages[].tool_calls[]*", TURN, TOOL_ARGS),
    Row("messages[]*", TURN, TEXT + " (content, and the thinking an earlier turn's template "
        "renders); `tool` messages as tool"),
    _no("tools[].type", "the tool's kind"),
    _no("tools[]*.required[]", REQUIRED),
    _no("tools[]*.type*", "a JSON type name"),
    Row("tools[]*", DEFINITION, TOOL_DEF + ": name, description, parameters"),
    _no("format*", "a JSON schema constraining the answer's grammar: Ollama does not show it to "
        "the model"),
    _no("options*", PARAM),
    _no("keep_alive", PARAM),
    _no("model", MODEL),
    _no("think", PARAM),
    Row(OTHER, "user", OTHER_WHY + " (Ollama's own server ignores it; another server on the "
        "path may not)", beyond_sdk=True),
]

_OLLAMA_GENERATE = [
    Row("prompt", "user", TEXT),
    Row("suffix", "user", TEXT + " (after the completion)"),
    Row("system", "system", TEXT),
    Row("template", "user", "a prompt template of the client's own: its literal text is "
        "prompt, anywhere in it (a user turn too)"),
    _no("images[]", MEDIA),
    _no("context[]", "token ids of an earlier exchange: no text the addon can read (see Known "
        "gaps)", beyond_sdk=True),
    _no("format*", "a JSON schema constraining the answer's grammar: Ollama does not show it to "
        "the model"),
    _no("options*", PARAM),
    _no("keep_alive", PARAM),
    _no("model", MODEL),
    _no("think", PARAM),
    Row(OTHER, "user", OTHER_WHY + " (Ollama's own server ignores it; another server on the "
        "path may not)", beyond_sdk=True),
]

INVENTORY: dict[str, list[Row]] = {
    protocols.OPENAI_CHAT: _CHAT,
    protocols.OPENAI_RESPONSES: _RESPONSES,
    protocols.OPENAI_EMBEDDINGS: _EMBEDDINGS,
    protocols.ANTHROPIC_MESSAGES: _ANTHROPIC,
    protocols.GEMINI_GENERATE: _GEMINI,
    protocols.OLLAMA_CHAT: _OLLAMA_CHAT,
    protocols.OLLAMA_GENERATE: _OLLAMA_GENERATE,
}


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def rule_for(protocol: str, path: str) -> Row | None:
    """The first row of `protocol` whose pattern matches the whole path."""
    for row in INVENTORY[protocol]:
        if _compiled(row.pattern).fullmatch(path):
            return row
    return None
