"""The checkpoint store: where sources keep their place across restarts.

One JSON document per data directory, ``<data_dir>/checkpoints.json``:

    {"version": 1, "sources": {"<component>": {"<key>": {...}, ...}}}

Written atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves
either the old or the new document, never a torn one.  Sources only store positions that the
pipeline has acknowledged (see acks.py), so the store never claims more than was delivered.

The data directory is locked (``flock`` on ``<data_dir>/lock``) for the life of the process:
two collectors sharing one state would each deliver the other's records again.

A write that fails (a full disk) leaves the last checkpoint file as it was, valid, removes its
temporary file and is tried again at the next interval; the warning is rate-limited.  Saves are
paced by the event loop's monotonic clock: a wall-clock step neither delays nor hurries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any

import orjson

from collector.diskfull import DiskFull, is_disk_full
from collector.retry import Backoff, RetryConfig, Throttle

log = logging.getLogger("collector.checkpoints")

VERSION = 1


class StateLockedError(RuntimeError):
    pass


class CheckpointStore:
    def __init__(self, data_dir: Path | str) -> None:
        self.dir = Path(data_dir)
        self.path = self.dir / "checkpoints.json"
        self._data: dict[str, dict[str, dict[str, Any]]] = {}
        self._dirty = False
        self._lock_file: IO[bytes] | None = None
        self.saves = 0
        self._write_lock = threading.Lock()
        self._generation = 0  # snapshots are numbered; an older one never overwrites a newer
        self._written = 0
        self._full = DiskFull("checkpoints", "records keep flowing; the last saved checkpoint stays valid")
        self._failing = Throttle(30.0)

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        lf = open(self.dir / "lock", "a+b")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(lf.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lf.close()
            raise StateLockedError(
                f"another collector is using the data directory {self.dir} (give each one its own --data-dir)"
            ) from None
        self._lock_file = lf
        self.load()

    def close(self) -> None:
        try:
            self.save()
        except OSError as e:
            log.error("cannot write checkpoints to %s: %s; the last saved ones stay valid", self.path, e)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._data = {}
            return
        try:
            doc = orjson.loads(raw)
            if doc.get("version") != VERSION:
                raise ValueError(f"unsupported version {doc.get('version')!r}")
            self._data = doc["sources"]
        except (ValueError, KeyError, TypeError) as e:
            bad = self.path.with_suffix(".json.corrupt")
            os.replace(self.path, bad)
            log.error(
                "checkpoint file %s is unreadable (%s); moved to %s, starting without checkpoints",
                self.path,
                e,
                bad,
            )
            self._data = {}

    # -- access ------------------------------------------------------------------------
    def namespace(self, component: str) -> dict[str, dict[str, Any]]:
        """The component's own mutable mapping of key -> state; call :meth:`touch` after edits."""
        return self._data.setdefault(component, {})

    def touch(self) -> None:
        self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    # -- persistence -------------------------------------------------------------------
    def save(self) -> bool:
        """Write if anything changed; True when written."""
        if not self._dirty:
            return False
        self._dirty = False
        self._write(*self._snapshot())
        return True

    def _snapshot(self) -> tuple[bytes, int]:
        self._generation += 1
        data = orjson.dumps({"version": VERSION, "sources": self._data}, option=orjson.OPT_INDENT_2)
        return data, self._generation

    def _write(self, data: bytes, generation: int) -> None:
        with self._write_lock:
            if generation > self._written:
                self._write_locked(data)
                self._written = generation

    def _write_locked(self, data: bytes) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()  # give back what it took; the old checkpoint file is untouched
            raise
        os.replace(tmp, self.path)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.saves += 1

    async def save_async(self) -> None:
        """Snapshot on the loop, write (fsync) in a thread."""
        if not self._dirty:
            return
        self._dirty = False
        try:
            await asyncio.to_thread(self._write, *self._snapshot())
        except BaseException:
            # a failed write, or cancelled at shutdown, possibly before a thread picked the write
            # up (then it never runs): the final save() must not think the state is on disk
            self._dirty = True
            raise

    async def run(self, interval: float = 1.0) -> None:
        """Save changes every ``interval`` seconds until cancelled; a failed write is retried."""
        while True:
            await asyncio.sleep(interval)
            await self.try_save()

    async def try_save(self) -> bool:
        """Save if anything changed; False (said, rate-limited) when the write failed."""
        try:
            await self.save_async()
        except OSError as e:
            if is_disk_full(e):
                self._full.failed(self.path, e)
            elif self._failing.ready():
                log.error(
                    "cannot write checkpoints to %s: %s (will retry; the last saved ones stay valid)", self.path, e
                )
            return False
        self._full.ok()
        self._failing.reset()
        return True

    async def save_final(self, within: float) -> bool:
        """The last save, at exit: retried for up to ``within`` seconds (space may come back)."""
        backoff = Backoff(RetryConfig(initial_backoff=0.05, max_backoff=1.0, max_elapsed=within))
        while True:
            try:
                if await self.try_save():
                    return True
            except Exception as e:  # the saver's own failure, already said (fatal): not again with a traceback
                log.error("checkpoints could not be saved to %s at exit: %r", self.path, e)
                return False
            delay = backoff.delay()
            if backoff.expired:
                log.error(
                    "checkpoints could not be saved to %s at exit (%s): records delivered since the last save "
                    "will be read again at the next start",
                    self.path,
                    "disk full" if self._full.active else "write failed",
                )
                return False
            await asyncio.sleep(delay)

    def __enter__(self) -> CheckpointStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.close()
