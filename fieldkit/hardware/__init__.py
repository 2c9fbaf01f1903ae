"""Power and thermal probes, the power/heat policy and hardware profiles (layer 1)."""

from .policy import NORMAL, PowerMonitor, PowerPolicy, current_policy, decide, monitor_for, temperature_limit
from .probe import FakeProbe, FileProbe, Probe, Reading, SystemProbe, probe_from_config
from .profiles import Profile, list_profiles, load_profile, load_profile_file

__all__ = [
    "NORMAL", "PowerMonitor", "PowerPolicy", "current_policy", "decide", "monitor_for",
    "temperature_limit", "FakeProbe", "FileProbe", "Probe", "Reading", "SystemProbe",
    "probe_from_config", "Profile", "list_profiles", "load_profile", "load_profile_file",
]
