"""Reloading the configuration file (lakera_addon.config_watch, guard_addon's lakera.reload):
change detection, the watch on real files (in place, rename-over, a ConfigMap's symlink swap,
deleted and recreated, caught mid-write), and what the addon does with a good or a bad file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from mitmproxy import http
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from lakera_addon import config_watch
from lakera_addon.config_watch import ConfigWatch
from lakera_addon.config_watch import FileStamp
from lakera_addon.config_watch import Reading
from lakera_addon.config_watch import changed
from lakera_addon.config_watch import stamp_of
from lakera_addon.configuration import load_config
from lakera_addon.guard_addon import LakeraGuard
from lakera_addon.standins.lakera_guard import PII_TRIGGER
from lakera_addon.standins.lakera_guard import LakeraGuardStandin

A = FileStamp(mtime_ns=1_000, size=100, inode=7, device=1)


@pytest.mark.parametrize(("seen", "now", "expected"), [
    (A, A, False),  # untouched
    (A, FileStamp(2_000, 100, 7, 1), True),  # written in place, same size
    (A, FileStamp(1_000, 101, 7, 1), True),  # written within one mtime tick
    (A, FileStamp(1_000, 100, 8, 1), True),  # renamed over: same size and mtime, new inode
    (A, FileStamp(1_000, 100, 7, 2), True),  # another file system (a new mount)
    (A, None, True),  # disappeared: one failed reload
    (None, None, False),  # still missing: nothing new to say
    (None, A, True),  # reappeared
], ids=["same", "mtime", "size", "inode", "device", "gone", "still-gone", "back"])
def test_changed(seen: FileStamp | None, now: FileStamp | None, expected: bool) -> None:
    assert changed(seen, now) is expected


def policy(name: str, action: str = "block", **more: Any) -> dict[str, Any]:
    return {"api_key": "k", "lakera_endpoint": "http://127.0.0.1:9/v2/guard",
            "routes": [{"name": name, "hosts": ["127.0.0.1"], "action": action, **more}]}


def write(path: Path, document: object) -> Path:
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def replace_atomically(path: Path, document: object) -> None:
    """What editors and `kubectl cp`-like tools do: a temporary file renamed over the path."""
    temporary = path.with_name(path.name + ".tmp")
    write(temporary, document)
    os.replace(temporary, path)


class Applied:
    """The readings the watch handed on."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def __call__(self, reading: Reading) -> None:
        self.readings.append(reading)

    def routes(self) -> list[str | None]:
        return [r.config.routes[0].name if r.config else None for r in self.readings]


def settle(watch: ConfigWatch) -> bool:
    """Two polls: the first sees the change and waits (the file may still be being
    written), the second reads it; whether it was handed on."""
    assert not asyncio.run(watch.poll())
    return asyncio.run(watch.poll())


def watching(path: Path) -> tuple[ConfigWatch, Applied]:
    applied = Applied()
    watch = ConfigWatch(applied)
    watch.follow(str(path), stamp_of(str(path)))
    return watch, applied


def test_edit_in_place_is_one_reload(tmp_path: Path) -> None:
    path = write(tmp_path / "policy.yaml", policy("a"))
    watch, applied = watching(path)
    assert not asyncio.run(watch.poll())  # nothing changed yet
    write(path, policy("b"))
    write(path, policy("c-longer"))  # two changes within one poll: one reload, the last
    assert settle(watch)
    assert not asyncio.run(watch.poll())
    assert applied.routes() == ["c-longer"]


def test_a_file_still_being_written_is_read_once_it_stays_the_same(tmp_path: Path) -> None:
    """`envsubst < policy.tmpl > policy.yaml` writes in place: a poll between its writes
    sees the first routes only, valid YAML. Read only once the file stayed the same for a
    poll, so the half written policy is never applied."""
    path = write(tmp_path / "policy.yaml", policy("a"))
    watch, applied = watching(path)
    whole = yaml.safe_dump({**policy("first"), "routes": [
        policy("first")["routes"][0], {**policy("second")["routes"][0], "hosts": ["x.test"]}]})
    write(path, whole[:whole.index("- action", whole.index("first"))])  # first route only
    assert load_config(str(path)).routes[0].name == "first"  # (valid on its own)
    assert not asyncio.run(watch.poll())  # seen: waits
    write(path, whole)  # the writer goes on
    assert not asyncio.run(watch.poll())  # changed again: waits again
    assert asyncio.run(watch.poll())
    (reading,) = applied.readings
    assert reading.config is not None
    assert [r.name for r in reading.config.routes] == ["first", "second"]


