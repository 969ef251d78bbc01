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
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import orjson
from cachetools import LRUCache

from collector.ratelog import RateLimitedLog
from collector.retry import Backoff, RetryConfig
from collector.safefiles import UnsafeFile, open_regular

log = logging.getLogger("collector.docker")

MetadataSource = Literal["auto", "api", "files"]
DEFAULT_DOCKER_ROOT = "/var/lib/docker"
_NAME = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}\Z")  # what Docker accepts as a container name
_FULL_ID = re.compile(r"[0-9a-f]{64}\Z")
_ID_OR_PREFIX = re.compile(r"[0-9a-f]{12,64}\Z")
MAX_LABEL_KEY_BYTES = 256  # a longer label key is dropped (flagged): keys are field names
MAX_IDS_REMEMBERED = 4096  # API misses and prefix -> id aliases kept (LRU)
MAX_INSPECTS_PER_SECOND = 20  # calls to the API for ids it did not list (see _inspect_budget)
_ENTRY_OVERHEAD = 600  # approximate bytes of a cache entry besides its strings
STABLE_STREAM = 60.0  # an events stream that lasted this long: the next outage backs off from the start


def is_container_id(cid: object) -> bool:
    """A full Docker container id: 64 lowercase hex characters."""
    return type(cid) is str and _FULL_ID.match(cid) is not None


def is_container_ref(cid: object) -> bool:
    """A full id or a 12+ character prefix of one (what ``docker ps`` shows)."""
    return type(cid) is str and _ID_OR_PREFIX.match(cid) is not None


def dedot(key: str) -> str:
    """Label keys safe for Elasticsearch: ``com.docker.compose.project`` must not become an
    object that clashes with a ``com.docker`` label, so dots become underscores."""
    return key.replace(".", "_")


def split_image(image: str) -> tuple[str, str]:
    """``registry:5000/app:1.2`` -> (``registry:5000/app:1.2``, ``1.2``); digest refs have no tag."""
    if "@" in image:
        return image, ""
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        return image, last.rsplit(":", 1)[1]
    return image, ""


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    name: str = ""
    image_name: str = ""
    image_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""
    source: str = ""  # "api" | "files" | "none"
    truncated: bool = False  # a field or label was cut to the configured caps

    def ecs(self) -> dict[str, Any]:
        """The record fields this container contributes (nested ECS)."""
        c: dict[str, Any] = {"id": self.id}
        if self.name:
            c["name"] = self.name
        if self.image_name:
            name, tag = split_image(self.image_name)
            c["image"] = {"name": name, "tag": [tag]} if tag else {"name": name}
        if self.labels:
            c["labels"] = {dedot(k): v for k, v in self.labels.items()}
            project = self.labels.get("com.docker.compose.project")
            service = self.labels.get("com.docker.compose.service")
            if project or service:
                c["compose"] = {k: v for k, v in (("project", project), ("service", service)) if v}
        if self.truncated:
            c["metadata_truncated"] = True
        return {"container": c}

    def nbytes(self) -> int:
        """Approximate memory held (for the caches' byte bounds)."""
        n = _ENTRY_OVERHEAD + len(self.id) + len(self.name) + len(self.image_name) + len(self.image_id)
        return n + len(self.hostname) + sum(len(k) + len(v) + 150 for k, v in self.labels.items())


def _str(v: Any) -> str:
    return v if type(v) is str else ""


def _dict(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, dict) else {}


def _labels(v: Any) -> dict[str, str]:
    return {k: x for k, x in _dict(v).items() if type(k) is str and type(x) is str}


def _from_summary(s: Mapping[str, Any]) -> ContainerInfo:
    names = s.get("Names")
    name = names[0] if isinstance(names, list) and names else ""
    return ContainerInfo(
        id=_str(s.get("Id")),
        name=_str(name).lstrip("/"),
        image_name=_str(s.get("Image")),
        image_id=_str(s.get("ImageID")),
        labels=_labels(s.get("Labels")),
        source="api",
    )


