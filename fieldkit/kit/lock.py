"""Locking the kit: drop the data key (stop the services, close the store) and take it back
with the kit passphrase; wrong passphrases are throttled like PINs; `AutoLock` locks after
`security.auto_lock_minutes` with no signed-in person active. The lock state is the kit's
(`kit.lock_state`); the web's lock and unlock views and the `lock`/`unlock` commands call here."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..errors import FieldkitError, KeyUnavailable
from ..security import passwords as pw
from ..security import roles as R
from ..security.signin import SigninPolicy
from ..service import Periodic
from ..store import Store, accounts, acquire_dir_lock

log = logging.getLogger(__name__)


@dataclass
class LockState:
    """Whether and since when the kit holds its key, and who waits for the next lock."""

    lock: threading.RLock = field(default_factory=threading.RLock)  # also guards the web's sessions
    generation: int = 0  # bumped at lock: every session of an older generation is dead
    held_fd: int | None = None  # the data-dir lock kept while the store is closed
    stopped_services: list = field(default_factory=list)  # restarted at unlock
    last_human: float = field(default_factory=lambda: accounts.CLOCK.mono())  # last request by a signed-in person
    unlock_lockout: pw.Lockout = field(default_factory=lambda: pw.Lockout(clock=accounts.CLOCK))
    unlock_state: dict = field(default_factory=dict)
    unlock_failures: int = 0  # audited at the next unlock (the trail is closed while locked)
    on_lock: list[Callable[[], None]] = field(default_factory=list)  # called under `lock` (sign everybody out)


class UnlockThrottled(FieldkitError):
    http_status = 429
    exit_code = 5

    def __init__(self, remaining: float):
        super().__init__(f"too many wrong passphrases: try again in {int(remaining) + 1} seconds")
        self.retry_after = remaining


def lock_kit(kit, *, actor: str = accounts.SYSTEM, role: str = "") -> bool:
    """Drop the data key: stop services, close the store, sign everybody out. Returns False
    when it was already locked. The data dir stays locked against other processes."""
    st = kit.lock_state
    with st.lock:
        if kit.locked:
            return False
        try:
            accounts.flush_signin_audit(kit.store, flush_all=True)
            accounts.audit_append(kit.store, actor=actor, role=role, action="kit.lock", object="kit")
        except FieldkitError as exc:
            log.warning("could not audit the lock: %s", exc.message)
        st.stopped_services = list(kit.services)
        kit.stop_services()
        kit.detach_store().close()
        st.held_fd = acquire_dir_lock(kit.data_dir)
        st.generation += 1
        for signed_out in st.on_lock:
            signed_out()
        kit.start_locked_services(st.stopped_services)  # probes hear "locked", not silence
    log.warning("kit locked: the data key is no longer in memory")
    return True


def unlock_kit(kit, passphrase: str, *, remote: str = "", admin: tuple[str, str] | None = None) -> bool:
    """Unwrap the data key with the kit passphrase and reopen the store. Wrong passphrases
    are throttled like PINs. Returns False when it was not locked.

    With `admin` (name, PIN/password), the account must be an enabled admin of this kit,
    checked in the reopened store; otherwise the store closes again and the kit stays
    locked, with the same answer as a wrong passphrase."""
    st = kit.lock_state
    with st.lock:
        if not kit.locked:
            return False
        remaining, reanchored = st.unlock_lockout.remaining("__kit__", st.unlock_state)
        if reanchored is not None:
            st.unlock_state = reanchored
        if remaining > 0:
            raise UnlockThrottled(remaining)
        try:
            key = kit.keyring.unlock_with_passphrase(passphrase if isinstance(passphrase, str) else "")
        except KeyUnavailable:
            st.unlock_state = st.unlock_lockout.failure("__kit__", st.unlock_state)
            st.unlock_failures += 1
            log.warning("unlock refused: wrong passphrase (from %s)", remote or "the command line")
            raise
        if st.held_fd is not None:
            os.close(st.held_fd)
            st.held_fd = None
        store = Store.open(kit.data_dir, key, kit.config)
        store.events = kit.events  # live-update subscribers keep their bus
        actor = "passphrase"
        if admin is not None:
            try:
                result = accounts.verify_login(store, admin[0], admin[1], remote=remote,
                                               policy=SigninPolicy.from_config(kit.config))
            except BaseException:
                store.close()
                st.held_fd = acquire_dir_lock(kit.data_dir)
                raise
            if not result.ok or result.principal.role != R.ADMIN:
                store.close()
                st.held_fd = acquire_dir_lock(kit.data_dir)
                st.unlock_state = st.unlock_lockout.failure("__kit__", st.unlock_state)
                st.unlock_failures += 1
                log.warning("unlock refused: not an admin's sign-in (from %s)", remote or "?")
                raise KeyUnavailable("wrong passphrase or admin sign-in")
            actor = f"passphrase+{result.principal.actor}"
        st.unlock_state = {}
        kit.attach_store(store)
        accounts.audit_append(store, actor=actor, role=R.ADMIN if admin is not None else "", action="kit.unlock",
                              object="kit",
                              detail={"remote": remote, "failed_attempts_while_locked": st.unlock_failures})
        st.unlock_failures = 0
        kit.stop_locked_services()  # they hold the DICOM ports the real receivers take over
        if st.stopped_services:
            kit.start_services(st.stopped_services)
    log.warning("kit unlocked")
    return True


class AutoLock(Periodic):
    """Locks the kit after `security.auto_lock_minutes` with no signed-in person active."""

    def __init__(self, kit, interval: float = 15.0):
        self.kit = kit
        self.minutes = float(kit.config.get("security.auto_lock_minutes", 0) or 0)
        super().__init__(interval, "autolock")

    def enabled(self) -> bool:
        return self.minutes > 0

    def tick(self):
        if self.kit.locked or accounts.CLOCK.mono() - self.kit.lock_state.last_human <= self.minutes * 60:
            return None
        # the lock stops every service, this one included: it runs on a thread of its own
        threading.Thread(target=lock_kit, args=(self.kit,), kwargs={"actor": "auto-lock"},
                         name="autolock-lock", daemon=True).start()
        return False


def start_autolock(kit) -> AutoLock:
    return AutoLock(kit)
