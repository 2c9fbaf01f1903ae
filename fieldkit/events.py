"""A small in-process publish/subscribe bus for live updates (tablets, workers).

Subscribers get a bounded queue; a slow subscriber loses old events rather than
slowing the publisher (a tablet that falls behind reloads its view).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
import time


# Topics: every publisher and subscriber spells them through these names.
INSTANCE_STORED = "instance.stored"
INSTANCE_CONFLICT = "instance.conflict"
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


class EventBus:
    def __init__(self, backlog: int = 256):
        self._lock = threading.Lock()
        self._subscribers: list[queue.Queue] = []
        self._backlog = backlog

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(self._backlog)
        with self._lock:
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    def publish(self, topic: str, **data) -> None:
        event = Event(topic, data)
        with self._lock:
            subscribers = list(self._subscribers)
        for q in subscribers:
            try:
                q.put_nowait(event)
            except queue.Full:
                try:
                    q.get_nowait()
                    q.put_nowait(event)
                except (queue.Empty, queue.Full):
                    pass
