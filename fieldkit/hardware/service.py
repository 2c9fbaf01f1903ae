"""The power service `fieldkit serve` runs: reads the probe on a timer, keeps the policy
current for the workers, and says when it changes.

`start(kit)` returns the service; its `monitor`, the shared PowerMonitor, becomes
`kit.hardware` (workers ask it, or `current_policy(kit.config, kit.data_dir)`, which is the
same object). It logs each change of policy with its reasons, and publishes a
`power.policy` event for the device page.
"""

from __future__ import annotations

import logging

from ..events import POWER_POLICY
from ..service import Periodic
from .policy import monitor_for

log = logging.getLogger(__name__)


class PowerService(Periodic):
    def __init__(self, kit):
        self.kit = kit
        self.monitor = monitor_for(kit.config, kit.data_dir)
        self._last = None
        self._check()  # the first policy is known before the workers take a job
        super().__init__(max(1.0, float(kit.config.get("power.probe_interval_seconds", 10.0) or 0) or 1.0), "power")

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

    def tick(self) -> None:
        self._check()

    def state(self) -> dict:
        return self.monitor.state()


def start(kit) -> PowerService:
    return PowerService(kit)
