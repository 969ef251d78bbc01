"""Transform ``docker_metadata``: add the container's name, image, labels and compose project.

Works on the batch, not the record: a json-file batch comes from one container, so its
shared fields are looked up and extended once per batch (and cached per container).  Batches
whose records carry their own ``container.id`` (forward, GELF) are grouped by container.

Also renders the tag (Docker's log tag template, e.g. ``{{.Name}}``): it becomes the batch's
routing tag and is added to ``tags``.  Without a template the batch keeps the tag its source
gave it (the fluentd tag, or Docker's default ``{{.ID}}`` for files) and that is added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from collector.component import Transform, TransformConfig
from collector.docker_api import ContainerInfo, DockerMetadata
from collector.event import Batch, Fields, deep_merge, get_path
from collector.tags import TagTemplate, template_info


class DockerMetadataConfig(TransformConfig):
    type: Literal["docker_metadata"]
    source: Literal["auto", "api", "files"] = Field(
        "auto",
        description="Where metadata comes from: the Docker API (`api`), the containers' "
        "config.v2.json (`files`), or the API when reachable and files otherwise (`auto`).",
    )
    docker_host: str | None = Field(
        None, description="Docker API address; default $DOCKER_HOST or unix:///var/run/docker.sock."
    )
    docker_root: str = Field("/var/lib/docker", description="Docker's data root (for config.v2.json).")
    tag: str | None = Field(
        None,
        description="Docker log tag template for the record's tag: `{{.Name}}`, `{{.ID}}`, "
        "`{{.FullID}}`, `{{.ImageName}}`, `{{.ImageID}}`, or literal text.",
    )
    labels: bool = Field(True, description="Add `container.labels` (dots in keys become `_`).")

    @field_validator("tag")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None:
            TagTemplate(v)  # raises a clear error
        return v


class DockerMetadataTransform(Transform):
    config: DockerMetadataConfig

    def __init__(self, name: str, config: DockerMetadataConfig, ctx: Any) -> None:
        super().__init__(name, config, ctx)
        self.template = TagTemplate(config.tag) if config.tag else None
        self.docker: DockerMetadata | None = None
        # (shared fields in, container) -> (shared fields out, tag)
        self._cache: dict[tuple[bytes, int, str], tuple[Fields, str, ContainerInfo]] = {}

    async def start(self) -> None:
        c = self.config
        self.docker = await self.ctx.docker(c.source, c.docker_host, c.docker_root)

    def _container_fields(self, info: ContainerInfo) -> dict[str, Any]:
        ecs = info.ecs()
        if not self.config.labels:
            ecs["container"].pop("labels", None)
        return ecs

    def _enrich(self, meta: Fields, info: ContainerInfo, tag: str, own: dict[str, Any] | None) -> tuple[Fields, str]:
        key = (meta.encoded, id(info), tag if own is None else tag + repr(own))
        hit = self._cache.get(key)
        if hit is not None and hit[2] is info:
            return hit[0], hit[1]
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
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[key] = (out, tag, info)
        return out, tag

    async def process(self, batch: Batch) -> list[tuple[str | None, Batch]]:
        assert self.docker is not None
        cid = batch.meta.get("container.id")
        if cid:
            path = getattr(batch.columns, "path", None)  # a file source's columns know their file
            if path is None and batch.events:
                path = get_path(batch.events[0], "log.file.path")
            cdir = Path(path).parent if path else None
            info = await self.docker.lookup(cid, cdir)
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
            info = await self.docker.lookup(gid)
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
