"""`lakera-replay FLOWS --config NEW.yaml`: a policy tried on recorded traffic before it goes
live (README, "Trying a policy on recorded traffic").

Reads a flows file written by `mitmdump -w` (or saved from mitmweb) and screens every HTTP flow
in it with the new configuration, as the addon would (rescreen.py: the hooks' own steps,
nothing sent upstream, no flow changed): the route the configuration gives each flow, the
request side and the answer side each route screens, and the action the policy would take
(block, alert, mask, pass, fail: a Lakera failure, `fail_open` decides, or unscanned). Prints
one row per side and a summary by route and detector type, or one JSON document (`--json`).
The Lakera calls go to the configuration's endpoint, at most `--concurrency` at a time; its
key comes from the configuration or LAKERA_GUARD_API_KEY and is never printed.

Exit status 0 once the flows are screened (whatever the verdicts); 2, with one line on
stderr, for a configuration or a flows file that cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import TextIO

from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy import io
from tqdm import tqdm

from lakera_addon import reporting
from lakera_addon.configuration import Config
from lakera_addon.configuration import ConfigError
from lakera_addon.configuration import Settings
from lakera_addon.configuration import load_config
from lakera_addon.decision import Side
from lakera_addon.flow_route import route_of
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.rescreen import ACTIONS
from lakera_addon.rescreen import FlowResult
from lakera_addon.rescreen import recorded
from lakera_addon.rescreen import rescreen_all
from lakera_addon.verdict import Verdict

DEFAULT_CONCURRENCY = 8
LABEL_WIDTH = 80  # the widest `method host path` the table shows whole


class BoundedClient(LakeraClient):
    """The addon's Lakera client with at most `limit` calls in flight (`--concurrency`): a
    call waits for a slot before its `timeout` starts."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._slots = asyncio.Semaphore(limit)

    async def _call(self, settings: Settings, body: bytes) -> Verdict:
        async with self._slots:
            return await super()._call(settings, body)


@dataclass(frozen=True, slots=True)
class Row:
    """One flow of the file and what the policy would do to it."""

    index: int  # 1-based position among all flows of the file
    flow: http.HTTPFlow
    result: FlowResult

    def as_json(self) -> dict[str, Any]:
        request = self.flow.request
        sides = []
        for side in self.result.sides:
            was = _recorded(self.flow, side.side)
            sides.append({**side.as_json(), "recorded": was or None})
        return {"index": self.index, "id": self.flow.id, "method": request.method,
                "host": request.host, "path": request.path.split("?", 1)[0],
                **self.result.as_json(), "sides": sides}


def _recorded(flow: http.HTTPFlow, side: Side) -> dict[str, Any]:
    """The flow's own verdict on a side when it went through: verdict, action, detectors."""
    record = recorded(flow, side)
    return {k: record[k] for k in ("verdict", "action", "detector_types") if k in record}


def read_flows(path: str) -> tuple[list[tuple[int, http.HTTPFlow]], int]:
    """(the HTTP flows of a flows file with their 1-based positions, how many other flows
    it holds). OSError or FlowReadException for a file that cannot be read."""
    flows: list[tuple[int, http.HTTPFlow]] = []
    others = 0
    with open(path, "rb") as f:
        for index, flow in enumerate(io.FlowReader(f).stream(), 1):
            if isinstance(flow, http.HTTPFlow):
                flows.append((index, flow))
            else:
                others += 1
    return flows, others


async def replay(
    flows: Sequence[tuple[int, http.HTTPFlow]],
    config: Config,
    concurrency: int,
    progress: tqdm[Any] | None = None,
) -> list[Row]:
    """Every flow screened with `config`, in the file's order."""
    lakera = BoundedClient(concurrency)
    picked = [(flow, route_of(config, flow)) for _, flow in flows]

    def done(index: int, result: FlowResult) -> None:
        if progress is not None:
            progress.update(1)

    try:
        results = await rescreen_all(picked, lakera, concurrency, done)
    finally:
        await lakera.aclose()
    return [Row(index, flow, result)
            for (index, flow), result in zip(flows, results, strict=True)]


# --- the summary ---------------------------------------------------------------------------


def summarize(rows: Sequence[Row], others: int = 0) -> dict[str, Any]:
    """Counts of the would-be actions, one per screened side (a request and its answer count
    apart): over all, by side, by route and by detector type (the sides where it fired)."""
    actions: Counter[str] = Counter()
    by_side: dict[str, Counter[str]] = {}
    by_route: dict[str, Counter[str]] = {}
    by_detector: dict[str, Counter[str]] = {}
    routed = denied = 0
    for row in rows:
        result = row.result
        if result.route is None:
            continue
        routed += 1
        denied += any(side.denied for side in result.sides)
        by_route.setdefault(result.route, Counter())
        for side in result.sides:
            actions[side.action] += 1
            by_side.setdefault(side.side, Counter())[side.action] += 1
            by_route[result.route][side.action] += 1
            for kind in side.detector_types:
                by_detector.setdefault(kind, Counter())[side.action] += 1

    def table(counters: dict[str, Counter[str]]) -> dict[str, dict[str, int]]:
        return {name: _counts(c) for name, c in sorted(counters.items())}

    return {
        "flows": len(rows), "on_route": routed, "no_route": len(rows) - routed,
        "not_http": others, "flows_denied": denied, "actions": _counts(actions),
        "by_side": {s: _counts(by_side[s]) for s in ("request", "response") if s in by_side},
        "by_route": table(by_route), "by_detector": table(by_detector),
    }


