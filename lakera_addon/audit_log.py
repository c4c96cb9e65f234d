"""The optional audit log: one JSON line per verdict, for a SIEM.

Time, flow id, method, host, path (without the query), route, side, verdict, action, detector
types, Lakera's request_uuid, latency and failure reason. Never prompt or answer text, never the
key: it is written from the same verdict record as `flow.metadata["lakera"]`.
"""

from __future__ import annotations

import json
from datetime import UTC
from datetime import datetime
from pathlib import Path
from typing import IO
from typing import Any

from mitmproxy import http


class AuditLog:
    def __init__(self) -> None:
        self._file: IO[str] | None = None
        self.path: str | None = None

    def open(self, path: str) -> None:
        """Append to `path` (created if missing); OSError if it cannot be opened."""
        self.close()
        if path:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._file = open(Path(path).expanduser(), "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self.path = path

    def write(self, flow: http.HTTPFlow, route: str, side: str, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "flow": flow.id,
            "method": flow.request.method,
            "host": flow.request.pretty_host,
            "path": flow.request.path.split("?", 1)[0],
            "route": route,
            "side": side,
            "verdict": record.get("verdict"),
            "action": record.get("action"),
            "detector_types": record.get("detector_types", []),
            "request_uuid": record.get("request_uuid"),
            "latency_ms": record.get("latency_ms"),
            "failure": record.get("failure"),
            "masked": record.get("masked"),
        }
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self.path = None