@pytest.mark.parametrize("kind", ["fifo", "directory", "huge"])
def test_only_a_regular_file_of_bounded_size_is_read(tmp_path: Path, kind: str) -> None:
    """A FIFO would block the read for ever (the lakera.reload command reads on the event
    loop), a huge file would take seconds to parse: refused at once, as a failed reading."""
    path = tmp_path / "policy.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_text("# padding\n" * 200_000)
    reading = config_watch.read(str(path))
    assert reading.config is None and reading.error is not None
    assert reading.error == (f"{path}: not a regular file" if kind != "huge"
                             else f"{path}: larger than 1048576 bytes")


def test_rename_over_with_the_same_size_and_mtime_is_seen(tmp_path: Path) -> None:
    path = write(tmp_path / "policy.yaml", policy("a"))
    watch, applied = watching(path)
    before = os.stat(path)
    replace_atomically(path, policy("b"))  # same length as "a"
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    assert settle(watch)
    assert applied.routes() == ["b"]


def configmap(directory: Path, version: str, document: object) -> None:
    """A Kubernetes ConfigMap volume as the kubelet updates it: the files in a new timestamped
    directory, then a new `..data` symlink renamed over the old one (one atomic swap), the old
    directory removed; `policy.yaml -> ..data/policy.yaml` never changes."""
    target = directory / f"..{version}"
    target.mkdir()
    write(target / "policy.yaml", document)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.symlink(target.name, directory / "..data_tmp")
    os.replace(directory / "..data_tmp", directory / "..data")
    if not (directory / "policy.yaml").is_symlink():
        os.symlink("..data/policy.yaml", directory / "policy.yaml")
    if old:
        for leftover in (directory / old).iterdir():
            leftover.unlink()
        (directory / old).rmdir()


def test_configmap_symlink_swap_is_seen(tmp_path: Path) -> None:
    configmap(tmp_path, "2026_01_01_00_00_00.1", policy("a"))
    path = tmp_path / "policy.yaml"
    assert load_config(str(path)).routes[0].name == "a"
    watch, applied = watching(path)
    configmap(tmp_path, "2026_01_01_00_01_00.2", policy("b"))
    assert settle(watch)
    assert applied.routes() == ["b"]
    assert not asyncio.run(watch.poll())


def test_a_file_that_disappears_is_one_failure_then_picked_up_again(tmp_path: Path) -> None:
    path = write(tmp_path / "policy.yaml", policy("a"))
    watch, applied = watching(path)
    path.unlink()
    assert settle(watch)
    assert not asyncio.run(watch.poll())  # still gone: said once
    assert len(applied.readings) == 1
    assert applied.readings[0].config is None
    assert applied.readings[0].error == f"{path}: cannot be read: No such file or directory"
    write(path, policy("b"))
    assert settle(watch)
    assert applied.routes() == [None, "b"]


@pytest.mark.parametrize(("text", "reason"), [
    ("routes: [unclosed\n", "not valid YAML at line 2, column 1"),
    ("", "the file is empty (being written?)"),
    ("# only a comment\n", "the file is empty (being written?)"),
    (yaml.safe_dump(policy("a", action="maybe")),
     "routes[0] (a): action: 'maybe' is not allowed; must be block or alert"),
])
def test_bad_content_is_a_reading_without_configuration(
        tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path / "policy.yaml", policy("a"))
    watch, applied = watching(path)
    write(path, text)
    assert settle(watch)
    (reading,) = applied.readings
    assert reading.config is None and reading.error is not None
    assert reading.error.startswith(f"{path}: {reason}")


def test_a_file_written_during_the_read_is_read_again(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path / "policy.yaml", policy("a"))
    watch, applied = watching(path)
    real = load_config
    writes = iter([policy("half"), None])

    def load_while_written(*args: Any, **kwargs: Any) -> Any:
        loaded = real(*args, **kwargs)
        document = next(writes)
        if document is not None:  # the writer goes on after the first read
            write(path, policy("whole-and-longer"))
        return loaded

    write(path, policy("half"))
    monkeypatch.setattr(config_watch, "load_config", load_while_written)
    assert not asyncio.run(watch.poll())  # seen; read at the next poll
    assert not asyncio.run(watch.poll())  # read while it changed: not applied
    assert settle(watch)
    assert applied.routes() == ["whole-and-longer"]


