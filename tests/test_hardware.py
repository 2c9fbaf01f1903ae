"""Hardware probe, power/heat policy and profiles (fieldkit.hardware)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fieldkit.config import Config
from fieldkit.errors import ConfigError
from fieldkit.hardware import (FakeProbe, FileProbe, PowerMonitor, Reading, SystemProbe, decide,
                               list_profiles, load_profile, load_profile_file, probe_from_config,
                               temperature_limit)

HARDWARE_DIR = Path(__file__).resolve().parents[1] / "hardware"


# -- probe -----------------------------------------------------------------------------

def test_system_probe_without_sensors_reads_none(tmp_path, fake_sysfs):
    ps, th = fake_sysfs()  # an empty sysfs: a VM or a mains-only box
    reading = SystemProbe(tmp_path, power_supply_root=ps, thermal_root=th, use_psutil=False).read()
    assert reading.battery_percent is None and reading.on_battery is None
    assert reading.temperature_c is None
    # the disk, CPU and memory are always readable
    assert reading.disk_free_bytes > 0 and reading.disk_total_bytes >= reading.disk_free_bytes
    assert reading.cpu_count >= 1 and reading.memory_total_bytes > 0


def test_system_probe_reads_sysfs_battery_and_hottest_zone(tmp_path, fake_sysfs):
    ps, th = fake_sysfs(battery=(17, "Discharging"), zones=[45000, 81500, -273000])
    reading = SystemProbe(tmp_path, power_supply_root=ps, thermal_root=th, use_psutil=False).read()
    assert reading.battery_percent == 17.0
    assert reading.on_battery is True
    assert reading.temperature_c == 81.5          # hottest; the -273 °C dead sensor ignored
    assert reading.sources["temperature_c"].endswith("thermal_zone1/temp")


@pytest.mark.parametrize("status,mains,expected", [
    ("Charging", None, False), ("Full", None, False), ("Not charging", None, False),
    (None, 0, True), (None, 1, False), (None, None, None),
])
def test_system_probe_mains_state(tmp_path, fake_sysfs, status, mains, expected):
    ps, th = fake_sysfs(battery=(60, status), mains_online=mains)
    reading = SystemProbe(tmp_path, power_supply_root=ps, thermal_root=th, use_psutil=False).read()
    assert reading.battery_percent == 60.0
    assert reading.on_battery is expected


def test_system_probe_profile_paths_and_garbage(tmp_path):
    good, bad = tmp_path / "t0", tmp_path / "t1"
    good.write_text("66000\n")
    bad.write_text("not a number\n")
    reading = SystemProbe(tmp_path, thermal_paths=[bad, tmp_path / "missing", good]).read()
    assert reading.temperature_c == 66.0


def test_system_probe_on_this_machine_never_raises(tmp_path):
    reading = SystemProbe(tmp_path).read()
    assert reading.battery_percent is None or 0 <= reading.battery_percent <= 100
    assert reading.temperature_c is None or -40 < reading.temperature_c < 150


def test_fake_probe_rejects_unknown_fields():
    assert FakeProbe(temperature_c=90).read().temperature_c == 90
    with pytest.raises(TypeError, match="temperature"):
        FakeProbe(temprature_c=90)


def test_file_probe_overlays_and_rereads(tmp_path, fake_power):
    base = FakeProbe(battery_percent=90.0, on_battery=False, disk_free_bytes=123)
    probe = FileProbe(fake_power.path, base)
    assert probe.read().battery_percent == 90.0      # no file yet: the real values
    fake_power.set(battery_percent=8, on_battery=True)
    reading = probe.read()
    assert (reading.battery_percent, reading.on_battery, reading.disk_free_bytes) == (8, True, 123)
    assert reading.sources["battery_percent"].startswith("fake")
    fake_power.path.write_text("{not json")           # a broken file: the real values again
    assert probe.read().battery_percent == 90.0


def test_probe_from_config_uses_fake_file_relative_to_data_dir(tmp_path):
    (tmp_path / "power.json").write_text(json.dumps({"temperature_c": 88}))
    config = Config({"power.fake_probe_file": "power.json"})
    assert probe_from_config(config, tmp_path).read().temperature_c == 88
    assert isinstance(probe_from_config(Config(), tmp_path), SystemProbe)


# -- policy ----------------------------------------------------------------------------

def test_policy_normal_on_mains_and_cool():
    policy = decide(Reading(battery_percent=5, on_battery=False, temperature_c=40), Config())
    assert policy.normal and policy.frame_stride == 1 and policy.reasons == ()


def test_policy_low_battery_subsamples_and_defers_bulk_sync():
    policy = decide(Reading(battery_percent=20, on_battery=True), Config())
    assert policy.frame_stride == 2
    assert policy.defer_bulk_sync is True
    assert policy.pause_non_urgent_inference is False
    assert "battery low" in policy.reasons[0] and "20%" in policy.reasons[0]


def test_policy_critical_battery_also_pauses_non_urgent():
    policy = decide(Reading(battery_percent=6, on_battery=True), Config())
    assert policy.frame_stride == 4
    assert policy.pause_non_urgent_inference and policy.defer_bulk_sync


def test_policy_unknown_mains_state_counts_as_battery():
    assert decide(Reading(battery_percent=20, on_battery=None), Config()).frame_stride == 2


def test_policy_threshold_is_configurable():
    config = Config({"power.battery_low_percent": 50.0, "power.low_battery_frame_stride": 3})
    assert decide(Reading(battery_percent=40, on_battery=True), config).frame_stride == 3
    assert decide(Reading(battery_percent=60, on_battery=True), config).normal


def test_policy_hot_pauses_non_urgent_only():
    config = Config({"power.temperature_limit_c": 70.0})
    assert decide(Reading(temperature_c=69.9), config).normal
    hot = decide(Reading(temperature_c=70.0), config)
    assert hot.pause_non_urgent_inference and hot.frame_stride == 1 and not hot.defer_bulk_sync
    assert "hot" in hot.reasons[0]


def test_policy_hot_and_low_battery_combine():
    policy = decide(Reading(battery_percent=15, on_battery=True, temperature_c=99), Config())
    assert policy.frame_stride == 2 and policy.pause_non_urgent_inference and policy.defer_bulk_sync
    assert len(policy.reasons) == 2


def test_policy_missing_sensors_never_throttle():
    assert decide(Reading(), Config()).normal


def test_policy_can_be_switched_off():
    reading = Reading(battery_percent=1, on_battery=True, temperature_c=120)
    assert decide(reading, Config({"power.enabled": False})).normal


def test_temperature_limit_from_profile_unless_configured():
    pi = load_profile("raspberry-pi-5-8gb", directory=HARDWARE_DIR)
    assert temperature_limit(Config(), pi) == pi.temperature_limit_c == 75.0
    assert temperature_limit(Config({"power.temperature_limit_c": 60}), pi) == 60.0
    assert decide(Reading(temperature_c=76), Config(), pi).pause_non_urgent_inference
    generic = load_profile("generic-x86-2c4g", directory=HARDWARE_DIR)
    assert not decide(Reading(temperature_c=76), Config(), generic).pause_non_urgent_inference


def test_power_monitor_caches_for_the_interval(tmp_path, fake_power):
    fake_power.set(temperature_c=30)
    probe = FileProbe(fake_power.path, FakeProbe())
    slow = PowerMonitor(probe, Config({"power.probe_interval_seconds": 3600.0}))
    fast = PowerMonitor(probe, Config({"power.probe_interval_seconds": 0.0}))
    assert slow.policy().normal and fast.policy().normal
    fake_power.set(temperature_c=99)
    assert slow.policy().normal                      # cached
    assert fast.policy().pause_non_urgent_inference  # re-read
    state = fast.state()
    assert state["reading"]["temperature_c"] == 99 and state["policy"]["pause_non_urgent_inference"]


# -- profiles --------------------------------------------------------------------------

def test_shipped_profiles_load_and_are_documented():
    profiles = {p.name: p for p in list_profiles(HARDWARE_DIR)}
    assert {"generic-x86-2c4g", "raspberry-pi-5-8gb", "jetson-orin-nano-cpu"} <= set(profiles)
    readme = (HARDWARE_DIR / "README.md").read_text()
    for profile in profiles.values():
        assert f"`{profile.name}`" in readme
        assert profile.temperature_limit_c < profile.temperature_critical_c
        assert profile.throughput_method, "say how throughput was measured, or that it was not"
        assert {"power_budget", "enclosure"} <= set(profile.notes)
    assert profiles["generic-x86-2c4g"].cores == 2 and profiles["generic-x86-2c4g"].memory_gb == 4
    assert profiles["generic-x86-2c4g"].runtime_hours(busy=True) == 11.0


def test_default_profile_comes_from_config():
    assert load_profile(config=Config()).name == "generic-x86-2c4g"
    assert load_profile(config=Config({"hardware.profile": "jetson-orin-nano-cpu"})).cores == 6


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="raspberry-pi-5-8gb"):
        load_profile("pi-zero", directory=HARDWARE_DIR)


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.replace("cores = 2", "cores = \"two\""), "cpu.cores"),
    (lambda s: s.replace("limit_c = 80", ""), "thermal.limit_c"),
    (lambda s: s.replace("limit_c = 80", "limit_c = 100"), "below thermal.critical_c"),
    (lambda s: s.replace('name = "generic-x86-2c4g"', 'name = "other"'), "file name"),
    (lambda s: s + "\n[[[", "cannot read"),
])
def test_broken_profile_names_file_and_field(tmp_path, edit, message):
    src = (HARDWARE_DIR / "generic-x86-2c4g.toml").read_text()
    target = tmp_path / "generic-x86-2c4g.toml"
    target.write_text(edit(src))
    with pytest.raises(ConfigError, match=message) as info:
        load_profile_file(target)
    assert "generic-x86-2c4g.toml" in str(info.value)


# -- the service serve runs ------------------------------------------------------------

def test_power_service_sets_the_kit_monitor_and_publishes_changes(tmp_path, fake_power):
    import queue as _queue
    import time as _time
    from fieldkit.events import EventBus
    from fieldkit.hardware import current_policy, monitor_for
    from fieldkit.hardware.service import start

    class FakeKit:  # only what the service uses of the real Kit
        def __init__(self):
            self.config = Config({**fake_power.settings, "power.probe_interval_seconds": 1.0})
            self.data_dir = tmp_path
            self.events = EventBus()
            self.hardware = None

    kit = FakeKit()
    fake_power.set(battery_percent=80, on_battery=True, temperature_c=40)
    events = kit.events.subscribe()
    service = start(kit)
    try:
        assert kit.hardware is None  # the service never sets the kit's attributes: the kit takes its monitor
        assert monitor_for(kit.config, kit.data_dir) is service.monitor  # the one the workers ask
        assert current_policy(kit.config, kit.data_dir).normal
        fake_power.set(battery_percent=9, on_battery=True, temperature_c=40)
        deadline = _time.monotonic() + 10
        while service.state()["policy"]["frame_stride"] == 1 and _time.monotonic() < deadline:
            _time.sleep(0.2)
        assert service.state()["policy"]["frame_stride"] == 4
        assert current_policy(kit.config, kit.data_dir).pause_non_urgent_inference
        topics = []
        while True:
            try:
                topics.append(events.get(timeout=0.1).topic)
            except _queue.Empty:
                break
        assert topics.count("power.policy") == 2  # the first policy, then the change
    finally:
        service.stop()
