"""Bearer tokens for API and DICOMweb clients, and random secrets for sessions and CSRF.

A token is 256 random bits, shown once. The kit keeps only its SHA-256 digest: a token is
already high-entropy, so a slow hash adds nothing, and a digest lets the kit look a token
up in constant work without storing anything that would authenticate if the disk leaked.
The fixed prefix makes tokens easy to spot for people and for the log redactor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

TOKEN_PREFIX = "fkt_"
_TOKEN_BYTES = 32
# base64url of 32 bytes without padding is 43 characters
TOKEN_RE = re.compile(r"fkt_[A-Za-z0-9_-]{43}")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_token() -> str:
    """A fresh bearer token (plaintext; show it once, store `token_digest`)."""
    return TOKEN_PREFIX + _b64(secrets.token_bytes(_TOKEN_BYTES))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def looks_like_token(value: str) -> bool:
    return isinstance(value, str) and TOKEN_RE.fullmatch(value) is not None


def new_id(nbytes: int = 8) -> str:
    """A short random identifier for listing and revoking (not a secret)."""
    return secrets.token_hex(nbytes)


def new_secret(nbytes: int = 32) -> str:
    """A random URL-safe secret (session ids, CSRF tokens)."""
    return _b64(secrets.token_bytes(nbytes))


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))
