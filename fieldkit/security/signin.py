"""Sign-in limits that an attacker on the kit's Wi-Fi cannot turn into a weapon.

Who may try, and how often, is decided here before any Argon2 work is spent:

- **per address**: a token bucket of attempts (not for an address that signed in lately:
  a shared tablet), and a block for the address that keeps guessing (`block_failures` failures within `block_window` seconds block it for
  `block_seconds`);
- **per account and address**: the backoff of `passwords.Lockout` (free failures, then a
  doubling delay). It is keyed by the address too, so guessing at an account from one
  address delays that address only: the account's owner, elsewhere, is never kept out;
- **per account**: a token bucket shared by the addresses that failed lately (and have not
  signed in lately), so guessing from many addresses is slowed too, but only ever
  delayed; an address with no recent failure is never held back by it;
- **kit-wide for addresses that failed lately**: one more bucket, so that a flood from
  many addresses spends little Argon2 time and a real sign-in rarely waits behind one.

Addresses with a recent successful sign-in are served first by the Argon2 queue
(`passwords.Argon2Gate`), addresses with recent failures last.

Failures are counted, not written one by one: the first failure of an address in a
window is reported at once, the rest as one summary per address and window (`due()`),
so a flood costs a bounded number of audit events.

Pure and in memory (layer 1): the store decides what to record. Time comes from a
`passwords.Clock` (monotonic), so tests never sleep.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from . import passwords as pw

KNOWN = 0  # priority in the Argon2 queue: an address that signed in lately
CLEAN = 1  # an address with no recent failure
SUSPECT = 2  # an address with recent failures

_KEPT = 4096  # addresses and account keys remembered at most (oldest forgotten first)


@dataclass(frozen=True)
class SigninPolicy:
    address_per_minute: float = 20.0
    block_failures: int = 10
    block_window: float = 600.0
    block_seconds: float = 300.0
    account_per_minute: float = 12.0
    suspect_per_minute: float = 20.0
    known_seconds: float = 86400.0  # an address that signed in within this is "known"
    audit_window: float = 60.0
    lockout: pw.LockoutPolicy = field(default_factory=pw.LockoutPolicy)

    @classmethod
    def from_config(cls, cfg) -> "SigninPolicy":
        return cls(address_per_minute=float(cfg.get("security.login_address_per_minute", 20)),
                   block_failures=int(cfg.get("security.login_address_block_failures", 10)),
                   block_seconds=float(cfg.get("security.login_address_block_seconds", 300)),
                   account_per_minute=float(cfg.get("security.login_account_per_minute", 12)),
                   suspect_per_minute=float(cfg.get("security.login_suspect_per_minute", 20)),
                   audit_window=float(cfg.get("security.login_audit_window_seconds", 60)),
                   lockout=pw.LockoutPolicy(free_failures=int(cfg.get("security.login_free_failures", 5)),
                                            base_delay=float(cfg.get("security.login_backoff_seconds", 30.0)),
                                            max_delay=float(cfg.get("security.login_backoff_max_seconds", 900.0))))


@dataclass(frozen=True)
class Admission:
    ok: bool
    reason: str = ""  # why refused: "address blocked", "too many attempts", "locked out"
    retry_after: float = 0.0
    priority: int = CLEAN


class _Bucket:
    """A token bucket: `capacity` attempts at once, refilled at `rate` per second."""

    __slots__ = ("tokens", "at")

    def __init__(self, capacity: float, now: float):
        self.tokens, self.at = capacity, now

    def take(self, capacity: float, rate: float, now: float) -> float:
        """Take one token; 0.0 when taken, else the seconds until one is there."""
        self.tokens = min(capacity, self.tokens + max(0.0, now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate if rate > 0 else 3600.0


def _capacity(per_minute: float) -> float:
    return max(3.0, per_minute / 4)


class _Window:
    __slots__ = ("start", "count", "reported", "accounts", "reasons")

    def __init__(self, start: float):
        self.start, self.count, self.reported = start, 0, 0
        self.accounts: list[str] = []
        self.reasons: Counter = Counter()


class SigninGuard:
    def __init__(self, policy: SigninPolicy | None = None, clock: pw.Clock | None = None):
        self.policy = policy or SigninPolicy()
        self.clock = clock or pw.SYSTEM_CLOCK
        self.lockout = pw.Lockout(self.policy.lockout, self.clock)
        self._lock = threading.Lock()
        self._addr_bucket: OrderedDict[str, _Bucket] = OrderedDict()
        self._acct_bucket: OrderedDict[str, _Bucket] = OrderedDict()
        self._addr_failures: OrderedDict[str, list[float]] = OrderedDict()  # recent failure times
        self._blocked: OrderedDict[str, float] = OrderedDict()  # address -> mono time the block ends
        self._pair: OrderedDict[tuple[str, str], dict] = OrderedDict()  # (account, address) -> lockout state
        self._known: OrderedDict[str, float] = OrderedDict()  # address -> mono time of its last success
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._inflight: Counter = Counter()  # (account, address) -> attempts being checked now
        self._suspects = _Bucket(_capacity(self.policy.suspect_per_minute), self.clock.mono())

    @staticmethod
    def _remember(table: OrderedDict, key, value) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > _KEPT:
            table.popitem(last=False)

    def _is_known(self, address: str, now: float) -> bool:
        at = self._known.get(address)
        return at is not None and now - at < self.policy.known_seconds

    def _recent_failures(self, address: str, now: float) -> list[float]:
        times = [t for t in self._addr_failures.get(address, ()) if now - t < self.policy.block_window]
        if times:
            self._addr_failures[address] = times
        else:
            self._addr_failures.pop(address, None)
        return times

    def priority(self, address: str) -> int:
        now = self.clock.mono()
        with self._lock:
            if self._is_known(address, now):
                return KNOWN
            return SUSPECT if self._recent_failures(address, now) else CLEAN

    def admit(self, address: str, account: str) -> Admission:
        """May `address` try to sign in to `account` now? Refusals cost no Argon2 work."""
        p = self.policy
        now = self.clock.mono()
        with self._lock:
            until = self._blocked.get(address)
            if until is not None:
                if now < until:
                    return Admission(False, "address blocked", until - now)
                del self._blocked[address]
            state = self._pair.get((account, address))
        remaining, reanchored = self.lockout.remaining(f"{account}\0{address}", state)
        with self._lock:
            if reanchored is not None:
                self._pair[(account, address)] = reanchored
            if remaining > 0:
                return Admission(False, "locked out", remaining)
            known = self._is_known(address, now)
            if not known:  # a shared tablet that signs people in all day is not held back
                bucket = self._addr_bucket.get(address)
                if bucket is None:
                    bucket = _Bucket(_capacity(p.address_per_minute), now)
                wait = bucket.take(_capacity(p.address_per_minute), p.address_per_minute / 60, now)
                self._remember(self._addr_bucket, address, bucket)
                if wait > 0:
                    return Admission(False, "too many attempts", wait)
            # Attempts being checked count as possible failures: parallel guesses from one
            # address cannot outrun the backoff.
            failures = int((state or {}).get("failures") or 0)
            if self._inflight[(account, address)] >= max(1, p.lockout.free_failures - failures):
                return Admission(False, "locked out", 1.0)
            suspect = not known and bool(self._recent_failures(address, now))
            if suspect:
                capacity = max(float(p.lockout.free_failures), _capacity(p.account_per_minute))
                bucket = self._acct_bucket.get(account)
                if bucket is None:
                    bucket = _Bucket(capacity, now)
                wait = bucket.take(capacity, p.account_per_minute / 60, now)
                self._remember(self._acct_bucket, account, bucket)
                if wait > 0:
                    return Admission(False, "too many attempts on this account", wait)
                wait = self._suspects.take(_capacity(p.suspect_per_minute), p.suspect_per_minute / 60, now)
                if wait > 0:
                    return Admission(False, "too many attempts", wait)
            prio = KNOWN if known else (SUSPECT if suspect else CLEAN)
            self._inflight[(account, address)] += 1
        return Admission(True, priority=prio)

    def done(self, address: str, account: str) -> None:
        """An admitted attempt ended without a verdict on the secret (queue full)."""
        with self._lock:
            self._release(address, account)

    def _release(self, address: str, account: str) -> None:
        pair = (account, address)
        if self._inflight[pair] <= 1:
            self._inflight.pop(pair, None)
        else:
            self._inflight[pair] -= 1

    def failed(self, address: str, account: str) -> float:
        """A wrong secret: back off this account for this address, count towards the
        address block. Returns the delay now imposed on this pair (0.0: none yet)."""
        p = self.policy
        now = self.clock.mono()
        with self._lock:  # (one read-modify-write: parallel failures all count)
            new_state = self.lockout.failure(f"{account}\0{address}", self._pair.get((account, address)))
            self._release(address, account)
            self._remember(self._pair, (account, address), new_state)
            times = self._recent_failures(address, now) + [now]
            self._remember(self._addr_failures, address, times[-max(1, p.block_failures):])
            if len(times) >= p.block_failures:
                self._remember(self._blocked, address, now + p.block_seconds)
        return float(new_state["delay"])

    def succeeded(self, address: str, account: str) -> None:
        now = self.clock.mono()
        with self._lock:
            self._release(address, account)
            self._pair.pop((account, address), None)
            self._remember(self._known, address, now)

    def clear_account(self, account: str) -> None:
        """An admin ended the account's lockouts (every address)."""
        with self._lock:
            for pair in [k for k in self._pair if k[0] == account]:
                del self._pair[pair]
            self._acct_bucket.pop(account, None)

    def locked_addresses(self, account: str) -> int:
        """How many addresses are currently backed off on this account."""
        with self._lock:
            pairs = [(k, dict(v)) for k, v in self._pair.items() if k[0] == account]
        return sum(1 for k, state in pairs if self.lockout.remaining(f"{k[0]}\0{k[1]}", state)[0] > 0)

    # --------------------------------------------------------------------- audit compaction

    def note(self, address: str, shown_name: str, reason: str) -> bool:
        """Count a refused or failed attempt. True when it should be audited on its own
        (the first of its address in the window); the rest come back from `due()`."""
        now = self.clock.mono()
        with self._lock:
            w = self._windows.get(address)
            first = w is None
            if first:
                if len(self._windows) >= _KEPT:  # bounded: the oldest window is reported early
                    old_addr = next(iter(self._windows))
                    self._windows[old_addr].start = -float("inf")
                    self._windows.move_to_end(old_addr, last=False)
                w = _Window(now)
                self._windows[address] = w
            w.count += 1
            if first:
                w.reported = 1
            if shown_name and shown_name not in w.accounts and len(w.accounts) < 8:
                w.accounts.append(shown_name)
            w.reasons[reason] += 1
            return first

    def due(self, flush_all: bool = False) -> list[dict]:
        """Summaries of the windows that ended (or all of them): one per address, with
        the number of attempts not yet reported, the accounts tried and the reasons."""
        now = self.clock.mono()
        out = []
        with self._lock:
            for address in list(self._windows):
                w = self._windows[address]
                if not flush_all and now - w.start < self.policy.audit_window:
                    continue
                del self._windows[address]
                unreported = w.count - w.reported
                if unreported > 0:
                    out.append({"remote": address, "count": unreported, "accounts": ", ".join(w.accounts),
                                "reasons": ", ".join(f"{r}: {n}" for r, n in w.reasons.most_common(4)),
                                "window_seconds": round(min(now - w.start, 86400.0), 1)})
        return out
