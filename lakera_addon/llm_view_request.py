"""The request side of mitmweb's LLM view (llm_view.py): a request body as the conversation the
model reads, one block per message (`system`, `user`, `assistant`, `tool NAME`), the tool calls
of the history with their arguments, attachments named but not dumped (kind, MIME type, size),
and the tool definitions summarised (names, the first line of their descriptions).

The body is the one the addon read (bodies.read_json_body, leniently), its protocol the one
routing.detect_protocol found; the roles are extract_common's, the tool definitions those
extract.tool_definitions screens, and the closing line counts what extract.request_messages
hands to Lakera. What is added here is presentation only: it reads the ids, names and media
fields the extractors skip on purpose (they are not prose) to label the blocks. Nothing here
raises on a body of an odd shape: what is not of the expected shape is left out or shown by its
type."""

from __future__ import annotations

from urllib.parse import urlsplit

from lakera_addon import extract
from lakera_addon import protocols
from lakera_addon.extract_common import compact
from lakera_addon.extract_common import fields
from lakera_addon.extract_common import file_text
from lakera_addon.extract_common import items
from lakera_addon.extract_common import loose_texts
from lakera_addon.extract_common import role_name
from lakera_addon.protocols import Protocol

Block = tuple[str, list[str]]  # (title, lines)

ARGUMENTS_CHARS = 4000  # a tool call's arguments, shown up to this many characters
OTHER_PART_CHARS = 500  # the text of a part of no known kind
DESCRIPTION_CHARS = 160  # the first line of a tool's description

_TEXT_PARTS = frozenset({None, "text", "input_text", "output_text"})
_THINKING = {"thinking": "thinking", "reasoning_text": "text", "summary_text": "text"}
_CALL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    return f"{n / 1000:.1f} kB" if n < 1_000_000 else f"{n / 1_000_000:.1f} MB"


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _base64_size(data: str) -> int:
    squeezed = "".join(data.split()).rstrip("=")
    return len(squeezed) * 3 // 4


def _data_url(url: str) -> tuple[str, int, bool]:
    """(MIME type, size in bytes, base64) of a `data:` URL."""
    header, _, payload = url[5:].partition(",")
    mime, _, last = header.rpartition(";") if ";" in header else (header, "", "")
    encoded = last.strip().lower() == "base64"
    return mime or "text/plain", _base64_size(payload) if encoded else len(payload), encoded


