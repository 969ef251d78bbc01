"""What a container is: :class:`ContainerInfo` (from an API answer or a ``config.v2.json``), which
ids may be looked up at all, the caps on what is copied into records, and the options of a
:class:`~collector.docker_api.metadata.DockerMetadata`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from collector.retry import RetryConfig

_FULL_ID = re.compile(r"[0-9a-f]{64}\Z")
_ID_OR_PREFIX = re.compile(r"[0-9a-f]{12,64}\Z")
MAX_LABEL_KEY_BYTES = 256  # a longer label key is dropped (flagged): keys are field names
ENTRY_OVERHEAD = 600  # approximate bytes of a cache entry besides its strings


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
    via: str = ""  # how we know it: "api", "files", or "none" (not found)
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
        n = ENTRY_OVERHEAD + len(self.id) + len(self.name) + len(self.image_name) + len(self.image_id)
        return n + len(self.hostname) + sum(len(k) + len(v) + 150 for k, v in self.labels.items())


def as_str(v: Any) -> str:
    return v if type(v) is str else ""


def as_dict(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, dict) else {}


def as_labels(v: Any) -> dict[str, str]:
    return {k: x for k, x in as_dict(v).items() if type(k) is str and type(x) is str}


def from_summary(s: Mapping[str, Any]) -> ContainerInfo:
    names = s.get("Names")
    name = names[0] if isinstance(names, list) and names else ""
    return ContainerInfo(
        id=as_str(s.get("Id")),
        name=as_str(name).lstrip("/"),
        image_name=as_str(s.get("Image")),
        image_id=as_str(s.get("ImageID")),
        labels=as_labels(s.get("Labels")),
        via="api",
    )


def from_inspect(d: Mapping[str, Any], via: str) -> ContainerInfo:
    """From an inspect answer or a ``config.v2.json`` (any shape: wrong types give empty fields)."""
    cfg = as_dict(d.get("Config"))
    return ContainerInfo(
        id=as_str(d.get("Id")) or as_str(d.get("ID")),
        name=as_str(d.get("Name")).lstrip("/"),
        image_name=as_str(cfg.get("Image")),
        image_id=as_str(d.get("Image")),
        labels=as_labels(cfg.get("Labels")),
        hostname=as_str(cfg.get("Hostname")),
        via=via,
    )


def cut_utf8(s: str, limit: int) -> tuple[str, bool]:
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
        fields[f], c = cut_utf8(getattr(info, f), max_field_bytes)
        cut |= c
    labels: dict[str, str] = {}
    room = max_labels_bytes
    items = sorted(info.labels.items(), key=lambda kv: not kv[0].startswith("com.docker.compose."))
    for k, value in items:
        if len(k.encode("utf-8", "surrogatepass")) > MAX_LABEL_KEY_BYTES:
            cut = True
            continue
        v, c = cut_utf8(value, max_field_bytes)
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
