"""Docker: container metadata (the Engine API and the containers' ``config.v2.json``), shared by
the components that need it through the pipeline's context (``ctx.service(DockerMetadataService)``).

- ``info.py``: :class:`ContainerInfo`, the ids that may be looked up, the caps, the options;
- ``client.py``: the Engine API client (timeouts, reconnects with backoff, ``/events``);
- ``files.py``: ``config.v2.json`` read safely and cached by mtime; which container we are;
- ``metadata.py``: :class:`DockerMetadata`, the bounded caches answering lookups;
- ``service.py``: :class:`DockerMetadataService`, one set of caches per pipeline.
"""

from collector.component import DEFAULT_DOCKER_ROOT
from collector.docker_api.client import api_socket_missing
from collector.docker_api.files import own_container_id, read_config_v2
from collector.docker_api.info import (
    ContainerInfo,
    MetadataOptions,
    cap_info,
    dedot,
    is_container_id,
    is_container_ref,
    split_image,
)
from collector.docker_api.metadata import DockerMetadata, MetadataSource
from collector.docker_api.service import DockerMetadataService

__all__ = [
    "DEFAULT_DOCKER_ROOT",
    "ContainerInfo",
    "DockerMetadata",
    "DockerMetadataService",
    "MetadataOptions",
    "MetadataSource",
    "api_socket_missing",
    "cap_info",
    "dedot",
    "is_container_id",
    "is_container_ref",
    "own_container_id",
    "read_config_v2",
    "split_image",
]
