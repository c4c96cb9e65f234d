"""What people see (SPEC section 7): log lines, `flow.metadata["lakera"]`, comment and mark.

Nothing here ever receives prompt or answer text, nor the API key: only verdicts.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from mitmproxy import http

from lakera_addon.configuration import Route
from lakera_addon.decision import Decision
from lakera_addon.decision import Side
from lakera_addon.decision import strictest_action
from lakera_addon.verdict import Verdict

logger = logging.getLogger("lakera_addon")

METADATA_KEY = "lakera"
MARK_BLOCKED = ":no_entry:"
MARK_FLAGGED = ":warning:"
MARK_FAILURE = ":large_orange_diamond:"
MARK_MASKED = ":mask:"
_MARK_RANK = {MARK_BLOCKED: 4, MARK_FLAGGED: 3, MARK_MASKED: 2, MARK_FAILURE: 1}


def flow_label(flow: http.HTTPFlow) -> str:
    """Method, host and path of a flow, without the query (it may carry a provider key)."""
    return f"{flow.request.method} {flow.request.host}{flow.request.path.split('?', 1)[0]}"


def metadata(flow: http.HTTPFlow) -> dict[str, Any]:
    entry = flow.metadata.get(METADATA_KEY)
    if not isinstance(entry, dict):
        entry = {}
        flow.metadata[METADATA_KEY] = entry
    return entry


def start(flow: http.HTTPFlow, route: Route, protocol: str | None) -> None:
    entry = metadata(flow)
    entry["route"] = route.name
    entry["protocol"] = protocol


def pending(flow: http.HTTPFlow, side: Side) -> None:
    entry = metadata(flow)
    record = entry.get(side)
    entry[side] = {**(record if isinstance(record, dict) else {}), "verdict": "pending"}


def coverage(flow: http.HTTPFlow, route: Route, side: Side, how: str) -> None:
    """Not all of a side was screened as one text (older turns left out to fit one Lakera
    call, an answer in parts, a stream ended early or cut): say how, without text."""
    entry = metadata(flow)
    record = entry.get(side)
    if not isinstance(record, dict):
        record = entry[side] = {"verdict": "pending"}
    earlier = record.get("coverage")
    record["coverage"] = f"{earlier}; {how}" if earlier else how
    logger.info("%s screened in part [%s route=%s]: %s", side, flow_label(flow), route.name, how)


def _side_record(
    decision: Decision, verdict: Verdict | None, masked: Counter[str] | None
) -> dict[str, Any]:
    action = "blocked" if decision.deny else "masked" if masked is not None else "allowed"
    record: dict[str, Any] = {"verdict": decision.outcome, "action": action}
    if masked is not None:
        record["masked"] = dict(masked)  # placeholder → count, never the masked text
    if verdict is not None:
        record["detector_types"] = list(verdict.detector_types)
        record["request_uuid"] = verdict.request_uuid
        record["latency_ms"] = verdict.latency_ms
        if verdict.cached:
            record["cached"] = True  # an identical call's verdict, Lakera not asked again
    if decision.reason:
        record["failure"] = decision.reason
    return record


def _comment_part(side: Side, record: dict[str, Any]) -> str:
    verdict = record["verdict"]
    types = ", ".join(record.get("detector_types") or [])
    detail = f" ({types})" if verdict == "flagged" and types else ""
    if verdict == "failure":
        detail = f" ({record.get('failure')})"
    if verdict == "unscanned":
        detail = f" ({record.get('failure')})" if record.get("failure") else ""
    if record["action"] == "blocked":
        return f"{side} blocked: {verdict}{detail}"
    if record["action"] == "masked":
        counts = ", ".join(f"{name}×{n}" for name, n in sorted(record["masked"].items()))
        return f"{side} masked: {verdict}{detail} {counts}"
    suffix = ", allowed" if verdict in ("flagged", "failure") else ""
    return f"{side} {verdict}{detail}{suffix}"


def _mark_for(record: dict[str, Any]) -> str | None:
    if record.get("action") == "blocked":
        return MARK_BLOCKED
    if record.get("action") == "masked":
        return MARK_MASKED
    return {"flagged": MARK_FLAGGED, "failure": MARK_FAILURE}.get(record.get("verdict", ""))


def _refresh_view(flow: http.HTTPFlow, entry: dict[str, Any]) -> None:
    parts = [
        _comment_part(side, entry[side])
        for side in ("request", "response")
        if isinstance(entry.get(side), dict) and entry[side].get("verdict") != "pending"
    ]
    if parts:
        flow.comment = "lakera: " + "; ".join(parts)
    marks = [m for side in ("request", "response") if (m := _mark_for(entry.get(side) or {}))]
    if marks:
        flow.marked = max(marks, key=lambda m: _MARK_RANK[m])


def record(
    flow: http.HTTPFlow,
    route: Route,
    side: Side,
    decision: Decision,
    verdict: Verdict | None,
    masked: Counter[str] | None = None,
) -> dict[str, Any]:
    """Store the decision on the flow and log it; the side's record, as stored."""
    entry = metadata(flow)
    previous = entry.get(side)
    entry[side] = side_record = _side_record(decision, verdict, masked)
    if isinstance(previous, dict) and "coverage" in previous:
        side_record["coverage"] = previous["coverage"]
    _refresh_view(flow, entry)
    _log(flow, route, side, decision, verdict, masked)
    return side_record


def _log(
    flow: http.HTTPFlow,
    route: Route,
    side: Side,
    decision: Decision,
    verdict: Verdict | None,
    masked: Counter[str] | None,
) -> None:
    where = f"[{flow_label(flow)} route={route.name}]"
    allowing = f"blocking {side}" if decision.deny else f"allowing {side}"
    if masked is not None:
        counts = ", ".join(f"{name}×{n}" for name, n in sorted(masked.items()))
        allowing = f"masking {side}: {counts}"
    if decision.outcome == "flagged" and verdict is not None:
        logger.warning(
            "%s flagged by Lakera Guard%s %s: detector types %s; action=%s, %s; "
            "request_uuid=%s; breakdown=%s",
            side,
            " (cached verdict)" if verdict.cached else "",
            where,
            ", ".join(verdict.detector_types) or "(none reported)",
            strictest_action(verdict, route.settings),
            allowing,
            verdict.request_uuid,
            json.dumps(list(verdict.breakdown), separators=(",", ":")),
        )
    elif decision.outcome == "failure":
        level = logging.ERROR if decision.deny else logging.WARNING
        logger.log(
            level,
            "Lakera Guard failure on %s %s: %s; fail_open=%s, %s",
            side,
            where,
            decision.reason,
            str(route.settings.fail_open).lower(),
            allowing,
        )
    elif decision.outcome == "unscanned":
        logger.info("%s not screened %s: %s", side, where, decision.reason)
    else:
        if verdict is not None and verdict.cached:
            logger.info("%s clean %s (cached verdict of an identical call)", side, where)
            return
        latency = verdict.latency_ms if verdict else 0.0
        logger.info("%s clean %s (Lakera %.0f ms)", side, where, latency)
