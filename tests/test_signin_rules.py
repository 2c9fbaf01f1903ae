"""The sign-in rules and the Argon2 queue on their own (no server, no sleeping)."""

from __future__ import annotations

import threading

import pytest

from fieldkit.security import passwords as pw
from fieldkit.security.signin import CLEAN, KNOWN, SUSPECT, SigninGuard, SigninPolicy

from fixtures.security import FakeClock
from kitproc import wait_until


def _guard(**kw) -> tuple[SigninGuard, FakeClock]:
    clock = FakeClock()
    policy = SigninPolicy(**{"address_per_minute": 1000, "account_per_minute": 1000, "suspect_per_minute": 1000,
                             "block_failures": 1000, **kw})
    return SigninGuard(policy, clock), clock


def _fail(guard, address, account, n):
    for _ in range(n):
        assert guard.admit(address, account).ok
        guard.failed(address, account)


def test_a_backoff_holds_the_guessing_address_only():
    guard, clock = _guard(lockout=pw.LockoutPolicy(free_failures=3, base_delay=30, max_delay=60))
    _fail(guard, "10.0.0.66", "admin", 3)
    held = guard.admit("10.0.0.66", "admin")
    assert not held.ok and held.reason == "locked out" and held.retry_after == pytest.approx(30)
    assert guard.admit("10.0.0.7", "admin").ok  # the admin's own tablet
    assert guard.locked_addresses("admin") == 1
    clock.advance(31)
    assert guard.admit("10.0.0.66", "admin").ok  # it only ever delays


def test_an_address_that_keeps_guessing_is_blocked_on_every_account():
    guard, clock = _guard(block_failures=4, block_seconds=300)
    for n in range(4):
        _fail(guard, "10.0.0.66", f"user{n}", 1)
    blocked = guard.admit("10.0.0.66", "someone-else")
    assert not blocked.ok and blocked.reason == "address blocked" and blocked.retry_after == pytest.approx(300)
    assert guard.admit("10.0.0.7", "someone-else").ok
    clock.advance(301)
    assert guard.admit("10.0.0.66", "someone-else").ok


def test_address_bucket_spares_an_address_that_signed_in_lately():
    guard, clock = _guard(address_per_minute=12)  # a burst of 3, then one every 5 s
    assert all(guard.admit("10.0.0.5", f"u{n}").ok for n in range(3))
    slow = guard.admit("10.0.0.5", "u3")
    assert not slow.ok and slow.reason == "too many attempts" and slow.retry_after == pytest.approx(5)
    guard.succeeded("10.0.0.5", "u0")  # a shared tablet that signs people in all day
    assert all(guard.admit("10.0.0.5", f"v{n}").ok for n in range(10))


def test_addresses_with_failures_share_a_kit_wide_budget_and_queue_last():
    guard, clock = _guard(suspect_per_minute=12)
    for n in range(8):
        _fail(guard, f"10.0.1.{n}", "admin", 1)  # each address's first guess is clean
    assert guard.priority("10.0.1.0") == SUSPECT and guard.priority("10.0.0.9") == CLEAN
    admitted = [guard.admit(f"10.0.1.{n}", "admin").ok for n in range(8)]
    assert admitted.count(True) == 3  # the kit-wide burst, then refusals that cost no Argon2
    assert guard.admit("10.0.0.9", "admin").ok  # a clean address is not held back
    guard.succeeded("10.0.0.9", "admin")
    assert guard.priority("10.0.0.9") == KNOWN


def test_failures_are_reported_once_per_address_and_window_with_a_count():
    guard, clock = _guard(audit_window=60)
    firsts = [guard.note("10.0.0.66", f"user{n % 3}", "wrong secret") for n in range(50)]
    assert firsts == [True] + [False] * 49
    assert guard.due() == []  # the window is still open
    clock.advance(61)
    (summary,) = guard.due()
    assert summary["count"] == 49 and summary["remote"] == "10.0.0.66"
    assert summary["accounts"] == "user0, user1, user2" and summary["reasons"] == "wrong secret: 50"
    assert guard.due() == []


def test_the_argon2_queue_serves_better_priorities_first_and_bumps_the_worst():
    gate = pw.Argon2Gate(max_waiting=3, max_wait=30)
    gate.acquire(0)  # a computation under way
    order, outcomes = [], {}

    def wait(name, priority):
        try:
            gate.acquire(priority)
        except pw.Busy:
            outcomes[name] = "busy"
            return
        order.append(name)
        outcomes[name] = "served"
        gate.release()

    threads = []
    for name, priority in (("flood1", SUSPECT), ("flood2", SUSPECT), ("flood3", SUSPECT)):
        threads.append(threading.Thread(target=wait, args=(name, priority)))
        threads[-1].start()
        assert wait_until(lambda n=len(threads): len(gate._waiting) == n, 10)
    late = threading.Thread(target=wait, args=("flood4", SUSPECT))
    late.start()
    late.join(10)
    assert outcomes["flood4"] == "busy"  # the queue is full of its equals
    user = threading.Thread(target=wait, args=("nurse", CLEAN))
    user.start()
    assert wait_until(lambda: "flood3" in outcomes, 10) and outcomes["flood3"] == "busy"  # bumped
    gate.release()
    for t in threads + [user]:
        t.join(10)
    assert order == ["nurse", "flood1", "flood2"]