def test_the_watch_task_polls_until_stopped(tmp_path: Path) -> None:
    path = write(tmp_path / "policy.yaml", policy("a"))

    async def run() -> list[str | None]:
        applied = Applied()
        watch = ConfigWatch(applied, interval=0.02)
        watch.follow(str(path), stamp_of(str(path)))
        watch.start()
        replace_atomically(path, policy("b"))
        for _ in range(200):
            if applied.readings:
                break
            await asyncio.sleep(0.01)
        watch.stop()
        await asyncio.sleep(0.05)
        replace_atomically(path, policy("c"))
        await asyncio.sleep(0.1)  # stopped: not seen
        return applied.routes()

    assert asyncio.run(run()) == ["b"]


def test_no_file_no_task(tmp_path: Path) -> None:
    async def run() -> bool:
        watch = ConfigWatch(Applied())
        watch.follow(None, None)  # the built-in defaults
        watch.start()
        idle = watch._task is None
        watch.follow(str(write(tmp_path / "p.yaml", policy("a"))), None)  # a file is set
        started = watch._task is not None
        watch.stop()
        return idle and started

    assert asyncio.run(run())


# --- the addon: lakera.reload and what a reading does ------------------------------------------


def reload_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records
            if r.getMessage().startswith("lakera guard reload")]


def test_reload_command_swaps_a_good_file_and_keeps_the_old_on_a_bad_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "policy.yaml", policy("a"))
    caplog.set_level(logging.INFO, "lakera_addon")
    addon = LakeraGuard()
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        tctx.configure(addon, lakera_config=str(path))
        first = addon.config
        write(path, policy("b", action="alert"))
        ok = tctx.master.commands.call("lakera.reload")
        second = addon.config
        write(path, policy("b", action="maybe"))
        failed = tctx.master.commands.call("lakera.reload")
        stats = tctx.master.commands.call("lakera.stats")
    assert ok == "lakera reload: ok, routes: b"
    assert first is not None and second is not None and first is not second
    assert second.routes[0].settings.action == "alert"
    assert failed == (f"lakera reload: failed: lakera_config: {path}: routes[0] (b): action: "
                      f"'maybe' is not allowed; must be block or alert; keeping {path}")
    assert addon.config is second  # the old one stays, the very same object
    assert addon.counters.config_reloads == {"success": 1, "failure": 1}
    assert addon.counters.config_last_reload_ok is False
    assert stats.endswith("; config reloads 1 ok, 1 failed (the last failed)")
    assert reload_records(caplog) == [
        ("INFO", f"lakera guard reloaded: config {path}; routes: b"),
        ("ERROR", f"lakera guard reload failed: lakera_config: {path}: routes[0] (b): action: "
                  f"'maybe' is not allowed; must be block or alert; keeping config {path}")]


def test_reload_refuses_what_start_up_refuses(tmp_path: Path) -> None:
    """A file valid alone that clashes with mitmproxy's options (stream_large_bodies while
    routes are screened) is refused on reload as it is at start-up."""
    path = write(tmp_path / "policy.yaml", policy("a"))
    addon = LakeraGuard()
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        tctx.configure(addon, lakera_config=str(path))
        old = addon.config
        # mitmproxy's option, set without telling the addon (configure would refuse it)
        tctx.options.add_option("stream_large_bodies", str | None, None, "")
        tctx.options._options["stream_large_bodies"].value = "1m"
        write(path, policy("b"))
        result = tctx.master.commands.call("lakera.reload")
    assert result.startswith("lakera reload: failed: stream_large_bodies=1m would let")
    assert result.endswith(f"; keeping {path}")
    assert addon.config is old


@pytest.mark.parametrize("text", ["", "routes: []\n"])
def test_start_up_still_takes_an_empty_file(tmp_path: Path, text: str) -> None:
    """Only a reload refuses an empty file; at start-up it means the built-in defaults."""
    path = write(tmp_path / "policy.yaml", text)
    if text:
        with pytest.raises(Exception, match="non-empty list"):
            load_config(str(path))
    else:
        assert load_config(str(path), {"LAKERA_GUARD_API_KEY": "k"}).routes[0].name == "openai"
        assert config_watch.read(str(path)).error == (
            f"{path}: the file is empty (being written?); it must hold the configuration's keys")


