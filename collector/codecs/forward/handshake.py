"""The handshake (``HELO``, ``PING``, ``PONG``: shared key, optional user and password) and the
ack a server sends back; what a client reads back (:func:`unpack_all`)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping
from typing import Any

import msgpack

# -- acks -----------------------------------------------------------------------------------------
_ACK_PACKER = msgpack.Packer(unicode_errors="surrogateescape")


def ack_response(chunk: str) -> bytes:
    """``{"ack": chunk}``, the chunk echoed byte for byte."""
    return _ACK_PACKER.pack({"ack": chunk})


# -- handshake (shared key, optional user/password) ----------------------------------------------
def _b(v: str | bytes) -> bytes:
    return v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")


def digest(*parts: str | bytes) -> str:
    """sha512 hex digest of the concatenated parts (how every handshake value is made)."""
    h = hashlib.sha512()
    for p in parts:
        h.update(_b(p))
    return h.hexdigest()


def helo(nonce: bytes, auth_salt: bytes | str, keepalive: bool = True) -> bytes:
    """``["HELO", {"nonce": nonce, "auth": salt or "", "keepalive": bool}]``."""
    return msgpack.packb(["HELO", {"nonce": nonce, "auth": auth_salt, "keepalive": keepalive}], use_bin_type=True)


def check_ping(
    msg: Any,
    nonce: bytes,
    shared_key: str,
    auth_salt: bytes | None = None,
    users: Mapping[str, str] | None = None,
) -> tuple[bool, str, str | bytes, str]:
    """Validate a PING: ``(ok, reason, shared_key_salt, client_hostname)``.

    ``["PING", hostname, shared_key_salt, sha512_hex(salt + hostname + nonce + shared_key),
    username, sha512_hex(auth_salt + username + password)]``; the user part is checked only
    when ``users`` is given.
    """
    if type(msg) is not list or len(msg) != 6 or msg[0] != "PING":
        return False, "invalid ping message", b"", ""
    _, hostname, salt, key_digest, username, password_digest = msg
    if not all(isinstance(x, (str, bytes)) for x in (hostname, salt, key_digest, username, password_digest)):
        return False, "invalid ping message", b"", ""
    host = hostname if isinstance(hostname, str) else hostname.decode("utf-8", "replace")
    expected = digest(salt, hostname, nonce, shared_key)
    if not hmac.compare_digest(expected.encode(), _b(key_digest)):
        return False, "shared_key mismatch", salt, host
    if users:
        user = username if isinstance(username, str) else username.decode("utf-8", "replace")
        password = users.get(user)
        ok = password is not None and hmac.compare_digest(
            digest(auth_salt or b"", user, password).encode(), _b(password_digest)
        )
        if not ok:
            return False, "username/password mismatch", salt, host
    return True, "", salt, host


def pong(ok: bool, reason: str, salt: str | bytes, nonce: bytes, self_hostname: str, shared_key: str) -> bytes:
    """``["PONG", auth_result, reason, self_hostname, sha512_hex(salt + self_hostname + nonce + key)]``."""
    if not ok:
        return msgpack.packb(["PONG", False, reason, "", ""], use_bin_type=True)
    return msgpack.packb(
        ["PONG", True, "", self_hostname, digest(salt, self_hostname, nonce, shared_key)], use_bin_type=True
    )


def ping(
    nonce: bytes,
    shared_key: str,
    hostname: str,
    salt: bytes,
    username: str = "",
    password: str = "",
    auth_salt: bytes | str = b"",
) -> bytes:
    """A client's PING (for tests and the benchmark client)."""
    pw = digest(auth_salt, username, password) if username else ""
    return msgpack.packb(
        ["PING", hostname, salt, digest(salt, hostname, nonce, shared_key), username, pw], use_bin_type=True
    )


def unpack_all(data: bytes) -> Iterator[Any]:
    """The objects in ``data`` (what a client reads back: acks, HELO, PONG)."""
    u = msgpack.Unpacker(raw=False)
    u.feed(data)
    yield from u