def _from_inspect(d: Mapping[str, Any], source: str) -> ContainerInfo:
    """From an inspect answer or a ``config.v2.json`` (any shape: wrong types give empty fields)."""
    cfg = _dict(d.get("Config"))
    return ContainerInfo(
        id=_str(d.get("Id")) or _str(d.get("ID")),
        name=_str(d.get("Name")).lstrip("/"),
        image_name=_str(cfg.get("Image")),
        image_id=_str(d.get("Image")),
        labels=_labels(cfg.get("Labels")),
        hostname=_str(cfg.get("Hostname")),
        source=source,
    )


def _cut(s: str, limit: int) -> tuple[str, bool]:
    if len(s) * 4 <= limit:
        return s, False
    b = s.encode("utf-8", "surrogatepass")
    if len(b) <= limit:
        return s, False
    return b[:limit].decode("utf-8", "ignore"), True


def cap_info(info: ContainerInfo, max_field_bytes: int, max_labels_bytes: int) -> ContainerInfo:
    """``info`` with every value at most ``max_field_bytes`` and its labels (keys and values)
    at most ``max_labels_bytes`` in all, compose labels first; ``truncated`` when anything was cut."""
    cut = False
    fields: dict[str, Any] = {}
    for f in ("name", "image_name", "image_id", "hostname"):
        fields[f], c = _cut(getattr(info, f), max_field_bytes)
        cut |= c
    labels: dict[str, str] = {}
    room = max_labels_bytes
    items = sorted(info.labels.items(), key=lambda kv: not kv[0].startswith("com.docker.compose."))
    for k, value in items:
        if len(k.encode("utf-8", "surrogatepass")) > MAX_LABEL_KEY_BYTES:
            cut = True
            continue
        v, c = _cut(value, max_field_bytes)
        size = len(k) + (len(v) if v.isascii() else len(v.encode("utf-8", "surrogatepass")))
        if size > room:
            cut = True
            continue
        room -= size
        labels[k] = v
        cut |= c
    if not cut:
        return info
    return replace(info, labels=labels, truncated=True, **fields)


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
    return replace(_from_inspect(d, "files"), id=container_dir.name), ""


@dataclass(frozen=True)
class MetadataOptions:
    """The limits and timings of one :class:`DockerMetadata` (from the transform's config)."""

    api_timeout: float = 5.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    max_file_bytes: int = 4 << 20
    max_field_bytes: int = 4096
    max_labels_bytes: int = 64 << 10
    cache_max_bytes: int = 16 << 20
    retention: float = 3600.0
    miss_ttl: float = 30.0
    file_ttl: float = 5.0


@dataclass(slots=True)
class _FileEntry:
    checked: float  # monotonic time of the last look
    mtime: float  # -1: absent
    info: ContainerInfo | None
    problem: str = ""


def _entry_size(e: _FileEntry) -> int:
    return e.info.nbytes() if e.info is not None else _ENTRY_OVERHEAD + len(e.problem)


