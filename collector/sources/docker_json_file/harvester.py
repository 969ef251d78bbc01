"""The harvester: reads the files of one log stream (a live path and its rotated files).

* growth is found by ``fstat`` polling (the source's loop paces it: busy files are read back to
  back, idle ones looked at every ``max_poll_interval``);
* rotation (Docker renames ``x-json.log`` to ``x-json.log.1``): the old file is read to its end
  through the descriptor we hold, rotated files we never saw are read oldest first, then the
  new live file; deleting a file we hold open loses nothing;
* truncation (``copytruncate``): the rest of the old content is read from its copy when there
  is one, then the file from 0; the event is reported.

Every file read is recorded in the registry (state.py), whose offsets move only over
acknowledged records; record ids are ``<fingerprint>-<offset>``, stable across replays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from collector.acks import OrderedAcks
from collector.codecs.docker_json import DockerLines, Parsed
from collector.component import Context, Emitter, ErrorCounter
from collector.event import Batch, Fields
from collector.safefiles import UnsafeFile
from collector.sources.docker_json_file.discovery import Discovery
from collector.sources.docker_json_file.files import OpenFile, fingerprint, new_reader, same_file
from collector.sources.docker_json_file.state import LossReports, Registry

if TYPE_CHECKING:
    from prometheus_client import Counter

    from collector.sources.docker_json_file import DockerJsonFileConfig

log = logging.getLogger("collector.sources.docker_json_file")

# A file written in the last ROTATION_CHECK seconds is checked for rotation every time it has no
# more to read: Docker rotates busy files, and watchdog's events come up to 0.5 s late (it holds
# moves back to pair them), long enough for a tight max-file to delete a file unseen. Quiet files
# are looked at on an event or every ROTATION_CHECK seconds (1000 idle containers: no stat storm).
ROTATION_CHECK = 5.0


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


class Harvester:
    """Reads the source's log streams: one :meth:`poll` reads what is new in one stream."""

    def __init__(
        self,
        name: str,
        config: DockerJsonFileConfig,
        ctx: Context,
        registry: Registry,
        discovery: Discovery,
        losses: LossReports,
        errors: ErrorCounter,
        received: Counter,
    ) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.registry = registry
        self.discovery = discovery
        self.losses = losses
        self._error = errors
        self._received = received
        self.bytes_read = 0  # for the progress of a --once run

    # -- files --------------------------------------------------------------------------------
    def _register(self, of: OpenFile) -> None:
        """Start tracking acknowledgements of ``of`` and record it in the checkpoints."""
        of.acks.on_commit = lambda pos, of=of: self._checkpoint(of, pos)
        if of.fp is not None:
            self.registry.add(of.fp, of.live, of.path, of.offset, of.size)

    def _checkpoint(self, of: OpenFile, committed: int) -> None:
        if of.fp is not None:
            self.registry.commit(of.fp, of.live, of.path, committed, of.size, of.last_time)

    def _open_file(self, path: str, live: str, offset: int) -> OpenFile:
        cfg = self.config
        return OpenFile.open(
            path, live, offset, cfg.max_record_bytes, self.discovery.root(live), cfg.max_field_bytes, cfg.format
        )

    def open(self, path: str, live: str, offset: int | None) -> OpenFile | None:
        """Open ``path``; resume at its checkpoint when its fingerprint is known."""
        try:
            of = self._open_file(path, live, 0)
        except UnsafeFile as e:
            self.discovery.refuse(path, e)
            return None
        except OSError as e:
            if not isinstance(e, FileNotFoundError):
                log.error("%s: cannot open %s: %s", self.name, path, e)
                self._error("open_failed")
            return None
        known = self.registry.get(of.fp)
        start = known.offset if known is not None else offset or 0
        if start > of.size:
            log.warning(
                "%s: %s is shorter (%d) than its checkpoint (%d); reading from 0", self.name, path, of.size, start
            )
            start = 0
        of.offset = start
        of.acks.reset(start)
        self._register(of)
        return of

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
            old_acks.on_commit = lambda pos, fp=old_fp, live=of.live, path=of.path: self.registry.commit(
                fp, live, path, pos
            )
        copy = next(
            (
                p
                for _, p in self.discovery.siblings(s.live)
                if old_fp is not None and self.discovery.fp_of(p, s.live) == old_fp
            ),
            None,
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
                cf: OpenFile | None = self._open_file(copy, s.live, read_to)
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
            self.registry.mark_done(of.fp)
        if of.reader.pending:
            parsed = Parsed()
            of.reader.flush(parsed)
            batch = self._to_batch(s, of, parsed, of.offset)
        of.close()
        return batch

    # -- one look at a stream -----------------------------------------------------------------
    async def poll(self, s: LogStream, out: Emitter) -> bool:
        """Read what is new in the stream; True when data was read."""
        if s.siblings_dirty:
            self.check_siblings(s)
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
                s.current = self.open(s.live, s.live, 0)
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
            s.current = self.open(s.live, s.live, 0)
            if s.current is not None:
                # the writer goes on while we look: a rotation between the look above and this
                # open left a file newer than ``cur`` that is not the one just opened
                self._catch_up_rotations(s, cur, opened=s.current)
        return True

    def _catch_up_rotations(self, s: LogStream, finished: OpenFile, opened: OpenFile | None = None) -> None:
        """Rotated files we never opened that are newer than ``finished``: read them next
        (``opened``: the live file just opened, not one of them; nothing is reported again)."""
        fp_of = self.discovery.fp_of
        siblings = self.discovery.siblings(s.live)
        if opened is not None:
            live_fp = fingerprint(opened.fd, opened.salt())  # what it holds now: a copy of it is not new
            siblings = [
                (num, path)
                for num, path in siblings
                if not same_file(path, opened.dev, opened.ino) and (live_fp is None or fp_of(path, s.live) != live_fp)
            ]
        mine = None
        fps: dict[str, str | None] = {}
        for num, path in siblings:
            fps[path] = fp_of(path, s.live)
            if (finished.fp is not None and fps[path] == finished.fp) or same_file(path, finished.dev, finished.ino):
                mine = num  # by content: with compress=true it is now x.1.gz, another inode
        if opened is not None:
            for num, path in siblings:
                if mine is not None and num < mine:
                    self._queue_unseen(s, path, fps[path])
            return
        # forget files that rotated out of existence (reporting any we had not finished)
        root = self.discovery.root(s.live)
        self.losses.vanished(s.live, {*fps.values(), *(of.fp for of in s.files()), finished.fp}, None, root)
        if mine is None and siblings:
            # ours went through every kept name and was deleted while we read it: what was rotated
            # between it and the oldest file left may have been deleted unread
            self.losses.outpaced(s.live, finished.last_time, siblings[0][1], root)
        for num, path in siblings:  # oldest first
            if mine is not None and num >= mine:
                continue
            self._queue_unseen(s, path, fps[path])

    def _queue_unseen(self, s: LogStream, path: str, fp: str | None) -> None:
        """Queue a rotated file to read in full, unless we know it (checkpointed, or read)."""
        if fp is None or fp in self.registry or fp in self.registry.fully_read or any(of.fp == fp for of in s.files()):
            return
        of = self.open(path, s.live, 0)
        if of is None and not os.path.lexists(path):
            # listed a moment ago and gone: renamed by a rotation since (read it by its new name),
            # or deleted unread (said: its lines are lost)
            renamed = [p for _, p in self.discovery.siblings(s.live) if self.discovery.fp_of(p, s.live) == fp]
            of = self.open(renamed[0], s.live, 0) if renamed else None
            if of is None:
                self.losses.deleted_unread(s.live, path)
                return
        if of is not None:
            of.rotated = True
            s.queue.append(of)
            log.info("%s: reading %s, rotated before we saw it", self.name, of.path)

    def check_siblings(self, s: LogStream) -> None:
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
        for _, path in self.discovery.siblings(s.live):
            try:
                if os.stat(path).st_mtime < s.since:
                    continue
            except OSError:
                continue
            fp = self.discovery.fp_of(path, s.live)
            if fp not in open_fps:
                self._queue_unseen(s, path, fp)
