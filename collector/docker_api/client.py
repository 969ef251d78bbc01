"""The Docker Engine API side of :class:`~collector.docker_api.metadata.DockerMetadata` (a mixin):
one client (the ``docker`` package), one ``GET /containers/json`` when (re)connected, ``/events``
followed in a thread (create, rename, destroy), inspects budgeted per second.  Every call has a
timeout (``api_timeout``); an API that fails or hangs is reconnected with the retry policy
(collector/retry.py: capped, full jitter) while the cache and the files answer."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from collector.docker_api.info import (
    ContainerInfo,
    MetadataOptions,
    as_dict,
    as_str,
    cut_utf8,
    from_inspect,
    from_summary,
    is_container_id,
)
from collector.ratelog import RateLimitedLog
from collector.retry import Backoff

log = logging.getLogger("collector.docker")

MAX_INSPECTS_PER_SECOND = 20  # calls to the API for ids it did not list (see _inspect_budget)
STABLE_STREAM = 60.0  # an events stream that lasted this long: the next outage backs off from the start


class EngineApi:
    """The API client, its cache of containers and the thread that keeps both current."""

    mode: str
    docker_host: str
    docker_root: Path
    options: MetadataOptions
    on_error: Callable[[str, int], None]
    _lock: threading.Lock
    _cache: LRUCache[str, ContainerInfo]
    _removed: dict[str, float]
    _alias: LRUCache[str, str]
    _client: Any
    _events: Any
    _stop: threading.Event
    _backoff: Backoff
    _outage_attempts: int
    _tokens: float
    _tokens_at: float
    _warn: RateLimitedLog
    _down_since: float | None
    api_ok: bool
    api_ever_ok: bool
    calls: dict[str, int]
    reconnect_attempts: int
    last_error: str
    last_error_hung: bool
    _admit: Callable[[ContainerInfo], ContainerInfo]
    _has_data_root: Callable[[], bool]

    # -- API side (threads) ------------------------------------------------------------------
    def _connect_and_list(self) -> bool:
        try:
            import docker  # noqa: PLC0415 - heavy import, only when the API is used

            if self._client is None:
                self._client = docker.DockerClient(base_url=self.docker_host, timeout=self.options.api_timeout)
            self.calls["list"] += 1
            summaries = self._client.api.containers(all=True)
            infos = [self._admit(from_summary(s)) for s in summaries if isinstance(s, dict)]
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
        cid = ev.get("id") or as_dict(ev.get("Actor")).get("ID") or ""
        if not is_container_id(cid):
            return
        attrs = as_dict(as_dict(ev.get("Actor")).get("Attributes"))
        with self._lock:
            known = self._cache.get(cid)
        if action == "create" or (action == "start" and known is None):
            self._inspect(cid)
        elif action == "rename" and known is not None:
            name = cut_utf8(as_str(attrs.get("name")), self.options.max_field_bytes)[0] or known.name
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
        info = self._admit(from_inspect(as_dict(d), "api"))
        if not is_container_id(info.id):
            return None
        with self._lock:
            self._cache[info.id] = info
            if ref != info.id:
                self._alias[ref] = info.id
        return info

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            for cid, t in list(self._removed.items()):
                if now - t > self.options.retention or cid not in self._cache:
                    self._removed.pop(cid, None)
                    self._cache.pop(cid, None)

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