class DockerMetadata:
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
        self._files: LRUCache[str, _FileEntry] = LRUCache(o.cache_max_bytes, getsizeof=_entry_size)
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

    # -- API side (threads) ------------------------------------------------------------------
    def _connect_and_list(self) -> bool:
        try:
            import docker  # noqa: PLC0415 - heavy import, only when the API is used

            if self._client is None:
                self._client = docker.DockerClient(base_url=self.docker_host, timeout=self.options.api_timeout)
            self.calls["list"] += 1
            summaries = self._client.api.containers(all=True)
            infos = [self._admit(_from_summary(s)) for s in summaries if isinstance(s, dict)]
            with self._lock:
                for info in infos:
                    if is_container_id(info.id):
                        self._cache[info.id] = info
            self.api_ok = self.api_ever_ok = True
            self.last_error, self.last_error_hung = "", False
            return True
        except Exception as e:
            self._failed(e)
            return False

    def _failed(self, e: BaseException) -> None:
        self.api_ok = False
        self.last_error = _describe(e)
        self.last_error_hung = _is_timeout(e)
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _say_unavailable(self) -> None:
        hung = (
            f"accepts connections but did not answer within api_timeout ({self.options.api_timeout}s)"
            if self.last_error_hung
            else f"unavailable ({self.last_error})"
        )
        files = f" and from config.v2.json under {self.docker_root}" if self._has_data_root() else ""
        self._warn(
            "api_down",
            "Docker API at %s %s: container metadata comes from the cache%s meanwhile; "
            "reconnecting with backoff (%d attempts so far)",
            self.docker_host,
            hung,
            files,
            self.reconnect_attempts,
        )

    def _has_data_root(self) -> bool:
        return os.path.isdir(self.docker_root / "containers")

    def _follow(self) -> None:
        """(thread) Follow ``/events``; while the API is unavailable, reconnect with backoff."""
        while not self._stop.is_set():
            if not self.api_ok:
                if not self._connect_and_list():
                    self.reconnect_attempts += 1
                    self._outage_attempts += 1
                    # a sidecar with no socket (auto) is not an outage: nothing to count or say
                    if self.mode == "api" or self.api_ever_ok or self.last_error_hung:
                        self.on_error("api_unavailable", 1)
                        self._say_unavailable()
                    self._backoff.sleep_sync(self._stop)
                    continue
                self._back()
            opened = time.monotonic()
            try:
                stream = self._events = self._open_events()
                for ev in stream:
                    if self._stop.is_set():
                        return
                    if isinstance(ev, dict):
                        self._on_event(ev)
                if self._stop.is_set():
                    return
                if self.api_ok:
                    self._failed(ConnectionError("events stream ended"))
            except Exception as e:
                if self._stop.is_set():
                    return
                if self.api_ok:
                    self._failed(e)
            self._down_since = time.monotonic()
            self._say_unavailable()
            if time.monotonic() - opened > STABLE_STREAM:
                self._backoff.reset()  # it had worked for a while: a new outage starts small
            self._backoff.sleep_sync(self._stop)  # an API that lists but drops /events: no busy loop

    def _back(self) -> None:
        """Connected and listed after a failure."""
        if self._down_since is not None:
            log.info(
                "Docker API at %s answers again (after %d failed attempts, %.0fs): metadata from it again",
                self.docker_host,
                self._outage_attempts,
                time.monotonic() - self._down_since,
            )
        self._down_since = None
        self._outage_attempts = 0
        self._warn.reset("api_down")

    def _open_events(self) -> Any:
        """``GET /events`` with ``api_timeout`` for its answer (the docker package's ``events()``
        waits forever for a daemon that accepts and never answers); then no read timeout, since a
        quiet engine sends nothing for hours."""
        from docker.types import CancellableStream  # noqa: PLC0415
        from docker.utils import convert_filters  # noqa: PLC0415

        api = self._client.api
        self.calls["events"] += 1
        resp = api._get(
            api._url("/events"),
            params={"filters": convert_filters({"type": "container"})},
            stream=True,
            timeout=self.options.api_timeout,
        )
        api._raise_for_status(resp)
        sock = _response_socket(resp)
        if sock is not None:
            sock.settimeout(None)
        return CancellableStream(api._stream_helper(resp, decode=True), resp)

    def _close_stream(self) -> None:
        stream, self._events = self._events, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()  # unblocks the thread reading /events

    def _on_event(self, ev: Mapping[str, Any]) -> None:
        action = ev.get("Action") or ev.get("status") or ""
        cid = ev.get("id") or _dict(ev.get("Actor")).get("ID") or ""
        if not is_container_id(cid):
            return
        attrs = _dict(_dict(ev.get("Actor")).get("Attributes"))
        with self._lock:
            known = self._cache.get(cid)
        if action == "create" or (action == "start" and known is None):
            self._inspect(cid)
        elif action == "rename" and known is not None:
            name = _cut(_str(attrs.get("name")), self.options.max_field_bytes)[0] or known.name
            with self._lock:
                self._cache[cid] = replace(known, name=name)
        elif action == "destroy":
            self._removed[cid] = time.monotonic()
            self._expire()

    def _inspect(self, ref: str) -> ContainerInfo | None:
        """Inspect a container (full id or prefix); None when the API does not know it or failed."""
        client = self._client
        if client is None:
            return None
        try:
            self.calls["inspect"] += 1
            d = client.api.inspect_container(ref)
        except Exception as e:
            if getattr(getattr(e, "response", None), "status_code", None) == 404:
                return None
            if self.api_ok:  # hung or gone: files meanwhile, the events thread reconnects
                self._failed(e)
                self._close_stream()
            return None
        info = self._admit(_from_inspect(_dict(d), "api"))
        if not is_container_id(info.id):
            return None
        with self._lock:
            self._cache[info.id] = info
            if ref != info.id:
                self._alias[ref] = info.id
        return info

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

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            for cid, t in list(self._removed.items()):
                if now - t > self.options.retention or cid not in self._cache:
                    self._removed.pop(cid, None)
                    self._cache.pop(cid, None)

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
            return ContainerInfo(id=cid, source="none")
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
        return ContainerInfo(id=cid, source="none")

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
            return None if info.source == "none" else info
        if _NAME.match(ref):
            name = ref.lstrip("/")
            with self._lock:
                hits = [i for i in self._cache.values() if i.name == name]
            if len(hits) == 1:
                return hits[0]
            if not hits and self.mode != "files" and self.api_ok and self._inspect_budget(time.monotonic()):
                return await asyncio.to_thread(self._inspect, name)
        return None

    def _prefix_dirs(self, prefix: str) -> list[str]:
        try:
            with os.scandir(self.docker_root / "containers") as it:
                return [e.name for e in it if e.name.startswith(prefix) and is_container_id(e.name)]
        except OSError:
            return []

    def _inspect_budget(self, now: float) -> bool:
        """At most MAX_INSPECTS_PER_SECOND inspects of unknown ids (a token bucket): with the list
        and the events, the cache knows this host's containers, so unknown ids are mostly other
        hosts' or made up, and a sender inventing ids must not turn into calls to dockerd."""
        self._tokens = min(MAX_INSPECTS_PER_SECOND, self._tokens + (now - self._tokens_at) * MAX_INSPECTS_PER_SECOND)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

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
            entry = _FileEntry(now, mtime, hit.info if hit else None)
        else:
            entry = await asyncio.to_thread(self._read_file, path, mtime)
        entry.checked = now
        self._files[cid] = entry
        return entry.info

    def _read_file(self, path: Path, mtime: float) -> _FileEntry:
        """(thread) Read ``config.v2.json``; report an unusable one (once per change)."""
        info, problem = read_config_v2(path.parent, self.options.max_file_bytes)
        if problem:
            self.on_error("config_v2_unusable", 1)
            self._warn("config_v2", "%s: unusable, no metadata from it: %s", path, problem)
        elif info is not None:
            info = self._admit(info)
        return _FileEntry(0, mtime, info, problem)

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


