"""Secrets people type: Argon2id hashing, the PIN/password policy, user-name rules, and
the lockout with backoff after repeated failures.

Time comes from an injectable `Clock` so tests never sleep. Field devices lose time, so
the lockout is robust to a wall clock that jumps: within one process the monotonic clock
decides; across a restart the stored wall-clock anchor is used, and if the wall clock is
now *before* the anchor (it jumped backwards) the lock is re-anchored to now, which keeps
the account locked for the full delay instead of unlocking it or locking it for a year.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
import unicodedata
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..errors import BadInput

# Argon2id with argon2-cffi's defaults (RFC 9106 low-memory profile: t=3, m=64 MiB, p=4):
# about 0.1 s per hash on the kit's 2-core CPU.
_HASHER = PasswordHasher()

MAX_SECRET_LENGTH = 256  # bounded work per attempt (Argon2 is fed the whole secret)
MAX_NAME_LENGTH = 64


class Busy(Exception):
    """The Argon2 queue is full (or the wait too long): try again shortly."""


class Argon2Gate:
    """One Argon2 computation at a time: on a 2-core kit a burst of sign-in attempts (or
    an attacker's flood) must queue rather than starve the web server and the DICOM
    receiver. Waiters are served by priority (0 first), then in arrival order; at most
    `max_waiting` wait, and a newcomer of better priority takes the place of the worst
    waiter, who gets `Busy`. So a flood can fill the queue but not delay, by more than
    one computation, someone the flood does not look like."""

    def __init__(self, max_waiting: int = 8, max_wait: float = 10.0):
        self.max_waiting, self.max_wait = max_waiting, max_wait
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: list[list] = []  # [priority, arrival, bumped]
        self._arrivals = 0

    def acquire(self, priority: int = 1) -> None:
        with self._cond:
            if not self._busy and not self._waiting:
                self._busy = True
                return
            me = [priority, self._arrivals, False]
            self._arrivals += 1
            if len(self._waiting) >= self.max_waiting:
                worst = max(self._waiting)
                if worst[:2] < me[:2]:
                    raise Busy("too many sign-ins at once")
                worst[2] = True
                self._waiting.remove(worst)
                self._cond.notify_all()
            self._waiting.append(me)
            deadline = time.monotonic() + self.max_wait
            while True:
                if me[2]:
                    raise Busy("too many sign-ins at once")
                if not self._busy and min(self._waiting) is me:
                    self._waiting.remove(me)
                    self._busy = True
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    self._waiting.remove(me)
                    self._cond.notify_all()
                    raise Busy("sign-in queue wait too long")
                self._cond.wait(left)

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def run(self, fn, priority: int = 1):
        self.acquire(priority)
        try:
            return fn()
        finally:
            self.release()


GATE = Argon2Gate()


def peppered(secret: str, pepper: bytes | None) -> str:
    """What Argon2 is fed: with the kit's pepper (a key derived from the data key, never on
    disk), HMAC-SHA256(pepper, secret). A hash taken away without the pepper cannot be
    brute-forced offline, however short the PIN."""
    if pepper is None:
        return secret
    return base64.b64encode(hmac.new(pepper, secret.encode("utf-8"), hashlib.sha256).digest()).decode()


def hash_secret(secret: str, pepper: bytes | None = None) -> str:
    return GATE.run(lambda: _HASHER.hash(peppered(secret, pepper)), priority=0)


def verify_secret(stored_hash: str, secret: str, pepper: bytes | None = None, priority: int = 1) -> bool:
    """Constant-work check of `secret` against an Argon2 hash; never raises on a mismatch
    (raises `Busy` when the queue has no room for this priority)."""
    if not isinstance(secret, str) or len(secret) > MAX_SECRET_LENGTH:
        return False
    try:
        return GATE.run(lambda: _HASHER.verify(stored_hash, peppered(secret, pepper)), priority)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:  # (cheap: parses the parameters only)
    try:
        return _HASHER.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True


# A dummy hash so that signing in as an unknown user costs the same as a wrong PIN
# (no user-name enumeration by timing). Computed lazily: hashing costs ~0.1 s.
_dummy_lock = threading.Lock()
_dummy_hash: str | None = None


def burn_verify(secret: str, priority: int = 1) -> None:
    global _dummy_hash
    with _dummy_lock:
        if _dummy_hash is None:
            _dummy_hash = hash_secret("fieldkit-no-such-user")
    verify_secret(_dummy_hash, secret, priority=priority)


# ----------------------------------------------------------------------------- policy

def secret_policy(config) -> dict:
    """The configured PIN/password lengths, as keyword arguments for `check_secret` callers."""
    return {"min_pin": int(config.get("security.pin_min_length", 6)),
            "min_password": int(config.get("security.password_min_length", 10))}


def check_secret(secret: str, *, min_pin: int = 6, min_password: int = 10) -> str:
    """Validate a new PIN or password and return it NFKC-normalised.

    A PIN is all digits, at least `min_pin` long; anything else is a password of at
    least `min_password` characters. Control and format characters are refused (they
    are invisible on a tablet keyboard and a classic way to make two secrets look alike)."""
    if not isinstance(secret, str):
        raise BadInput("the PIN or password must be text")
    secret = unicodedata.normalize("NFKC", secret)
    if len(secret) > MAX_SECRET_LENGTH:
        raise BadInput(f"the PIN or password is longer than {MAX_SECRET_LENGTH} characters")
    if any(unicodedata.category(c)[0] == "C" for c in secret):
        raise BadInput("the PIN or password contains control or invisible characters")
    if secret.isdigit() and secret.isascii():
        if len(secret) < min_pin:
            raise BadInput(f"a PIN must have at least {min_pin} digits")
        if len(set(secret)) == 1 or secret in "0123456789012345678" or secret in "9876543210987654321":
            raise BadInput("this PIN is too easy to guess (repeated or sequential digits)")
        return secret
    if len(secret) < min_password:
        raise BadInput(f"a password must have at least {min_password} characters (or use a PIN of digits)")
    if secret.strip() != secret:
        raise BadInput("a password must not start or end with a space")
    return secret


def normalize_login_secret(secret: str) -> str:
    """What a typed secret is compared as (same normalisation as at creation)."""
    return unicodedata.normalize("NFKC", secret) if isinstance(secret, str) else ""


def check_username(name: str) -> str:
    """Validate a user name and return it NFKC-normalised.

    Letters and digits of any script plus '.', '_', '-'; no spaces, no control, format
    (zero-width, bidi override) or symbol characters; 1 to 64 characters."""
    if not isinstance(name, str):
        raise BadInput("the user name must be text")
    norm = unicodedata.normalize("NFKC", name)
    if not norm:
        raise BadInput("the user name is empty")
    if len(norm) > MAX_NAME_LENGTH:
        raise BadInput(f"the user name is longer than {MAX_NAME_LENGTH} characters")
    for c in norm:
        if not (c.isalnum() or c in "._-"):
            raise BadInput(f"the user name contains a character that is not allowed: {ascii(c)} "
                           "(use letters, digits, '.', '_' or '-')")
    return norm


def username_key(name: str) -> str:
    """The key two names are compared by: 'Anna' and 'ANNA' are the same account."""
    return unicodedata.normalize("NFKC", name).casefold()


# ----------------------------------------------------------------------------- lockout

class Clock:
    """Wall time (persisted anchors) and monotonic time (in-process durations)."""

    def wall(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = Clock()


@dataclass(frozen=True)
class LockoutPolicy:
    free_failures: int = 5  # wrong attempts allowed before the first lock
    base_delay: float = 30.0  # first lock, seconds; doubles with every further failure
    max_delay: float = 900.0

    def delay_after(self, failures: int) -> float:
        if failures < self.free_failures:
            return 0.0
        return min(self.base_delay * (2 ** (failures - self.free_failures)), self.max_delay)


class Lockout:
    """Lockout state machine over a small dict kept with the account:
    {"failures": n, "locked_at": wall seconds, "delay": seconds}.

    `remaining(key, state)` says how long the account stays locked (0.0: free) and may
    return a re-anchored state for the caller to persist."""

    def __init__(self, policy: LockoutPolicy | None = None, clock: Clock | None = None):
        self.policy = policy or LockoutPolicy()
        self.clock = clock or SYSTEM_CLOCK
        self._mono: dict[tuple[str, float], float] = {}  # (key, locked_at) -> monotonic at lock
        self._lock = threading.Lock()

    def remaining(self, key: str, state: dict | None) -> tuple[float, dict | None]:
        state = state or {}
        delay = float(state.get("delay") or 0.0)
        if delay <= 0:
            return 0.0, None
        locked_at = float(state.get("locked_at") or 0.0)
        with self._lock:
            mono_at = self._mono.get((key, locked_at))
        if mono_at is not None:
            # Same process that locked it: the monotonic clock cannot jump.
            return max(0.0, delay - (self.clock.mono() - mono_at)), None
        now = self.clock.wall()
        if now < locked_at:
            # The wall clock went backwards: restart the delay from "now" rather than
            # trusting either clock. Never unlocks early, never locks for the jump's size.
            new_state = dict(state, locked_at=now)
            with self._lock:
                self._mono[(key, now)] = self.clock.mono()
            return delay, new_state
        return max(0.0, delay - (now - locked_at)), None

    def failure(self, key: str, state: dict | None) -> dict:
        failures = int((state or {}).get("failures") or 0) + 1
        delay = self.policy.delay_after(failures)
        new = {"failures": failures, "locked_at": 0.0, "delay": 0.0}
        if delay > 0:
            new["locked_at"] = self.clock.wall()
            new["delay"] = delay
            with self._lock:
                self._mono[(key, new["locked_at"])] = self.clock.mono()
                if len(self._mono) > 10_000:  # bounded: oldest anchors fall back to wall time
                    for k in list(self._mono)[:5_000]:
                        del self._mono[k]
        return new

    @staticmethod
    def success() -> dict:
        return {"failures": 0, "locked_at": 0.0, "delay": 0.0}
