"""A small in-process publish/subscribe bus for live updates (tablets, workers).

Subscribers get a bounded queue; a slow subscriber loses old events rather than
slowing the publisher (a tablet that falls behind reloads its view).

Every event also gets a sequence number and stays in a short shared history, so a live
stream can resume after a reconnect from the last event it sent (`since`) and a cache can
learn what changed since it last looked, with no queue per reader.
"""

from __future__ import annotations

import itertools
import queue
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

# Topics made by the live stream itself (not published on the bus)
BOARD_ROW = "board.row"   # a patient's new board row, or its removal (row: null)
REFETCH = "refetch"       # the stream could not replay what was missed: fetch the view again


# Topics: every publisher and subscriber spells them through these names.
INSTANCE_STORED = "instance.stored"
INSTANCE_CONFLICT = "instance.conflict"
INSTANCE_REPAIRED = "instance.repaired"
PATIENT_UPDATED = "patient.updated"
PATIENT_MERGED = "patient.merged"
FINDING_STORED = "finding.stored"
FINDING_REVIEWED = "finding.reviewed"
INFERENCE_SKIPPED = "inference.skipped"
SYNC_CONFIRMED = "sync.confirmed"
SYNC_QUARANTINED = "sync.quarantined"
SYNC_RETRY = "sync.retry"
POWER_POLICY = "power.policy"


@dataclass(frozen=True)
class Event:
    topic: str  # one of the topics above
    data: dict = field(default_factory=dict)
    at: float = field(default_factory=time.time)
    seq: int = 0  # 1, 2, 3... in publishing order, per bus


class EventBus:
    def __init__(self, backlog: int = 256, history: int = 1024):
        self._lock = threading.Lock()
        self._published = threading.Condition(self._lock)
        self._subscribers: list[queue.Queue] = []
        self._backlog = backlog
        self._seq = 0
        self._history: deque[Event] = deque(maxlen=history)
        # names this bus in event ids, so an id from before a restart is never taken for one of ours
        self.epoch = secrets.token_hex(4)

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(self._backlog)
        with self._lock:
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    def since(self, seq: int, timeout: float = 0.0) -> list[Event] | None:
        """The events published after number `seq`, oldest first, waiting up to `timeout`
        seconds for one when there is none yet; None when some of them already left the
        history (the reader missed events and must start over from `last_seq`)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if not 0 <= seq <= self._seq:
                return None  # not a number this bus gave out
            while self._seq == seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._published.wait(left)
            first = self._history[0].seq
            if seq + 1 < first:
                return None
            return list(itertools.islice(self._history, seq + 1 - first, None))

    def publish(self, topic: str, **data) -> None:
        with self._lock:
            self._seq += 1
            event = Event(topic, data, seq=self._seq)
            self._history.append(event)
            subscribers = list(self._subscribers)
            self._published.notify_all()
        for q in subscribers:
            try:
                q.put_nowait(event)
            except queue.Full:
                try:
                    q.get_nowait()
                    q.put_nowait(event)
                except (queue.Empty, queue.Full):
                    pass
