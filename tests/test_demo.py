"""The demo (the README's main job) runs end to end and reports every row as expected."""

from __future__ import annotations

import re

import pytest

from lakera_addon import demo


def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    code = demo.main([])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "LOCAL STAND-INS" in out
    assert "starting mitmdump with the addon..." in out
    rows = [line for line in out.splitlines() if re.match(r"\s+(ok|FAIL)\s+\d+\s", line)]
    assert len(rows) == len(demo.CLIENTS) * 2 * len(demo.CASES) + len(demo.MODE_ROWS), out
    assert all(line.split()[0] == "ok" for line in rows), out
    modes = rows[len(demo.CLIENTS) * 2 * len(demo.CASES):]
    rows = rows[:len(demo.CLIENTS) * 2 * len(demo.CASES)]
    for client in demo.CLIENTS:
        for stream in ("no", "yes"):
            mine = [r for r in rows if f" {client} " in r and re.search(rf"\s{stream}\s", r)]
            assert len(mine) == 3, out
            clean, injected, answer = mine
            assert '"The capital of Switzerland is Bern."' in clean
            assert clean.rstrip().endswith(" clean")
            assert '"Request blocked by Lakera Guard"' in injected
            assert "request blocked: flagged (prompt_attack)" in injected
            assert '"Response blocked by Lakera Guard"' in answer
            assert "response blocked: flagged (pii/credit_card)" in answer
    windowed = [r for r in modes if "windowed stream" in r]
    assert len(windowed) == len(demo.CLIENTS)  # a windowed stream cut in every SDK
    assert all("Response blocked by Lakera Guard\"" in r and "Test cards" in r
               and "response blocked: flagged (pii/credit_card)" in r for r in windowed), out
    parallel = [r for r in modes if "parallel input" in r]
    assert any("Request blocked" in r and "request blocked" in r for r in parallel), out
    assert any("Bern" in r and r.rstrip().endswith(" clean") for r in parallel), out
    assert f"all {len(rows) + len(modes)} requests ended as expected" in out
    assert "mitmdump's log" in out


@pytest.mark.parametrize(
    ("record", "label"),
    [
        (None, "(no flow recorded)"),
        ({"comment": "lakera: request clean; response clean"}, "clean"),
        ({"comment": "lakera: request blocked: flagged (prompt_attack)"},
         "request blocked: flagged (prompt_attack)"),
        ({"comment": "lakera: request clean; response blocked: flagged (pii/credit_card)"},
         "response blocked: flagged (pii/credit_card)"),
        ({"comment": "lakera: request flagged (prompt_attack), allowed"},
         "request flagged (prompt_attack), allowed"),
        ({"comment": ""}, "(not screened)"),
        ({"comment": "", "error": "connection closed"}, "flow error: connection closed"),
    ],
)
def test_verdict_label(record: dict[str, str] | None, label: str) -> None:
    assert demo.verdict_label(record) == label


def test_a_wrong_outcome_fails_the_row() -> None:
    case = demo.CASES[1]
    row = demo.Row("openai chat", False, case, "demo-x", case.expected_text, "clean")
    assert not row.ok
    row.verdict = case.expected_verdict
    assert row.ok
    row.received = "The capital of Switzerland is Bern."
    assert not row.ok
