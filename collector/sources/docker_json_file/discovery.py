"""Discovery (the prospector): which files to follow, and which of their rotated files to read.

Live files are found by the globs, at start, on a directory event (watchdog) and at every
rescan. Only regular files are read: a FIFO, device or socket matching the globs (or named like a
rotated file) is skipped with a warning and never opened blocking; a symlink leading out of the
glob's directory (its part without wildcards) is skipped too, unless
``follow_symlinks_outside_root`` is set. Of a live file's rotated files, :meth:`Discovery.backlog`
says which are history (never read unless ``include_rotated``) and which must be read: those we
were reading, and those rotated while we were down or before we first looked.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import stat
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from collector.component import ErrorCounter
from collector.docker_api import api_socket_missing, own_container_id
from collector.ratelog import RateLimitedLog
from collector.safefiles import UnsafeFile, check_regular, open_regular
from collector.sources.docker_json_file.files import (
    container_id_of,
    fingerprint_path,
    log_size,
    rotated_siblings,
    salt_of,
)
from collector.sources.docker_json_file.state import Registry

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

    from collector.sources.docker_json_file import DockerJsonFileConfig

log = logging.getLogger("collector.sources.docker_json_file")


@dataclass
class Backlog:
    """What to read of a log stream found by a scan, besides its live file."""

    known: bool  # the checkpoints know files of this stream: we followed it before
    rotated: list[str] = field(default_factory=list)  # rotated files to read, oldest first
    present: set[str | None] = field(default_factory=set)  # fingerprints of its files on disk
    oldest: str = ""  # its oldest file on disk


class Discovery:
    """Finds the live files, vets every file before it is opened, and watches the directories."""

    def __init__(self, name: str, config: DockerJsonFileConfig, docker_root: str, errors: ErrorCounter) -> None:
        self.name = name
        self.config = config
        self.docker_root = docker_root
        self._error = errors
        # each glob with its watched directory, resolved (None: symlinks may lead anywhere)
        self._globs = [
            (g, None if config.follow_symlinks_outside_root else os.path.realpath(static_root(g)))
            for g in config.globs(docker_root)
        ]
        self.roots: dict[str, str | None] = {}  # live path -> the directory it must stay in
        self._skipped: dict[str, tuple[int, int]] = {}  # path -> (dev, ino) of what was refused
        self._warn = RateLimitedLog(log)
        self.own_id = "" if config.include_own_container else own_container_id(docker_root)
        self._started = time.monotonic()
        self._observer: BaseObserver | None = None

    def root(self, live: str) -> str | None:
        return self.roots.get(live)

    # -- safe files ---------------------------------------------------------------------------
    def refuse(self, path: str, e: UnsafeFile, st: os.stat_result | None = None) -> None:
        """Skip ``path`` for good (until it changes): counted, and said once per path (at most
        one line per reason per minute)."""
        key = (st.st_dev, st.st_ino) if st is not None else (0, 0)
        if self._skipped.get(path) == key:
            return
        if len(self._skipped) >= 10_000:
            self._skipped.clear()
        self._skipped[path] = key
        self._error(e.reason)
        self._warn(e.reason, "%s: skipping %s", self.name, e.strerror)

    def vet(self, path: str, root: str | None) -> bool:
        """Whether ``path`` may be read: a regular file within ``root`` (checked with stat, which
        never blocks; the open checks the descriptor again)."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        if stat.S_ISDIR(st.st_mode):
            return False
        if self._skipped.get(path) == (st.st_dev, st.st_ino):
            return False
        try:
            check_regular(path, st, root)
        except UnsafeFile as e:
            self.refuse(path, e, st)
            return False
        return True

    def siblings(self, live: str) -> list[tuple[int, str]]:
        """The rotated files of ``live`` that may be read (see :meth:`vet`), oldest first."""
        root = self.roots.get(live)
        return [(n, p) for n, p in rotated_siblings(live) if self.vet(p, root)]

    def fp_of(self, path: str, live: str) -> str | None:
        return fingerprint_path(path, salt_of(live), self.roots.get(live))

    def log_size(self, path: str, live: str) -> int:
        try:
            return log_size(path, self.roots.get(live))
        except OSError:
            return 0

    # -- scans --------------------------------------------------------------------------------
    def glob(self, followed: Collection[str]) -> dict[str, str | None]:
        """Live files matching the globs, each with the directory it must stay in; new ones are
        vetted (regular files within it), those already ``followed`` are not looked at again."""
        found: dict[str, str | None] = {}
        for pattern, root in self._globs:
            for p in glob.glob(pattern):
                if p in found or (self.own_id and container_id_of(p) == self.own_id):
                    continue
                if p in followed or self.vet(p, root):
                    found[p] = root
        return found

    def backlog(self, live: str, first_scan: bool, registry: Registry) -> Backlog:
        """The rotated files of a stream just found that must be read: the ones we were reading,
        the ones created meanwhile (or, for a container born while we run, since we started)."""
        known = registry.knows_stream(live)
        siblings = self.siblings(live)
        fps = {path: self.fp_of(path, live) for _, path in siblings}
        # known: the files rotated after the oldest one we know were created while we were down;
        # older ones were history when we first saw the container, and still are
        history_from = None
        live_fp = self.fp_of(live, live) if known else None
        if known:
            seen = [num for num, path in siblings if fps[path] in registry]
            history_from = max(seen) if seen else (0 if live_fp in registry else None)
        backlog = Backlog(known, present={*fps.values(), live_fp}, oldest=siblings[0][1] if siblings else live)
        for num, path in siblings:
            st = registry.get(fps[path])
            if st is None and not self.config.include_rotated:
                if known and history_from is not None and num > history_from:
                    continue
                if not known and not self._born_while_running(path, first_scan):
                    continue
            if st is not None and (st.done or st.offset >= self.log_size(path, live)):
                continue  # finished before
            backlog.rotated.append(path)
        return backlog

    def start_offset(self, live: str, known: bool, first_scan: bool) -> int | None:
        """Where to start in the live file of a stream just found (None: at its checkpoint, or 0)."""
        if known or self.config.read_from != "end":
            return None
        if not first_scan:
            return 0  # a file born while we run is read from its start
        return line_aligned_end(live, self.roots.get(live))

    def _born_while_running(self, path: str, first_scan: bool) -> bool:
        """A container that appears while we run may rotate before we see it: its rotated files
        written since we started are not history, they are its first lines."""
        if first_scan:
            return False
        # when we started, on the wall clock as it reads now: a step of the clock (NTP) since the
        # start moves both, so a file written after the start is never taken for history
        started = time.time() - (time.monotonic() - self._started)
        try:
            return os.stat(path).st_mtime >= started
        except OSError:
            return False

    def say_what_is_followed(self, followed: int) -> None:
        """At start: how many files, or why none (an unreadable Docker directory is the usual one)."""
        if followed:
            log.info("%s: following %d file(s)", self.name, followed)
            return
        globs = self.config.globs(self.docker_root)
        for pattern in globs:
            root = static_root(pattern)
            if os.path.isdir(root) and not os.access(root, os.R_OK | os.X_OK):
                self._error("unreadable_directory")
                log.error(
                    "%s: cannot read %s as uid %d: Docker keeps it for root. Run as root (in a container: "
                    "--user 0 --cap-drop ALL), or give --paths files you can read",
                    self.name,
                    root,
                    os.geteuid(),
                )
                return
        roots = [static_root(p) for p in globs]
        if not any(os.path.isdir(r) for r in roots) and self.config.format == "cri":
            log.warning("%s: %s does not exist (yet); waiting for it to appear", self.name, " ".join(roots))
            return
        if not any(os.path.isdir(r) for r in roots):
            # the first command on a host without Docker (or with its data root elsewhere)
            socket = api_socket_missing(None)
            log.warning(
                "%s: no Docker data root here (%s does not exist)%s. Give --docker-root DIR (Docker's data root), "
                "--paths GLOB (json-file logs elsewhere) or DOCKER_HOST (the API); waiting for it to appear",
                self.name,
                " ".join(roots),
                f" and no Docker socket at {socket}" if socket else "",
            )
            return
        log.warning("%s: no file matches %s yet; waiting for containers", self.name, " ".join(globs))

    # -- watching -----------------------------------------------------------------------------
    def start_watching(self, changed: Callable[[tuple[str, ...]], None]) -> None:
        """Call ``changed`` (on the running loop) with the paths of every file or directory
        created, deleted or moved under the globs' directories."""
        try:
            from watchdog.events import (  # noqa: PLC0415
                DirCreatedEvent,
                DirDeletedEvent,
                DirMovedEvent,
                FileCreatedEvent,
                FileDeletedEvent,
                FileMovedEvent,
                FileSystemEvent,
                FileSystemEventHandler,
            )
            from watchdog.observers import Observer  # noqa: PLC0415
        except ImportError:  # pragma: no cover - watchdog is a dependency
            return
        loop = asyncio.get_running_loop()

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                paths = (os.fsdecode(event.src_path), os.fsdecode(event.dest_path))
                loop.call_soon_threadsafe(changed, paths)

        roots = {static_root(p) for p in self.config.globs(self.docker_root)}
        obs = Observer()
        kinds = [DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent]
        for root in sorted(roots):
            if os.path.isdir(root):
                try:
                    obs.schedule(Handler(), root, recursive=True, event_filter=kinds)
                except OSError as e:
                    log.warning(
                        "%s: cannot watch %s (%s); relying on rescans every %ss",
                        self.name,
                        root,
                        e,
                        self.config.rescan_interval,
                    )
        obs.daemon = True
        obs.start()
        self._observer = obs

    async def stop_watching(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join, 5)
            self._observer = None


def static_root(pattern: str) -> str:
    """The deepest directory of a glob without wildcards (what to watch)."""
    parts = Path(pattern).parts
    root: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        root.append(part)
    return str(Path(*root)) if root else "."


def line_aligned_end(path: str, root: str | None) -> int | None:
    """The offset just after the last complete line of ``path`` (for ``read_from: end``)."""
    try:
        with open(open_regular(path, root), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            back = min(size, 1 << 20)
            f.seek(size - back)
            tail = f.read(back)
    except OSError:
        return None
    nl = tail.rfind(b"\n")
    return size - back + nl + 1 if nl >= 0 else size - back
