"""Run the local stand-ins in the foreground: `python -m lakera_addon.standins`.

For development without a Lakera account (configs/local.yaml points at these ports). They are
stand-ins for tests and the demo, not a replacement for Lakera Guard or for a model.
"""

from __future__ import annotations

import argparse
import contextlib
import threading

from lakera_addon.standins.lakera_guard import LakeraGuardStandin
from lakera_addon.standins.llm_upstream import LLMUpstreamStandin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lakera_addon.standins", description=__doc__)
    parser.add_argument("--lakera-port", type=int, default=9111)
    parser.add_argument("--llm-port", type=int, default=9112)
    parser.add_argument("--lakera-key", default="test-lakera-key")
    parser.add_argument("--lakera-delay-ms", type=int, default=0)
    args = parser.parse_args(argv)
    with LakeraGuardStandin(api_key=args.lakera_key, port=args.lakera_port) as lakera, \
            LLMUpstreamStandin(port=args.llm_port) as llm:
        lakera.delay_s = args.lakera_delay_ms / 1000
        print(f"Lakera Guard stand-in: {lakera.url}/v2/guard (key {args.lakera_key!r})")
        print(f"LLM upstream stand-in: {llm.url} (OpenAI chat/responses, Anthropic messages, "
              "Gemini generateContent, Ollama /api/chat and /api/generate)")
        print("Ctrl-C stops them.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
