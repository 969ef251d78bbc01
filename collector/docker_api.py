"""Container metadata: the one Docker Engine API client of the process, with a cache.

Two ways to know a container, chosen by ``source``:

* ``api``: through the Docker Engine API (the ``docker`` package): one ``GET /containers/json``
  when (re)connected, then ``/events`` followed in a thread (create, rename, destroy), one
  inspect per new container, and for an id still unknown at most one inspect per
  ``miss_ttl`` seconds.  Never one call per record.  Reconnects with backoff.
* ``files``: the container's ``config.v2.json`` beside its log (what a sidecar that mounts
  only ``/var/lib/docker/containers`` can read), re-read when its mtime changes.
* ``auto`` (default): the API when the socket answers at start, files otherwise; and the file
  whenever the API does not know an id.

Removed containers stay cached for ``retention`` seconds: their remaining lines still get
their name, image and labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

log = logging.getLogger("collector.docker")

MetadataSource = Literal["auto", "api", "files"]
DEFAULT_DOCKER_ROOT = "/var/lib/docker"
_HEX_REF = re.compile(r"[0-9a-f]{12,64}\Z")  # a container id or a prefix of one, as peers send it
_NAME = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}\Z")  # what Docker accepts as a container name


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
        return {"container": c}


def _from_summary(s: Mapping[str, Any]) -> ContainerInfo:
    names = s.get("Names") or []
    return ContainerInfo(
        id=s["Id"],
        name=(names[0] if names else "").lstrip("/"),
        image_name=s.get("Image") or "",
        image_id=s.get("ImageID") or "",
        labels=dict(s.get("Labels") or {}),
        source="api",
    )


def _from_inspect(d: Mapping[str, Any], source: str) -> ContainerInfo:
    cfg = d.get("Config") or {}
    return ContainerInfo(
        id=d.get("Id") or d.get("ID") or "",
        name=(d.get("Name") or "").lstrip("/"),
        image_name=cfg.get("Image") or "",
        image_id=d.get("Image") or "",
        labels=dict(cfg.get("Labels") or {}),
        hostname=cfg.get("Hostname") or "",
        source=source,
    )


def read_config_v2(container_dir: Path) -> ContainerInfo | None:
    """Metadata from ``<docker_root>/containers/<id>/config.v2.json``; None when unreadable."""
    try:
        d = orjson.loads((container_dir / "config.v2.json").read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict):
        return None
    info = _from_inspect(d, "files")
    if not info.id:
        info = ContainerInfo(**{**_asdict(info), "id": container_dir.name})
    return info


def _asdict(info: ContainerInfo) -> dict[str, Any]:
    return {f: getattr(info, f) for f in ContainerInfo.__slots__}


class DockerMetadata:
    """The process-wide container metadata cache (see module docstring)."""

    def __init__(
        self,
        source: MetadataSource = "auto",
        docker_host: str | None = None,
        docker_root: str = DEFAULT_DOCKER_ROOT,
        retention: float = 3600.0,
        miss_ttl: float = 30.0,
        file_ttl: float = 5.0,
    ) -> None:
        self.mode = source
        self.docker_host = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.docker_root = Path(docker_root)
        self.retention = retention
        self.miss_ttl = miss_ttl
        self.file_ttl = file_ttl
        self._cache: dict[str, ContainerInfo] = {}
        self._removed: dict[str, float] = {}  # id -> when it was destroyed
        self._misses: dict[str, float] = {}  # id -> when the API last did not know it
        self._files: dict[str, tuple[float, float, ContainerInfo | None]] = {}  # id -> (checked, mtime, info)
        self._client: Any = None
        self._events: Any = None  # the /events stream being read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.api_ok = False
        self.api_calls = 0  # inspect/list calls made (observable: never per record)
        self.last_error = ""

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        if self.mode == "files":
            return
        ok = await asyncio.to_thread(self._connect_and_list)
        if not ok and self.mode == "auto":
            # with no data root either there is no Docker here at all: the json-file source says
            # so in one line with what to do; a forward/GELF receiver keeps its senders' fields
            if not os.path.isdir(os.path.join(self.docker_root, "containers")):
                # never name a data root that is not there: it only confuses (issue 17)
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
        stream = self._events
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()  # unblocks the thread reading /events
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
                self._client = docker.DockerClient(base_url=self.docker_host, timeout=10)
            api = self._client.api
            self.api_calls += 1
            summaries = api.containers(all=True)
            for s in summaries:
                info = _from_summary(s)
                self._cache[info.id] = info
            self.api_ok = True
            self.last_error = ""
            return True
        except Exception as e:
            self.api_ok = False
            self.last_error = _describe(e)
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
            self._client = None
            return False

    def _follow(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            if not self.api_ok and not self._connect_and_list():
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            try:
                stream = self._events = self._client.api.events(decode=True, filters={"type": "container"})
                backoff = 1.0
                for ev in stream:
                    if self._stop.is_set():
                        return
                    self._on_event(ev)
                if self._stop.is_set():
                    return
                self.last_error = "events stream ended"
            except Exception as e:
                if self._stop.is_set():
                    return
                self.last_error = _describe(e)
            self.api_ok = False
            log.warning("lost the Docker events stream (%s); reconnecting", self.last_error)
            self._stop.wait(backoff)

    def _on_event(self, ev: Mapping[str, Any]) -> None:
        action = ev.get("Action") or ev.get("status") or ""
        cid = ev.get("id") or (ev.get("Actor") or {}).get("ID") or ""
        if not cid:
            return
        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
        if action == "create" or (action == "start" and cid not in self._cache):
            self._inspect(cid)
        elif action == "rename" and cid in self._cache:
            old = self._cache[cid]
            self._cache[cid] = ContainerInfo(**{**_asdict(old), "name": attrs.get("name", old.name)})
        elif action == "destroy":
            self._removed[cid] = time.monotonic()
            self._expire()

    def _inspect(self, cid: str) -> ContainerInfo | None:
        client = self._client
        if client is None:
            return None
        try:
            self.api_calls += 1
            info = _from_inspect(client.api.inspect_container(cid), "api")
        except Exception as e:
            log.debug("inspect %s failed: %s", cid[:12], _describe(e))
            return None
        self._cache[info.id] = info
        return info

    def _expire(self) -> None:
        now = time.monotonic()
        for cid, t in list(self._removed.items()):
            if now - t > self.retention:
                self._removed.pop(cid, None)
                self._cache.pop(cid, None)
                self._files.pop(cid, None)

    # -- lookups (event loop) -----------------------------------------------------------
    def cached(self, cid: str) -> ContainerInfo | None:
        return self._cache.get(cid)

    async def lookup(self, cid: str, container_dir: Path | None = None) -> ContainerInfo:
        """Metadata for ``cid``; an id-only ContainerInfo when nothing knows it."""
        if self.mode != "files":
            info = self._cache.get(cid)
            if info is not None:
                return info
            if self.api_ok:
                now = time.monotonic()
                if now - self._misses.get(cid, -1e9) > self.miss_ttl:
                    info = await asyncio.to_thread(self._inspect, cid)
                    if info is not None:
                        return info
                    self._misses[cid] = now
        if self.mode != "api":
            info = self._from_file(cid, container_dir)
            if info is not None:
                return info
        return ContainerInfo(id=cid, source="none")

    async def resolve(self, ref: str) -> ContainerInfo | None:
        """A container named by a peer (a syslog tag): a full id, a 12+ character id prefix or a
        name; None when nothing knows it.  Only hex ids and Docker-shaped names are looked up;
        only a full id ever reaches the file system (as a directory name under the root)."""
        if _HEX_REF.match(ref):
            if len(ref) == 64:
                info = await self.lookup(ref)
                return None if info.source == "none" else info
            hits = [i for i in list(self._cache.values()) if i.id.startswith(ref)]
            if len(hits) == 1:
                return hits[0]
            if not hits and self.mode != "files" and self.api_ok:
                info = await asyncio.to_thread(self._inspect, ref)  # the API resolves prefixes
                if info is not None:
                    return info
            if not hits and self.mode != "api":
                found = await asyncio.to_thread(self._prefix_dirs, ref)
                if len(found) == 1:
                    info = await self.lookup(found[0])
                    return None if info.source == "none" else info
        if _NAME.match(ref):
            name = ref.lstrip("/")
            hits = [i for i in list(self._cache.values()) if i.name == name]
            if len(hits) == 1:
                return hits[0]
            if not hits and self.mode != "files" and self.api_ok:
                return await asyncio.to_thread(self._inspect, name)
        return None

    def _prefix_dirs(self, prefix: str) -> list[str]:
        try:
            with os.scandir(self.docker_root / "containers") as it:
                names = [e.name for e in it if len(e.name) == 64 and e.name.startswith(prefix)]
            return [n for n in names if _HEX_REF.match(n)]
        except OSError:
            return []

    def _from_file(self, cid: str, container_dir: Path | None) -> ContainerInfo | None:
        d = container_dir or self.docker_root / "containers" / cid
        now = time.monotonic()
        hit = self._files.get(cid)
        if hit is not None and now - hit[0] < self.file_ttl:
            return hit[2]
        try:
            mtime = (d / "config.v2.json").stat().st_mtime
        except OSError:
            mtime = -1.0
        if hit is not None and hit[1] == mtime:
            self._files[cid] = (now, mtime, hit[2])
            return hit[2]
        info = read_config_v2(d) if mtime >= 0 else (hit[2] if hit else None)
        self._files[cid] = (now, mtime, info)
        return info

    def health(self) -> tuple[bool, str]:
        if self.mode == "files" or (self.mode == "auto" and not self.api_ok and self._thread is None):
            return True, f"metadata from config.v2.json under {self.docker_root}"
        if self.api_ok:
            return True, f"Docker API {self.docker_host}: {len(self._cache)} containers known"
        if self.mode == "auto":
            return True, f"Docker API {self.docker_host} unavailable ({self.last_error}); using files"
        return False, f"Docker API {self.docker_host} unavailable: {self.last_error}"


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
