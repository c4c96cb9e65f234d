"""A test-only mitmproxy script loaded after the addon: it writes what mitmweb would show of
each flow that carries an `x-test-id` header (status, lakera metadata, comment, mark) as JSON
lines, after every hook that can change it, so tests can assert what users see."""

import asyncio
import json
import logging
import os

from mitmproxy import http


class _LogRecorder(logging.Handler):
    """Records the addon's log records with their level (mitmdump's output shows no level)."""

    def __init__(self, path: str) -> None:
        super().__init__(logging.DEBUG)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        line = {"id": "log", "level": record.levelname, "message": record.getMessage()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


class Observer:
    def __init__(self) -> None:
        self.path = os.environ.get("LAKERA_TEST_OBSERVER", "")
        if self.path:
            logging.getLogger("lakera_addon").addHandler(_LogRecorder(self.path))

    def _write(self, flow: http.HTTPFlow, hook: str) -> None:
        test_id = flow.request.headers.get("x-test-id")
        if not self.path or not test_id:
            return
        record = {
            "id": test_id,
            "hook": hook,
            "status": flow.response.status_code if flow.response else None,
            "lakera": flow.metadata.get("lakera"),
            "comment": flow.comment,
            "marked": flow.marked,
            "error": flow.error.msg if flow.error else None,
            "destination": f"{flow.request.host}:{flow.request.port}",
            "relay_token": "x-lakera-relay" in flow.request.headers,
        }
        self._append(record)

    def running(self) -> None:
        if self.path:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        """Every 0.2 s: how many of the addon's tasks are alive (they are named 'lakera ...'),
        so tests can check that none is left behind."""
        while True:
            tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("lakera")]
            self._append({"id": "tasks", "lakera": len(tasks), "all": len(asyncio.all_tasks())})
            await asyncio.sleep(0.2)

    def _append(self, record: dict[str, object]) -> None:  # a small local write
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def response(self, flow: http.HTTPFlow) -> None:
        self._write(flow, "response")

    def error(self, flow: http.HTTPFlow) -> None:
        self._write(flow, "error")

    def update(self, flows: list[http.HTTPFlow]) -> None:
        for flow in flows:
            if isinstance(flow, http.HTTPFlow):
                self._write(flow, "update")


addons = [Observer()]
