"""Authenticated encryption for everything the kit keeps at rest.

AES-256-GCM from `cryptography`, random 96-bit nonces, and per-purpose subkeys derived
with HKDF from the one data key, so that a record sealed for the database can never be
passed off as a blob chunk (and vice versa). Associated data binds a sealed record to
where it belongs (file, position), so records cannot be moved or reordered unnoticed.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32

__all__ = ["InvalidTag", "Sealer", "derive_subkey", "random_key", "NONCE_SIZE", "TAG_SIZE"]


def random_key() -> bytes:
    return os.urandom(KEY_SIZE)


def derive_subkey(data_key: bytes, purpose: str) -> bytes:
    """A key for one purpose ("db", "blob", "blob-id", "audit", …) from the data key."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None,
                info=b"fieldkit/" + purpose.encode()).derive(data_key)


class Sealer:
    """Seal and open byte strings with one AES-256-GCM key."""

    overhead = NONCE_SIZE + TAG_SIZE

    def __init__(self, key: bytes):
        if len(key) != KEY_SIZE:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes = b"") -> bytes:
        """Raises InvalidTag when the bytes were changed, truncated or moved."""
        if len(sealed) < self.overhead:
            raise InvalidTag()
        return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)


def keyed_digest(key: bytes, data_chunks) -> str:
    """HMAC-SHA256 of a stream: a content address that reveals nothing without the key."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for chunk in data_chunks:
        mac.update(chunk)
    return mac.hexdigest()
