"""What the box can tell us about its power, heat and disk, right now.

A probe returns a `Reading`; any sensor the box lacks reads as None (a fanless x86 box
often has no battery, a container has no thermal zones), never as an error.

- `SystemProbe` reads psutil first and falls back to sysfs, because psutil's battery and
  temperature support varies by platform and some boards only expose sysfs nodes.
- `FakeProbe(**values)` returns fixed values, for unit tests.
- `FileProbe(path)` overlays values from a JSON file on a real probe, re-read on every
  call, so a test of a running `fieldkit serve` can fake a low battery or a hot box.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import psutil

POWER_SUPPLY_ROOT = Path("/sys/class/power_supply")
THERMAL_ROOT = Path("/sys/class/thermal")


@dataclass(frozen=True)
class Reading:
    """One snapshot of the box. None means "no such sensor here", not zero."""

    battery_percent: float | None = None
    on_battery: bool | None = None
    temperature_c: float | None = None
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
    cpu_count: int | None = None
    memory_total_bytes: int | None = None
    # Where each value came from ("psutil", "sysfs:/sys/...", "fake"), for doctor's output.
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


READING_FIELDS = tuple(f.name for f in dataclasses.fields(Reading) if f.name != "sources")


class Probe:
    """Interface: `read()` returns a Reading and never raises for a missing sensor."""

    def read(self) -> Reading:  # pragma: no cover - interface
        raise NotImplementedError


class FakeProbe(Probe):
    """Fixed readings for tests: FakeProbe(battery_percent=8, on_battery=True)."""

    def __init__(self, **values: Any):
        unknown = set(values) - set(READING_FIELDS)
        if unknown:
            raise TypeError(f"FakeProbe: unknown reading(s) {sorted(unknown)}; known: {READING_FIELDS}")
        self.values = dict(values)

    def read(self) -> Reading:
        return Reading(**self.values, sources={k: "fake" for k in self.values})


class SystemProbe(Probe):
    """The real box. Paths are parameters so that a profile (or a test) can point at them.

    battery_path: a power_supply directory (with `capacity` and `status`), if known.
    thermal_paths: files holding millidegrees Celsius (thermal_zone*/temp, hwmon*/temp*_input).
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, *,
                 battery_path: str | os.PathLike | None = None,
                 thermal_paths: Iterable[str | os.PathLike] = (),
                 power_supply_root: str | os.PathLike = POWER_SUPPLY_ROOT,
                 thermal_root: str | os.PathLike = THERMAL_ROOT,
                 use_psutil: bool = True):
        self.data_dir = Path(data_dir) if data_dir else None
        self.battery_path = Path(battery_path) if battery_path else None
        self.thermal_paths = [Path(p) for p in thermal_paths]
        self.power_supply_root = Path(power_supply_root)
        self.thermal_root = Path(thermal_root)
        self.use_psutil = use_psutil

    def read(self) -> Reading:
        sources: dict[str, str] = {}
        percent, on_battery = self._battery(sources)
        temperature = self._temperature(sources)
        free = total = None
        if self.data_dir is not None:
            target = self.data_dir if self.data_dir.exists() else _existing_parent(self.data_dir)
            try:
                usage = shutil.disk_usage(target)
                free, total = usage.free, usage.total
                sources["disk_free_bytes"] = sources["disk_total_bytes"] = f"statvfs:{target}"
            except OSError:
                pass
        return Reading(
            battery_percent=percent, on_battery=on_battery, temperature_c=temperature,
            disk_free_bytes=free, disk_total_bytes=total,
            cpu_count=os.cpu_count(), memory_total_bytes=psutil.virtual_memory().total,
            sources=sources,
        )

    # -- battery -----------------------------------------------------------------------
    def _battery(self, sources: dict[str, str]) -> tuple[float | None, bool | None]:
        if self.use_psutil and self.battery_path is None:
            try:
                batt = psutil.sensors_battery()
            except (AttributeError, NotImplementedError, OSError, RuntimeError):
                batt = None
            if batt is not None:
                sources["battery_percent"] = sources["on_battery"] = "psutil"
                plugged = batt.power_plugged
                return float(batt.percent), (None if plugged is None else not plugged)
        for supply in self._battery_dirs():
            capacity = _read_number(supply / "capacity")
            if capacity is None:
                continue
            status = _read_text(supply / "status")
            on_battery = None
            if status is not None:
                # "Discharging" is the only status that means the mains is gone; "Not
                # charging" is a full battery on mains.
                on_battery = status.strip().lower() == "discharging"
            if on_battery is None:
                on_battery = self._mains_offline()
            sources["battery_percent"] = sources["on_battery"] = f"sysfs:{supply}"
            return max(0.0, min(100.0, float(capacity))), on_battery
        return None, None

    def _battery_dirs(self) -> list[Path]:
        if self.battery_path is not None:
            return [self.battery_path]
        found = []
        for supply in sorted(_listdir(self.power_supply_root)):
            if (_read_text(supply / "type") or "").strip().lower() == "battery":
                found.append(supply)
        return found

    def _mains_offline(self) -> bool | None:
        for supply in sorted(_listdir(self.power_supply_root)):
            if (_read_text(supply / "type") or "").strip().lower() in ("mains", "usb"):
                online = _read_number(supply / "online")
                if online is not None:
                    return online == 0
        return None

    # -- temperature -------------------------------------------------------------------
    def _temperature(self, sources: dict[str, str]) -> float | None:
        """The hottest sensor: throttling protects the part closest to its limit."""
        if self.thermal_paths:
            values = [(p, _millidegrees(p)) for p in self.thermal_paths]
            values = [(p, v) for p, v in values if v is not None]
            if values:
                path, value = max(values, key=lambda pv: pv[1])
                sources["temperature_c"] = f"sysfs:{path}"
                return value
        if self.use_psutil:
            try:
                temps = psutil.sensors_temperatures()
            except (AttributeError, NotImplementedError, OSError, RuntimeError):
                temps = {}
            currents = [(name, t.current) for name, entries in (temps or {}).items()
                        for t in entries if t.current is not None and -40 < t.current < 150]
            if currents:
                name, value = max(currents, key=lambda nv: nv[1])
                sources["temperature_c"] = f"psutil:{name}"
                return float(value)
        zones = [zone / "temp" for zone in sorted(_listdir(self.thermal_root))
                 if zone.name.startswith("thermal_zone")]
        values = [(p, _millidegrees(p)) for p in zones]
        values = [(p, v) for p, v in values if v is not None]
        if values:
            path, value = max(values, key=lambda pv: pv[1])
            sources["temperature_c"] = f"sysfs:{path}"
            return value
        return None


