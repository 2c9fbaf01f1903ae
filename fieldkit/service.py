"""What `fieldkit serve` runs in the background: the `Service` protocol every entry of
`kit.registry.SERVICES` returns, and `Periodic`, the one loop skeleton the timed services
share. Layer 0, so that services of every layer (hardware, store, sync, kit) build on it."""

from __future__ import annotations

import logging
import threading
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class Service(Protocol):
    """A background service of the running kit: started by its `start(kit)`, stopped once.

    What a service offers the rest of the kit it holds as attributes, which the kit takes
    when it starts the service (a service reads the kit and never sets its attributes):
    `port` (where it listens), `monitor` (the power monitor), `watch` (the clock watch)."""

    def stop(self) -> None: ...


class Periodic:
    """A daemon thread that calls `tick()` every `interval` seconds until `stop()`.

    `tick()` returns None to wait `next_wait()` (by default `interval`) again, a number of
    seconds to wait that long instead, or False to end the thread. An exception in `tick()` is logged and the next
    round comes as usual: one bad round must not end a service for the rest of the run.
    Subclasses set their own attributes first, then call `super().__init__`, which starts
    the thread (unless `enabled()` says the service has nothing to do)."""

    def __init__(self, interval: float, name: str, *, join_timeout: float = 5.0):
        self.interval = interval
        self.join_timeout = join_timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def enabled(self) -> bool:
        return True

    def next_wait(self) -> float:
        return self.interval

    def tick(self) -> float | bool | None:
        raise NotImplementedError

    def _run(self) -> None:
        if not self.enabled():
            return
        wait = self.next_wait()
        while not self._stop.wait(max(0.0, wait)):
            try:
                answer = self.tick()
            except Exception:
                log.exception("background service %s failed this round", self._thread.name)
                answer = None
            if answer is False:
                return
            wait = self.next_wait() if answer is None or answer is True else float(answer)

    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():  # a tick may stop its own service
            self._thread.join(self.join_timeout)
