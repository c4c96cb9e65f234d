"""What the request side learned about a screened flow, for the answer side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol as Interface

from mitmproxy import http

from lakera_addon.configuration import Route
from lakera_addon.configuration import Settings
from lakera_addon.protocols import Protocol


class LiveAnswer(Interface):
    """The owner of an answer that goes out live (live_stream.py)."""

    async def end(self, flow: http.HTTPFlow) -> None:
        """After the stream ended (or was cut short): screen what is left, record."""


@dataclass(slots=True)
class FlowState:
    route: Route
    protocol: Protocol
    model: str | None
    streams: bool  # the request asked for a streamed answer
    candidates: int = 1  # answers asked for at once (Gemini's candidateCount)
    json_array: bool = False  # a Gemini stream asked for as one JSON array (no `alt=sse`)
    generic: bool = False  # no known protocol (`protocol` is a guess from the path, for denies)
    denied: bool = False  # the addon answered with its own deny
    relay_token: str | None = None  # sent through the relay (relay.py)
    relay_screened: bool = False  # the relay screened and released the answer (windowed)
    # the owner of a live answer (pass-through or live), set by `responseheaders`
    stream: LiveAnswer | None = None

    @property
    def settings(self) -> Settings:
        return self.route.settings
