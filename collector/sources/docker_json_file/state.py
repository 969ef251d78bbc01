"""The registry: how far each file was delivered, and what was lost when a file went unread.

Each file is one :class:`FileState` in the pipeline's checkpoint document, under the source's
name and the file's fingerprint (see files.py), whatever its current name:

    "<fingerprint>": {"live": ".../<id>-json.log", "path": ".../<id>-json.log.1",
                      "offset": 1234, "size": 5678, "last_time": "2024-...Z", "done": true}

``offset`` only moves over acknowledged records (acks.py); ``size`` is the most we saw of the
file (what a loss report counts against); ``last_time`` the time of the last record read;
``done`` that it was rotated away and read to its end (delivery may still be in flight).
``last_time`` and ``done`` are written only once they are set, as the collector always did.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from collector.checkpoints import CheckpointStore
from collector.component import ErrorCounter
from collector.sources.docker_json_file.files import container_id_of, first_line_time

log = logging.getLogger("collector.sources.docker_json_file")


@dataclass(slots=True)
class FileState:
    """The checkpoint of one file (see the module's docstring)."""

    live: str
    path: str
    offset: int = 0
    size: int = 0
    last_time: str = ""
    done: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> FileState:
        """Read an entry of the checkpoint document; ValueError when it cannot be one."""
        if not isinstance(d, Mapping):
            raise ValueError(f"not an object: {d!r}")
        try:  # as lenient as the collector always was: "12" and 12.0 are 12
            offset, size = int(d.get("offset", 0)), int(d.get("size", 0))  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ValueError(f"offset {d.get('offset')!r} and size {d.get('size')!r} must be numbers") from None
        if offset < 0 or size < 0:
            raise ValueError(f"offset {offset} and size {size} cannot be negative")
        live, path, last_time = d.get("live", ""), d.get("path", ""), d.get("last_time") or ""
        if not isinstance(live, str) or not isinstance(path, str) or not isinstance(last_time, str):
            raise ValueError("live, path and last_time must be strings")
        return cls(live, path, offset, size, last_time, bool(d.get("done", False)))

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"live": self.live, "path": self.path, "offset": self.offset, "size": self.size}
        if self.last_time:
            d["last_time"] = self.last_time
        if self.done:
            d["done"] = True
        return d

    @property
    def complete(self) -> bool:
        """Everything we saw of the file is acknowledged."""
        return self.offset >= self.size


class Registry:
    """The source's :class:`FileState` per fingerprint, written through to its namespace of the
    checkpoint store (which saves the document; see checkpoints.py)."""

    def __init__(self, store: CheckpointStore, component: str, errors: ErrorCounter) -> None:
        self._store = store
        self._component = component
        self._errors = errors
        self._raw = store.namespace(component)
        self._files: dict[str, FileState] = {}
        self.fully_read: set[str] = set()  # fingerprints of files read to their end in this run
        self.load()

    def load(self) -> None:
        """(Re)read the store's records: at the start of a run, which may come long after this
        source was made (a reload makes the new source before the old one has stopped and its
        last records are acknowledged)."""
        self._raw = self._store.namespace(self._component)
        self._files.clear()
        self.fully_read.clear()
        for fp, d in list(self._raw.items()):
            try:
                self._files[fp] = FileState.from_dict(d)
            except ValueError as e:
                self._errors("checkpoint_unreadable")
                log.error(
                    "%s: checkpoint %s is unreadable (%s): forgotten, the file is read again", self._component, fp, e
                )
                del self._raw[fp]
                self._store.touch()

    def __contains__(self, fp: object) -> bool:
        return fp in self._files

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._files))

    def get(self, fp: str | None) -> FileState | None:
        return self._files.get(fp) if fp is not None else None

    def of_stream(self, live: str) -> list[tuple[str, FileState]]:
        """The files of the log stream ``live`` (a snapshot: may be edited while iterated)."""
        return [(fp, st) for fp, st in self._files.items() if st.live == live]

    def knows_stream(self, live: str) -> bool:
        return any(st.live == live for st in self._files.values())

    def _save(self, fp: str, st: FileState) -> None:
        self._raw[fp] = st.to_dict()
        self._store.touch()

    def add(self, fp: str, live: str, path: str, offset: int, size: int) -> None:
        """Record a file newly opened (unless known)."""
        if fp not in self._files:
            st = self._files[fp] = FileState(live, path, offset, size)
            self._save(fp, st)

    def commit(self, fp: str, live: str, path: str, committed: int, size: int = 0, last_time: str = "") -> None:
        """Everything before ``committed`` was acknowledged."""
        st = self._files.get(fp)
        if st is None:
            st = self._files[fp] = FileState(live, path)
        st.offset = committed
        st.size = max(size, committed, st.size)
        if last_time:
            st.last_time = last_time
        self._save(fp, st)

    def mark_done(self, fp: str) -> None:
        self.fully_read.add(fp)
        st = self._files.get(fp)
        if st is not None:
            st.done = True
            self._save(fp, st)

    def forget(self, fp: str) -> None:
        del self._files[fp]
        del self._raw[fp]
        self.fully_read.discard(fp)
        self._store.touch()


class LossReports:
    """What was lost, said plainly and counted: files rotated away before they were read."""

    def __init__(self, name: str, registry: Registry, errors: ErrorCounter) -> None:
        self.name = name
        self.registry = registry
        self._error = errors
        self.lost_bytes = 0

    def vanished(self, live: str, present: set[str | None], oldest: str | None, root: str | None) -> None:
        """Files of ``live`` in the checkpoints that no longer exist: report what was lost.

        ``oldest`` is the oldest file still there: what was logged between the end of what we
        read and its first line was rotated away and deleted unread.
        """
        for fp, st in self.registry.of_stream(live):
            if fp in present:
                continue
            if fp in self.registry.fully_read or st.done:  # read to its end: delivery may be in flight
                if st.complete:
                    self.registry.forget(fp)
                continue
            cid = container_id_of(live)[:12] or "-"
            since = st.last_time or "?"
            until = (first_line_time(oldest, root) if oldest else None) or "?"
            if not st.complete:
                lost = st.size - st.offset
                self.lost_bytes += lost
                self._error("file_vanished_unread", lost)
                log.error(
                    "%s: LOST DATA: %s (container %s) was rotated away and deleted before it was read: "
                    "bytes %d-%d (%d bytes) never delivered, and whatever was logged after it until %s",
                    self.name,
                    st.path,
                    cid,
                    st.offset,
                    st.size,
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
                    st.path,
                    cid,
                    st.offset,
                    since,
                    until,
                )
            self.registry.forget(fp)

    def deleted_unread(self, live: str, path: str) -> None:
        """A rotated file we never read was listed, then deleted before we could open it."""
        self._error("file_vanished_unread")
        log.error(
            "%s: LOST DATA: %s (container %s), rotated before we saw it, was deleted before it could be read: "
            "its lines were never delivered. Raise max-size/max-file for this container",
            self.name,
            path,
            container_id_of(live)[:12] or "-",
        )

    def outpaced(self, live: str, last_time: str, oldest: str, root: str | None) -> None:
        """The file we were reading went through every kept name and was deleted while we read it."""
        self._error("rotation_outpaced")
        log.warning(
            "%s: POSSIBLY LOST DATA: %s rotated faster than we read it: the file we were reading "
            "went past max-file and was deleted before we saw the ones after it; lines logged after "
            "%s and before %s (the first line of %s, the oldest file left) may never have been read. "
            "Raise max-size/max-file for this container",
            self.name,
            live,
            last_time or "?",
            first_line_time(oldest, root) or "?",
            oldest,
        )
