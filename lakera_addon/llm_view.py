"""mitmweb's (and mitmproxy's) view of LLM traffic: a content view, "LLM", that mitmproxy picks
by itself for the request and the answer of every flow on one of the addon's routes (SPEC
section 7, "What people see"; issue 16).

- request: Lakera's verdict for the prompt, then the conversation as the model reads it, one
  block per message, tool calls with their arguments, attachments named (kind, MIME type,
  size), the tool definitions in one line each (llm_view_request.py);
- answer: Lakera's verdict for the answer, then the text assembled from the stream or the JSON,
  tool calls, finish reason and usage (llm_view_answer.py); for a denied answer what the client
  got (the addon's deny) and what the upstream sent (kept on the flow when the deny replaced
  it); for a cut stream what the client got and what the upstream sent before the cut.

The verdict comes from `flow.metadata["lakera"][side]`, which mitmweb shows nowhere else.

Choosing: priority 2 (above the JSON view's 1) for a body of a routed flow that the view can
read; -1 for anything else, so that every other flow, and a body the view cannot read, keeps
mitmproxy's own views. The body is rendered once, when mitmproxy asks for the priority, and
that text is what `prettify` returns: `prettify` never raises (a body it cannot read, chosen by
hand, gets a note instead of an error page).
"""

from __future__ import annotations

from typing import Any

from mitmproxy import contentviews
from mitmproxy import http
from mitmproxy.contentviews import Metadata
from mitmproxy.contentviews import SyntaxHighlight

from lakera_addon import extract
from lakera_addon import protocols
from lakera_addon import reporting
from lakera_addon import routing
from lakera_addon.bodies import read_json_body
from lakera_addon.failures import CannotScreen
from lakera_addon.failures import UnreadableBody
from lakera_addon.llm_view_answer import KEPT_KEY
from lakera_addon.llm_view_answer import Answer
from lakera_addon.llm_view_answer import clip_note
from lakera_addon.llm_view_answer import from_record
from lakera_addon.llm_view_answer import read_answer
from lakera_addon.llm_view_request import conversation
from lakera_addon.llm_view_request import tool_lines
from lakera_addon.protocols import Protocol

VIEW_NAME = "LLM"
PRIORITY = 2.0  # above the JSON view's 1; below 0 for anything the view does not read
MAX_BYTES = 32 * 1024 * 1024  # a larger body is left to mitmproxy's views
_WIDTH = 64  # of a rule line (mitmweb's detail pane is narrow)


def _rule(title: str, char: str = "━") -> str:
    return f"{char * 2} {title} {char * max(4, _WIDTH - len(title) - 4)}"


def _section(title: str, *details: str) -> list[str]:
    return [_rule(title), *(f"  {detail}" for detail in details), ""]


def _rows(rows: list[tuple[str, object]]) -> list[str]:
    return [f"  {label:<13}{value}" for label, value in rows if value not in (None, "", [])]


def block(title: str, lines: list[str]) -> list[str]:
    return [_rule(title, "─"), *lines, ""]


# --- the verdict ----------------------------------------------------------------------------

def verdict_lines(entry: dict[str, Any], side: str) -> list[str]:
    """Lakera's verdict for one side, from the flow's metadata record."""
    record = entry.get(side)
    title = f"Lakera Guard · {side}"
    if not isinstance(record, dict):
        request = entry.get("request")
        if side == "response" and isinstance(request, dict) and request.get(
                "action") == "blocked":
            return [_rule(title), "  not screened: the request was blocked", ""]
        return [_rule(title), "  not screened (this route does not screen it, or the flow "
                "ended first)", ""]
    verdict, action = record.get("verdict"), record.get("action")
    headline = f"{verdict}, {action.upper() if action in ('blocked', 'masked') else action}" \
        if action else str(verdict)
    latency = record.get("latency_ms")
    masked = record.get("masked")
    rows: list[tuple[str, object]] = [
        ("verdict", headline),
        ("detectors", ", ".join(map(str, record.get("detector_types") or []))),
        ("request_uuid", record.get("request_uuid")),
        ("latency", f"{latency:.0f} ms" if isinstance(latency, (int, float)) else None),
        ("cached", ("yes: an identical call's verdict" if record.get("cached") else "no")
         if "request_uuid" in record else None),
        ("masked", ", ".join(f"{k}×{n}" for k, n in sorted(masked.items()))
         if isinstance(masked, dict) else None),
        ("failure" if verdict == "failure" else "reason", record.get("failure")),
        ("coverage", record.get("coverage")),
        ("route", f"{entry.get('route')} · protocol {entry.get('protocol') or '?'}"),
    ]
    return [_rule(title), *_rows(rows), ""]


