"""The containers' files under Docker's data root: ``config.v2.json`` (read safely, cached by
mtime, what a sidecar that mounts only ``/var/lib/docker/containers`` can know) and which
container this process itself runs in."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
from cachetools import LRUCache

from collector.component import DEFAULT_DOCKER_ROOT
from collector.docker_api.info import ENTRY_OVERHEAD, ContainerInfo, MetadataOptions, from_inspect, is_container_id
from collector.ratelog import RateLimitedLog
from collector.safefiles import UnsafeFile, open_regular


def read_config_v2(container_dir: Path, max_bytes: int = 4 << 20) -> tuple[ContainerInfo | None, str]:
    """Metadata from ``<container_dir>/config.v2.json``: (info, "") or (None, why not).

    Opened without blocking and without following a symlink; only a regular file of at most
    ``max_bytes`` is read.  An absent file is (None, "")."""
    path = container_dir / "config.v2.json"
    try:
        fd = open_regular(path, follow_symlinks=False)
    except FileNotFoundError:
        return None, ""
    except UnsafeFile as e:
        return None, e.strerror.removeprefix(f"{path}: ")
    except OSError as e:
        return None, f"cannot open: {e.strerror}"
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            return None, f"{size} bytes, more than max_file_bytes ({max_bytes})"
        chunks: list[bytes] = []
        got = 0
        while got <= max_bytes:
            b = os.read(fd, max_bytes + 1 - got)
            if not b:
                break
            chunks.append(b)
            got += len(b)
        if got > max_bytes:
            return None, f"grew past max_file_bytes ({max_bytes}) while read"
    except OSError as e:
        return None, f"cannot read: {e.strerror}"
    finally:
        os.close(fd)
    try:
        d = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as e:
        return None, f"not valid JSON ({str(e)[:200]})"
    if not isinstance(d, dict):
        return None, "not a JSON object"
    # the directory's name is the id (validated by the caller), whatever the file says
    return replace(from_inspect(d, "files"), id=container_dir.name), ""


@dataclass(slots=True)
class FileEntry:
    checked: float  # monotonic time of the last look
    mtime: float  # -1: absent
    info: ContainerInfo | None
    problem: str = ""


def file_entry_size(e: FileEntry) -> int:
    return e.info.nbytes() if e.info is not None else ENTRY_OVERHEAD + len(e.problem)


class ConfigFiles:
    """The files side of :class:`~collector.docker_api.metadata.DockerMetadata` (a mixin): an LRU of
    parsed ``config.v2.json`` files, looked at again after ``file_ttl`` and re-read when their
    mtime changed; a read goes to a thread, an unusable file is reported once per change."""

    options: MetadataOptions
    docker_root: Path
    on_error: Callable[[str, int], None]
    cache_hits: dict[str, int]
    cache_misses: dict[str, int]
    _files: LRUCache[str, FileEntry]
    _warn: RateLimitedLog
    _admit: Callable[[ContainerInfo], ContainerInfo]

    def _has_data_root(self) -> bool:
        return os.path.isdir(self.docker_root / "containers")

    def _prefix_dirs(self, prefix: str) -> list[str]:
        try:
            with os.scandir(self.docker_root / "containers") as it:
                return [e.name for e in it if e.name.startswith(prefix) and is_container_id(e.name)]
        except OSError:
            return []

    async def _from_file(self, cid: str, d: Path) -> ContainerInfo | None:
        now = time.monotonic()
        hit = self._files.get(cid)
        if hit is not None and now - hit.checked < self.options.file_ttl:
            self.cache_hits["files"] += 1
            return hit.info
        self.cache_misses["files"] += 1
        path = d / "config.v2.json"
        try:  # a stat never blocks (nor opens a FIFO): on the loop; a read goes to a thread
            mtime = os.lstat(path).st_mtime
        except (OSError, ValueError):
            mtime = -1.0
        if hit is not None and hit.mtime == mtime:
            entry = hit
        elif mtime < 0:  # absent, or gone with its container: keep what we knew
            entry = FileEntry(now, mtime, hit.info if hit else None)
        else:
            entry = await asyncio.to_thread(self._read_file, path, mtime)
        entry.checked = now
        self._files[cid] = entry
        return entry.info

    def _read_file(self, path: Path, mtime: float) -> FileEntry:
        """(thread) Read ``config.v2.json``; report an unusable one (once per change)."""
        info, problem = read_config_v2(path.parent, self.options.max_file_bytes)
        if problem:
            self.on_error("config_v2_unusable", 1)
            self._warn("config_v2", "%s: unusable, no metadata from it: %s", path, problem)
        elif info is not None:
            info = self._admit(info)
        return FileEntry(0, mtime, info, problem)


# -- which container am I? ------------------------------------------------------------------------
# Docker bind-mounts three files of <data-root>/containers/<id>/ into every container
_OWN_MOUNT = re.compile(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)\Z")
_OWN_CGROUP = re.compile(r"(?:/docker/|/docker-|:docker-)([0-9a-f]{64})(?:\.scope)?(?:/|\Z)")
_SHORT_ID = re.compile(r"[0-9a-f]{12}\Z")


def own_container_id(docker_root: str | Path = DEFAULT_DOCKER_ROOT, proc: str | Path = "/proc/self") -> str:
    """The id of the Docker container this process runs in ("" when it is not in one): a
    collector that tails the host's containers must not tail its own log, or every line it
    logs about a record becomes a record (a feedback loop).

    Found, in order, from ``mountinfo`` (the ``hostname``, ``hosts`` and ``resolv.conf`` files
    Docker mounts from the container's directory), ``cgroup`` (cgroup v1, or v2 without a private
    cgroup namespace) and the hostname (Docker's default is the id's first 12 characters) when one
    directory under ``<docker_root>/containers`` starts with it and this is a container
    (``/.dockerenv``)."""
    proc = Path(proc)
    try:
        for line in (proc / "mountinfo").read_text(errors="replace").splitlines():
            f = line.split()
            if len(f) > 4 and f[4] in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
                m = _OWN_MOUNT.search(f[3])
                if m:
                    return m.group(1)
    except OSError:
        pass
    try:
        for line in (proc / "cgroup").read_text(errors="replace").splitlines():
            m = _OWN_CGROUP.search(line)
            if m:
                return m.group(1)
    except OSError:
        pass
    host = socket.gethostname()
    if _SHORT_ID.match(host) and os.path.exists("/.dockerenv"):
        try:
            with os.scandir(Path(docker_root) / "containers") as it:
                found = [e.name for e in it if e.name.startswith(host) and is_container_id(e.name)]
        except OSError:
            found = []
        if len(found) == 1:
            return found[0]
    return ""
