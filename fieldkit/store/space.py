"""Free space on the data dir's disk, and what the kit does about it (layer 2).

Two watermarks: below `store.warn_free_mb` the board and the device page warn and say what
to do; below `store.refuse_free_mb` new captures are refused (before the disk is actually
full), while reads, sign-in, acknowledgements, leases and operator actions keep working
(the journal also keeps a preallocated reserve for them). The check is one `statvfs` per
capture, never per chunk: cached for a second while space is plentiful, read afresh for
each capture once under the warn mark (a fast sender fills megabytes in a second). When
space returns, the next check lets captures in again; nothing needs a restart.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from ..errors import StorageFull

OK, LOW, FULL = "ok", "low", "full"
ADVICE = ("sync to the hospital, export or back up, then purge studies the hospital confirmed; "
          "captures resume by themselves once space is free")
CACHE_SECONDS = 1.0


class CapturesRefused(StorageFull):
    """Free space is under store.refuse_free_mb: a new capture is refused, nothing is lost."""


class DiskSpace:
    def __init__(self, path: Path, config, reserve_left: Callable[[], int] = lambda: 0,
                 statvfs=os.statvfs, clock=time.monotonic):
        self.path = Path(path)
        self._config = config
        self._reserve_left = reserve_left
        self._statvfs = statvfs
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._free = self._total = 0

    def _read(self, max_age: float) -> tuple[int, int]:
        """(free, total) bytes, at most `max_age` seconds old."""
        with self._lock:
            now = self._clock()
            if now - self._checked_at >= max_age:
                st = self._statvfs(self.path)
                self._free, self._total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
                self._checked_at = now
            return self._free, self._total

    def state(self, max_age: float = CACHE_SECONDS) -> dict:
        """The disk block of the kit's status: free space, level (ok, low, full), and what
        to do about it."""
        free, total = self._read(max_age)
        warn_mb, refuse_mb = int(self._config["store.warn_free_mb"]), int(self._config["store.refuse_free_mb"])
        free_mb = free / (1 << 20)
        level = FULL if free_mb < refuse_mb else LOW if free_mb < warn_mb else OK
        out = {"level": level, "free_bytes": free, "total_bytes": total,
               "warn_free_mb": warn_mb, "refuse_free_mb": refuse_mb,
               "journal_reserve_bytes": self._reserve_left(), "accepting_captures": level != FULL}
        if level == FULL:
            out["message"] = (f"disk nearly full ({free_mb:.0f} MiB free): new captures are refused; "
                              + ADVICE)
        elif level == LOW:
            out["message"] = (f"disk space is low ({free_mb:.0f} MiB free; captures stop below "
                              f"{refuse_mb} MiB): {ADVICE.split(';')[0]}")
        return out

    def check_capture(self) -> None:
        """Raise CapturesRefused when free space is under the refuse mark."""
        state = self.state()
        if state["level"] != OK:
            state = self.state(max_age=0)
        if state["level"] == FULL:
            # the first 64 characters become the DIMSE ErrorComment: the reason comes first
            raise CapturesRefused(state["message"])
