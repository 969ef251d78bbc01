"""Transform ``docker_metadata``: add the container's name, image, labels and compose project.

Works on the batch, not the record: a json-file batch comes from one container, so its
shared fields are looked up and extended once per batch (and cached per container).  Batches
whose records carry their own ``container.id`` (forward, GELF) are grouped by container.

Container ids from peers are checked before any lookup (see docker_api/info.py); a record that goes
out with no metadata but its ``container.id`` is counted (``collector_errors_total{reason=
"metadata_missing"}``, or ``"bad_container_id"`` when the id is not a Docker id) and said in a
warning (one per interval), never silently.

Also renders the tag (Docker's log tag template, e.g. ``{{.Name}}``): it becomes the batch's
routing tag and is added to ``tags``.  Without a template the batch keeps the tag its source
gave it (the fluentd tag, or Docker's default ``{{.ID}}`` for files) and that is added.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cachetools import LRUCache
from pydantic import Field, field_validator

from collector.component import Context, Transform, TransformConfig
from collector.docker_api import (
    ContainerInfo,
    DockerMetadata,
    DockerMetadataService,
    MetadataOptions,
    is_container_ref,
)
from collector.event import Batch, Fields, deep_merge, get_path
from collector.ratelog import RateLimitedLog
from collector.retry import RetryConfig
from collector.tags import TagTemplate, template_info

log = logging.getLogger("collector.transforms.docker_metadata")


class DockerMetadataConfig(TransformConfig):
    type: Literal["docker_metadata"]
    metadata: Literal["auto", "api", "files"] = Field(
        "auto",
        description="Where metadata comes from: the Docker API (`api`), the containers' "
        "config.v2.json (`files`), or the API when reachable and files otherwise (`auto`).",
    )
    docker_host: str | None = Field(
        None, description="Docker API address; default $DOCKER_HOST or unix:///var/run/docker.sock."
    )
    tag: str | None = Field(
        None,
        description="Docker log tag template for the record's tag: `{{.Name}}`, `{{.ID}}`, "
        "`{{.FullID}}`, `{{.ImageName}}`, `{{.ImageID}}`, or literal text.",
    )
    labels: bool = Field(True, description="Add `container.labels` (dots in keys become `_`).")
    api_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds any Docker API call may take; an API that does not answer in time is "
        "reported, files are used meanwhile and it is reconnected with `retry`.",
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="Backoff between Docker API reconnects (capped, full jitter). `max_elapsed` does not "
        "apply: the API is retried for as long as the collector runs, with files meanwhile.",
    )
    max_file_bytes: int = Field(
        4 << 20,
        ge=4096,
        description="A config.v2.json larger than this is not read (reported; its container gets no "
        "metadata from files). Docker writes a few KB.",
    )
    max_field_bytes: int = Field(
        4096,
        ge=64,
        description="A label value, name or image longer than this is cut to it in records, which then "
        "carry `container.metadata_truncated: true`.",
    )
    max_labels_bytes: int = Field(
        64 << 10,
        ge=1024,
        description="Labels (keys and values) copied into each record, in all; compose labels first, "
        "the rest are left out (flagged as above).",
    )
    cache_max_bytes: int = Field(
        16 << 20,
        ge=1 << 20,
        description="Approximate memory for each metadata cache (API answers, config.v2.json files, "
        "enriched fields): least recently used containers are dropped (and looked up again if needed).",
    )

    @field_validator("retry")
    @classmethod
    def _forever(cls, v: RetryConfig) -> RetryConfig:
        if v.max_elapsed is not None:
            raise ValueError("max_elapsed does not apply: the Docker API is retried for as long as the collector runs")
        return v

    @field_validator("tag")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None:
            TagTemplate(v)  # raises a clear error
        return v


class DockerMetadataTransform(Transform):
    config: DockerMetadataConfig

    def __init__(self, name: str, config: DockerMetadataConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        self.template = TagTemplate(config.tag) if config.tag else None
        self.docker: DockerMetadata | None = None
        # (shared fields in, container id, tag, the record's own container fields) -> enriched:
        # keyed by the container, so batches of one container share one entry
        self._cache: LRUCache[tuple[bytes, str, str, str], _Enriched] = LRUCache(
            config.cache_max_bytes, getsizeof=_Enriched.nbytes
        )
        self._errors = ctx.telemetry.errors
        self._warn = RateLimitedLog(log)

    async def start(self) -> None:
        c = self.config
        options = MetadataOptions(
            api_timeout=c.api_timeout,
            retry=c.retry,
            max_file_bytes=c.max_file_bytes,
            max_field_bytes=c.max_field_bytes,
            max_labels_bytes=c.max_labels_bytes,
            cache_max_bytes=c.cache_max_bytes,
        )
        self.docker = await self.ctx.service(DockerMetadataService).metadata(
            c.metadata, c.docker_host, self.ctx.docker_root, options
        )

    async def _lookup(self, cid: Any, n: int, container_dir: Path | None = None) -> ContainerInfo:
        """The container's metadata; records going out without any are counted and said."""
        assert self.docker is not None
        cid = cid if type(cid) is str else str(cid)
        info = await self.docker.lookup(cid, container_dir)
        if info.via == "none":
            if is_container_ref(cid):
                reason, what = "metadata_missing", f"container {cid[:12]}"
            else:
                reason, what = "bad_container_id", f"container id {cid[:80]!r} (not looked up)"
            self._errors.labels(self.name, reason).inc(n)
            why, wrong = self.docker.why_unknown(cid)
            self._warn(
                f"{reason}:{wrong}",
                "%s: records of %s go out with only container.id: %s",
                self.name,
                what,
                why,
                level=logging.WARNING if wrong else logging.INFO,
            )
        return info

    def _container_fields(self, info: ContainerInfo) -> dict[str, Any]:
        ecs = info.ecs()
        if not self.config.labels:
            ecs["container"].pop("labels", None)
        return ecs

    def _enrich(self, meta: Fields, info: ContainerInfo, tag: str, own: dict[str, Any] | None) -> tuple[Fields, str]:
        key = (meta.encoded, info.id, tag, "" if own is None else repr(own))
        hit = self._cache.get(key)
        if hit is not None and (hit.info is info or (info.via == "none" and hit.info.via == "none")):
            return hit.fields, hit.tag
        fields = self._container_fields(info)
        if own:  # what the record itself said (e.g. the name at logging time) wins
            fields = deep_merge(fields, {"container": own})
        if self.template is not None:
            name = fields["container"].get("name", "")
            image = (fields["container"].get("image") or {}).get("name", "")
            tag = self.template.render(template_info(info.id, name, image, info.image_id))
        tags = list(meta.data.get("tags") or [])
        if tag and tag not in tags:
            tags.append(tag)
        if tags:
            fields["tags"] = tags
        out = meta.merged(fields)
        self._cache[key] = _Enriched(out, tag, info, len(key[0]) + len(key[3]))
        return out, tag

    async def process(self, batch: Batch) -> list[tuple[str | None, Batch]]:
        assert self.docker is not None
        cid = batch.meta.get("container.id")
        if cid:
            cols = batch.columns
            path = cols.path if cols is not None else None  # a file source's columns know their file
            if path is None and batch.events:
                path = get_path(batch.events[0], "log.file.path")
            # only Docker's own layout (<dir>/<id>/<id>-json.log*) says where the container's files are
            cdir = Path(path).parent if type(path) is str and Path(path).name.startswith(f"{cid}-json.log") else None
            info = await self._lookup(cid, len(batch), cdir)
            batch.meta, batch.tag = self._enrich(batch.meta, info, batch.tag, None)
            return [(None, batch)]
        # records carry their own container: group them
        groups: dict[str, list[int]] = {}
        for i, ev in enumerate(batch.events):
            c = ev.get("container")
            groups.setdefault(c.get("id", "") if isinstance(c, dict) else "", []).append(i)
        if list(groups) == [""]:
            if self.template is None and batch.tag:
                batch.meta, _ = self._enrich_tag_only(batch.meta, batch.tag)
            return [(None, batch)]
        out: list[tuple[str | None, Batch]] = []
        if batch.ack is not None and len(groups) > 1:
            batch.ack.retain(len(groups) - 1)
        for gid, idx in groups.items():
            events = [batch.events[i] for i in idx]
            ids = [batch.ids[i] for i in idx] if batch.ids is not None else None
            if not gid:
                out.append((None, batch.derive(events, ids)))
                continue
            info = await self._lookup(gid, len(events))
            own = events[0].get("container") or {}
            own = {k: v for k, v in own.items() if k != "id"}
            stripped = [{k: v for k, v in ev.items() if k != "container"} for ev in events]
            meta, tag = self._enrich(batch.meta, info, batch.tag, own or None)
            b = batch.derive(stripped, ids, meta)
            b.tag = tag
            out.append((None, b))
        return out

    def _enrich_tag_only(self, meta: Fields, tag: str) -> tuple[Fields, str]:
        tags = list(meta.data.get("tags") or [])
        if tag in tags:
            return meta, tag
        return meta.merged({"tags": [*tags, tag]}), tag


@dataclass(slots=True)
class _Enriched:
    fields: Fields
    tag: str
    info: ContainerInfo
    key_bytes: int

    def nbytes(self) -> int:
        return 1000 + self.key_bytes + 3 * len(self.fields.encoded)
