"""`lakera-allow-hosts`: route host globs to mitmproxy's `--allow-hosts` pattern, checked
against fnmatch (what the routes use) and against mitmproxy's own matching."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mitmproxy.addons.next_layer import NextLayer
from mitmproxy.connection import Client
from mitmproxy.connection import Server
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.context import Context
from mitmproxy.test import taddons

from lakera_addon import cli
from lakera_addon.cli import allow_hosts_regex
from lakera_addon.cli import glob_to_regex
from lakera_addon.configuration import DEFAULT_ROUTES

ROOT = Path(__file__).resolve().parent.parent

# glob -> (regex fragment, hosts it matches, hosts it does not)
GLOBS: list[tuple[str, str, list[str], list[str]]] = [
    ("api.openai.com", r"api\.openai\.com",
     ["api.openai.com", "API.OpenAI.com"],
     ["apixopenai.com", "api.openai.com.evil.example", "xapi.openai.com", "api.openai.co"]),
    ("*.openai.azure.com", r".*\.openai\.azure\.com",
     ["myres.openai.azure.com", "a.b.openai.azure.com"],
     ["openai.azure.com", "myres.openai.azure.com.evil.example", "myresopenai.azure.com"]),
    ("127.0.0.1", r"127\.0\.0\.1", ["127.0.0.1"], ["127.0.0.10", "127x0x0x1", "1127.0.0.1"]),
    ("localhost", "localhost", ["localhost", "LOCALHOST"], ["localhost.example", "mylocalhost"]),
    ("api?.example.com", r"api.\.example\.com", ["api1.example.com", "apix.example.com"],
     ["api.example.com", "api12.example.com"]),
    ("api[0-9].example.com", r"api[0-9]\.example\.com", ["api7.example.com"],
     ["apix.example.com", "api.example.com"]),
    ("api[!0-9].example.com", r"api[^0-9]\.example\.com", ["apix.example.com"],
     ["api7.example.com"]),
    ("a**b", "a.*b", ["ab", "a.x.b"], ["ba"]),
    ("x[y", r"x\[y", ["x[y"], ["xy"]),
    ("*", ".*", ["anything.example", "localhost"], []),
    ("my-host.example.com", r"my\-host\.example\.com", ["my-host.example.com"],
     ["myxhost.example.com"]),
]


@pytest.mark.parametrize(("glob", "fragment", "yes", "no"), GLOBS)
def test_glob_to_regex(glob: str, fragment: str, yes: list[str], no: list[str]) -> None:
    assert glob_to_regex(glob) == fragment
    pattern = allow_hosts_regex([glob])
    for host in yes + no:
        # the same answer as the route's own fnmatch (hosts are lower-cased by the config)
        expected = fnmatch.fnmatchcase(host.lower(), glob)
        assert expected == (host in yes), host
        for candidate in (host, f"{host}:443", f"{host}:8443", f"{host}.:443"):
            found = re.search(pattern, candidate, re.IGNORECASE) is not None
            assert found == expected, (glob, candidate)


def test_regex_shape() -> None:
    pattern = allow_hosts_regex(["api.openai.com", "*.openai.azure.com", "API.openai.com"])
    assert pattern == r"^(api\.openai\.com|.*\.openai\.azure\.com)\.?(:\d+)?$"
    with pytest.raises(ValueError):
        allow_hosts_regex([])


def test_default_routes_all_hosts() -> None:
    pattern = allow_hosts_regex(cli.config_hosts(None))
    hosts = [h for route in DEFAULT_ROUTES for h in route["hosts"]]
    for host in hosts:
        concrete = host.replace("*", "myres")
        assert re.search(pattern, f"{concrete}:443", re.IGNORECASE)
    for other in ("example.com:443", "github.com:443", "api.openai.com:443x",
                  "api.openai.com.example.com:443", "pypi.org:443"):
        assert not re.search(pattern, other, re.IGNORECASE), other


def _ignored(next_layer: NextLayer, options: object, address: tuple[str, int]) -> bool:
    client = Client(
        peername=("127.0.0.1", 50000),
        sockname=("127.0.0.1", 8080),
        timestamp_start=0,
        proxy_mode=mode_specs.ProxyMode.parse("regular"),
    )
    context = Context(client, options)
    context.server = Server(address=address)
    return bool(next_layer._ignore_connection(context, b"", b""))


def test_mitmproxy_accepts_and_applies_the_pattern() -> None:
    """Through mitmproxy's own option parsing (`--set allow_hosts=...`) and its next-layer
    decision: CONNECTs to the routes' hosts are intercepted, everything else is passed on."""
    pattern = allow_hosts_regex(cli.config_hosts(None))
    next_layer = NextLayer()
    with taddons.context(next_layer) as tctx:  # type: ignore[no-untyped-call]
        tctx.options.set(f"allow_hosts={pattern}")
        assert tctx.options.allow_hosts == [pattern]
        next_layer.configure({"allow_hosts"})  # type: ignore[no-untyped-call]
        for host in ("api.openai.com", "myres.openai.azure.com", "api.anthropic.com",
                     "API.ANTHROPIC.COM"):
            assert not _ignored(next_layer, tctx.options, (host, 443)), host
        for host in ("example.com", "api.openai.com.evil.example", "github.com"):
            assert _ignored(next_layer, tctx.options, (host, 443)), host


def test_main_prints_the_pattern(capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAKERA_GUARD_API_KEY", raising=False)  # not needed to print hosts
    assert cli.allow_hosts_main([]) == 0
    assert capsys.readouterr().out == allow_hosts_regex(cli.config_hosts(None)) + "\n"
    assert cli.allow_hosts_main(["--config", str(ROOT / "configs" / "local.yaml")]) == 0
    assert capsys.readouterr().out == r"^(127\.0\.0\.1|localhost)\.?(:\d+)?$" + "\n"


def test_main_needs_no_variables_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SOME_UNSET_VARIABLE", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("api_key: $env://SOME_UNSET_VARIABLE\n"
                      "routes:\n  - name: a\n    hosts: [a.example, '*.b.example']\n"
                      "    api_key: $env://SOME_UNSET_VARIABLE\n")
    assert cli.allow_hosts_main(["--config", str(config)]) == 0
    assert capsys.readouterr().out == r"^(a\.example|.*\.b\.example)\.?(:\d+)?$" + "\n"


def test_main_refuses_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("routes:\n  - name: a\n    hosts: [a.example]\n    action: drop\n")
    assert cli.allow_hosts_main(["--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "action: 'drop' is not allowed; must be block or alert" in captured.err
    assert cli.allow_hosts_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("lakera-allow-hosts")
    assert script.exists(), "pip install -e . after changing [project.scripts]"
    result = subprocess.run([str(script), "--config", str(ROOT / "configs" / "openai.yaml")],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == r"^(api\.openai\.com)\.?(:\d+)?$" + "\n"


def test_existing_entries_still_work(tmp_path: Path) -> None:
    assert cli.config_path(["--set", "lakera_config=a.yaml", "--set=lakera_config=b.yaml"]) \
        == "b.yaml"
    assert cli.config_path(["--mode", "regular"]) is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("direction: sideways\n")
    problem = cli.preflight(["--set", f"lakera_config={bad}"])
    assert problem and "direction" in problem