def _response_socket(resp: Any) -> socket.socket | None:
    """The socket under a streamed ``requests`` response (as ``docker.types.CancellableStream``
    finds it to close it); None when the transport hides it."""
    with contextlib.suppress(AttributeError):
        fp = resp.raw._fp.fp
        raw = getattr(fp, "raw", None)
        for s in (getattr(raw, "sock", None), getattr(raw, "_sock", None), getattr(fp, "_sock", None)):
            if isinstance(s, socket.socket):
                return s
    return None


def _is_timeout(e: BaseException) -> bool:
    seen: BaseException | None = e
    for _ in range(8):  # the cause chain (the docker package wraps requests' errors)
        if seen is None:
            return False
        if isinstance(seen, TimeoutError | socket.timeout) or "timed out" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(e: BaseException) -> str:
    """One line about why the API did not answer (the docker package nests the OS error deep)."""
    cause: BaseException | None = e
    seen = 0
    while cause is not None and seen < 10:
        for arg in getattr(cause, "args", ()):
            if isinstance(arg, BaseException):
                cause = arg
                break
        else:
            cause = cause.__cause__ or cause.__context__
        seen += 1
        if isinstance(cause, FileNotFoundError):
            return "no socket there"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (is dockerd running?)"
        if isinstance(cause, PermissionError):
            return "permission denied (run as root, or as a member of the docker group)"
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:300]


def api_socket_missing(docker_host: str | None) -> str | None:
    """The path of a ``unix://`` Docker API socket that does not exist (None otherwise)."""
    host = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://"):
        path = host[len("unix://") :]
        return None if os.path.exists(path) else path
    return None


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
