"""Configuration of the ``elasticsearch`` sink (Elasticsearch 8/9 and OpenSearch 2)."""

from __future__ import annotations

import re
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from collector.component import ClientTls, SinkConfig
from collector.retry import RetryConfig

_TEMPLATE_FIELD = re.compile(r"\{\{\s*([A-Za-z0-9_@.]+)\s*\}\}")
_STRFTIME = re.compile(r"%[Ymd]")


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    user: str | None = Field(None, description="Basic auth user.")
    password: SecretStr | None = Field(None, description="Basic auth password (use ${ENV_VAR}).")
    api_key: SecretStr | None = Field(None, description="API key: the encoded form, or `id:api_key` (encoded for you).")
    bearer: SecretStr | None = Field(None, description="Bearer token.")

    @model_validator(mode="after")
    def _one(self) -> AuthConfig:
        kinds = [k for k in ("user", "api_key", "bearer") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise ValueError(f"choose one of user/password, api_key, bearer (got {', '.join(kinds)})")
        if (self.user is None) != (self.password is None):
            raise ValueError("basic auth needs both `user` and `password`")
        return self


TlsConfig = ClientTls  # the one client TLS shape (collector/component.py)


class BatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_bytes: int = Field(
        2 << 20,
        ge=1 << 10,
        le=100 << 20,
        description="Bulk request size target (bytes); 2 MiB keeps memory low, 5-10 MiB suits a remote cluster.",
    )
    max_events: int = Field(10_000, ge=1, description="Most records in one bulk request.")
    timeout: float = Field(1.0, gt=0, description="Send a partial bulk request after this many seconds.")


class ElasticsearchConfig(SinkConfig):
    type: Literal["elasticsearch"]
    destination_keys: ClassVar[tuple[str, ...] | None] = ("hosts", "mode", "data_stream", "index")
    hosts: list[str] = Field(
        min_length=1,
        description="Engine URLs (http(s)://host:9200[/prefix]); several = failover and load spreading.",
    )
    mode: Literal["data_stream", "index"] = Field(
        "data_stream",
        description="`data_stream`: create into a data stream; `index`: create into (dated) indices, "
        "for engines without data streams.",
    )
    data_stream: str = Field(
        "logs-docker-default",
        description="Data stream name; may use record fields: `logs-docker-{{container.compose.project}}`.",
    )
    index: str = Field(
        "logs-docker-%Y.%m.%d",
        description="(mode: index) index name; `%Y %m %d` from the record's @timestamp, `{{field}}` from fields.",
    )
    fallback: str = Field("default", description="Value used for a `{{field}}` the record does not have.")
    pipeline: str | None = Field(None, description="Ingest pipeline to run on each document.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Credentials.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings for https hosts.")
    compression: Literal["none", "gzip"] = Field("none", description="Compress request bodies.")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="How records are grouped into requests.")
    concurrency: int = Field(2, ge=1, le=32, description="Bulk requests in flight at once.")
    request_timeout: float = Field(60.0, gt=0, description="Seconds to wait for a bulk response.")
    unhealthy_after: float = Field(
        60.0,
        gt=0,
        description="Seconds of failing to deliver after which GET /health reports this sink unhealthy (503).",
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="Backoff between attempts (collector/retry.py). `max_elapsed`: records still failing after "
        "that long go to the dead letter with the last error; unset (the default): retried until delivered.",
    )
    manage_template: bool = Field(
        True,
        description="Install the index template (as `collector setup` does) when it is missing, so "
        "a data stream gets our mappings.",
    )
    dead_letter_index: str | None = Field(
        None,
        description="Also write rejected records (as text, with the reason) to this index; they always go "
        "to the dead-letter file.",
    )

    @field_validator("hosts")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for h in v:
            u = urlsplit(h)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError(f"not an http(s) URL: {h!r}")
            if u.password:
                raise ValueError(f"put credentials in `auth`, not in the URL ({u.scheme}://{u.hostname})")
        return v

    @model_validator(mode="after")
    def _names(self) -> ElasticsearchConfig:
        name = self.data_stream if self.mode == "data_stream" else self.index
        static = _TEMPLATE_FIELD.sub("x", _STRFTIME.sub("x", name))
        if static != static.lower() or re.search(r'[\\/*?"<>| ,#:]', static) or static.startswith(("-", "_", "+")):
            raise ValueError(f'{name!r} is not a valid index name (lowercase, no \\ / * ? " < > | , # : space)')
        if self.mode == "data_stream" and _STRFTIME.search(self.data_stream):
            raise ValueError("a data stream rolls over by itself: no %Y/%m/%d in `data_stream`")
        return self

    def target(self) -> str:
        return self.data_stream if self.mode == "data_stream" else self.index

    def template_fields(self) -> list[str]:
        return _TEMPLATE_FIELD.findall(self.target())
