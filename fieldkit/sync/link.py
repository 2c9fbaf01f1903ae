"""Is there a link to the hospital, and how long to wait when there is not.

The probe is a TCP connect to the hospital's host and port: a few hundred bytes, no TLS
handshake, no request. It says "something answers there"; whether that something is a
DICOMweb service with our credentials is learned from the first real request.
Backoff is exponential with full jitter (so a fleet of kits coming back at once does not
hammer the hospital), capped, and reset by the first success.
"""

from __future__ import annotations

import random
import socket
import time
from urllib.parse import urlsplit


def endpoint_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"hospital URL must be http(s)://host[:port]/path, got {url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def probe(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """(up, reason). Never raises for network trouble."""
    try:
        host, port = endpoint_address(url)
    except ValueError as exc:
        return False, str(exc)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, "link up"
    except socket.timeout:
        return False, f"no answer from {host}:{port} within {timeout:g}s"
    except OSError as exc:
        return False, f"cannot reach {host}:{port}: {exc.strerror or exc.__class__.__name__}"


class Backoff:
    """Full-jitter exponential backoff: wait uniform(0, min(cap, base * 2**n))."""

    def __init__(self, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.failures = 0
        self.rng = rng or random.Random()
        self.until = 0.0

    def failure(self, at_least: float = 0.0) -> float:
        """Record a failure; returns the delay chosen (at least `at_least`, e.g. Retry-After)."""
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        delay = max(at_least, self.rng.uniform(self.base / 2, ceiling))
        self.until = time.monotonic() + delay
        return delay

    def success(self) -> None:
        self.failures = 0
        self.until = 0.0

    def remaining(self) -> float:
        return max(0.0, self.until - time.monotonic())