def _counts(counter: Counter[str]) -> dict[str, int]:
    return {action: counter.get(action, 0) for action in ACTIONS}


# --- output --------------------------------------------------------------------------------

HEADERS = ("#", "flow", "request", "route", "side", "verdict", "detectors", "action",
           "detail")


def _label(flow: http.HTTPFlow) -> str:
    label = reporting.flow_label(flow)
    if len(label) <= LABEL_WIDTH:
        return label
    half = LABEL_WIDTH // 2  # the method and host, and the end of the path (the API)
    return label[:half] + "…" + label[-(LABEL_WIDTH - half - 1):]


def _detail(row: Row, side_index: int) -> str:
    if side_index < 0:
        return row.result.note or ""
    side = row.result.sides[side_index]
    parts = []
    if side.masked:
        parts.append(", ".join(f"{name}×{n}" for name, n in sorted(side.masked.items())))
    if side.action == "fail":
        parts.append(f"{side.reason}; fail_open={'false: denied' if side.denied else 'true'}")
    elif side.reason:
        parts.append(side.reason)
    if side_index == 0 and row.result.note:
        parts.append(row.result.note)
    return "; ".join(parts)


def table_lines(rows: Sequence[Row]) -> list[str]:
    """The table: one line per screened side of each flow, one for a flow on no route."""
    cells: list[tuple[str, ...]] = [HEADERS]
    for row in rows:
        first = (str(row.index), row.flow.id[:8], _label(row.flow))
        if row.result.route is None or not row.result.sides:
            cells.append((*first, row.result.route or "-", "-", "-", "-", "-",
                          _detail(row, -1)))
            continue
        for i, side in enumerate(row.result.sides):
            cells.append((*first, row.result.route, side.side, side.verdict,
                          ",".join(side.detector_types) or "-", side.action, _detail(row, i)))
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS) - 1)]
    return [("  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=False))
             + "  " + cell[-1]).rstrip() for cell in cells]


def summary_lines(summary: dict[str, Any], config: Config) -> list[str]:
    lines = [
        f"{summary['flows']} HTTP flows screened with {config.source}: {summary['on_route']} "
        f"on a route, {summary['no_route']} on no route"
        + (f"; {summary['not_http']} other flows skipped" if summary["not_http"] else ""),
        f"{summary['flows_denied']} flows would be denied (a side blocked, or a failure on "
        "a fail-closed route)",
        "would (one count per screened side: a request and its answer apart):",
    ]
    rows: list[tuple[str, dict[str, int]]] = [("all", summary["actions"])]
    rows += [(f"  {side}", counts) for side, counts in summary["by_side"].items()]
    rows += [(f"route {name}", counts) for name, counts in summary["by_route"].items()]
    rows += [(f"detector {name}", counts) for name, counts in summary["by_detector"].items()]
    width = max(len(name) for name, _ in rows)
    columns = {a: max(len(a), *(len(str(counts[a])) for _, counts in rows)) for a in ACTIONS}
    lines.append(" " * width + "".join(f"  {a:>{w}}" for a, w in columns.items()))
    lines += [name.ljust(width) + "".join(f"  {counts[a]:>{w}}" for a, w in columns.items())
              for name, counts in rows]
    return lines


def write_report(rows: Sequence[Row], others: int, config: Config, as_json: bool,
                 flows_file: str, out: TextIO) -> None:
    summary = summarize(rows, others)
    if as_json:
        document = {"flows_file": flows_file, "config": config.source,
                    "flows": [row.as_json() for row in rows], "summary": summary}
        json.dump(document, out, ensure_ascii=False, indent=1)
        out.write("\n")
        return
    out.write("\n".join([*table_lines(rows), "", *summary_lines(summary, config)]) + "\n")


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, not {value!r}")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lakera-replay",
        description="Screen the flows of a file written by mitmdump -w (or saved from "
        "mitmweb) with a lakera_addon configuration, without sending anything upstream: "
        "what the policy would do to each flow, and a summary by route and detector type.",
    )
    parser.add_argument("flows", metavar="FLOWS", help="a mitmproxy flows file")
    parser.add_argument("--config", metavar="NEW.yaml",
                        help="the configuration to try (default: the built-in routes); its "
                        "Lakera key, or LAKERA_GUARD_API_KEY, is used for the calls")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--concurrency", metavar="N", type=_positive,
                        default=DEFAULT_CONCURRENCY,
                        help=f"Lakera calls in flight at most (default {DEFAULT_CONCURRENCY})")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: lakera_config: {e}", file=sys.stderr)
        return 2
    try:
        flows, others = read_flows(args.flows)
    except OSError as e:
        print(f"error: {args.flows}: cannot be read: {e.strerror or e}", file=sys.stderr)
        return 2
    except exceptions.FlowReadException as e:
        print(f"error: {args.flows}: not a mitmproxy flows file: {e}", file=sys.stderr)
        return 2
    # on stderr, and only on a terminal (disable=None); gone once done (leave=False)
    with tqdm(total=len(flows), unit="flow", desc="lakera-replay", file=sys.stderr,
              disable=None, leave=False) as progress:
        rows = asyncio.run(replay(flows, config, args.concurrency, progress))
    write_report(rows, others, config, args.json, args.flows, sys.stdout)
    return 0
