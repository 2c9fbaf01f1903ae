"""The scrub: every stored capture's blob is read and verified, so damage is found before
someone needs the capture (layer 2).

A blob verifies when each of its sealed chunks authenticates (blobs.py): a flipped bit,
a truncated or a missing file is found. What fails is recorded in the `damage` table
(which blob, which instance, why) - shown on the device page, in `/api/v1/status` and by
`fieldkit doctor` - until a re-sent copy of the capture repairs it (store.instances) or a
later pass finds it whole again. Previews are not scrubbed: the kit remakes a damaged
one when it is asked for.

`scrub_all()` is one full pass at full speed (`fieldkit doctor --scrub`). The `Scrubber`
service spreads a pass over `store.scrub_days`, reads at most SCRUB_MIB_PER_S, runs its
thread at the lowest CPU priority and waits while the power policy is not at full speed
(low battery, heat), like the inference worker's throttling.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from tinydb import Query

from ..errors import KitLocked, NotFound, StoreCorrupt
from ..records import T_DAMAGE, T_INSTANCES

log = logging.getLogger(__name__)

SCRUB_MIB_PER_S = 20  # one chunk is 1 MiB: a pause after each keeps the disk free for ingest
POWER_WAIT_SECONDS = 60.0
_D = Query()


class Stopped(Exception):
    """The scrub was asked to stop in the middle of a blob: nothing was decided about it."""


def verify_blob(store, addr: str, pause: Callable[[], bool] | None = None) -> str | None:
    """None when the blob reads back whole; else why not. `pause()` runs after each chunk;
    when it returns True the check stops (raises Stopped)."""
    try:
        for _chunk in store.blobs.iter_chunks(addr):
            if pause is not None and pause():
                raise Stopped()
    except NotFound:
        return "the blob file is missing"
    except StoreCorrupt as exc:
        return f"{exc.reason} (byte offset {exc.offset})"
    return None


def targets(store) -> list[tuple[str, str]]:
    """(sop_instance_uid, blob address) of every stored capture, conflict copies included."""
    def fn(db):
        out = []
        # the live rows, read in place: copying 100 000 documents under the store lock at
        # every pass (and at every start) stalled requests and left the heap fragmented
        for row in db.storage.read().get(T_INSTANCES, {}).values():
            if row.get("blob"):
                out.append((row["sop_instance_uid"], row["blob"]))
            out += [(row["sop_instance_uid"], c["blob"]) for c in row.get("conflicts") or [] if c.get("blob")]
        return out
    return store.read(fn)


def damage(store) -> list[dict]:
    return store.read(lambda db: [dict(r) for r in db.table(T_DAMAGE).all()])


def record_damage(store, sop_uid: str, addr: str, reason: str) -> None:
    def fn(db):
        table = db.table(T_DAMAGE)
        if not table.search(_D.blob == addr):
            table.insert({"blob": addr, "sop_instance_uid": sop_uid, "reason": reason, "found_at": time.time()})
    if not store.read(lambda db: db.table(T_DAMAGE).search(_D.blob == addr)):
        log.error("stored capture damaged: blob %s (%s); re-send the capture to repair it", addr, reason)
        store.write(fn)


def clear_damage(db, addr: str) -> None:
    """Inside a store.write: the blob at `addr` is whole again."""
    db.table(T_DAMAGE).remove(_D.blob == addr)


def check(store, sop_uid: str, addr: str, pause: Callable[[], bool] | None = None) -> str | None:
    """Verify one blob and keep the damage table in step with what was found."""
    reason = verify_blob(store, addr, pause)
    if reason is not None:
        record_damage(store, sop_uid, addr, reason)
    elif store.read(lambda db: db.table(T_DAMAGE).search(_D.blob == addr)):
        store.write(lambda db: clear_damage(db, addr))
    return reason


def scrub_all(store) -> dict:
    """One full pass now: {"checked": n, "damaged": [damage rows]}."""
    items = targets(store)
    for sop_uid, addr in items:
        check(store, sop_uid, addr)
    return {"checked": len(items), "damaged": damage(store)}


class Scrubber:
    """The background service: one pass every `store.scrub_days`, paced and power-aware."""

    def __init__(self, kit, period_s: float):
        self.kit, self.period_s = kit, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scrub", daemon=True)
        self.passes = 0
        self.last_pass_at: float | None = None
        self.checked = 0

    def start(self) -> "Scrubber":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def status(self) -> dict:
        return {"running": True, "period_days": self.period_s / 86400, "passes": self.passes,
                "last_pass_at": self.last_pass_at, "checked_this_pass": self.checked}

    def _power_ok(self) -> bool:
        from ..hardware import policy as hp
        probe = getattr(self.kit, "hardware", None)
        try:
            if probe is not None and hasattr(probe, "read"):
                return hp.decide(probe.read(), self.kit.config).normal
            return hp.current_policy(self.kit.config, self.kit.data_dir).normal
        except Exception:  # a flaky sensor must not stop the scrub for good
            return True

    def _pace(self) -> bool:
        """After each chunk read: keep to SCRUB_MIB_PER_S; True when asked to stop."""
        return self._stop.wait(1.0 / SCRUB_MIB_PER_S)

    def _run(self) -> None:
        try:  # this thread only: the lowest CPU priority (Linux schedules threads apart)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (OSError, AttributeError):
            pass
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._one_pass(started)
            except KitLocked:
                pass  # no data key while locked: the next period tries again
            except Exception:  # a scrub problem must not end the service: try again next period
                log.exception("scrub pass stopped")
            left = self.period_s - (time.monotonic() - started)
            if self._stop.wait(max(left, min(self.period_s, 60.0))):
                return

    def _one_pass(self, started: float) -> None:
        store = self.kit.store
        items = targets(store)
        self.checked = 0
        for i, (sop_uid, addr) in enumerate(items):
            # spread the pass over the period: blob i is due at started + i * period / n
            due = started + i * self.period_s / max(len(items), 1)
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            while not self._power_ok():
                if self._stop.wait(POWER_WAIT_SECONDS):
                    return
            try:
                check(store, sop_uid, addr, self._pace)
            except Stopped:
                return
            self.checked += 1
        self.passes += 1
        self.last_pass_at = time.time()


class _Off:
    def stop(self) -> None:
        pass

    def status(self) -> dict:
        return {"running": False, "reason": "store.scrub_days is 0"}


def start(kit):
    """SERVICES entry."""
    days = float(kit.config.get("store.scrub_days") or 0)
    if days <= 0:
        return _Off()
    return Scrubber(kit, days * 86400).start()