def _where(url: str) -> str:
    """A URL without its query and fragment (a signed URL's token stays out of view)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else clip(url, 80)


def _source(kind: str, mime: str, data: object, url: object, name: object = None,
            text_read: bool = False) -> str:
    """One attachment line: `[kind: MIME, size, name]`, never its bytes."""
    facts = [mime] if mime else []
    if isinstance(url, str) and url[:5].lower() == "data:":
        mime_of, n, _ = _data_url(url)
        facts = [mime or mime_of, size(n)]
        text_read = text_read or file_text(url) is not None
    elif isinstance(url, str) and url:
        facts.append(_where(url))
    if isinstance(data, str) and data:
        facts.append(size(_base64_size(data)))
    if isinstance(name, str) and name:
        facts.append(name)
    if text_read:
        facts.append("text, screened")
    return f"[{kind}: {', '.join(facts) or 'by reference'}]"


def attachment(part: dict[str, object]) -> str | None:
    """The line of a content part that is an attachment (image, audio, file, document); None
    for any other part."""
    kind = _str(part.get("type"))
    if kind in ("image_url", "input_image"):
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return _source("image", "", None, url, None) if url or part.get("file_id") else (
            "[image: by file id]")
    if kind == "input_audio":
        audio = part.get("input_audio")
        audio = audio if isinstance(audio, dict) else part
        return _source("audio", f"audio/{_str(audio.get('format')) or '?'}", audio.get("data"),
                       None)
    if kind in ("file", "input_file"):
        file = part.get("file")
        file = file if isinstance(file, dict) else part
        return _source("file", "", None, file.get("file_data") or file.get("file_url"),
                       file.get("filename") or file.get("file_id"))
    if kind in ("image", "document", "audio", "video") and isinstance(part.get("source"), dict):
        source = part["source"]
        assert isinstance(source, dict)
        data = source.get("data")
        if source.get("type") == "text" or isinstance(data, list):  # text or content blocks
            n = len(_str(data).encode()) if isinstance(data, str) else len(items(data))
            return f"[{kind}: {_str(source.get('media_type')) or 'text'}, {size(n)}, " \
                   f"text, screened]"
        text_read = isinstance(data, str) and kind == "document" and file_text(
            f"data:{_str(source.get('media_type'))};base64,{data}") is not None
        return _source(kind, _str(source.get("media_type")), data, source.get("url"),
                       part.get("title") or source.get("file_id"), text_read)
    for key, label in (("inlineData", "inline data"), ("fileData", "file")):
        for found in fields(part, key):
            if isinstance(found, dict):
                mime = next((m for m in fields(found, "mimeType") if isinstance(m, str)), "")
                data = next((d for d in fields(found, "data") if isinstance(d, str)), None)
                url = next((u for u in fields(found, "fileUri") if isinstance(u, str)), None)
                return _source(label, mime, data, url)
    return None


def call_line(name: object, call_id: object, arguments: object) -> str:
    """`→ tool call NAME (ID): ARGUMENTS` (arguments as sent, or as compact JSON)."""
    args = arguments if isinstance(arguments, str) else (
        "" if arguments is None else compact(arguments))
    ident = f" ({call_id})" if isinstance(call_id, str) and call_id else ""
    line = f"→ tool call {_str(name) or '?'}{ident}"
    return f"{line}: {clip(args, ARGUMENTS_CHARS)}" if args else line


class Conversation:
    """The blocks of a conversation, and the names of the tool calls seen so far (a tool's result
    names its call by id only)."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.calls: dict[str, str] = {}

    def add(self, title: str, lines: list[str]) -> None:
        lines = [line for line in lines if line.strip()]
        if lines:
            self.blocks.append((title, lines))

    def call(self, name: object, call_id: object, arguments: object) -> str:
        """The line of a tool call; remembers its name for its result."""
        if isinstance(call_id, str) and call_id:
            self.calls[call_id] = _str(name) or "?"
        return call_line(name, call_id, arguments)

    def tool_title(self, name: object, call_id: object) -> str:
        found = _str(name) or self.calls.get(_str(call_id), "")
        ident = f" ({call_id})" if isinstance(call_id, str) and call_id else ""
        return f"tool {found or '?'}{ident}"


def role_title(role: object) -> str:
    """A role as the addon reads it (`developer` is `system`, an unknown one `user`), with the
    role as written when that differs."""
    read = role_name(role)
    if isinstance(role, str) and role != read and not (read == "tool" and role == "function"):
        return f"{read} (as {role!r})"
    return read


def content_lines(conv: Conversation, value: object) -> list[str]:
    """The lines of a message's content: a string, or parts (text, attachments, others)."""
    if isinstance(value, str):
        return [value]
    lines: list[str] = []
    for part in items(value) if isinstance(value, list) else [value]:
        if isinstance(part, str):
            lines.append(part)
        elif isinstance(part, dict):
            lines += part_lines(conv, part)
    return lines


def part_lines(conv: Conversation, part: dict[str, object]) -> list[str]:
    kind = part.get("type") if isinstance(part.get("type"), str) else None
    if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
        return [str(part["text"])]
    if kind == "refusal":
        return [f"(refusal) {_str(part.get('refusal'))}"]
    if kind in _THINKING:
        return [f"(thinking) {_str(part.get(_THINKING[kind]))}"]
    if kind == "redacted_thinking":
        return ["(thinking, redacted)"]
    found = attachment(part)
    if found is not None:
        return [found]
    if kind is None and fields(part, "executableCode"):
        code = next(iter(fields(part, "executableCode")))
        return [f"(code) {_str(code.get('code')) if isinstance(code, dict) else ''}"]
    text = " ".join(loose_texts(part))
    return [f"[{kind or 'part'}] {clip(text, OTHER_PART_CHARS)}".rstrip()]


# --- per protocol ---------------------------------------------------------------------------

def _openai_chat(conv: Conversation, body: dict[str, object]) -> None:
    for item in items(body.get("messages")):
        if not isinstance(item, dict):
            continue
        role = item.get("role")
        title = role_title(role)
        if title == "tool":
            title = conv.tool_title(item.get("name"), item.get("tool_call_id"))
        lines = content_lines(conv, item.get("content"))
        if isinstance(item.get("refusal"), str):
            lines.append(f"(refusal) {item['refusal']}")
        for key in ("reasoning_content", "reasoning"):
            if isinstance(item.get(key), str):
                lines.insert(0, f"(thinking) {item[key]}")
        for call in items(item.get("tool_calls")):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(call, dict):
                lines.append(conv.call(function.get("name"), call.get("id"),
                                       function.get("arguments")))
        legacy = item.get("function_call")
        if isinstance(legacy, dict):
            lines.append(conv.call(legacy.get("name"), None, legacy.get("arguments")))
        conv.add(title, lines)


