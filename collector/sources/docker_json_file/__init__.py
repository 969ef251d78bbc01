"""Source ``docker_json_file``: follow Docker's json-file logs.

Follows every file matching ``paths`` (default: every container under
``/var/lib/docker/containers``), surviving rotation, truncation and restarts:

* new files and containers are found within a second (watchdog on the directories, plus a
  periodic rescan); growth is found by ``fstat`` polling with an adaptive interval (busy files
  are read back to back, idle ones are looked at every ``max_poll_interval``), which costs far
  less than an inotify event per written line;
* rotation (Docker renames ``x-json.log`` to ``x-json.log.1``): the old file is read to its end
  through the descriptor we hold, rotated files we never saw are read oldest first, then the
  new live file; deleting a file we hold open loses nothing;
* truncation (``copytruncate``): reading restarts at 0 and the event is reported;
* only regular files are read: a FIFO, device or socket matching the globs (or named like a
  rotated file) is skipped with a warning and never opened blocking; a symlink leading out of
  the glob's directory (its part without wildcards) is skipped too, unless
  ``follow_symlinks_outside_root`` is set;
* restarts: reading resumes at the acknowledged offset of each file (by fingerprint, whatever
  its current name); rotated files created while we were down are read; files that vanished
  before they were finished are reported with the byte range lost.

Checkpoints only move over acknowledged records (see acks.py); record ids are
``<fingerprint>-<offset>``, stable across replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from collector.acks import OrderedAcks
from collector.codecs.docker_json import DockerLines, Parsed
from collector.component import ComponentConfig, Emitter, Source
from collector.docker_api import DockerMetadataService, api_socket_missing, own_container_id
from collector.event import Batch, Fields
from collector.ratelog import RateLimitedLog
from collector.safefiles import UnsafeFile, check_regular, open_regular
from collector.sources.docker_json_file.files import (
    OpenFile,
    container_id_of,
    fingerprint,
    fingerprint_path,
    first_line_time,
    log_size,
    new_reader,
    pod_of,
    rotated_siblings,
    salt_of,
    same_file,
)

log = logging.getLogger("collector.sources.docker_json_file")

DEFAULT_DOCKER_ROOT = "/var/lib/docker"
DEFAULT_CRI_GLOB = "/var/log/pods/*/*/*.log"
# A file written in the last ROTATION_CHECK seconds is checked for rotation every time it has no
# more to read: Docker rotates busy files, and watchdog's events come up to 0.5 s late (it holds
# moves back to pair them), long enough for a tight max-file to delete a file unseen. Quiet files
# are looked at on an event or every ROTATION_CHECK seconds (1000 idle containers: no stat storm).
ROTATION_CHECK = 5.0


class DockerJsonFileConfig(ComponentConfig):
    type: Literal["docker_json_file"]
    paths: list[str] | None = Field(
        None,
        description="Glob patterns of the logs; default `<docker_root>/containers/*/*-json.log`, or "
        "`/var/log/pods/*/*/*.log` with `format: cri`.",
    )
    format: Literal["json-file", "cri"] = Field(
        "json-file",
        description="How the files are written: `json-file` (Docker's json-file driver) or `cri` (containerd "
        "and CRI-O under kubelet: `<time> <stream> <P|F> <message>` lines, `/var/log/pods/<namespace>_<pod>_"
        "<uid>/<container>/<restart>.log`, whose path gives the `kubernetes.*` and `container.name` fields).",
    )
    read_from: Literal["beginning", "end"] = Field(
        "beginning", description="Where to start in a file seen for the first time."
    )
    include_rotated: bool = Field(
        False,
        description="Also read the rotated files (`-json.log.1` ...) of a container seen for the "
        "first time (backfill). Rotated files created while the collector was down are read anyway.",
    )
    tags: list[str] = Field(default_factory=list, description="Static tags added to every record.")
    max_record_bytes: int = Field(
        1 << 20, ge=1024, description="A rejoined line longer than this is truncated and flagged."
    )
    read_bytes: int = Field(256 << 10, ge=4096, description="Bytes read from one file at a time.")
    max_line_bytes: int = Field(
        8 << 20, ge=65536, description="A 'line' longer than this without a newline is set aside."
    )
    min_poll_interval: float = Field(0.05, gt=0, description="Seconds between looks at a busy file.")
    max_poll_interval: float = Field(0.5, gt=0, description="Seconds between looks at an idle file.")
    rescan_interval: float = Field(10.0, gt=0, description="Seconds between full rescans of the globs.")
    follow_symlinks_outside_root: bool = Field(
        False,
        description="Read files whose path leads, through symlinks, out of the directory the glob "
        "watches (its part without wildcards). Off: such files are skipped with a warning.",
    )
    max_field_bytes: int = Field(
        4096,
        ge=64,
        description="A value of Docker's `attrs` (labels and env the log driver copies into every "
        'line) longer than this is cut to it; the record gets `log.flags: ["fields_truncated"]`.',
    )
    rotation_grace: float = Field(
        1.0,
        ge=0,
        description="With `format: cri`: seconds a renamed (rotated) log is still read after its last line "
        "before it is closed. kubelet renames the file, then asks the runtime to reopen it; containerd and "
        "CRI-O write to the renamed file until then (Docker never writes to a renamed json-file).",
    )
    include_own_container: bool = Field(
        False,
        description="Also read the log of the container the collector runs in. Off: a collector in a "
        "container never tails itself (each line it logs about a record would become a record).",
    )

    @field_validator("paths")
    @classmethod
    def _non_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("give at least one glob, or leave `paths` out for the default")
        return v

    def globs(self, docker_root: str = DEFAULT_DOCKER_ROOT) -> list[str]:
        """``paths``, or the default: under the pipeline's ``docker_root``, or kubelet's for CRI."""
        if self.paths:
            return self.paths
        if self.format == "cri":
            return [DEFAULT_CRI_GLOB]
        return [os.path.join(docker_root, "containers", "*", "*-json.log")]


class LogStream:
    """Everything about one live log path: the file being read and rotated ones to finish."""

    __slots__ = (
        "active",
        "checked",
        "current",
        "finished",
        "interval",
        "live",
        "meta",
        "next_poll",
        "queue",
        "renamed",
        "siblings_dirty",
        "since",
        "tag",
    )

    def __init__(self, live: str, meta: Fields, tag: str) -> None:
        self.live = live
        self.current: OpenFile | None = None
        self.finished: OpenFile | None = None  # the last file read to its end after a rename (closed)
        self.queue: list[OpenFile] = []  # rotated files to read before ``current``
        self.meta = meta
        self.tag = tag
        self.next_poll = 0.0
        self.interval = 0.0
        self.since = time.time()  # rotated files older than this were there before we followed
        self.siblings_dirty = False  # something was created/moved beside the live file
        self.renamed = True  # a directory event: look whether the live path is still our file
        self.checked = 0.0  # when we last looked (also done every ROTATION_CHECK seconds)
        self.active = 0.0  # when the live file last had something to read

    def files(self) -> list[OpenFile]:
        return [*self.queue, *([self.current] if self.current else [])]


class DockerJsonFileSource(Source):
    config: DockerJsonFileConfig

    def __init__(self, name: str, config: DockerJsonFileConfig, ctx: Any) -> None:
        super().__init__(name, config, ctx)
        self.state = ctx.checkpoints.namespace(name)  # fp -> {live, path, offset, size}
        self.streams: dict[str, LogStream] = {}
        self._wake = asyncio.Event()
        self._rescan_due = 0.0
        self._observer: Any = None
        self._started = time.monotonic()
        t = ctx.telemetry
        self._received = t.received.labels(name)
        self._errors = t.errors
        self.lost_bytes = 0
        self._fully_read: set[str] = set()  # fingerprints of files read to their end
        # each glob with its watched directory, resolved (None: symlinks may lead anywhere)
        self._globs = [
            (g, None if config.follow_symlinks_outside_root else os.path.realpath(_static_root(g)))
            for g in config.globs(ctx.docker_root)
        ]
        self._root: dict[str, str | None] = {}  # live path -> the directory it must stay in
        self._skipped: dict[str, tuple[int, int]] = {}  # path -> (dev, ino) of what was refused
        self._warn = RateLimitedLog(log)
        self.own_id = "" if config.include_own_container else own_container_id(ctx.docker_root)
        self.bytes_read = 0  # for the progress of a --once run
        ctx.telemetry.register_lag(name, self.lag)

    # -- helpers --------------------------------------------------------------------------
    def _meta_for(self, live: str) -> tuple[Fields, str]:
        data: dict[str, Any] = {"host": {"name": self.ctx.hostname}}
        if self.config.format == "cri":
            pod = pod_of(live)
            tag = os.path.basename(live)
            if pod is not None:
                data |= pod
                k = pod["kubernetes"]
                tag = f"{k['namespace']}/{k['pod']['name']}/{k['container']['name']}"
        else:
            cid = container_id_of(live)
            if cid:
                data["container"] = {"id": cid}
            tag = cid[:12] if cid else os.path.basename(live)
        if self.config.tags:
            data["tags"] = list(self.config.tags)
        return Fields(data), tag

    def _error(self, reason: str, n: float = 1) -> None:
        self._errors.labels(self.name, reason).inc(n)

    def _refuse(self, path: str, e: UnsafeFile, st: os.stat_result | None = None) -> None:
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

    def _vet(self, path: str, root: str | None) -> bool:
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
            self._refuse(path, e, st)
            return False
        return True

    def _siblings(self, live: str) -> list[tuple[int, str]]:
        """The rotated files of ``live`` that may be read (see :meth:`_vet`)."""
        root = self._root.get(live)
        return [(n, p) for n, p in rotated_siblings(live) if self._vet(p, root)]

    def _checkpoint(self, of: OpenFile, committed: int) -> None:
        if of.fp is not None:
            self._commit(of.fp, of.live, of.path, committed, of.size, of.last_time)

    def _commit(self, fp: str, live: str, path: str, committed: int, size: int = 0, last_time: str = "") -> None:
        st = self.state.get(fp)
        if st is None:
            st = self.state[fp] = {"live": live, "path": path}
        st["offset"] = committed
        st["size"] = max(size, committed, int(st.get("size", 0)))
        if last_time:
            st["last_time"] = last_time
        self.ctx.checkpoints.touch()

    def _register(self, of: OpenFile) -> None:
        """Start tracking acknowledgements of ``of`` and record it in the checkpoints."""
        of.acks.on_commit = lambda pos, of=of: self._checkpoint(of, pos)
        if of.fp is not None and of.fp not in self.state:
            self.state[of.fp] = {"live": of.live, "path": of.path, "offset": of.offset, "size": of.size}
            self.ctx.checkpoints.touch()

    def _open(self, path: str, live: str, offset: int | None) -> OpenFile | None:
        """Open ``path``; resume at its checkpoint when its fingerprint is known."""
        try:
            of = OpenFile.open(
                path,
                live,
                0,
                self.config.max_record_bytes,
                self._root.get(live),
                self.config.max_field_bytes,
                self.config.format,
            )
        except UnsafeFile as e:
            self._refuse(path, e)
            return None
        except OSError as e:
            if not isinstance(e, FileNotFoundError):
                log.error("%s: cannot open %s: %s", self.name, path, e)
                self._error("open_failed")
            return None
        known = self.state.get(of.fp) if of.fp else None
        if known is not None:
            start = int(known.get("offset", 0))
        elif offset is not None:
            start = offset
        else:
            start = 0
        if start > of.size:
            log.warning(
                "%s: %s is shorter (%d) than its checkpoint (%d); reading from 0", self.name, path, of.size, start
            )
            start = 0
        of.offset = start
        of.acks.reset(start)
        self._register(of)
        return of

    # -- discovery --------------------------------------------------------------------------
    def _glob(self) -> dict[str, str | None]:
        """Live files matching the globs, each with the directory it must stay in; new ones are
        vetted (regular files within it), those already followed are not looked at again."""
        found: dict[str, str | None] = {}
        for pattern, root in self._globs:
            for p in glob.glob(pattern):
                if p in found or (self.own_id and container_id_of(p) == self.own_id):
                    continue
                if p in self.streams or self._vet(p, root):
                    found[p] = root
        return found

    def _known_stream(self, live: str) -> bool:
        return any(st.get("live") == live for st in self.state.values())

    def _add_stream(self, live: str, first_scan: bool) -> None:
        meta, tag = self._meta_for(live)
        s = LogStream(live, meta, tag)
        known = self._known_stream(live)
        # rotated files: finish the ones we were reading, read the ones created meanwhile
        siblings = self._siblings(live)
        fps = {path: self._fp_of(path, live) for _, path in siblings}
        # known: the files rotated after the oldest one we know were created while we were down;
        # older ones were history when we first saw the container, and still are
        history_from = None
        live_fp = self._fp_of(live, live) if known else None
        if known:
            seen = [num for num, path in siblings if fps[path] in self.state]
            history_from = max(seen) if seen else (0 if live_fp in self.state else None)
        for num, path in siblings:
            fp = fps[path]
            st = self.state.get(fp) if fp else None
            if st is None and not self.config.include_rotated:
                if known and history_from is not None and num > history_from:
                    continue
                if not known and not self._born_while_running(path, first_scan):
                    continue
            if st is not None and (st.get("done") or int(st.get("offset", 0)) >= self._log_size(path, live)):
                continue  # finished before
            of = self._open(path, live, 0)
            if of is not None:
                of.rotated = True
                s.queue.append(of)
        if known:
            present = {*fps.values(), live_fp}
            oldest = siblings[0][1] if siblings else live
            self._report_vanished(live, present | {of.fp for of in s.queue}, oldest)
        start: int | None = None
        if not known and self.config.read_from == "end" and not first_scan:
            start = 0  # a file born while we run is read from its start
        elif not known and self.config.read_from == "end":
            start = _line_aligned_end(live, self._root.get(live))
        s.current = self._open(live, live, start)
        self.streams[live] = s

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

    def _fp_of(self, path: str, live: str) -> str | None:
        return fingerprint_path(path, salt_of(live), self._root.get(live))

    def _log_size(self, path: str, live: str) -> int:
        try:
            return log_size(path, self._root.get(live))
        except OSError:
            return 0

    def _report_vanished(self, live: str, present: set[str | None], oldest: str | None = None) -> None:
        """Files of ``live`` in the checkpoints that no longer exist: report what was lost.

        ``oldest`` is the oldest file still there: what was logged between the end of what we
        read and its first line was rotated away and deleted unread.
        """
        for fp, st in list(self.state.items()):
            if st.get("live") != live or fp in present:
                continue
            offset, size = int(st.get("offset", 0)), int(st.get("size", 0))
            if fp in self._fully_read or st.get("done"):  # read to its end: delivery may be in flight
                if offset >= size:
                    del self.state[fp]
                    self._fully_read.discard(fp)
                    self.ctx.checkpoints.touch()
                continue
            cid = container_id_of(live)[:12] or "-"
            since = st.get("last_time") or "?"
            until = (first_line_time(oldest, self._root.get(live)) if oldest else None) or "?"
            if offset < size:
                lost = size - offset
                self.lost_bytes += lost
                self._error("file_vanished_unread", lost)
                log.error(
                    "%s: LOST DATA: %s (container %s) was rotated away and deleted before it was read: "
                    "bytes %d-%d (%d bytes) never delivered, and whatever was logged after it until %s",
                    self.name,
                    st.get("path"),
                    cid,
                    offset,
                    size,
                    lost,
                    until,
                )
            else:
                self._error("file_vanished")
                log.warning(
                    "%s: POSSIBLY LOST DATA: %s (container %s), read to its end (offset %d) before the collector "
                    "stopped, was rotated away and deleted meanwhile: lines logged after %s and before %s "
                    "(the oldest file left) were never read",
                    self.name,
                    st.get("path"),
                    cid,
                    offset,
                    since,
                    until,
                )
            del self.state[fp]
            self.ctx.checkpoints.touch()

    # -- reports ------------------------------------------------------------------------------
    def lag(self) -> list[tuple[str, str, int]]:
        """Per container (its name when the pipeline's metadata knows it, else its short id or the
        file's name): bytes in its files not yet acknowledged (collector_checkpoint_lag_bytes)."""
        rows: dict[tuple[str, str], int] = {}
        docker = self.ctx.service(DockerMetadataService)
        for s in list(self.streams.values()):
            n = 0
            for of in s.files():
                if of.fd < 0:
                    continue
                try:
                    size = os.fstat(of.fd).st_size
                except OSError:
                    continue
                n += max(0, size - int(of.acks.committed))
            cid = container_id_of(s.live)
            key = (docker.container_name(cid) if cid else "") or s.tag, cid[:12]
            rows[key] = rows.get(key, 0) + n
        return [(name, cid, n) for (name, cid), n in rows.items()]

    def progress(self) -> tuple[int, int]:
        """(bytes read, bytes read + bytes still to read in the files followed)."""
        left = 0
        for s in list(self.streams.values()):
            for of in s.files():
                left += max(0, of.size - of.offset)
        return self.bytes_read, self.bytes_read + left

    def ready(self) -> tuple[bool, str]:
        return self.is_ready, f"following {len(self.streams)} file(s)" if self.is_ready else "starting"

    def rescan(self, first: bool = False) -> None:
        found = self._glob()
        for live in sorted(found.keys() - self.streams.keys()):
            self._root[live] = found[live]
            if not first:
                log.info("%s: following %s", self.name, live)
            self._add_stream(live, first)
            self._wake.set()
        if first:
            self._say_what_is_followed()

    def _say_what_is_followed(self) -> None:
        """At start: how many files, or why none (an unreadable Docker directory is the usual one)."""
        if self.streams:
            log.info("%s: following %d file(s)", self.name, len(self.streams))
            return
        for pattern in self.config.globs(self.ctx.docker_root):
            root = _static_root(pattern)
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
        roots = [_static_root(p) for p in self.config.globs(self.ctx.docker_root)]
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
        log.warning(
            "%s: no file matches %s yet; waiting for containers",
            self.name,
            " ".join(self.config.globs(self.ctx.docker_root)),
        )

    def _start_watching(self) -> None:
        try:
            from watchdog.events import (  # noqa: PLC0415
                DirCreatedEvent,
                DirDeletedEvent,
                DirMovedEvent,
                FileCreatedEvent,
                FileDeletedEvent,
                FileMovedEvent,
                FileSystemEventHandler,
            )
            from watchdog.observers import Observer  # noqa: PLC0415
        except ImportError:  # pragma: no cover - watchdog is a dependency
            return
        loop = asyncio.get_running_loop()
        source = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                paths = (getattr(event, "src_path", ""), getattr(event, "dest_path", ""))
                loop.call_soon_threadsafe(source._structure_changed, paths)

        roots = {_static_root(p) for p in self.config.globs(self.ctx.docker_root)}
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

    def _structure_changed(self, paths: tuple[str, ...] = ()) -> None:
        self._rescan_due = 0.0
        dirs = {os.path.dirname(os.fsdecode(p)) for p in paths if p}
        for s in self.streams.values():
            if os.path.dirname(s.live) in dirs:
                s.siblings_dirty = True
                s.renamed = True
                s.next_poll = 0.0
        self._wake.set()

    def _check_siblings(self, s: LogStream) -> None:
        """Rotated files that appeared beside the live file while it kept its inode (copytruncate
        copies): read the ones we never saw. Renames (Docker's rotation) are handled at the end of
        the renamed file, in order, by ``_catch_up_rotations``."""
        s.siblings_dirty = False
        cur = s.current
        if cur is None or not same_file(s.live, cur.dev, cur.ino):
            return
        with contextlib.suppress(OSError):  # a truncation first: its copy is older than the others
            self._check_truncation(s, cur, os.fstat(cur.fd).st_size)
        open_fps = {of.fp for of in s.files()}
        # a copy of what the live file still holds (copied, not yet truncated) is not new: once the
        # truncation is seen, its rest is read from the copy (``_truncated``)
        with contextlib.suppress(OSError):
            open_fps.add(fingerprint(cur.fd, cur.salt()))
        for _, path in self._siblings(s.live):
            try:
                if os.stat(path).st_mtime < s.since:
                    continue
            except OSError:
                continue
            fp = self._fp_of(path, s.live)
            if fp not in open_fps:
                self._queue_unseen(s, path, fp)

    # -- reading ------------------------------------------------------------------------------
    def _to_batch(self, s: LogStream, of: OpenFile, parsed: Parsed, end: int) -> Batch | None:
        for bad in parsed.bad:
            self.ctx.deadletter.raw(self.name, bad.reason, bad.raw, path=of.path, offset=bad.offset)
        n = len(parsed.messages)
        commit = of.reader.safe_offset(end)
        if n == 0:
            if commit > of.acks.committed:
                of.acks.track(commit).done()  # only bad/blank lines: nothing to wait for
            return None
        fp = of.fp
        of.last_time = parsed.times[-1]
        ids = [f"{fp}-{o}" for o in parsed.offsets]
        self._received.inc(n)
        return Batch(
            None,
            s.meta,
            ids=ids,
            ack=of.acks.track(commit),
            tag=s.tag,
            source=self.name,
            nbytes=max(end - of.offset, 64 * n),
            columns=DockerLines(parsed, of.path),
        )

    async def _read_file(self, s: LogStream, of: OpenFile, out: Emitter) -> bool:
        """One read of ``of``; True when it produced data (more may follow)."""
        cfg = self.config
        try:
            size = os.fstat(of.fd).st_size
        except OSError:
            return False
        if self._check_truncation(s, of, size):
            return True  # a copy to finish may have been queued: it goes first
        of.size = size
        if size <= of.offset:
            return False
        parsed, end, skipped = of.read(cfg.read_bytes, cfg.max_line_bytes)
        if skipped is not None:
            self.ctx.deadletter.raw(
                self.name, f"line longer than {cfg.max_line_bytes} bytes", skipped, path=of.path, offset=of.offset
            )
        if end == of.offset:
            return False
        batch = self._to_batch(s, of, parsed, end)
        self.bytes_read += end - of.offset
        of.offset = end
        if batch is not None:
            await out.emit(batch)
        return True

    def _check_truncation(self, s: LogStream, of: OpenFile, size: int) -> bool:
        """Shorter than what we read, or rewritten from the start (copytruncate then new lines)?"""
        if size < of.offset or (
            size > of.offset and of.offset and of.fp is not None and fingerprint(of.fd, of.salt()) != of.fp
        ):
            self._truncated(s, of, size)
            return True
        return False

    def _truncated(self, s: LogStream, of: OpenFile, size: int) -> None:
        """``of`` was emptied in place (copytruncate). What we had not read yet may still be in
        the copy (``x.log.1``, same first line): read its rest first, then the file from 0."""
        cfg = self.config
        old_fp, read_to, old_acks = of.fp, of.offset, of.acks
        if old_fp is not None:  # in-flight batches of the old content still commit its entry
            old_acks.on_commit = lambda pos, fp=old_fp, live=of.live, path=of.path: self._commit(fp, live, path, pos)
        copy = next(
            (p for _, p in self._siblings(s.live) if old_fp is not None and self._fp_of(p, s.live) == old_fp), None
        )
        self._error("truncated")
        if copy is not None:
            log.info(
                "%s: %s was copied to %s and truncated: reading the copy from offset %d, then the file anew",
                self.name,
                of.path,
                copy,
                read_to,
            )
            try:
                cf = OpenFile.open(
                    copy, s.live, read_to, cfg.max_record_bytes, self._root.get(s.live), cfg.max_field_bytes, cfg.format
                )
            except OSError:
                cf = None
            if cf is not None:
                cf.acks, cf.reader, cf.rotated = old_acks, of.reader, True
                s.queue.append(cf)
        else:
            log.warning(
                "%s: %s was truncated (size %d, we had read %d bytes): reading it again from the start; lines "
                "written after our last read and before the truncation are lost (no copy of it was found)",
                self.name,
                of.path,
                size,
                read_to,
            )
        of.reader = new_reader(cfg.format, cfg.max_record_bytes, cfg.max_field_bytes)
        of.offset = 0
        of.fp = fingerprint(of.fd, of.salt())
        of.acks = OrderedAcks(0)
        self._register(of)

    def _finish(self, s: LogStream, of: OpenFile) -> Batch | None:
        """``of`` is complete (rotated away and read to its end): flush what it holds, close it."""
        batch = None
        if of.fp is not None:
            self._fully_read.add(of.fp)
            if of.fp in self.state:
                self.state[of.fp]["done"] = True
                self.ctx.checkpoints.touch()
        if of.reader.pending:
            parsed = Parsed()
            of.reader.flush(parsed)
            batch = self._to_batch(s, of, parsed, of.offset)
        of.close()
        return batch

    async def _poll_stream(self, s: LogStream, out: Emitter) -> bool:
        """Read what is new in the stream; True when data was read."""
        if s.siblings_dirty:
            self._check_siblings(s)
        # rotated files first, oldest first
        for of in list(s.queue):
            if await self._read_file(s, of, out):
                if of.quiet_until:
                    of.quiet_until = time.monotonic() + self.config.rotation_grace
                return True
            if of.quiet_until > time.monotonic() and not self.ctx.once:
                continue  # renamed a moment ago (CRI): its writer may still add lines; read the rest meanwhile
            s.queue.remove(of)
            if (b := self._finish(s, of)) is not None:
                await out.emit(b)
        cur = s.current
        if cur is None:
            if os.path.exists(s.live):
                s.current = self._open(s.live, s.live, 0)
                if s.current is not None and s.finished is not None:
                    # the live path was missing after a rotation: what was rotated meanwhile is
                    # newer than the file we finished, and goes first
                    self._catch_up_rotations(s, s.finished, opened=s.current)
                    if s.queue:
                        return True
                return s.current is not None and await self._read_file(s, s.current, out)
            return False
        now = time.monotonic()
        if await self._read_file(s, cur, out):
            s.active = now
            return True
        # at the end of the live file: was it rotated, replaced or removed?
        if not (s.renamed or self.ctx.once or now - s.checked >= ROTATION_CHECK or now - s.active < ROTATION_CHECK):
            return False
        s.renamed, s.checked = False, now
        same = same_file(s.live, cur.dev, cur.ino)
        if same:
            return False
        if await self._read_file(s, cur, out):  # last words written before the rename
            return True
        s.current = None
        if self.config.format == "cri" and self.config.rotation_grace > 0:
            # containerd/CRI-O write to the renamed file until kubelet's reopen call reaches them:
            # finish it like a rotated file, once it stayed quiet for ``rotation_grace``
            cur.rotated = True
            cur.quiet_until = now + self.config.rotation_grace
            s.queue.insert(0, cur)
        elif (b := self._finish(s, cur)) is not None:
            await out.emit(b)
        if same is None and not os.path.isdir(os.path.dirname(s.live)):
            log.info("%s: %s is gone (container removed); released", self.name, s.live)
            return False
        self._catch_up_rotations(s, cur)
        s.finished = cur
        if os.path.exists(s.live):
            s.current = self._open(s.live, s.live, 0)
            if s.current is not None:
                # the writer goes on while we look: a rotation between the look above and this
                # open left a file newer than ``cur`` that is not the one just opened
                self._catch_up_rotations(s, cur, opened=s.current)
        return True

    def _catch_up_rotations(self, s: LogStream, finished: OpenFile, opened: OpenFile | None = None) -> None:
        """Rotated files we never opened that are newer than ``finished``: read them next
        (``opened``: the live file just opened, not one of them; nothing is reported again)."""
        siblings = self._siblings(s.live)
        if opened is not None:
            live_fp = fingerprint(opened.fd, opened.salt())  # what it holds now: a copy of it is not new
            siblings = [
                (num, path)
                for num, path in siblings
                if not same_file(path, opened.dev, opened.ino)
                and (live_fp is None or self._fp_of(path, s.live) != live_fp)
            ]
        mine = None
        fps: dict[str, str | None] = {}
        for num, path in siblings:
            fps[path] = self._fp_of(path, s.live)
            if (finished.fp is not None and fps[path] == finished.fp) or same_file(path, finished.dev, finished.ino):
                mine = num  # by content: with compress=true it is now x.1.gz, another inode
        if opened is not None:
            for num, path in siblings:
                if mine is not None and num < mine:
                    self._queue_unseen(s, path, fps[path])
            return
        # forget files that rotated out of existence (reporting any we had not finished)
        self._report_vanished(s.live, {*fps.values(), *(of.fp for of in s.files()), finished.fp})
        if mine is None and siblings:
            # ours went through every kept name and was deleted while we read it: what was rotated
            # between it and the oldest file left may have been deleted unread
            self._error("rotation_outpaced")
            log.warning(
                "%s: POSSIBLY LOST DATA: %s rotated faster than we read it: the file we were reading "
                "went past max-file and was deleted before we saw the ones after it; lines logged after "
                "%s and before %s (the first line of %s, the oldest file left) may never have been read. "
                "Raise max-size/max-file for this container",
                self.name,
                s.live,
                finished.last_time or "?",
                first_line_time(siblings[0][1], self._root.get(s.live)) or "?",
                siblings[0][1],
            )
        for num, path in siblings:  # oldest first
            if mine is not None and num >= mine:
                continue
            self._queue_unseen(s, path, fps[path])

    def _queue_unseen(self, s: LogStream, path: str, fp: str | None) -> None:
        """Queue a rotated file to read in full, unless we know it (checkpointed, or read)."""
        if fp is None or fp in self.state or fp in self._fully_read or any(of.fp == fp for of in s.files()):
            return
        of = self._open(path, s.live, 0)
        if of is not None:
            of.rotated = True
            s.queue.append(of)
            log.info("%s: reading %s, rotated before we saw it", self.name, path)

    # -- main loop ----------------------------------------------------------------------------
    async def run(self, out: Emitter) -> None:
        cfg = self.config
        if self.own_id:
            log.info(
                "%s: not reading the log of the container the collector runs in (%s; include_own_container: "
                "true reads it)",
                self.name,
                self.own_id[:12],
            )
        if not self.ctx.once:  # watching first: what appears during the first scan is not missed
            self._start_watching()
        self.rescan(first=True)
        self.mark_ready("following")
        self._rescan_due = time.monotonic() + cfg.rescan_interval
        try:
            while not self.stopping:
                now = time.monotonic()
                if now >= self._rescan_due:
                    self.rescan()
                    self._forget_gone()
                    self._rescan_due = now + cfg.rescan_interval
                busy = False
                for s in list(self.streams.values()):
                    if self.stopping:
                        break
                    if s.next_poll > now and not self.ctx.once:
                        continue
                    got = await self._poll_stream(s, out)
                    busy = busy or got
                    if got:
                        s.interval = 0.0
                        s.next_poll = 0.0
                    else:
                        s.interval = min(max(s.interval * 2, cfg.min_poll_interval), cfg.max_poll_interval)
                        s.next_poll = now + s.interval
                if self.ctx.once and not busy:
                    break
                if busy:
                    await asyncio.sleep(0)
                    continue
                wake = min((s.next_poll for s in self.streams.values()), default=now + cfg.max_poll_interval)
                timeout = max(0.0, min(wake, self._rescan_due) - time.monotonic())
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            if self._observer is not None:
                self._observer.stop()
                await asyncio.to_thread(self._observer.join, 5)
            for s in self.streams.values():
                for of in s.files():
                    of.close()

    def _forget_gone(self) -> None:
        """Release streams whose files are all closed and whose live path is gone."""
        for live, s in list(self.streams.items()):
            if s.current is None and not s.queue and not os.path.exists(live):
                del self.streams[live]
                self._root.pop(live, None)
                if not os.path.isdir(os.path.dirname(live)):
                    # container removed: its checkpoints are finished business
                    for fp, st in list(self.state.items()):
                        if st.get("live") == live and int(st.get("offset", 0)) >= int(st.get("size", 0)):
                            del self.state[fp]
                            self.ctx.checkpoints.touch()


def _static_root(pattern: str) -> str:
    """The deepest directory of a glob without wildcards (what to watch)."""
    parts = Path(pattern).parts
    root: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        root.append(part)
    return str(Path(*root)) if root else "."


def _line_aligned_end(path: str, root: str | None) -> int | None:
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
