"""The optional shared-key handshake of Forward Protocol v1: HELO -> PING -> PONG.

The server opens with `["HELO", {"nonce", "auth", "keepalive"}]`; the client proves it
knows the key with `["PING", hostname, salt, sha512_hex(salt + hostname + nonce + key),
username, password]`; the server answers `["PONG", true, "", server_hostname,
sha512_hex(salt + server_hostname + nonce + key)]`, or `["PONG", false, reason, "", ""]`
and closes. User authentication (username/password) is not offered: HELO's `auth` is
empty, which tells clients to send empty credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any

NONCE_BYTES = 16


class HandshakeError(ValueError):
    """The PING is refused; the message is the PONG's reason."""


def exact_bytes(value: str | bytes) -> bytes:
    """The bytes the peer sent: str on a forward connection is decoded with surrogate
    escapes, which this undoes."""
    if type(value) is bytes:
        return value
    assert isinstance(value, str)
    return value.encode("utf-8", "surrogateescape")


def shared_key_digest(salt: bytes, hostname: bytes, nonce: bytes, shared_key: bytes) -> str:
    return hashlib.sha512(salt + hostname + nonce + shared_key).hexdigest()


def checked_ping(message: Any, nonce: bytes, shared_key: bytes) -> bytes:
    """The client's salt once its PING proves it knows the shared key."""
    if not (type(message) is list and len(message) == 6 and message[0] == "PING"):
        raise HandshakeError("invalid ping message")
    _, hostname, salt, digest = message[:4]
    if not (type(hostname) is str and type(salt) in (str, bytes) and type(digest) in (str, bytes)):
        raise HandshakeError("invalid ping message")
    salt_bytes = exact_bytes(salt)
    expected = shared_key_digest(salt_bytes, exact_bytes(hostname), nonce, shared_key)
    if not hmac.compare_digest(exact_bytes(digest), expected.encode("ascii")):
        raise HandshakeError("shared_key mismatch")
    return salt_bytes


@dataclass
class Handshake:
    """One connection's handshake, from HELO until its PONG."""

    shared_key: str
    hostname: str
    nonce: bytes = field(default_factory=lambda: os.urandom(NONCE_BYTES))
    refused: bool = False

    def helo(self) -> list[Any]:
        return ["HELO", {"nonce": self.nonce, "auth": "", "keepalive": True}]

    def answer(self, message: Any) -> tuple[list[Any], str | None]:
        """The PONG for the client's message, and the reason when it is refused."""
        key = self.shared_key.encode("utf-8")
        try:
            salt = checked_ping(message, self.nonce, key)
        except HandshakeError as exc:
            self.refused = True
            return ["PONG", False, str(exc), "", ""], str(exc)
        hostname = self.hostname.encode("utf-8")
        digest = shared_key_digest(salt, hostname, self.nonce, key)
        return ["PONG", True, "", self.hostname, digest], None
