"""Docker metadata as a pipeline service: what the ``docker_metadata`` transform and the sources
that name containers ask the context for (``ctx.service(DockerMetadataService)``), so the core
contract (collector/component.py) knows nothing about Docker."""

from __future__ import annotations

import contextlib

from collector.component import Context, Service
from collector.docker_api.info import MetadataOptions
from collector.docker_api.metadata import DockerMetadata, MetadataSource


class DockerMetadataService(Service):
    """The pipeline's :class:`DockerMetadata` caches: one per settings (one API client per Docker
    host), started on first request, closed when the pipeline ends."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._metas: dict[tuple[str, str | None, str, MetadataOptions | None], DockerMetadata] = {}

    async def metadata(
        self,
        source: MetadataSource = "auto",
        docker_host: str | None = None,
        docker_root: str | None = None,
        options: MetadataOptions | None = None,
    ) -> DockerMetadata:
        """The shared metadata cache for these settings; the pipeline's ``docker_root`` unless
        another is given."""
        ctx = self.ctx
        docker_root = docker_root or ctx.docker_root
        key = (source, docker_host, docker_root, options)
        meta = self._metas.get(key)
        if meta is None:
            errors = ctx.telemetry.errors

            def on_error(reason: str, n: int) -> None:
                errors.labels("docker_metadata", reason).inc(n)

            meta = self._metas[key] = DockerMetadata(source, docker_host, docker_root, options, on_error)
            await meta.start()
            ctx.telemetry.register_health(f"docker_metadata[{docker_root}]", meta.health)
            ctx.telemetry.register_docker(meta)
        return meta

    async def pipeline_metadata(self) -> DockerMetadata:
        """The Docker metadata the pipeline already uses (its docker_metadata transform's, started
        before any source), else one with the defaults: for a source that must name containers."""
        if self._metas:
            return next(iter(self._metas.values()))
        return await self.metadata()

    def container_name(self, cid: str) -> str:
        """A container's name if the pipeline's Docker metadata knows it already ("" otherwise:
        nothing is looked up or started)."""
        for meta in list(self._metas.values()):
            name = meta.known_name(cid)
            if name:
                return name
        return ""

    async def aclose(self) -> None:
        metas = list(self._metas.values())
        self._metas.clear()
        for meta in reversed(metas):
            with contextlib.suppress(Exception):
                await meta.close()