def _responses_item(conv: Conversation, item: object) -> None:
    if isinstance(item, str):
        conv.add("user", [item])
        return
    if not isinstance(item, dict):
        return
    kind = _str(item.get("type")) or "message"
    if kind == "message":
        conv.add(role_title(item.get("role")), content_lines(conv, item.get("content")))
    elif kind.endswith("_output"):  # a tool's output: function, custom tool, computer, shell
        conv.add(conv.tool_title(None, item.get("call_id")),
                 content_lines(conv, item.get("output")))
    elif kind in ("function_call", "custom_tool_call", "mcp_call"):
        arguments = item.get("arguments", item.get("input"))
        conv.add("assistant", [conv.call(item.get("name"), item.get("call_id") or item.get(
            "id"), arguments)])
        if kind == "mcp_call" and item.get("output") is not None:
            conv.add(conv.tool_title(item.get("name"), None), content_lines(conv, item["output"]))
    elif kind == "reasoning":
        summary = [f"(thinking) {_str(p.get('text'))}" for p in items(item.get("summary"))
                   if isinstance(p, dict)]
        conv.add("assistant", summary + content_lines(conv, item.get("content")))
    else:
        conv.add(f"assistant [{kind}]" if kind.endswith("_call") else f"[{kind}]",
                 [clip(" ".join(loose_texts(item)), OTHER_PART_CHARS) or "(no text)"])


def _openai_responses(conv: Conversation, body: dict[str, object]) -> None:
    conv.add("system", content_lines(conv, body.get("instructions")))
    value = body.get("input")
    for item in [value] if isinstance(value, str) else items(value):
        _responses_item(conv, item)
    prompt = body.get("prompt")
    if isinstance(prompt, dict):
        variables = prompt.get("variables")
        if isinstance(variables, dict):
            conv.add(f"user (variables of prompt {_str(prompt.get('id'))})".replace(" )", ")"),
                     [f"{k}: {' '.join(loose_texts(v))}" for k, v in variables.items()])


def _anthropic(conv: Conversation, body: dict[str, object]) -> None:
    conv.add("system", content_lines(conv, body.get("system")))
    for item in items(body.get("messages")):
        if not isinstance(item, dict):
            continue
        title, lines = role_title(item.get("role")), []
        content = item.get("content")
        for block in [content] if isinstance(content, str) else items(content):
            kind = _str(block.get("type")) if isinstance(block, dict) else ""
            if isinstance(block, dict) and kind in _CALL_BLOCKS:
                lines.append(conv.call(block.get("name"), block.get("id"), block.get("input")))
            elif isinstance(block, dict) and kind.endswith("tool_result"):
                conv.add(title, lines)
                lines = []
                error = " (error)" if block.get("is_error") is True else ""
                conv.add(conv.tool_title(None, block.get("tool_use_id")) + error,
                         content_lines(conv, block.get("content")))
            else:
                lines += content_lines(conv, block)
        conv.add(title, lines)


def _gemini_parts(conv: Conversation, title: str, parts: object) -> None:
    lines: list[str] = []
    for part in items(parts) if isinstance(parts, list) else [parts]:
        if not isinstance(part, dict):
            continue
        call = next(iter(fields(part, "functionCall")), None)
        result = next(iter([*fields(part, "functionResponse"),
                            *fields(part, "codeExecutionResult")]), None)
        if isinstance(call, dict):
            lines.append(conv.call(call.get("name"), call.get("id"), call.get("args")))
        elif isinstance(result, dict):
            conv.add(title, lines)
            lines = []
            name = result.get("name") if "name" in result else "code execution"
            conv.add(conv.tool_title(name, result.get("id")),
                     [compact(result.get("response", result.get("output")))])
        else:
            lines += part_lines(conv, part)
    conv.add(title, lines)


