"""Source ``docker_json_file``: follow Docker's json-file logs (or CRI logs, ``format: cri``).

Follows every file matching ``paths`` (default: every container under
``/var/lib/docker/containers``), surviving rotation, truncation and restarts. Split the way
Filebeat's filestream is:

* discovery.py (the prospector): globs, directory watching, rescans, which rotated files are
  history and which must be read, safe-file checks;
* harvester.py: reading one log stream (its live file and rotated files to finish), rotation
  and truncation, the records and their acknowledgements;
* state.py (the registry): the typed checkpoint record of each file, and the loss reports;
* this module: the configuration, and the source's loop that wires them and paces the polls
  (busy files are read back to back, idle ones looked at every ``max_poll_interval``).

New files and containers are found within a second (watchdog, plus a periodic rescan); growth
by ``fstat`` polling, which costs far less than an inotify event per written line. Restarts
resume at the acknowledged offset of each file (by fingerprint, whatever its current name);
rotated files created while we were down are read; files that vanished before they were
finished are reported with the byte range lost. Checkpoints only move over acknowledged
records (see acks.py); record ids are ``<fingerprint>-<offset>``, stable across replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Literal

from pydantic import Field, field_validator

from collector.component import ComponentConfig, Context, Emitter, Source
from collector.docker_api import DEFAULT_DOCKER_ROOT
from collector.event import Fields
from collector.sources.docker_json_file.discovery import Discovery
from collector.sources.docker_json_file.files import container_id_of, pod_of
from collector.sources.docker_json_file.harvester import ROTATION_CHECK, Harvester, LogStream
from collector.sources.docker_json_file.state import FileState, LossReports, Registry

__all__ = [
    "ROTATION_CHECK",
    "DockerJsonFileConfig",
    "DockerJsonFileSource",
    "FileState",
    "Harvester",
    "LogStream",
    "Registry",
]

log = logging.getLogger("collector.sources.docker_json_file")

DEFAULT_CRI_GLOB = "/var/log/pods/*/*/*.log"


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


class DockerJsonFileSource(Source):
    config: DockerJsonFileConfig

    def __init__(self, name: str, config: DockerJsonFileConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        self.streams: dict[str, LogStream] = {}
        self._wake = asyncio.Event()
        self._rescan_due = 0.0
        errors = ctx.error_counter(name)
        self.registry = Registry(ctx.checkpoints, name, errors)
        self.losses = LossReports(name, self.registry, errors)
        self.discovery = Discovery(name, config, ctx.docker_root, errors)
        self.harvester = Harvester(
            name,
            config,
            ctx,
            self.registry,
            self.discovery,
            self.losses,
            errors,
            ctx.telemetry.received.labels(name),
        )
        ctx.telemetry.register_lag(name, self.lag)

    @property
    def lost_bytes(self) -> int:
        return self.losses.lost_bytes

    @property
    def bytes_read(self) -> int:
        return self.harvester.bytes_read

    def _meta_for(self, live: str) -> tuple[Fields, str]:
        data: dict[str, object] = {"host": {"name": self.ctx.hostname}}
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

    # -- discovery ----------------------------------------------------------------------------
    def rescan(self, first: bool = False) -> None:
        found = self.discovery.glob(self.streams)
        for live in sorted(found.keys() - self.streams.keys()):
            self.discovery.roots[live] = found[live]
            if not first:
                log.info("%s: following %s", self.name, live)
            self._add_stream(live, first)
            self._wake.set()
        if first:
            self.discovery.say_what_is_followed(len(self.streams))

    def _add_stream(self, live: str, first_scan: bool) -> None:
        meta, tag = self._meta_for(live)
        s = LogStream(live, meta, tag)
        # rotated files: finish the ones we were reading, read the ones created meanwhile
        backlog = self.discovery.backlog(live, first_scan, self.registry)
        for path in backlog.rotated:
            of = self.harvester.open(path, live, 0)
            if of is not None:
                of.rotated = True
                s.queue.append(of)
        if backlog.known:
            present = backlog.present | {of.fp for of in s.queue}
            self.losses.vanished(live, present, backlog.oldest, self.discovery.root(live))
        start = self.discovery.start_offset(live, backlog.known, first_scan)
        s.current = self.harvester.open(live, live, start)
        self.streams[live] = s

    def _structure_changed(self, paths: tuple[str, ...] = ()) -> None:
        self._rescan_due = 0.0
        dirs = {os.path.dirname(p) for p in paths if p}
        for s in self.streams.values():
            if os.path.dirname(s.live) in dirs:
                s.siblings_dirty = True
                s.renamed = True
                s.next_poll = 0.0
        self._wake.set()

    def _forget_gone(self) -> None:
        """Release streams whose files are all closed and whose live path is gone."""
        for live, s in list(self.streams.items()):
            if s.current is None and not s.queue and not os.path.exists(live):
                del self.streams[live]
                self.discovery.roots.pop(live, None)
                if not os.path.isdir(os.path.dirname(live)):
                    # container removed: its checkpoints are finished business
                    for fp, st in self.registry.of_stream(live):
                        if st.complete:
                            self.registry.forget(fp)

    # -- reports ------------------------------------------------------------------------------
    def lag(self) -> list[tuple[str, str, int]]:
        """Per container (its name when the pipeline's metadata knows it, else its short id or the
        file's name): bytes in its files not yet acknowledged (collector_checkpoint_lag_bytes)."""
        rows: dict[tuple[str, str], int] = {}
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
            key = (self.ctx.container_name(cid) if cid else "") or s.tag, cid[:12]
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

    # -- main loop ----------------------------------------------------------------------------
    async def run(self, out: Emitter) -> None:
        cfg = self.config
        self.registry.load()  # where the checkpoints are now (a reload made us before the old source ended)
        if self.discovery.own_id:
            log.info(
                "%s: not reading the log of the container the collector runs in (%s; include_own_container: "
                "true reads it)",
                self.name,
                self.discovery.own_id[:12],
            )
        if not self.ctx.once:  # watching first: what appears during the first scan is not missed
            self.discovery.start_watching(self._structure_changed)
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
                    got = await self.harvester.poll(s, out)
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
            await self.discovery.stop_watching()
            for s in self.streams.values():
                for of in s.files():
                    of.close()
