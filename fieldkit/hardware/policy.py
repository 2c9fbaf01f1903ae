"""The power and heat policy: what the kit slows down when the battery is low or it is hot.

`decide(reading, config)` is a pure function of one probe reading and the settings, so
every rule is unit-testable. What it may do, and what it never does:

- on battery below `power.battery_low_percent`: analyse every Nth cine frame
  (`power.low_battery_frame_stride`) and defer bulk image sync (findings and triage
  still go first);
- below `power.battery_critical_percent`: sample twice as sparsely and pause
  non-urgent inference too;
- at or above the temperature limit (`power.temperature_limit_c`, else the hardware
  profile's `thermal.limit_c`): pause inference for non-urgent (non-red) patients;
- never: stop ingest, or hold back a red-tagged patient's inference or sync.

Consumers: the inference worker sub-samples when `frame_stride > 1` and records it in the
finding; it leaves non-red jobs queued while `pause_non_urgent_inference`; the sync worker
sends only findings/triage while `defer_bulk_sync`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from .probe import Probe, Reading, probe_from_config

FALLBACK_TEMPERATURE_LIMIT_C = 75.0


@dataclass(frozen=True)
class PowerPolicy:
    frame_stride: int = 1
    pause_non_urgent_inference: bool = False
    defer_bulk_sync: bool = False
    reasons: tuple[str, ...] = ()

    @property
    def normal(self) -> bool:
        return (self.frame_stride == 1 and not self.pause_non_urgent_inference
                and not self.defer_bulk_sync)

    def summary(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "full speed"

    def as_dict(self) -> dict[str, Any]:
        return {"frame_stride": self.frame_stride,
                "pause_non_urgent_inference": self.pause_non_urgent_inference,
                "defer_bulk_sync": self.defer_bulk_sync,
                "reasons": list(self.reasons), "normal": self.normal}


NORMAL = PowerPolicy()


def temperature_limit(config: Any, profile: Any = None) -> float:
    """The configured limit when set (> 0), else the profile's, else a safe default."""
    configured = float(_get(config, "power.temperature_limit_c", 0.0) or 0.0)
    if configured > 0:
        return configured
    if profile is not None and getattr(profile, "temperature_limit_c", None):
        return float(profile.temperature_limit_c)
    return FALLBACK_TEMPERATURE_LIMIT_C


def decide(reading: Reading, config: Any, profile: Any = None) -> PowerPolicy:
    if not _get(config, "power.enabled", True):
        return NORMAL
    low = float(_get(config, "power.battery_low_percent", 25.0))
    critical = float(_get(config, "power.battery_critical_percent", 10.0))
    stride_low = max(1, int(_get(config, "power.low_battery_frame_stride", 2)))
    limit = temperature_limit(config, profile)

    stride, pause, defer = 1, False, False
    reasons: list[str] = []
    # An unknown mains state with a low charge is treated as "on battery": being frugal
    # for nothing costs less than running flat.
    on_battery = reading.on_battery is not False
    pct = reading.battery_percent
    if pct is not None and on_battery:
        if pct < critical:
            stride, pause, defer = stride_low * 2, True, True
            reasons.append(f"battery critical ({pct:.0f}% < {critical:.0f}%): cine analysed "
                           f"every {stride} frames, non-urgent inference paused, bulk image sync deferred")
        elif pct < low:
            stride, defer = stride_low, True
            reasons.append(f"battery low ({pct:.0f}% < {low:.0f}%): cine analysed every "
                           f"{stride} frames, bulk image sync deferred")
    temp = reading.temperature_c
    if temp is not None and temp >= limit:
        pause = True
        reasons.append(f"hot ({temp:.0f} °C >= {limit:.0f} °C): inference paused for "
                       f"non-urgent patients")
    return PowerPolicy(stride, pause, defer, tuple(reasons))


class PowerMonitor:
    """Reads the probe at most every `power.probe_interval_seconds` and caches the policy,
    so workers can ask before every job without touching sysfs each time."""

    def __init__(self, probe: Probe, config: Any, profile: Any = None):
        self.probe, self.config, self.profile = probe, config, profile
        self.interval = float(_get(config, "power.probe_interval_seconds", 10.0))
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._reading: Reading | None = None
        self._policy = NORMAL

    def refresh(self) -> tuple[Reading, PowerPolicy]:
        reading = self.probe.read()
        policy = decide(reading, self.config, self.profile)
        with self._lock:
            self._reading, self._policy, self._at = reading, policy, time.monotonic()
        return reading, policy

    def policy(self) -> PowerPolicy:
        with self._lock:
            fresh = time.monotonic() - self._at < self.interval
            policy = self._policy
        if fresh:
            return policy
        try:
            return self.refresh()[1]
        except Exception:  # a flaky sensor must never stop the workers
            return policy

    def state(self) -> dict[str, Any]:
        """For status and the device page: the last reading, the policy and the limits."""
        policy = self.policy()
        with self._lock:
            reading = self._reading
        return {
            "reading": reading.as_dict() if reading else None,
            "policy": policy.as_dict(),
            "limits": {
                "battery_low_percent": float(_get(self.config, "power.battery_low_percent", 25.0)),
                "battery_critical_percent": float(_get(self.config, "power.battery_critical_percent", 10.0)),
                "temperature_limit_c": temperature_limit(self.config, self.profile),
            },
            "profile": getattr(self.profile, "name", None),
        }


_monitors: dict[tuple, PowerMonitor] = {}
_monitors_lock = threading.Lock()


def monitor_for(config: Any, data_dir: Any = None) -> PowerMonitor:
    """One shared monitor per (data dir, settings) in this process: what workers call.

    `policy = monitor_for(kit.config, kit.data_dir).policy()`
    """
    key = (str(data_dir), _get(config, "power.fake_probe_file", ""),
           _get(config, "hardware.profile", ""), _get(config, "hardware.profiles_dir", ""),
           _get(config, "power.battery_low_percent", None), _get(config, "power.temperature_limit_c", None),
           _get(config, "power.enabled", None), _get(config, "power.probe_interval_seconds", None))
    with _monitors_lock:
        monitor = _monitors.get(key)
        if monitor is None:
            profile = _profile_or_none(config)
            monitor = PowerMonitor(probe_from_config(config, data_dir, profile), config, profile)
            _monitors[key] = monitor
        return monitor


def current_policy(config: Any, data_dir: Any = None) -> PowerPolicy:
    return monitor_for(config, data_dir).policy()


def _profile_or_none(config: Any):
    from .profiles import load_profile  # local: profiles read files, decide() must not
    try:
        return load_profile(config=config)
    except Exception:
        return None


def _get(config: Any, name: str, default: Any) -> Any:
    if config is None:
        return default
    value = config.get(name, default)
    return default if value is None else value
