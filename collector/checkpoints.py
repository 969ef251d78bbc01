"""The checkpoint store: where sources keep their place across restarts.

Checkpoints belong to a pipeline, not to a data directory.  A pipeline is identified by its
outputs: the set of its sinks' types and destinations (:func:`pipeline_identity`: the console;
a file's absolute path; Elasticsearch's hosts and target; a GELF address), not by names, inputs,
transforms or tuning.  Each identity has its own document in the data directory,
``<data_dir>/checkpoints/<types>-<hash>.json``:

    {"version": 1, "pipeline": {"outputs": [{"type": "file", "path": "/tmp/out.ndjson"}]},
     "sources": {"<component>": {"<key>": {...}, ...}}}

So trying ``collector tail`` on the console never consumes what a later run to a file or to
Elasticsearch must ship: that run has checkpoints of its own and starts from ``read_from``.  The
same outputs again resume where they stopped (``--once`` twice delivers nothing the second time,
and says so).  Changing a pipeline's outputs (adding a sink, another file or data stream) makes
it a new pipeline that reads again from ``read_from``: Elasticsearch drops what it already has
(stable ids), a file receives it again.  Filters and tags do not change the identity.

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
import hashlib
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson

from collector.diskfull import DiskFull, is_disk_full
from collector.ratelog import RateLimitedLog
from collector.retry import Backoff, RetryConfig

log = logging.getLogger("collector.checkpoints")

VERSION = 1


class DataDirError(RuntimeError):
    """The data directory cannot be used: a configuration problem (exit code 2)."""


class StateLockedError(DataDirError):
    pass


def pipeline_identity(sinks: Iterable[Any]) -> tuple[str, list[dict[str, Any]]]:
    """(identity, outputs) of a pipeline whose sink configs are ``sinks``: what makes two runs
    the same pipeline is where their records go.  Each sink config names its destination keys
    (``destination_keys``); one that does not is identified by all its keys but ``inputs``,
    ``buffer`` and ``match`` (then only its type is described: no secret is ever written)."""
    outputs: list[dict[str, Any]] = []
    digest: list[dict[str, Any]] = []
    for c in sinks:
        keys = getattr(c, "destination_keys", None)
        dumped = c.model_dump(mode="json", exclude={"inputs", "buffer", "match"})
        chosen = {k: dumped[k] for k in keys} if keys is not None else dumped
        for k, v in chosen.items():
            if k == "path" and isinstance(v, str):  # a relative path is another file from another directory
                chosen[k] = os.path.abspath(v)
        chosen["type"] = dumped["type"]
        digest.append(chosen)
        outputs.append(chosen if keys is not None else {"type": dumped["type"]})
    canonical = sorted(orjson.dumps(d, option=orjson.OPT_SORT_KEYS) for d in digest)
    h = hashlib.sha256(b"\n".join(canonical)).hexdigest()[:12]
    types = "+".join(sorted({d["type"] for d in digest})) or "none"
    outputs.sort(key=lambda d: orjson.dumps(d, option=orjson.OPT_SORT_KEYS))
    return f"{types}-{h}", outputs


def _describe(output: dict[str, Any]) -> str:
    parts = [str(output.get("type"))]
    for k, v in output.items():
        if k != "type" and v is not None:
            parts.append(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}")
    return " ".join(parts)


class CheckpointStore:
    """Checkpoints of one pipeline (``identity``, see :func:`pipeline_identity`) in ``data_dir``;
    without an identity, the one document ``<data_dir>/checkpoints.json`` (tests, tools)."""

    def __init__(
        self, data_dir: Path | str, identity: str | None = None, outputs: list[dict[str, Any]] | None = None
    ) -> None:
        self.dir = Path(data_dir)
        self.identity = identity
        self.outputs = outputs or []
        self.path = self.dir / "checkpoints" / f"{identity}.json" if identity else self.dir / "checkpoints.json"
        self.resumed = 0  # entries (files) found at open: the previous runs of this pipeline
        self._data: dict[str, dict[str, dict[str, Any]]] = {}
        self._dirty = False
        self._lock_file: IO[bytes] | None = None
        self.saves = 0
        self._write_lock = threading.Lock()
        self._generation = 0  # snapshots are numbered; an older one never overwrites a newer
        self._written = 0
        self._full = DiskFull("checkpoints", "records keep flowing; the last saved checkpoint stays valid")
        self._failing = RateLimitedLog(log, interval=30.0)

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lf = open(self.dir / "lock", "a+b")  # noqa: SIM115 - held for the process lifetime
        except OSError as e:
            raise DataDirError(
                f"cannot use the data directory {self.dir}: {e.strerror or e} (choose another with --data-dir "
                "or data_dir)"
            ) from None
        try:
            fcntl.flock(lf.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lf.close()
            raise StateLockedError(
                f"another collector is using the data directory {self.dir} (give each one its own --data-dir)"
            ) from None
        self._lock_file = lf
        self.load()
        self.resumed = sum(len(ns) for ns in self._data.values())
        legacy = self.dir / "checkpoints.json"
        if self.identity and legacy.exists():
            log.info(
                "%s is from an older collector and is not read: checkpoints are kept per pipeline now, in %s "
                "(delete it once you no longer need it)",
                legacy,
                self.path.parent,
            )

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

    def nothing_new(self) -> str | None:
        """What to say when a run found nothing new to read (None when there was no earlier run)."""
        if not self.resumed:
            return None
        outputs = "; ".join(_describe(o) for o in self.outputs) or "?"
        files = "1 file at its end" if self.resumed == 1 else f"{self.resumed} files at their end"
        return (
            f"nothing new since the last run of this pipeline (outputs: {outputs}): {files}; to start over, "
            f"use another --data-dir (data_dir: {os.path.abspath(self.dir)}) or delete {os.path.abspath(self.path)}"
        )

    # -- access ------------------------------------------------------------------------
    def namespace(self, component: str) -> dict[str, dict[str, Any]]:
        """The component's own mutable mapping of key -> state; call :meth:`touch` after edits."""
        return self._data.setdefault(component, {})

    def touch(self) -> None:
        self._dirty = True

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """A copy of every source's positions (a reload hands them to the next pipeline)."""
        return orjson.loads(orjson.dumps(self._data))  # type: ignore[no-any-return]

    def adopt(self, positions: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Start from ``positions`` (the pipeline this one replaces at a reload), whatever this
        pipeline's own document said: what the old one delivered is not delivered again, even to
        new outputs, and what it had not delivered is read again."""
        self._data = orjson.loads(orjson.dumps(positions))
        self._dirty = True

    def rehome(self, identity: str, outputs: list[dict[str, Any]]) -> None:
        """A reload in place changed where records go (the pipeline's identity): the positions are
        saved as this new pipeline's from now on (the old pipeline's document stays as it was)."""
        self.identity, self.outputs = identity, outputs
        self.path = self.dir / "checkpoints" / f"{identity}.json"
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
        doc: dict[str, Any] = {"version": VERSION, "sources": self._data}
        if self.identity:
            doc = {"version": VERSION, "pipeline": {"outputs": self.outputs}, "sources": self._data}
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
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
        dfd = os.open(self.path.parent, os.O_RDONLY)
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
            else:
                self._failing.error(
                    "write_failed",
                    "cannot write checkpoints to %s: %s (will retry; the last saved ones stay valid)",
                    self.path,
                    e,
                )
            return False
        self._full.ok()
        self._failing.reset("write_failed")
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
