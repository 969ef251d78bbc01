"""What a listener is told: its limits (:class:`ListenerLimits`) and its ``listen`` URLs
(:func:`parse_listen`, :class:`ListenerConfig`), and the API's one ``tcp://`` URL."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from collector.component import ComponentConfig, ServerTls


class ListenerLimits(ComponentConfig):
    """The limits of a stream listener (the ``fluent_forward``, ``gelf`` and ``syslog`` sources)."""

    max_connections: int = Field(
        1024,
        ge=1,
        description="Connections served at once; past it the longest idle one (see idle_timeout) makes room, "
        "or the new one is refused (counted). Also kept below the process's open-files limit.",
    )
    max_connections_per_peer: int = Field(
        512,
        ge=1,
        description="Connections from one client address at once (a unix socket's peer is its uid, where known); "
        "past it that address's longest idle one (see idle_timeout) makes room, or the new one is refused. "
        "Docker's fluentd and syslog drivers open one per container: raise it for more containers on one host.",
    )
    handshake_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to complete the TLS handshake (and to answer HELO)."
    )
    idle_timeout: float = Field(
        15.0,
        gt=0,
        description="A connection silent this long may be closed to make room when the listener is full.",
    )
    read_timeout: float = Field(
        30.0, gt=0, description="Seconds a message may take to arrive whole once its first byte came (slowloris)."
    )
    max_buffered_bytes: int = Field(
        64 << 20,
        ge=1 << 20,
        description="Bytes all connections may hold for messages still arriving (each holds up to 32 KiB free "
        "of it); the connection that would go past it is closed.",
    )


# -- listen URLs -------------------------------------------------------------------------------------
SCHEMES = ("udp", "tcp", "tls", "unix", "unixgram")


@dataclass(frozen=True)
class Listen:
    """One ``listen`` URL, parsed."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def stream(self) -> bool:
        return self.scheme in ("tcp", "tls", "unix")


def parse_listen(url: str, schemes: Iterable[str] = SCHEMES) -> Listen:
    """``udp://127.0.0.1:5514``, ``tcp://[::1]:5514``, ``tls://0.0.0.0:6514``, ``unix:///run/x.sock``
    (stream) or ``unixgram:///dev/log`` (datagram); ``schemes`` are those the listener serves.
    Every source's ``listen`` is a list of these."""
    allowed = tuple(schemes)
    u = urlsplit(url)
    if u.scheme not in allowed:
        forms = [f"{s}:///PATH" if s in ("unix", "unixgram") else f"{s}://HOST:PORT" for s in allowed]
        hint = ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else forms[0]
        raise ValueError(f"{url!r}: listen on {hint}")
    if u.scheme in ("unix", "unixgram"):
        path = (u.netloc + u.path) if u.netloc else u.path
        if not path.startswith("/"):
            raise ValueError(f"{url!r}: expected {u.scheme}:///absolute/path")
        return Listen(u.scheme, path=path)
    try:
        port = u.port
    except ValueError:
        port = None
    if port is None or not u.hostname or u.path not in ("", "/"):
        raise ValueError(f"{url!r}: expected {u.scheme}://HOST:PORT")
    return Listen(u.scheme, u.hostname, port)


class ListenerConfig(ListenerLimits):
    """A source that listens: its ``listen`` URLs (one or a list; the schemes it serves are
    ``listen_schemes``), the ``tls`` a ``tls://`` one needs, and the limits of its streams."""

    listen_schemes: ClassVar[tuple[str, ...]] = SCHEMES
    listen: list[str] = Field(min_length=1, description="Addresses to listen on (URLs).")
    tls: ServerTls | None = Field(None, description="Certificate and key for `tls://` listeners.")

    @field_validator("listen", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("listen")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            parse_listen(url, cls.listen_schemes)
        return v

    @model_validator(mode="after")
    def _tls_needed(self) -> Self:
        if self.tls is None and any(li.scheme == "tls" for li in self.listens):
            raise ValueError("a tls:// listener needs `tls: {cert_file, key_file}`")
        return self

    @property
    def listens(self) -> list[Listen]:
        return [parse_listen(u, self.listen_schemes) for u in self.listen]


API_SCHEMES = ("tcp",)  # api.listen (collector/config/) is one tcp:// URL ...
DEFAULT_API_LISTEN = "tcp://127.0.0.1:8686"


def api_url(listen: str) -> str:
    """... and this is the ``http://`` address a client (health, top, tap) asks it on (a wildcard
    address is asked on loopback)."""
    li = parse_listen(listen, API_SCHEMES)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(li.host, li.host)
    return f"http://[{host}]:{li.port}" if ":" in host else f"http://{host}:{li.port}"