class FileProbe(Probe):
    """A real probe whose readings are overridden by the keys of a JSON object in `path`.

    The file is re-read on every call. A missing or unreadable file means "no override",
    so a test can create it while the kit runs.
    """

    def __init__(self, path: str | os.PathLike, base: Probe | None = None):
        self.path = Path(path)
        self.base = base or SystemProbe()

    def read(self) -> Reading:
        reading = self.base.read()
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return reading
        if not isinstance(raw, dict):
            return reading
        values = {k: v for k, v in raw.items() if k in READING_FIELDS}
        sources = dict(reading.sources)
        sources.update({k: f"fake:{self.path.name}" for k in values})
        return dataclasses.replace(reading, **values, sources=sources)


def probe_from_config(config: Any, data_dir: str | os.PathLike | None = None,
                      profile: Any = None) -> Probe:
    """The probe the kit should use: the fake file when `power.fake_probe_file` is set,
    else the real box (with the sensor paths the hardware profile names, if any)."""
    kwargs: dict[str, Any] = {}
    if profile is not None:
        if getattr(profile, "battery_path", ""):
            kwargs["battery_path"] = profile.battery_path
        if getattr(profile, "thermal_paths", ()):
            kwargs["thermal_paths"] = profile.thermal_paths
    base = SystemProbe(data_dir, **kwargs)
    fake = _setting(config, "power.fake_probe_file", "")
    if fake:
        path = Path(fake)
        if not path.is_absolute() and data_dir is not None:
            path = Path(data_dir) / path
        return FileProbe(path, base)
    return base


def _setting(config: Any, name: str, default: Any) -> Any:
    try:
        value = config.get(name, default) if config is not None else default
    except Exception:  # a plain dict or a Config: both have get()
        value = default
    return default if value is None else value


def _listdir(root: Path) -> list[Path]:
    try:
        return list(root.iterdir())
    except OSError:
        return []


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def _read_number(path: Path) -> float | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None


def _millidegrees(path: Path) -> float | None:
    value = _read_number(path)
    if value is None:
        return None
    celsius = value / 1000.0 if abs(value) > 200 else value  # some drivers report whole degrees
    # A disconnected sensor often reads -273 or a huge number: treat it as absent.
    return celsius if -40.0 < celsius < 150.0 else None


def _existing_parent(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path("/")