def _gemini(conv: Conversation, body: dict[str, object]) -> None:
    for system in fields(body, "systemInstruction"):
        if isinstance(system, dict):
            _gemini_parts(conv, "system", system.get("parts"))
        else:
            conv.add("system", content_lines(conv, system))
    contents = body.get("contents")
    for content in [contents] if isinstance(contents, dict) else items(contents):
        if isinstance(content, dict):
            role = content.get("role")
            title = "assistant" if role == "model" else "tool" if role == "function" else (
                role_title(None if role in (None, "user") else role))
            _gemini_parts(conv, title, content.get("parts"))


def _images(value: object) -> list[str]:
    return [f"[image: {size(_base64_size(image))}]" for image in items(value)
            if isinstance(image, str)]


def _ollama_chat(conv: Conversation, body: dict[str, object]) -> None:
    for item in items(body.get("messages")):
        if not isinstance(item, dict):
            continue
        title = role_title(item.get("role"))
        if title == "tool":
            title = conv.tool_title(item.get("tool_name") or item.get("name"), None)
        lines = content_lines(conv, item.get("content")) + _images(item.get("images"))
        if isinstance(item.get("thinking"), str):
            lines.insert(0, f"(thinking) {item['thinking']}")
        for call in items(item.get("tool_calls")):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                lines.append(conv.call(function.get("name"), None, function.get("arguments")))
        conv.add(title, lines)


def _ollama_generate(conv: Conversation, body: dict[str, object]) -> None:
    conv.add("system", [_str(body.get("system"))])
    conv.add("user (template)", [_str(body.get("template"))])
    conv.add("user", [_str(body.get("prompt")), *_images(body.get("images"))])
    conv.add("user (suffix)", [_str(body.get("suffix"))])


def _embeddings(conv: Conversation, body: dict[str, object]) -> None:
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else items(value)
    for n, item in enumerate(inputs, 1):
        title = f"input {n}" if len(inputs) > 1 else "input"
        if isinstance(item, str):
            conv.add(title, [item])
        elif isinstance(item, int) or (isinstance(item, list) and all(
                isinstance(t, int) for t in item)):
            conv.add(title, [f"[token ids: {len(item) if isinstance(item, list) else 1}]"])
        else:
            conv.add(title, loose_texts(item) or ["(no text)"])


_PRESENTERS = {
    protocols.OPENAI_CHAT: _openai_chat,
    protocols.OPENAI_RESPONSES: _openai_responses,
    protocols.ANTHROPIC_MESSAGES: _anthropic,
    protocols.GEMINI_GENERATE: _gemini,
    protocols.OLLAMA_CHAT: _ollama_chat,
    protocols.OLLAMA_GENERATE: _ollama_generate,
    protocols.OPENAI_EMBEDDINGS: _embeddings,
}


def conversation(protocol: Protocol, body: dict[str, object]) -> list[Block]:
    """The blocks of a request body of `protocol`, in order; first, the text under top-level
    keys the protocol does not define (a lenient server may read it into the prompt)."""
    conv = Conversation()
    for message in extract.other_fields(protocol, body):
        conv.add("user (fields the protocol does not define)", [message["content"]])
    _PRESENTERS[protocol](conv, body)
    return conv.blocks


def _definition(definition: object) -> str:
    """`name — first line of its description` of one tool definition or response schema."""
    if not isinstance(definition, dict):
        return "(definition)"
    inner = next((definition[k] for k in ("function", "json_schema")
                  if isinstance(definition.get(k), dict)), definition)
    assert isinstance(inner, dict)
    name = _str(inner.get("name")) or _str(definition.get("name")) or _str(
        definition.get("server_label"))
    kind = _str(definition.get("type"))
    if kind == "json_schema" or ("schema" in inner and not name) or (
            "properties" in definition and not name):
        name = f"response format {name}".rstrip()
    elif not name:
        name = kind or "(unnamed)"
    elif kind and kind not in ("function", "custom", "mcp") and kind != name:
        name = f"{name} ({kind})"
    description = _str(inner.get("description")) or _str(definition.get("description")) or _str(
        definition.get("server_description"))
    first = next((line.strip() for line in description.splitlines() if line.strip()), "")
    return f"{name} — {clip(first, DESCRIPTION_CHARS)}" if first else name


def tool_lines(protocol: Protocol, body: dict[str, object]) -> list[str]:
    """One line per tool definition the request carries (what `screen_tool_definitions`
    screens)."""
    return [_definition(d) for d in extract.tool_definition_objects(protocol, body)]