# --- reading the flow -----------------------------------------------------------------------

def _entry(metadata: Metadata) -> tuple[http.HTTPFlow, dict[str, Any]] | None:
    """The flow and its lakera record, if the flow was on one of the addon's routes."""
    flow = metadata.flow
    if not isinstance(flow, http.HTTPFlow):
        return None
    entry = flow.metadata.get(reporting.METADATA_KEY)
    if not isinstance(entry, dict) or "route" not in entry:
        return None
    return flow, entry


def _request_body(data: bytes) -> tuple[dict[str, Any], list[str], int] | None:
    """(the request body read as the addon reads it, its notes, hidden strings) or None."""
    try:
        read = read_json_body(data, None, MAX_BYTES)
    except (CannotScreen, UnreadableBody):
        return None
    return read.value, read.notes, len(read.hidden_strings)


def _protocol(flow: http.HTTPFlow, entry: dict[str, Any], body: dict[str, Any] | None
              ) -> Protocol | None:
    """The protocol the addon found; for a flow it did not get to read, the one the body shows.
    None for a body of no known protocol."""
    recorded = entry.get("protocol")
    for known in protocols.ALL:
        if recorded == known:
            return known
    if recorded == "generic" or body is None:
        return None
    return routing.detect_protocol("auto", flow.request.path, body)


def _render_request(flow: http.HTTPFlow, entry: dict[str, Any], data: bytes) -> str | None:
    read = _request_body(data)
    if read is None:
        return None
    body, notes, hidden = read
    protocol = _protocol(flow, entry, body)
    if protocol is None:
        return None
    try:
        screened = extract.request_messages(protocol, body)
    except extract.BodyShapeError:
        return None  # not of its protocol's shape: the addon read every string of it
    path = flow.request.path
    model = extract.request_model(body, path)
    streams = "streamed answer" if extract.request_streams(protocol, body, path) else (
        "answer not streamed")
    lines = verdict_lines(entry, "request")
    lines += _section("conversation", f"{protocol} request · model {model or '?'} · {streams}")
    for title, texts in conversation(protocol, body) or [("(no text)", [""])]:
        lines += block(title, texts)
    tools = tool_lines(protocol, body)
    if tools:
        lines += block(f"tool definitions ({len(tools)})", tools)
    chars = sum(len(m["content"]) for m in screened)
    lines.append(f"The addon reads {len(screened)} message(s), {chars} characters, of it.")
    if tools:
        lines.append("Tool definitions: screened on routes with screen_tool_definitions.")
    if notes or hidden:
        lines.append(f"Read leniently: {'; '.join(notes)}" + (
            f" ({hidden} hidden string(s), screened too)" if hidden else ""))
    return "\n".join(lines)


def answer_lines(answer: Answer) -> list[str]:
    texts = [answer.text] if answer.text else []
    lines = block("assistant", texts + answer.tool_calls or ["(no text)"])
    lines += _rows([("finish", ", ".join(answer.finish)), ("usage", answer.usage),
                    ("error", answer.error), ("embeddings", answer.embeddings),
                    ("note", answer.note)])
    return [*lines, ""] if lines[-1] else lines


def _client_got(flow: http.HTTPFlow, entry: dict[str, Any]) -> str:
    """What the client got, when it is not simply the upstream's answer ("" then)."""
    assert flow.response is not None
    marker = flow.response.headers.get("x-lakera-guard", "")
    request = entry.get("request")
    if marker == "blocked" and isinstance(request, dict) and request.get("action") == "blocked":
        return "the addon's deny (the request was blocked)"
    if marker == "blocked":
        return "the addon's deny, in place of the upstream's answer"
    if marker == "masked":
        return "the upstream's answer, masked by the addon"
    record = entry.get("response")
    coverage = str(record.get("coverage") or "") if isinstance(record, dict) else ""
    if isinstance(record, dict) and record.get("action") == "blocked" and (
            "cut" in coverage or "the client received" in coverage):
        return "the upstream's stream, cut by the addon"
    return ""


