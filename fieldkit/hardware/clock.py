"""Wall-clock jumps, detected: a box without an RTC battery or a network has its time set by
hand, or by time sync when a network appears, while the kit runs.

Inside a run the kit decides on monotonic time (leases, retries, timeouts), so a jump
changes no decision; but timestamps written around it (captures, findings, audit) are off
by the jump, which a person should know. The watch compares how far the wall clock and the
monotonic clock moved since the last look: a difference over JUMP_SECONDS is a jump,
logged and kept for the device page and /api/v1/status.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from ..security.passwords import SYSTEM_CLOCK, Clock
from ..service import Periodic

log = logging.getLogger(__name__)

JUMP_SECONDS = 30.0   # time sync slews small errors; a step this large is someone setting the clock
CHECK_SECONDS = 5.0
KEEP = 10             # jumps remembered (newest last)


class ClockWatch:
    def __init__(self, clock: Clock = SYSTEM_CLOCK, threshold: float = JUMP_SECONDS):
        self.clock, self.threshold = clock, threshold
        self._lock = threading.Lock()
        self._wall, self._mono = clock.wall(), clock.mono()
        self.jumps: deque[dict] = deque(maxlen=KEEP)

    def check(self) -> dict | None:
        """Look once; returns the jump seen since the last look, if any."""
        with self._lock:
            wall, mono = self.clock.wall(), self.clock.mono()
            step = (wall - self._wall) - (mono - self._mono)
            self._wall, self._mono = wall, mono
            if abs(step) < self.threshold:
                return None
            jump = {"at": wall, "seconds": round(step, 1)}
            self.jumps.append(jump)
        log.warning("the wall clock jumped %s by %.0f s: leases and retries are unaffected, but times "
                    "recorded around the jump may be off", "forwards" if step > 0 else "backwards", abs(step))
        return jump

    def state(self) -> dict:
        with self._lock:
            jumps = list(self.jumps)
        return {"jumps": jumps, "last_jump": jumps[-1] if jumps else None}


class ClockService(Periodic):
    """`fieldkit serve`'s thread looking at the clock every CHECK_SECONDS."""

    def __init__(self, watch: ClockWatch, interval: float = CHECK_SECONDS):
        self.watch = watch
        super().__init__(interval, "clock-watch")

    def tick(self) -> None:
        self.watch.check()


def start(kit) -> ClockService:
    return ClockService(ClockWatch())  # its watch becomes kit.clock_watch
