"""Reloading the configuration file while the proxy runs: the file watch behind it, and the
reading both the watch and the `lakera.reload` command use (the addon applies it,
guard_addon.py).

The watch polls the file every second, as mitmproxy's own script reloader does
(mitmproxy/addons/script.py), and compares (st_mtime_ns, st_size, st_ino, st_dev) of
`os.stat`, which follows symlinks: an edit in place, an editor's write-to-a-temporary-file and
rename, and a Kubernetes ConfigMap update (a new timestamped directory, then an atomic swap of
the `..data` symlink the mounted file points through) all change it. A changed file is read
when its stamp has stayed the same for one more poll (a file still being written in place,
`>` or `envsubst > policy.yaml`, would otherwise be read half written: its first lines are
often valid YAML with fewer routes), and validated in a thread, off mitmproxy's event loop;
changes within one poll are one reload. Only a regular file of at most MAX_CONFIG_BYTES is
read (configuration.load_config): a FIFO, a device or a huge file is a failed reload, never a
read that blocks.
A file that disappears is one failed reload (logged once: its stamp stays "missing"), and is
picked up when it reappears.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy.utils import asyncio_utils

from lakera_addon.configuration import Config
from lakera_addon.configuration import ConfigError
from lakera_addon.configuration import load_config

logger = logging.getLogger("lakera_addon")

POLL_SECONDS = 1.0
# Not "lakera …": the test observer counts the addon's per-flow tasks by that prefix.
TASK_NAME = "config watch (lakera_config)"


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What tells one version of a file from another without reading it."""

    mtime_ns: int
    size: int
    inode: int
    device: int


def stamp_of(path: str) -> FileStamp | None:
    """The stamp of the file `path` names, through symlinks; None if it cannot be seen
    (missing, a dangling symlink, a directory that cannot be searched)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStamp(st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def changed(seen: FileStamp | None, now: FileStamp | None) -> bool:
    """Whether the file is another one, or was written, since it was `seen` (None: missing).
    A new inode or device alone counts (a rename over the file, a swapped symlink: the new
    file may have the old one's size and even its mtime)."""
    return now != seen


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of the configuration file: its stamp just before the read, and the
    validated configuration or why it cannot be used (a `ConfigError` line: file, key,
    value)."""

    path: str | None  # None: the built-in defaults
    stamp: FileStamp | None
    config: Config | None
    error: str | None
    settled: bool = True  # the file did not change during the read


def read(path: str | None) -> Reading:
    """Read and validate the file (blocking: the watch runs it in a thread). An empty file is
    refused here, unlike at start-up: a file caught between its truncation and its new
    content is empty, and the built-in defaults it would mean guard other hosts."""
    before = stamp_of(path) if path else None
    try:
        config, error = load_config(path, allow_empty=False), None
    except ConfigError as e:
        config, error = None, str(e)
    after = stamp_of(path) if path else None
    return Reading(path, before, config, error, settled=before == after)


class ConfigWatch:
    """Polls the configuration file in a task of its own while mitmproxy runs; each changed
    file, read whole without a change during the read, goes to `apply` on the event loop."""

    def __init__(
        self, apply: Callable[[Reading], object], interval: float = POLL_SECONDS
    ) -> None:
        self.apply = apply
        self.interval = interval
        self.path: str | None = None
        self.seen: FileStamp | None = None
        self.active = False  # between start() and stop(): mitmproxy is running
        self._task: asyncio.Task[None] | None = None
        self._generation = 0  # bumped by follow(): a reading still in a thread is stale
        self._pending: tuple[FileStamp | None] | None = None  # a change seen, not yet read

    def follow(self, path: str | None, stamp: FileStamp | None) -> None:
        """The file whose reading was just applied (the option, a reload, a refused reload)
        and its stamp then: later polls compare with it."""
        self.path, self.seen = path, stamp
        self._pending = None
        self._generation += 1
        if self.active:
            self._ensure_task()

    def start(self) -> None:
        """Start watching (mitmproxy's `running`; needs the running event loop)."""
        self.active = True
        self._ensure_task()

    def stop(self) -> None:
        self.active = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    def _ensure_task(self) -> None:
        if not self.path:  # the built-in defaults: no file to watch
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
        elif self._task is None or self._task.done():
            self._task = asyncio_utils.create_task(self._run(), name=TASK_NAME, keep_ref=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception as e:  # a bug here must not end the watch silently
                logger.error("lakera_addon internal error watching lakera_config: %s",
                             type(e).__name__, exc_info=e)

    async def poll(self) -> bool:
        """One look at the file; whether a new reading went to `apply`."""
        path = self.path
        now = stamp_of(path) if path else None
        if not path or not changed(self.seen, now):
            self._pending = None
            return False
        if self._pending != (now,):  # changed since the last poll: maybe still being written
            self._pending = (now,)
            return False
        generation = self._generation
        reading = await asyncio.to_thread(read, path)
        if generation != self._generation or not reading.settled or reading.stamp != now:
            # superseded meanwhile (lakera.reload, a new lakera_config), or written to during
            # the read: the next polls look again
            return False
        self.follow(path, reading.stamp)
        self.apply(reading)
        return True