def _upstream_lines(flow: http.HTTPFlow, entry: dict[str, Any], client: str) -> list[str]:
    """What the upstream sent, where the client got something else."""
    kept = from_record(entry.get(KEPT_KEY))
    record = entry.get(KEPT_KEY)
    if kept is not None and isinstance(record, dict):
        shown = clip_note(kept)
        status = f"status {record.get('status')} · " if record.get("content_type") else ""
        detail = f"{status}{kept.framing} · kept by the addon{', ' + shown if shown else ''}"
        return [*_section("what the upstream sent", detail), *answer_lines(kept)]
    title = "what the upstream sent"
    if isinstance(record, dict):  # kept, but its body could not be read
        return _section(title, str(record.get("note")))
    coverage = str((entry.get("response") or {}).get("coverage") or "")
    if "live stream cut" in coverage:
        return _section(title, "the same text up to the cut (live: it went out as it came); "
                        "what the upstream sent after the cut was dropped unread")
    if "upstream's answer" in client:
        return _section(title, "not kept (the addon decided before reading it, or it could "
                        "not be read)")
    return []


def _render_response(flow: http.HTTPFlow, entry: dict[str, Any], data: bytes,
                     content_type: str | None) -> str | None:
    if flow.response is None:
        return None
    protocol = _protocol(flow, entry, None)
    body = None  # the request is read only when the answer needs it (a large prompt is slow)
    if (protocol is None and entry.get("protocol") != "generic") or (
            protocol == protocols.GEMINI_GENERATE):
        read = _request_body(flow.request.get_content(strict=False) or b"")
        body = read[0] if read else None
        protocol = protocol or _protocol(flow, entry, body)
    if protocol is None:
        return None
    candidates = extract.request_candidates(protocol, body) if body is not None else 1
    answer = read_answer(protocol, content_type, data, candidates)
    if answer is None:
        return None
    client = _client_got(flow, entry)
    lines = verdict_lines(entry, "response")
    form = f"{protocol} · {answer.framing}"
    if client:
        lines += [*_section("what the client got", client, form), *answer_lines(answer)]
        lines += _upstream_lines(flow, entry, client)
    else:
        lines += [*_section("answer", "the upstream's answer, as the client got it", form),
                  *answer_lines(answer)]
    return "\n".join(lines).rstrip() + "\n"


def render(data: bytes, metadata: Metadata) -> str | None:
    """The view's text of a request or answer body of a flow on one of the addon's routes;
    None where the view does not apply (mitmproxy's own views show the body then)."""
    found = _entry(metadata)
    message = metadata.http_message
    if found is None or message is None or not data or len(data) > MAX_BYTES:
        return None
    flow, entry = found
    if isinstance(message, http.Request):
        return _render_request(flow, entry, data)
    return _render_response(flow, entry, data, metadata.content_type)


# --- the content view -----------------------------------------------------------------------

class LLMContentview(contentviews.Contentview):
    def __init__(self) -> None:
        self._last: tuple[object, bytes, str, str | None] | None = None

    @property
    def name(self) -> str:
        return VIEW_NAME

    @property
    def syntax_highlight(self) -> SyntaxHighlight:
        return "none"

    def _rendered(self, data: bytes, metadata: Metadata) -> str | None:
        """`render`, once per body and verdict: mitmproxy asks for the priority and then for
        the text with the same data."""
        state = repr(metadata.flow.metadata.get(reporting.METADATA_KEY)) if isinstance(
            metadata.flow, http.HTTPFlow) else ""
        last = self._last
        if last is not None and last[0] is metadata.http_message and last[1] is data and (
                last[2] == state):
            return last[3]
        try:
            text = render(data, metadata)
        except Exception:  # never an error page: mitmproxy's own views show the body
            text = None
        self._last = (metadata.http_message, data, state, text)
        return text

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        return PRIORITY if self._rendered(data, metadata) is not None else -1.0

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        text = self._rendered(data, metadata)
        if text is not None:
            return text
        note = ("The LLM view reads the requests and answers of flows on a lakera_addon "
                "route; it cannot read this body. Choose another view (auto, JSON, Raw).")
        found = _entry(metadata)
        if found is not None and metadata.http_message is not None:
            side = "request" if isinstance(metadata.http_message, http.Request) else "response"
            return "\n".join([*verdict_lines(found[1], side), note])
        return note


VIEW = LLMContentview()


def register() -> None:
    """Add the view to mitmproxy's views (a second call replaces it: same name)."""
    contentviews.add(VIEW)
