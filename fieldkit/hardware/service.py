"""The power service `fieldkit serve` runs: reads the probe on a timer, keeps the policy
current for the workers, and says when it changes.

`start(kit)` sets `kit.hardware` to the shared PowerMonitor (workers ask it, or
`current_policy(kit.config, kit.data_dir)`, which is the same object), logs each change of
policy with its reasons, and publishes a `power.policy` event for the device page.
"""

from __future__ import annotations

import logging
import threading

from ..events import POWER_POLICY
from .policy import monitor_for

log = logging.getLogger(__name__)


class PowerService:
    def __init__(self, kit):
        self.kit = kit
        self.monitor = monitor_for(kit.config, kit.data_dir)
        self.interval = max(1.0, float(kit.config.get("power.probe_interval_seconds", 10.0) or 0) or 1.0)
        self._stop = threading.Event()
        self._last = None
        self._check()  # the first policy is known before the workers take a job
        self._thread = threading.Thread(target=self._loop, name="power", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        try:
            reading, policy = self.monitor.refresh()
        except Exception:  # a flaky sensor must not stop the kit
            log.exception("power probe failed; keeping the last policy")
            return
        if policy != self._last:
            if policy.normal:
                log.info("power policy: full speed")
            else:
                log.warning("power policy: %s", policy.summary())
            self._last = policy
            try:
                self.kit.events.publish(POWER_POLICY, **policy.as_dict())
            except Exception:
                log.debug("no event bus to publish the power policy on")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._check()

    def state(self) -> dict:
        return self.monitor.state()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def start(kit) -> PowerService:
    service = PowerService(kit)
    kit.hardware = service.monitor
    return service
