"""The HTTP side: one transport for Elasticsearch 8, 9 and OpenSearch 2 alike.

The ``elasticsearch`` client package refuses servers that do not send
``X-Elastic-Product`` (OpenSearch), and client 9 sends ``compatible-with=9`` headers that an
8.x server rejects.  Its transport layer, ``elastic_transport``, has neither rule and gives
us what we want from it: a node pool with failover and dead-node backoff, keep-alive
connection pools, TLS options, gzip.  We speak plain ``application/json`` /
``application/x-ndjson``, which every version and both products accept.

Credentials live only in request headers; every message names the host as
``scheme://host:port`` and never carries them.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from elastic_transport import (
    ConnectionError as TransportConnectionError,
)
from elastic_transport import (
    ConnectionTimeout,
    NodeConfig,
    SerializationError,
    TlsError,
    Transport,
    TransportError,
)
from elastic_transport import (
    JsonSerializer as _JsonSerializer,
)
from elastic_transport.client_utils import url_to_node_config

from collector.sinks.elasticsearch.config import AuthConfig, ElasticsearchConfig, TlsConfig

log = logging.getLogger("collector.sinks.elasticsearch")


class EngineUnavailableError(Exception):
    """No answer from any host (refused, timed out, TLS failure)."""

    def __init__(self, host: str, cause: str) -> None:
        super().__init__(f"{host}: {cause}")
        self.host = host
        self.cause = cause


_BULK_OK = (b'{"errors":false', b'{"took":')


class _OrjsonSerializer(_JsonSerializer):
    mimetype: ClassVar[str] = "application/json"

    def loads(self, data: bytes) -> Any:
        # a bulk answer without errors says so in its first bytes: skip decoding its items
        # (one per record: megabytes per request when the engine ignores filter_path)
        if data.startswith(_BULK_OK) and b'"errors":false' in data[:64]:
            return {"errors": False}
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise SerializationError(f"not JSON: {data[:200]!r}", errors=(e,)) from None

    def dumps(self, data: Any) -> bytes:
        return data if isinstance(data, bytes) else orjson.dumps(data)


class _PassThrough(_OrjsonSerializer):
    """Bodies we encoded ourselves go out as they are (no copy, no re-encoding)."""

    mimetype: ClassVar[str] = "application/x-ndjson"

    def dumps(self, data: Any) -> bytes:
        assert isinstance(data, bytes)
        return data


class _Text(_OrjsonSerializer):
    mimetype: ClassVar[str] = "text/plain"

    def loads(self, data: bytes) -> Any:
        return data.decode("utf-8", "replace")


SERIALIZERS = {
    "application/json": _OrjsonSerializer(),
    "application/x-ndjson": _PassThrough(),
    "application/vnd.elasticsearch+json": _OrjsonSerializer(),
    "text/plain": _Text(),
}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any
    host: str


@dataclass(frozen=True, slots=True)
class EngineInfo:
    distribution: str  # "elasticsearch" | "opensearch"
    version: str
    major: int

    @property
    def data_streams(self) -> bool:
        if self.distribution == "opensearch":
            return self.major >= 1
        return (self.major, int(self.version.split(".")[1] or 0)) >= (7, 9)

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"


def auth_headers(auth: AuthConfig) -> dict[str, str]:
    if auth.user is not None and auth.password is not None:
        token = base64.b64encode(f"{auth.user}:{auth.password.get_secret_value()}".encode()).decode()
        return {"authorization": f"Basic {token}"}
    if auth.api_key is not None:
        key = auth.api_key.get_secret_value()
        if ":" in key:
            key = base64.b64encode(key.encode()).decode()
        return {"authorization": f"ApiKey {key}"}
    if auth.bearer is not None:
        return {"authorization": f"Bearer {auth.bearer.get_secret_value()}"}
    return {}


def display_host(url: str) -> str:
    nc = url_to_node_config(url, use_default_ports_for_scheme=True)
    return f"{nc.scheme}://{nc.host}:{nc.port}{nc.path_prefix}"


def node_configs(
    hosts: list[str], auth: AuthConfig, tls: TlsConfig, gzip: bool, timeout: float, connections: int
) -> list[NodeConfig]:
    headers = {"user-agent": "collector", **auth_headers(auth)}
    out = []
    for h in hosts:
        nc = url_to_node_config(h, use_default_ports_for_scheme=True)
        extra: dict[str, Any] = {
            "headers": headers,
            "http_compress": gzip,
            "request_timeout": timeout,
            "connections_per_node": connections,
        }
        if nc.scheme == "https":
            extra.update(
                verify_certs=tls.verify,
                ca_certs=tls.ca_file,
                client_cert=tls.cert_file,
                client_key=tls.key_file,
                ssl_show_warn=False,
            )
            if tls.fingerprint:
                extra["ssl_assert_fingerprint"] = tls.fingerprint
            if tls.server_name:
                extra["ssl_assert_hostname"] = tls.server_name
        out.append(dataclasses.replace(nc, **extra))
    return out


class EngineClient:
    """Blocking calls (run them in threads); thread-safe."""

    def __init__(
        self,
        hosts: list[str],
        auth: AuthConfig | None = None,
        tls: TlsConfig | None = None,
        gzip: bool = False,
        timeout: float = 60.0,
        connections: int = 4,
    ) -> None:
        self.hosts = [display_host(h) for h in hosts]
        self.transport = Transport(
            node_configs(hosts, auth or AuthConfig(), tls or TlsConfig(), gzip, timeout, connections),
            serializers=SERIALIZERS,
            max_retries=0,
            retry_on_timeout=False,
            dead_node_backoff_factor=0.5,
            max_dead_node_backoff=30.0,
            meta_header=False,
        )

    @classmethod
    def from_config(cls, cfg: ElasticsearchConfig) -> EngineClient:
        return cls(cfg.hosts, cfg.auth, cfg.tls, cfg.compression == "gzip", cfg.request_timeout, cfg.concurrency + 1)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Response:
        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = content_type
            if not isinstance(body, bytes):
                body = orjson.dumps(body)
        try:
            resp = self.transport.perform_request(
                method, path, body=body, headers=headers, **({"request_timeout": timeout} if timeout else {})
            )
        except (TransportConnectionError, ConnectionTimeout, TlsError) as e:
            raise EngineUnavailableError(self._host_of(e), _cause(e)) from None
        except SerializationError as e:
            raise EngineUnavailableError(", ".join(self.hosts), f"unreadable answer: {e}") from None
        except TransportError as e:
            raise EngineUnavailableError(", ".join(self.hosts), _cause(e)) from None
        meta = resp.meta
        host = f"{meta.node.scheme}://{meta.node.host}:{meta.node.port}{meta.node.path_prefix}"
        return Response(meta.status, resp.body, host)

    def _host_of(self, e: Exception) -> str:
        return self.hosts[0] if len(self.hosts) == 1 else ", ".join(self.hosts)

    def info(self) -> EngineInfo:
        r = self.request("GET", "/")
        if r.status != 200 or not isinstance(r.body, dict):
            raise EngineUnavailableError(r.host, refusal(r))
        v = r.body.get("version") or {}
        number = str(v.get("number", "0.0.0"))
        dist = v.get("distribution") or "elasticsearch"
        return EngineInfo(dist, number, int(number.split(".", maxsplit=1)[0] or 0))

    def close(self) -> None:
        self.transport.close()


def _cause(e: Exception) -> str:
    text = str(getattr(e, "message", "") or e)
    low = text.lower()
    if "refused" in low:
        return "connection refused (is it running? is the port right?)"
    if isinstance(e, ConnectionTimeout) or "timed out" in low:
        return "timed out"
    if isinstance(e, TlsError) or "certificate" in low or "ssl" in low:
        return f"TLS error: {text.splitlines()[0][:200]}"
    if "name or service not known" in low or "nodename nor servname" in low or "resolution" in low:
        return "unknown host name"
    return text.splitlines()[0][:200] if text else type(e).__name__


def refusal(r: Response) -> str:
    """A human sentence for a non-2xx answer: status, error type and reason."""
    reason = ""
    body = r.body
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            reason = f"{err.get('type', '')}: {err.get('reason', '')}".strip(": ")
        elif err:
            reason = str(err)
    elif isinstance(body, str):
        reason = body[:200]
    hint = {
        401: "wrong credentials (check auth.user/password, api_key)",
        403: "not allowed (missing privileges, or the index is read-only)",
        404: "not found",
        429: "the engine is overloaded (too many requests)",
        503: "the engine is unavailable (cluster red or starting)",
    }.get(r.status, "")
    parts = [f"HTTP {r.status}", hint, reason]
    return " - ".join(p for p in parts if p)
