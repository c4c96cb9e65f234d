"""mitmproxy's own `stream_large_bodies` would let screened bodies past the guard: mitmproxy
switches a body past the threshold to streaming on every chunk, whatever an addon set in
`requestheaders`/`responseheaders` (found by an earlier version of this test, where a 6 kB
injected prompt reached the LLM). So the addon refuses the option while it screens routes."""

from __future__ import annotations

from pathlib import Path

from tests.harness import run_mitmdump_once
from tests.harness import write_config


def test_stream_large_bodies_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path / "lakera.yaml", {"api_key": "k"})
    code, output = run_mitmdump_once(config, tmp_path,
                                     extra=("--set", "stream_large_bodies=2k"))
    assert code not in (None, 0), output
    assert "stream_large_bodies=2k would let mitmproxy stream screened prompts" in output

