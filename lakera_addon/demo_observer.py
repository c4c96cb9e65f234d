"""A mitmproxy script for the demo (`lakera_addon/demo.py`), loaded after the addon.

For every flow that carries an `x-lakera-demo-id` request header it appends what mitmweb would
show of the flow (status, comment, mark) as one JSON line to the file named by the environment
variable `LAKERA_DEMO_OBSERVER`, after each hook that can change it, so the demo can print the
proxy's verdict next to what the client received. Without the variable it does nothing.
"""

from __future__ import annotations

import json
import os

from mitmproxy import http

DEMO_ID_HEADER = "x-lakera-demo-id"
OBSERVER_ENV = "LAKERA_DEMO_OBSERVER"


class DemoObserver:
    def __init__(self) -> None:
        self.path = os.environ.get(OBSERVER_ENV, "")

    def _write(self, flow: http.HTTPFlow, hook: str) -> None:
        demo_id = flow.request.headers.get(DEMO_ID_HEADER)
        if not self.path or not demo_id:
            return
        record = {
            "id": demo_id,
            "hook": hook,
            "status": flow.response.status_code if flow.response else None,
            "comment": flow.comment,
            "marked": flow.marked,
            "error": flow.error.msg if flow.error else None,
        }
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def response(self, flow: http.HTTPFlow) -> None:
        self._write(flow, "response")

    def error(self, flow: http.HTTPFlow) -> None:
        self._write(flow, "error")

    def update(self, flows: list[http.HTTPFlow]) -> None:
        for flow in flows:
            if isinstance(flow, http.HTTPFlow):
                self._write(flow, "update")


addons = [DemoObserver()]
