"""The metrics port (lakera_addon.metrics, .readiness, .health_server): what /metrics shows for
the addon's counters, the readiness and health decisions, the options, and the server's
lifecycle on a running event loop (the last ones marked integration: sockets on loopback)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.test import taddons
from mitmproxy.test import tflow
from prometheus_client.parser import text_string_to_metric_families

from lakera_addon.decision import Decision
from lakera_addon.failures import Failure
from lakera_addon.failures import FailureKind
from lakera_addon.guard_addon import LakeraGuard
from lakera_addon.health_server import HealthServer
from lakera_addon.health_server import parse_port
from lakera_addon.health_server import parse_seconds
from lakera_addon.lakera_client import LakeraClient
from lakera_addon.metrics import Metrics
from lakera_addon.metrics import failure_label
from lakera_addon.readiness import LakeraHealth
from lakera_addon.readiness import liveness
from lakera_addon.readiness import readiness
from lakera_addon.stats import MAX_DETECTOR_TYPES
from lakera_addon.stats import Stats
from lakera_addon.verdict import Verdict

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def failed(kind: FailureKind, reason: str = "why") -> Verdict:
    return Verdict(False, failure=Failure(kind, reason), latency_ms=5.0)


# --- the collector: the addon's counters as Prometheus shows them -----------------------------


def test_decisions_by_route_side_verdict_and_action() -> None:
    stats = Stats()
    flagged = Verdict(True, detector_types=("prompt_attack", "pii/email"), latency_ms=20.0)
    table: list[tuple[str, Any, Decision, Verdict | None, bool]] = [
        ("openai", "request", Decision("clean", False), Verdict(False, latency_ms=9.0), False),
        ("openai", "request", Decision("clean", False), Verdict(False, latency_ms=9.0), False),
        ("openai", "request", Decision("flagged", True), flagged, False),
        ("openai", "response", Decision("flagged", False, mask=True), flagged, True),
        ("anthropic", "response", Decision("flagged", False), flagged, False),  # alert
        ("anthropic", "request", Decision("failure", True, "t", kind=FailureKind.TIMEOUT),
         failed(FailureKind.TIMEOUT), False),
        ("anthropic", "request", Decision("failure", False, "big", kind=FailureKind.TOO_LARGE),
         None, False),
        ("anthropic", "request", Decision("unscanned", False, "no text"), None, False),
    ]
    for route, side, decision, verdict, masked in table:
        stats.observe(side, decision, verdict, route, masked)
    found = samples(Metrics(stats, LakeraClient(), {}).render().decode())
    flows = "lakera_guard_flows_total"
    expected = {
        ("openai", "request", "clean", "allowed"): 2,
        ("openai", "request", "flagged", "blocked"): 1,
        ("openai", "response", "flagged", "masked"): 1,
        ("anthropic", "response", "flagged", "allowed"): 1,
        ("anthropic", "request", "failure", "blocked"): 1,
        ("anthropic", "request", "failure", "allowed"): 1,
        ("anthropic", "request", "unscanned", "allowed"): 1,
    }
    shown = {tuple(dict(labels)[k] for k in ("route", "side", "verdict", "action")): v
             for (name, labels), v in found.items() if name == flows}
    assert shown == expected
    detections = {dict(labels)["side"] + " " + dict(labels)["detector_type"]: v
                  for (name, labels), v in found.items()
                  if name == "lakera_guard_detections_total"}
    assert detections == {"request prompt_attack": 1, "request pii/email": 1,
                          "response prompt_attack": 2, "response pii/email": 2}
    assert value(found, "lakera_guard_failures_total", kind="timeout") == 1
    assert value(found, "lakera_guard_failures_total", kind="too_large") == 1
    assert value(found, "lakera_guard_held_flows") == 0


@pytest.mark.parametrize(("kind", "label"), [
    ("prompt_attack", "prompt_attack"),
    ("pii/us_social_security_number", "pii/us_social_security_number"),
    ("moderated_content/hate", "moderated_content/hate"),
    ("unknown_links", "unknown_links"),
    ("custom/my_regex_1", "custom/my_regex_1"),
    ("pii/" + "x" * 41, "other"),  # too long a name
    ("pii/Name With Spaces", "other"),
    ("jailbreak", "other"),  # v1 names are not v2 types
    ('pii/a"} 1\nevil', "other"),
    ("", "other"),
])
def test_detector_types_are_bounded(kind: str, label: str) -> None:
    stats = Stats()
    stats.observe("request", Decision("flagged", True), Verdict(True, detector_types=(kind,)))
    assert dict(stats.detections) == {("request", label): 1}


def test_detector_types_past_the_bound_are_other() -> None:
    stats = Stats()
    names = [f"pii/kind_{i}" for i in range(MAX_DETECTOR_TYPES + 5)]
    for name in [*names, *names]:  # each twice: a type counted by name stays by name
        stats.observe("request", Decision("flagged", True), Verdict(True, detector_types=(name,)))
    by_name = {label for _, label in stats.detections if label != "other"}
    assert by_name == set(names[:MAX_DETECTOR_TYPES])
    assert stats.detections[("request", "other")] == 10


def test_failure_kinds_are_distinct_label_values() -> None:
    labels = [failure_label(kind) for kind in FailureKind]
    assert len(set(labels)) == len(labels)
    assert all(label.replace("_", "").isalnum() and label.islower() for label in labels)
    assert failure_label(FailureKind.STATUS_OTHER) == "status_other"


def test_cache_hits_reloads_and_histograms() -> None:
    stats, lakera = Stats(), LakeraClient()
    lakera.cache.hits, lakera.tool_sets.hits = 3, 1
    stats.reloaded(True)
    stats.reloaded(False)
    metrics = Metrics(stats, lakera, {})
    for ms in (4.0, 40.0, 400.0):
        metrics.lakera_call(Verdict(False, latency_ms=ms))
    metrics.added("request", 0.02)
    found = samples(metrics.render().decode())
    assert value(found, "lakera_guard_cache_hits_total", cache="verdict") == 3
    assert value(found, "lakera_guard_cache_hits_total", cache="tool_set") == 1
    assert value(found, "lakera_guard_config_reloads_total", result="success") == 1
    assert value(found, "lakera_guard_config_reloads_total", result="failure") == 1
    assert value(found, "lakera_guard_config_last_reload_success") == 0
    assert value(found, "lakera_guard_lakera_latency_seconds_count") == 3
    assert value(found, "lakera_guard_lakera_latency_seconds_bucket", le="0.05") == 2
    assert value(found, "lakera_guard_lakera_latency_seconds_sum") == pytest.approx(0.444)
    assert value(found, "lakera_guard_added_latency_seconds_count", side="request") == 1
    assert value(found, "lakera_guard_added_latency_seconds_count", side="response") == 0


def test_held_flows_and_their_bytes() -> None:
    held = tflow.tflow(req=http.Request.make("POST", "http://x/v1/chat/completions", b"a" * 100))
    answered = tflow.tflow(req=http.Request.make("POST", "http://x/v1/responses", b"b" * 10),
                           resp=http.Response.make(200, b"c" * 1000))
    found = samples(Metrics(Stats(), LakeraClient(), {held: 1, answered: 2}).render().decode())
    assert value(found, "lakera_guard_held_flows") == 2
    assert value(found, "lakera_guard_held_bytes") == 1110


def test_registries_are_the_addons_own() -> None:
    """Two instances (a script reload) register their metrics without a clash."""
    first, second = LakeraGuard(), LakeraGuard()
    first.counters.observe("request", Decision("clean", False), None, "r")
    first.metrics_port.metrics.lakera_call(Verdict(False, latency_ms=3.0))
    labels = {"route": "r", "side": "request", "verdict": "clean", "action": "allowed"}
    shown = [samples(g.metrics_port.metrics.render().decode()) for g in (first, second)]
    assert [value(s, "lakera_guard_flows_total", **labels) for s in shown] == [1, None]
    assert [value(s, "lakera_guard_lakera_latency_seconds_count") for s in shown] == [1, 0]


# --- readiness and health ----------------------------------------------------------------------


@pytest.mark.parametrize(("answered", "failed_at", "now", "seconds", "ok", "reason"), [
    (None, None, 100.0, 30, True, "no call to Lakera Guard yet"),
    (90.0, None, 100.0, 30, True, "Lakera Guard answered 10.0 s ago"),
    (95.0, 90.0, 100.0, 30, True, "answered 5.0 s ago"),  # answered since the failure
    (None, 90.0, 100.0, 30, False, "failed 10.0 s ago and has not answered since: boom"),
    (80.0, 90.0, 100.0, 30, False, "ready again on its next answer or 30 s after"),
    (80.0, 90.0, 120.0, 30, True, "last failure was 30.0 s ago"),  # long enough ago
    (None, 90.0, 91.0, 0, True, "lakera_ready_failure_seconds=0"),  # 0: never unready
])
def test_readiness(answered: float | None, failed_at: float | None, now: float, seconds: int,
                   ok: bool, reason: str) -> None:
    probe = readiness(LakeraHealth(answered, failed_at, "boom"), now, seconds)
    assert probe.ok is ok
    assert reason in probe.reason
    assert probe.body()["status"] == ("ok" if ok else "fail")


@pytest.mark.parametrize(("verdict", "answered", "failed"), [
    (Verdict(False), True, False),
    (Verdict(True, detector_types=("prompt_attack",)), True, False),
    (failed(FailureKind.TIMEOUT), False, True),
    (failed(FailureKind.UNREACHABLE), False, True),
    (failed(FailureKind.STATUS_OTHER), False, True),
    (failed(FailureKind.NOT_JSON), False, True),
    (failed(FailureKind.NO_VERDICT), False, True),
    (failed(FailureKind.STATUS_401), False, False),  # one route's key
    (failed(FailureKind.STATUS_429), False, False),  # a quota all replicas share
    (failed(FailureKind.STATUS_4XX), False, False),  # that call's own (a client could send it)
])
def test_which_calls_count_for_readiness(verdict: Verdict, answered: bool, failed: bool) -> None:
    health = LakeraHealth()
    health.call(verdict, 7.0)
    assert (health.answered_at == 7.0) is answered
    assert (health.failed_at == 7.0) is failed
    assert readiness(health, 8.0, 30).ok is not failed


@pytest.mark.parametrize(("source", "reload_ok", "ok", "reason"), [
    ("/config/policy.yaml", True, True, "lakera guard active: config /config/policy.yaml; 4 "
                                        "route(s)"),
    ("/config/policy.yaml", False, True, "the last reload failed, the previous configuration"),
    (None, True, False, "no valid configuration"),
])
def test_liveness(source: str | None, reload_ok: bool, ok: bool, reason: str) -> None:
    probe = liveness(source, 4, reload_ok)
    assert probe.ok is ok and reason in probe.reason


@pytest.mark.parametrize(("text", "port"), [("0", 0), ("9464", 9464), (" 65535 ", 65535)])
def test_parse_port(text: str, port: int) -> None:
    assert parse_port(text) == port


@pytest.mark.parametrize("text", ["", "abc", "-1", "65536", "94.64"])
def test_parse_port_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="port number"):
        parse_port(text)


@pytest.mark.parametrize(("text", "ok"), [("0", True), ("30", True), ("-1", False),
                                          ("1.5", False), ("x", False)])
def test_parse_seconds(text: str, ok: bool) -> None:
    if ok:
        assert parse_seconds(text) == int(text)
    else:
        with pytest.raises(ValueError):
            parse_seconds(text)


# --- the options and the server on a running loop ----------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get(port: int, path: str) -> tuple[int, str]:
    async with (aiohttp.ClientSession(trust_env=False) as session,
                session.get(f"http://127.0.0.1:{port}{path}") as response):
        return response.status, await response.text()


async def refused(port: int) -> bool:
    try:
        await get(port, "/healthz")
    except aiohttp.ClientConnectionError:
        return True
    return False


@pytest.fixture
def guard() -> Iterator[tuple[LakeraGuard, Any]]:
    addon = LakeraGuard()
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        yield addon, tctx
        addon.done()
        tctx.master._legacy_log_events.uninstall()


@pytest.mark.integration
def test_metrics_off_by_default_costs_nothing(guard: tuple[LakeraGuard, Any]) -> None:
    addon, _ = guard
    assert addon.metrics_port.server.address is None
    assert addon.lakera.on_call is None and addon.verdicts.on_hold is None


@pytest.mark.integration
@pytest.mark.parametrize(("option", "text", "message"), [
    ("lakera_metrics_port", "abc", "lakera_metrics_port: 'abc' is not a port number"),
    ("lakera_metrics_port", "70000", "lakera_metrics_port: 70000 is not a port number"),
    ("lakera_ready_failure_seconds", "-5", "lakera_ready_failure_seconds: -5 is negative"),
])
def test_bad_option_values_are_refused(guard: tuple[LakeraGuard, Any], option: str, text: str,
                                       message: str) -> None:
    addon, tctx = guard
    with pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(addon, **{option: text})


@pytest.mark.integration
async def test_server_pages_and_restart_on_another_port(
        guard: tuple[LakeraGuard, Any]) -> None:
    addon, tctx = guard
    first, second = free_port(), free_port()
    tctx.configure(addon, lakera_metrics_port=str(first))
    assert addon.lakera.on_call is not None and addon.verdicts.on_hold is not None
    await asyncio.sleep(0.05)
    status, body = await get(first, "/readyz")
    assert (status, json.loads(body)) == (200, {"status": "ok",
                                                "reason": "no call to Lakera Guard yet"})
    status, body = await get(first, "/healthz")  # no lakera_config given to this addon
    assert (status, json.loads(body)["status"]) == (503, "fail")
    status, body = await get(first, "/metrics")
    assert status == 200 and "# TYPE lakera_guard_lakera_latency_seconds histogram" in body
    assert (await get(first, "/other"))[0] == 404

    tctx.configure(addon, lakera_metrics_port=str(second))  # moved: the old port is free
    await asyncio.sleep(0.05)
    assert await refused(first)
    assert (await get(second, "/metrics"))[0] == 200
    with socket.socket() as s:
        s.bind(("127.0.0.1", first))  # really free again

    tctx.configure(addon, lakera_metrics_port="0")  # off: no server, nothing observed
    await asyncio.sleep(0.05)
    assert await refused(second)
    assert addon.lakera.on_call is None and addon.verdicts.on_hold is None


@pytest.mark.integration
async def test_port_in_use_is_refused_and_the_old_server_keeps_serving(
        guard: tuple[LakeraGuard, Any]) -> None:
    addon, tctx = guard
    port = free_port()
    tctx.configure(addon, lakera_metrics_port=str(port))
    await asyncio.sleep(0.05)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(exceptions.OptionsError,
                           match=f"lakera_metrics_port: cannot listen on 127.0.0.1:{busy}: "
                                 "Address already in use"):
            tctx.configure(addon, lakera_metrics_port=str(busy))
    assert tctx.options.lakera_metrics_port == str(port)  # rolled back
    assert (await get(port, "/readyz"))[0] == 200


@pytest.mark.integration
async def test_health_server_closed_before_it_started() -> None:
    """Closed (a new port, `done`) before the loop got to start it: nothing serves, the
    socket is released."""
    server = HealthServer({"/healthz": lambda: (200, "text/plain", b"ok")})
    port = free_port()
    server.listen("127.0.0.1", port)
    server.close()
    await asyncio.sleep(0.05)
    assert await refused(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
