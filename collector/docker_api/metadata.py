"""Container metadata: the one Docker Engine API client of the process, with bounded caches.

Two ways to know a container, chosen by ``source``:

* ``api``: through the Docker Engine API (the ``docker`` package): one ``GET /containers/json``
  when (re)connected, then ``/events`` followed in a thread (create, rename, destroy), one
  inspect per new container, and for an id still unknown at most one inspect per
  ``miss_ttl`` seconds.  Never one call per record.  Every call has a timeout
  (``api_timeout``): an API that accepts and never answers is named in a warning, and it is
  reconnected with the retry policy (collector/retry.py: capped, full jitter) meanwhile.
  While it is unavailable, metadata comes from the cache and from the containers' files
  where they are readable.
* ``files``: the container's ``config.v2.json`` beside its log (what a sidecar that mounts
  only ``/var/lib/docker/containers`` can read), re-read when its mtime changes.  A file is
  read off the event loop, only when it is a regular file (never a FIFO or a device, never
  through a symlink) no larger than ``max_file_bytes``; an unusable one is reported (counted,
  one warning per interval) and gives no metadata.
* ``auto`` (default): the API when the socket answers, files otherwise; and the file whenever
  the API does not know an id.

Container ids come from peers too (forward ``container_id``, GELF ``_container_id``): an id is
looked up only when it is hex (64 characters, or a 12+ character prefix, which only the API
resolves), so no peer-supplied string ever becomes a path or an API URL.

Labels and fields copied into records are capped (``max_field_bytes`` per value,
``max_labels_bytes`` for all labels); a container whose metadata was cut carries
``container.metadata_truncated: true``.  Both caches (API and files) are LRUs bounded by
``cache_max_bytes`` (approximate) each.  Removed containers stay cached for ``retention``
seconds (while the cache has room): their remaining lines still get their name, image and labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from cachetools import LRUCache

from collector.component import DEFAULT_DOCKER_ROOT
from collector.docker_api.client import MAX_INSPECTS_PER_SECOND, EngineApi
from collector.docker_api.files import ConfigFiles, FileEntry, file_entry_size
from collector.docker_api.info import ContainerInfo, MetadataOptions, cap_info, is_container_id, is_container_ref
from collector.ratelog import RateLimitedLog
from collector.retry import Backoff

log = logging.getLogger("collector.docker")

MetadataSource = Literal["auto", "api", "files"]
_NAME = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}\Z")  # what Docker accepts as a container name
MAX_IDS_REMEMBERED = 4096  # API misses and prefix -> id aliases kept (LRU)


class DockerMetadata(EngineApi, ConfigFiles):
    """The process-wide container metadata cache (see module docstring)."""

    def __init__(
        self,
        source: MetadataSource = "auto",
        docker_host: str | None = None,
        docker_root: str = DEFAULT_DOCKER_ROOT,
        options: MetadataOptions | None = None,
        on_error: Callable[[str, int], None] | None = None,
    ) -> None:
        o = self.options = options or MetadataOptions()
        self.mode = source
        self.docker_host = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.docker_root = Path(docker_root)
        self.on_error = on_error or (lambda reason, n: None)
        self._lock = threading.Lock()  # the API cache is written by the events thread too
        self._cache: LRUCache[str, ContainerInfo] = LRUCache(o.cache_max_bytes, getsizeof=ContainerInfo.nbytes)
        self._files: LRUCache[str, FileEntry] = LRUCache(o.cache_max_bytes, getsizeof=file_entry_size)
        self._removed: dict[str, float] = {}  # id -> when it was destroyed
        self._misses: LRUCache[str, float] = LRUCache(MAX_IDS_REMEMBERED)  # id -> when the API did not know it
        self._alias: LRUCache[str, str] = LRUCache(MAX_IDS_REMEMBERED)  # id prefix -> full id
        self._client: Any = None
        self._events: Any = None  # the /events stream being read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(o.retry)
        self._outage_attempts = 0
        self._tokens, self._tokens_at = float(MAX_INSPECTS_PER_SECOND), time.monotonic()
        self._warn = RateLimitedLog(log)
        self._down_since: float | None = None
        self.api_ok = False
        self.api_ever_ok = False
        # counted for collector_docker_api_calls_total / _cache_hits_total / _cache_misses_total
        self.calls = {"list": 0, "inspect": 0, "events": 0}
        self.cache_hits = {"api": 0, "files": 0}
        self.cache_misses = {"api": 0, "files": 0}
        self.reconnect_attempts = 0  # failed (re)connections since the start
        self.last_error = ""
        self.last_error_hung = False  # the last failure was a timeout: the API accepts but does not answer

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        if self.mode == "files":
            return
        ok = await asyncio.to_thread(self._connect_and_list)
        if not ok:
            self._down_since = time.monotonic()
            if self.mode == "api" or self.last_error_hung:
                self._say_unavailable()
            elif not self._has_data_root():
                # with no data root either there is no Docker here at all: the json-file source says
                # so in one line with what to do; a forward/GELF receiver keeps its senders' fields.
                # Never name a data root that is not there: it only confuses (issue 17)
                log.debug("Docker API at %s: %s; no Docker data root either", self.docker_host, self.last_error)
            else:
                log.info(
                    "Docker API at %s: %s; container metadata from config.v2.json files under %s",
                    self.docker_host,
                    self.last_error,
                    self.docker_root,
                )
        self._thread = threading.Thread(target=self._follow, name="docker-events", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stop.set()
        self._close_stream()
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2)

    def _admit(self, info: ContainerInfo) -> ContainerInfo:
        o = self.options
        capped = cap_info(info, o.max_field_bytes, o.max_labels_bytes)
        if capped is not info:
            self.on_error("metadata_truncated", 1)
            self._warn(
                "truncated",
                "container %s: labels or fields over max_field_bytes (%d) or max_labels_bytes (%d) were cut; "
                "its records carry container.metadata_truncated: true",
                info.id[:12],
                o.max_field_bytes,
                o.max_labels_bytes,
            )
        return capped

    # -- lookups (event loop) -----------------------------------------------------------
    def cached(self, cid: str) -> ContainerInfo | None:
        with self._lock:
            return self._cache.get(self._alias.get(cid, cid))

    def known_name(self, cid: str) -> str:
        """The container's name if a cache knows it (no lookup, no I/O: for reports)."""
        info = self.cached(cid)
        if info is None:
            entry = self._files.get(cid)
            info = entry.info if entry is not None else None
        return info.name if info is not None else ""

    async def lookup(self, cid: str, container_dir: Path | None = None) -> ContainerInfo:
        """Metadata for ``cid``; an id-only ContainerInfo (source ``none``) when nothing knows
        it, or when ``cid`` is not a container id at all (then nothing was looked up).

        ``container_dir`` is where the container's files are when the caller knows it (the
        json-file source); it is used only when its name is ``cid``."""
        if not is_container_ref(cid):
            return ContainerInfo(id=cid, via="none")
        if self.mode != "files":
            info = self.cached(cid)
            if info is not None:
                self.cache_hits["api"] += 1
                return info
            self.cache_misses["api"] += 1
            if self.api_ok:
                now = time.monotonic()
                if now - self._misses.get(cid, -1e18) > self.options.miss_ttl and self._inspect_budget(now):
                    info = await asyncio.to_thread(self._inspect, cid)
                    if info is not None:
                        return info
                    if self.api_ok:  # it answered: not known (a failure is not a miss)
                        self._misses[cid] = now
        if (self.mode != "api" or not self.api_ok) and is_container_id(cid):
            d = container_dir if container_dir is not None and container_dir.name == cid else None
            info = await self._from_file(cid, d or self.docker_root / "containers" / cid)
            if info is not None:
                return info
        return ContainerInfo(id=cid, via="none")

    async def resolve(self, ref: str) -> ContainerInfo | None:
        """A container named by a peer (a syslog tag): a full id, a 12+ character id prefix or a
        name; None when nothing knows it.  Only hex ids and Docker-shaped names are looked up
        (the API's inspects of unknown ones are budgeted like ids'); only a full id ever reaches
        the file system (as a directory name under the root)."""
        if is_container_ref(ref):
            if len(ref) < 64:
                with self._lock:
                    hits = [i for i in self._cache.values() if i.id.startswith(ref)]
                if len(hits) == 1:
                    return hits[0]
                if not hits and self.mode != "api":
                    found = await asyncio.to_thread(self._prefix_dirs, ref)
                    if len(found) == 1:
                        ref = found[0]
            info = await self.lookup(ref)  # a prefix the cache does not know: the API resolves it
            return None if info.via == "none" else info
        if _NAME.match(ref):
            name = ref.lstrip("/")
            with self._lock:
                hits = [i for i in self._cache.values() if i.name == name]
            if len(hits) == 1:
                return hits[0]
            if not hits and self.mode != "files" and self.api_ok and self._inspect_budget(time.monotonic()):
                return await asyncio.to_thread(self._inspect, name)
        return None

    def why_unknown(self, cid: str) -> tuple[str, bool]:
        """Why ``cid`` has no metadata, and whether something is wrong (an API that is down or
        hung, an unusable file, a bad id) rather than simply absent (no Docker API was ever
        reachable and the container has no file: a receiver on a host without Docker)."""
        if not is_container_ref(cid):
            return "not a Docker container id (64 hex characters)", True
        parts = []
        wrong = False
        if self.mode != "files":
            if self.api_ok:
                parts.append(f"the Docker API at {self.docker_host} does not know it")
            else:
                parts.append(f"the Docker API at {self.docker_host} is unavailable ({self.last_error})")
                wrong = self.mode == "api" or self.api_ever_ok or self.last_error_hung
        if self.mode != "api" or not self.api_ok:
            hit = self._files.get(cid) if is_container_id(cid) else None
            where = self.docker_root / "containers" / cid[:64] / "config.v2.json"
            if not is_container_id(cid):
                parts.append("a short id has no file")
            elif not self._has_data_root():
                parts.append("no Docker data root here for config.v2.json")
            elif hit is not None and hit.problem:
                parts.append(f"{where}: {hit.problem}")
                wrong = True
            else:
                parts.append(f"no readable {where}")
        return "; ".join(parts), wrong

    @property
    def api_calls(self) -> int:
        """Inspect and list calls made (observable: never per record)."""
        return self.calls["list"] + self.calls["inspect"]

    def health(self) -> tuple[bool, str]:
        if self.mode == "files" or (self.mode == "auto" and not self.api_ok and self._thread is None):
            return True, f"metadata from config.v2.json under {self.docker_root}"
        if self.api_ok:
            return True, f"Docker API {self.docker_host}: {len(self._cache)} containers known"
        if self.mode == "auto":
            return True, f"Docker API {self.docker_host} unavailable ({self.last_error}); using files"
        return False, f"Docker API {self.docker_host} unavailable: {self.last_error}"