def test_watch_applies_through_the_addon(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """The watch in the running addon: a bad edit logs one line and keeps the policy; the
    fixed file is picked up; a deleted file keeps it too."""
    path = write(tmp_path / "policy.yaml", policy("a"))
    caplog.set_level(logging.INFO, "lakera_addon")

    async def run() -> list[str]:
        addon = LakeraGuard()
        routes = []
        with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
            tctx.configure(addon, lakera_config=str(path))
            addon.running()
            assert addon.watch.active and addon.watch._task is not None
            for step in (lambda: write(path, "routes: [\n"), lambda: None,
                         lambda: replace_atomically(path, policy("b")),
                         lambda: path.unlink(), lambda: None,
                         lambda: write(path, policy("c"))):
                step()
                await addon.watch.poll()  # seen
                await addon.watch.poll()  # read, the stamp unchanged since
                assert addon.config is not None
                routes.append(addon.config.routes[0].name)
            addon.done()
            assert addon.watch._task is None
            await asyncio.sleep(0)
            await addon.lakera.aclose()
            tctx.master._legacy_log_events.uninstall()
        assert addon.counters.config_reloads == {"success": 2, "failure": 2}
        return routes

    assert asyncio.run(run()) == ["a", "a", "b", "b", "b", "c"]
    assert [level for level, _ in reload_records(caplog)] == [
        "ERROR", "INFO", "ERROR", "INFO"]


def test_a_new_lakera_config_option_moves_the_watch(tmp_path: Path) -> None:
    first = write(tmp_path / "one.yaml", policy("one"))
    second = write(tmp_path / "two.yaml", policy("two"))

    async def run() -> tuple[str | None, str | None]:
        addon = LakeraGuard()
        with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
            tctx.configure(addon, lakera_config=str(first))
            addon.running()
            tctx.configure(addon, lakera_config=str(second))
            watched = addon.watch.path
            with pytest.raises(Exception, match="cannot be read"):
                tctx.configure(addon, lakera_config=str(tmp_path / "missing.yaml"))
            still = addon.watch.path
            addon.done()
            await addon.lakera.aclose()
            tctx.master._legacy_log_events.uninstall()
        return watched, still

    assert asyncio.run(run()) == (str(second), str(second))


# --- flows in flight finish under the configuration they started with -------------------------


@pytest.mark.integration
def test_a_flow_in_flight_keeps_its_policy_across_a_reload(tmp_path: Path) -> None:
    """Its answer is screened under the policy its request started with (direction both),
    although the reloaded policy no longer screens answers; the next flow follows the new one."""
    with LakeraGuardStandin(api_key="k") as lakera:
        path = tmp_path / "policy.yaml"

        def lakera_policy(direction: str) -> dict[str, Any]:
            return {"api_key": "k", "lakera_endpoint": f"{lakera.url}/v2/guard",
                    "direction": direction, "routes": [{"name": direction, "hosts": ["*"]}]}

        write(path, lakera_policy("both"))

        def chat_flow() -> http.HTTPFlow:
            body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
            return tflow.tflow(req=http.Request.make(
                "POST", "http://api.test/v1/chat/completions", json.dumps(body)))

        async def answer(addon: LakeraGuard, flow: http.HTTPFlow) -> None:
            flow.response = http.Response.make(
                200, json.dumps({"choices": [{"message": {"content": PII_TRIGGER}}]}),
                {"content-type": "application/json"})
            addon.responseheaders(flow)
            result = addon.response(flow)
            if result is not None:
                await result

        async def run() -> tuple[http.HTTPFlow, http.HTTPFlow, str]:
            addon = LakeraGuard()
            with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
                tctx.configure(addon, lakera_config=str(path))
                in_flight = chat_flow()
                result = addon.request(in_flight)
                if result is not None:
                    await result
                write(path, lakera_policy("input"))
                reloaded = tctx.master.commands.call("lakera.reload")
                await answer(addon, in_flight)  # its answer arrives after the reload
                later = chat_flow()
                result = addon.request(later)
                if result is not None:
                    await result
                await answer(addon, later)
                await addon.lakera.aclose()
                tctx.master._legacy_log_events.uninstall()
            return in_flight, later, reloaded

        in_flight, later, reloaded = asyncio.run(run())
    assert reloaded == "lakera reload: ok, routes: input"
    assert in_flight.response is not None
    assert b"Response blocked by Lakera Guard" in (in_flight.response.content or b"")
    assert in_flight.metadata["lakera"]["route"] == "both"
    assert later.response is not None
    assert PII_TRIGGER.encode() in (later.response.content or b"")  # not screened any more
    assert later.metadata["lakera"]["route"] == "input"
