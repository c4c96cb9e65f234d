"""The stand-ins in their own process, for the benchmark: `python -m bench.standins`.

The same Lakera Guard and LLM stand-ins as the tests and the demo, with two changes that only
matter under load and that change no byte they send:
- the LLM stand-in's word splitter is replaced by an equivalent regular expression (the original
  walks the text one character at a time: seconds for a 10 MB answer, which would make the
  stand-in the bottleneck of the stream-length table);
- neither records what it received (the tests read those lists; a benchmark would only grow them).
Prints one JSON line with both ports, then serves until stdin closes or it is terminated.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from lakera_addon.standins import llm_answers
from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_upstream import LLMUpstreamStandin

_PIECE = re.compile(r".[^ ]* |.+", re.DOTALL)


def fast_pieces(text: str) -> list[str]:
    """`llm_answers._pieces`, in C: each piece ends with a space and is longer than one
    character; the rest of the text is the last piece."""
    return _PIECE.findall(text) or [""]


class _Discard(list[Any]):
    def append(self, item: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.standins")
    parser.add_argument("--lakera-key", default="bench-lakera-key")
    parser.add_argument("--lakera-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    llm_answers._pieces = fast_pieces
    with LakeraGuardStandin(api_key=args.lakera_key) as lakera, LLMUpstreamStandin() as llm:
        lakera.delay_s = args.lakera_delay_ms / 1000
        lakera.received = _Discard()
        llm.received = _Discard()
        print(json.dumps({"lakera": lakera.port, "llm": llm.port}), flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin (or ends us)


if __name__ == "__main__":
    main()
