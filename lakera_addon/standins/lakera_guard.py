"""A local stand-in for Lakera Guard's v2 screening endpoint, for tests and the demo.

It is NOT a replacement for Lakera Guard: it flags a few fixed trigger phrases and nothing else.
It answers in the shape of the real `POST /v2/guard` (reference/lakera-guard-api.md section 3),
checks the bearer key, records every body it was sent, and has switches, given as words in the
screened text, for the failures the addon must handle:

  lakera-sleep-<ms>   answer after <ms> milliseconds
  lakera-500 / -429 / -503 / -401   answer with that status
  lakera-fail-once-<word>           answer 500 to the first call with it, then as usual
  lakera-notjson      200 with a body that is not JSON
  lakera-noflag       200 with a JSON object without `flagged`
  lakera-array        200 with a JSON array
  lakera-truncated    200 whose JSON body is cut short (the connection closes)
  lakera-trickle      200 whose body arrives one byte every 100 ms
  lakera-huge         200 with a multi-megabyte breakdown

It flags ATTACK_TRIGGER (prompt_attack), PII_TRIGGER (pii/credit_card), any e-mail address
(pii/email) and PROFANITY_TRIGGER. Asked for its `payload`, it reports the PII spans in code
points with an exclusive end, or as the words lakera-span-utf16, -bytes, -inclusive, -wrong
(offsets 3 too far) or -none (no spans) in the text ask.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from typing import Any

from lakera_addon.standins.httpserver import BackgroundServer
from lakera_addon.standins.httpserver import Request
from lakera_addon.standins.httpserver import Writer

ATTACK_TRIGGER = "ignore all previous instructions"
PII_TRIGGER = "4111 1111 1111 1111"
PROFANITY_TRIGGER = "lakera-profanity"

# Bounded like a real address (64-character local part, RFC 5321): an unbounded `[\w.+-]+@`
# retries every start in a long run of letters, quadratic in a 100 kB message.
EMAIL_PATTERN = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}\.[\w.-]{1,190}")

# (trigger, detector_type, detector_id)
DETECTORS: tuple[tuple[str | re.Pattern[str], str, str], ...] = (
    (ATTACK_TRIGGER, "prompt_attack", "detector-lakera-pinj"),
    (PII_TRIGGER, "pii/credit_card", "detector-lakera-pii-credit-card"),
    (EMAIL_PATTERN, "pii/email", "detector-lakera-pii-email"),
    (PROFANITY_TRIGGER, "moderated_content/profanity", "detector-lakera-moderation"),
)
_SLEEP = re.compile(r"lakera-sleep-(\d+)")
_STATUS = re.compile(r"lakera-(401|429|500|503)\b")
_FAIL_ONCE = re.compile(r"lakera-fail-once-([\w-]+)")


def _text(document: Any) -> str:
    if not isinstance(document, dict) or not isinstance(document.get("messages"), list):
        return ""
    return "\n".join(
        str(m.get("content", "")) for m in document["messages"] if isinstance(m, dict)
    )


def _matches(content: str, trigger: str | re.Pattern[str]) -> list[tuple[int, int]]:
    if isinstance(trigger, re.Pattern):  # (no address without an @: skip 100 kB quickly)
        if trigger is EMAIL_PATTERN and "@" not in content:
            return []
        return [m.span() for m in trigger.finditer(content)]
    lowered, found, at = content.lower(), [], 0
    while (at := lowered.find(trigger, at)) >= 0:
        found.append((at, at + len(trigger)))
        at += len(trigger)
    return found


def _offsets(content: str, start: int, end: int, units: str) -> tuple[int, int]:
    """Code-point offsets as the span switches ask the stand-in to report them."""
    if units == "utf16":
        def size(text: str) -> int:
            return len(text.encode("utf-16-le", "surrogatepass")) // 2
        return size(content[:start]), size(content[:end])
    if units == "bytes":
        def size(text: str) -> int:
            return len(text.encode("utf-8", "surrogatepass"))
        return size(content[:start]), size(content[:end])
    if units == "inclusive":
        return start, end - 1
    if units == "wrong":
        return start + 3, end + 3
    return start, end


def verdict(document: Any) -> dict[str, Any]:
    """The stand-in's answer to a screening request: which triggers appear in which message,
    and (when asked for the payload) where, as spans."""
    messages = document.get("messages") if isinstance(document, dict) else None
    messages = messages if isinstance(messages, list) else []
    project = document.get("project_id") if isinstance(document, dict) else None
    text = _text(document)
    units = next((u for u in ("utf16", "bytes", "inclusive", "wrong", "none")
                  if f"lakera-span-{u}" in text), "codepoints")
    breakdown = []
    payload = []
    for index, message in enumerate(messages):
        content = str(message.get("content", "")) if isinstance(message, dict) else ""
        for trigger, kind, detector in DETECTORS:
            found = _matches(content, trigger)
            breakdown.append({
                "project_id": project or "project-standin",
                "policy_id": "policy-lakera-default",
                "detector_id": detector,
                "detector_type": kind,
                "detected": bool(found),
                "message_id": index,
            })
            if not kind.startswith("pii/") or units == "none":
                continue
            for start, end in found:
                reported = _offsets(content, start, end, units)
                payload.append({"start": reported[0], "end": reported[1],
                                "text": content[start:end], "detector_type": kind,
                                "labels": [], "message_id": index})
    answer: dict[str, Any] = {
        "flagged": any(e["detected"] for e in breakdown),
        "metadata": {"request_uuid": str(uuid.uuid4())},
    }
    if isinstance(document, dict) and document.get("breakdown"):
        answer["breakdown"] = breakdown
    if isinstance(document, dict) and document.get("payload"):
        answer["payload"] = payload
    return answer


class LakeraGuardStandin(BackgroundServer):
    """Lakera Guard v2 stand-in on loopback. `received` holds every JSON body it was sent."""

    def __init__(self, api_key: str | None = "test-lakera-key", port: int = 0) -> None:
        super().__init__(self._app, port=port)
        self.api_key = api_key
        self.received: list[Any] = []
        self.delay_s = 0.0  # added to every answer (benchmarks, pass-through timing)
        self.force_status: int | None = None
        self.calls = 0
        self.in_flight = 0  # scans being answered now
        self.peak_in_flight = 0  # the most answered at once: does the addon scan concurrently?
        self._failed_once: set[str] = set()
        self._lock = threading.Lock()

    def _app(self, request: Request, out: Writer) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            self._answer(request, out)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, request: Request, out: Writer) -> None:
        if request.method != "POST" or not request.path.split("?")[0].endswith("/guard"):
            out.send_json(404, {"error": "not found"})
            return
        with self._lock:
            self.calls += 1
        if self.api_key is not None and (
            request.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            out.send_json(401, {"error": "Unauthorized", "message": "invalid API key"})
            return
        try:
            document = request.json()
        except ValueError:
            out.send_json(400, {"error": "Bad Request", "message": "body is not JSON"})
            return
        self.received.append(document)
        text = _text(document)
        sleep = _SLEEP.search(text)
        delay = self.delay_s + (int(sleep.group(1)) / 1000 if sleep else 0.0)
        if delay:
            time.sleep(delay)
        status = _STATUS.search(text)
        forced = self.force_status or (int(status.group(1)) if status else None)
        once = _FAIL_ONCE.search(text)
        if once and not forced:
            with self._lock:
                first = once.group(1) not in self._failed_once
                self._failed_once.add(once.group(1))
            forced = 500 if first else None
        if forced:
            out.send_json(forced, {"error": "stand-in failure", "status": forced})
        elif "lakera-notjson" in text:
            out.send(200, {"content-type": "text/html"}, b"<html>Bad gateway</html>")
        elif "lakera-noflag" in text:
            out.send_json(200, {"metadata": {"request_uuid": str(uuid.uuid4())}})
        elif "lakera-array" in text:
            out.send_json(200, [{"flagged": True}])
        elif "lakera-truncated" in text:
            body = json.dumps(verdict(document)).encode()
            out.raw(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body[: len(body) // 2]))
            out.abort()
        elif "lakera-trickle" in text:
            body = json.dumps(verdict(document)).encode()
            out.raw(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n" % len(body))
            for byte in body[:50]:
                out.raw(bytes([byte]))
                time.sleep(0.1)
            out.abort()
        elif "lakera-huge" in text:
            answer = verdict(document)
            answer["breakdown"] = list(answer.get("breakdown", [])) + [
                {"detector_type": "padding", "detected": False, "message_id": 0,
                 "detector_id": "x" * 1000} for _ in range(3000)]
            out.send_json(200, answer)
        else:
            out.send_json(200, verdict(document))
