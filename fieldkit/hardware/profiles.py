"""Hardware profiles: what a target device is expected to have and to withstand.

One TOML file per device in the top-level `hardware/` folder (its README documents the
format). `fieldkit doctor` checks the running box against the profile named by
`hardware.profile`; the power policy takes its temperature limit from it.
"""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

DEFAULT_PROFILE = "generic-x86-2c4g"


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    cores: int
    memory_gb: float
    storage_gb: float
    min_free_disk_gb: float
    temperature_limit_c: float      # above this the kit pauses non-urgent inference
    temperature_critical_c: float   # the part's own throttle/shutdown point, for doctor
    battery_wh: float | None = None
    discharge_idle_w: float | None = None
    discharge_busy_w: float | None = None
    battery_path: str = ""
    thermal_paths: tuple[str, ...] = ()
    throughput: dict[str, Any] = field(default_factory=dict)
    throughput_measured: bool = False
    throughput_method: str = ""
    notes: dict[str, str] = field(default_factory=dict)
    path: str = ""

    def runtime_hours(self, busy: bool = False) -> float | None:
        """Battery runtime estimate from the profile's own figures (None without a battery)."""
        watts = self.discharge_busy_w if busy else self.discharge_idle_w
        if not self.battery_wh or not watts:
            return None
        return round(self.battery_wh / watts, 1)


def default_profiles_dir() -> Path | None:
    """The folder of profile files: the source checkout's `hardware/`, or the copy that
    provisioning installs next to the virtual environment (`<venv>/share/fieldkit/hardware`)."""
    candidates = [
        Path(__file__).resolve().parents[2] / "hardware",
        Path(sys.prefix) / "share" / "fieldkit" / "hardware",
    ]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    return None


def profiles_dir(config: Any = None) -> Path:
    configured = config.get("hardware.profiles_dir", "") if config is not None else ""
    if configured:
        return Path(configured)
    found = default_profiles_dir()
    if found is None:
        raise ConfigError("no hardware profiles found: set hardware.profiles_dir to the folder "
                          "holding the profile .toml files")
    return found


def list_profiles(directory: str | os.PathLike | None = None) -> list[Profile]:
    directory = Path(directory) if directory else profiles_dir()
    return [load_profile_file(p) for p in sorted(directory.glob("*.toml"))]


def load_profile(name: str | None = None, config: Any = None,
                 directory: str | os.PathLike | None = None) -> Profile:
    """The profile called `name` (default: `hardware.profile`, else the generic box)."""
    if not name:
        name = (config.get("hardware.profile", "") if config is not None else "") or DEFAULT_PROFILE
    directory = Path(directory) if directory else profiles_dir(config)
    path = directory / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.toml"))
        raise ConfigError(f"unknown hardware profile {name!r} (known: {', '.join(known) or 'none'})")
    return load_profile_file(path)


def load_profile_file(path: str | os.PathLike) -> Profile:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"hardware profile {path.name}: cannot read it: {exc}") from None
    get = _Getter(raw, path.name)
    profile = Profile(
        name=get.text("profile.name"),
        title=get.text("profile.title"),
        cores=get.integer("cpu.cores", minimum=1),
        memory_gb=get.number("memory.total_gb", minimum=0.25),
        storage_gb=get.number("storage.size_gb", minimum=1),
        min_free_disk_gb=get.number("storage.min_free_gb", minimum=0),
        temperature_limit_c=get.number("thermal.limit_c", minimum=20, maximum=120),
        temperature_critical_c=get.number("thermal.critical_c", minimum=20, maximum=130),
        battery_wh=get.number("battery.capacity_wh", minimum=0, optional=True),
        discharge_idle_w=get.number("battery.discharge_idle_w", minimum=0, optional=True),
        discharge_busy_w=get.number("battery.discharge_busy_w", minimum=0, optional=True),
        battery_path=get.text("sensors.battery_path", optional=True),
        thermal_paths=tuple(get.paths("sensors.thermal_paths")),
        throughput={k: v for k, v in raw.get("throughput", {}).items()
                    if k not in ("measured", "method")},
        throughput_measured=get.flag("throughput.measured"),
        throughput_method=get.text("throughput.method"),
        notes={k: str(v) for k, v in raw.get("notes", {}).items()},
        path=str(path),
    )
    if profile.name != path.stem:
        raise ConfigError(f"hardware profile {path.name}: profile.name is {profile.name!r}, "
                          f"expected {path.stem!r} (the file name)")
    if profile.temperature_limit_c >= profile.temperature_critical_c:
        raise ConfigError(f"hardware profile {path.name}: thermal.limit_c must be below "
                          f"thermal.critical_c so the kit backs off before the part throttles")
    return profile


class _Getter:
    """Typed lookups that name the file and the field in every error."""

    def __init__(self, raw: dict, filename: str):
        self.raw, self.filename = raw, filename

    def _get(self, dotted: str, optional: bool) -> Any:
        node: Any = self.raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                if optional:
                    return None
                raise ConfigError(f"hardware profile {self.filename}: missing field {dotted}")
            node = node[part]
        return node

    def text(self, dotted: str, optional: bool = False) -> str:
        value = self._get(dotted, optional)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"hardware profile {self.filename}: {dotted} must be text, got {value!r}")
        return value

    def flag(self, dotted: str) -> bool:
        value = self._get(dotted, False)
        if not isinstance(value, bool):
            raise ConfigError(f"hardware profile {self.filename}: {dotted} must be true or false, got {value!r}")
        return value

    def integer(self, dotted: str, minimum: int) -> int:
        value = self._get(dotted, False)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"hardware profile {self.filename}: {dotted} must be an integer >= {minimum}, got {value!r}")
        return value

    def number(self, dotted: str, minimum: float, maximum: float | None = None,
            optional: bool = False) -> float | None:
        value = self._get(dotted, optional)
        if value is None:
            return None
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum
                or (maximum is not None and value > maximum)):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"hardware profile {self.filename}: {dotted} must be a number {bound}, got {value!r}")
        return float(value)

    def paths(self, dotted: str) -> list[str]:
        value = self._get(dotted, True)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"hardware profile {self.filename}: {dotted} must be a list of paths, got {value!r}")
        return value
