"""The kit's settings: every one has a default, a type and a help line.

`DIR/fieldkit.toml` holds the values an operator changed; anything missing takes its default.
`render_toml()` writes a file with every setting documented, which is what `fieldkit init`
puts in a new data dir. A test fails when a setting is not documented in the README.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Setting:
    default: Any
    help: str


# Dotted name -> Setting. The part before the first dot is the TOML table.
SETTINGS: dict[str, Setting] = {
    # kit identity
    "kit.id": Setting("", "Kit identifier, unique across a hospital's kits (set by `fieldkit init --kit-id`)."),
    "kit.issuer_of_patient_id": Setting("", "Issuer of Patient ID stamped on every stored DICOM object (default: FIELDKIT-<kit.id>)."),
    "kit.uid_root": Setting("2.25", "UID root for objects the kit creates; 2.25 means UUID-derived UIDs."),
    # web
    "http.bind": Setting("0.0.0.0", "Address the HTTPS server listens on (the kit's own Wi-Fi)."),
    "http.port": Setting(8443, "HTTPS port for tablets, the API and DICOMweb."),
    "http.threads": Setting(32, "Worker threads of the HTTPS server; each live-update stream holds one, so set this to the number of tablets plus 8."),
    "http.max_request_mb": Setting(1024, "Largest request body accepted, in MiB (a long cine upload)."),
    "http.session_idle_minutes": Setting(15, "A tablet session expires after this many idle minutes."),
    "http.handshake_timeout_s": Setting(5, "Seconds a new HTTPS connection has to finish its TLS handshake before it is closed (a client that connects and says nothing holds nothing longer)."),
    "http.header_timeout_s": Setting(10, "Seconds a client has to send a complete request head (request line and headers) before the connection is closed; no worker thread waits for it."),
    "http.max_connections_per_address": Setting(32, "Most HTTPS connections open at once from one client address; one more is closed at once."),
    "http.max_connections": Setting(256, "Most HTTPS connections open at once in all; when full, the oldest connection that has not yet sent a request is closed to make room, else the new one is refused."),
    # DIMSE receiver
    "dicom.port": Setting(11112, "DICOM C-STORE/C-ECHO port for handheld probes."),
    "dicom.ae_title": Setting("FIELDKIT", "The kit's own AE title."),
    "dicom.allow_any_ae": Setting(False, "Accept associations from any calling AE title (demo only)."),
    "dicom.allowed_ae_titles": Setting([], "Calling AE titles allowed to send when allow_any_ae is false."),
    "dicom.max_object_mb": Setting(1024, "Largest DICOM object accepted, in MiB."),
    "dicom.max_associations": Setting(16, "Most DICOM associations received at once (per port); one more is refused with A-ASSOCIATE-RJ (transient), so the probe can retry."),
    "dicom.idle_timeout_s": Setting(60, "Seconds an association may stay silent before its slot is released; a connection that never asks for an association is dropped after at most 30 s."),
    # ingest (DIMSE bind address, uploads, import)
    "dicom.bind": Setting("0.0.0.0", "Address the DIMSE receiver listens on (the kit's own Wi-Fi)."),
    "dicom.tls_port": Setting(-1, "Port for DICOM over TLS with the kit's certificate (probes trust tls/ca.pem); -1 turns it off, 0 picks a free port."),
    # patients
    "patients.merge_undo_seconds": Setting(60.0, "A merge made on a tablet can be undone for this many seconds; nothing of it is sent to the hospital meanwhile."),
    # worklist (the kit's Modality Worklist for probes)
    "worklist.max_items": Setting(500, "Most items one worklist query (C-FIND) returns; the answer says how many more matched."),
    "worklist.session_minutes": Setting(20.0, "A probe session (captures from one probe go to one patient) ends after this many minutes."),
    "worklist.procedure": Setting("POCUS eFAST / lung", "Procedure named on every worklist item (the probe shows it)."),
    "ingest.max_zip_members": Setting(10000, "Most files read from one uploaded zip bundle."),
    "ingest.max_zip_ratio": Setting(200, "A zip member that expands more than this many times its compressed size is refused (zip bomb)."),
    # store
    "store.compact_min_mb": Setting(8, "The journal is compacted once it holds this many MiB of superseded records."),
    "store.reserve_mb": Setting(8, "MiB kept preallocated at the end of the journal, so that acknowledgements, leases and operator actions are still recorded when the disk is full."),
    "store.warn_free_mb": Setting(10240, "Below this much free space (MiB) on the data dir's disk the board and device page warn and say what to do."),
    "store.refuse_free_mb": Setting(2048, "Below this much free space (MiB) new captures are refused (DIMSE 0xA700, HTTP 507) before the disk is full; reads and the rest keep working."),
    "store.scrub_days": Setting(7.0, "The background scrub reads and verifies every stored capture once in this many days, paced and at low priority (paused on low battery or heat); 0 turns it off."),
    # security
    "security.passphrase_min_length": Setting(12, "Shortest kit passphrase accepted."),
    "security.scrypt_n": Setting(2**15, "scrypt cost (N) for deriving the passphrase key; recorded with the wrapped key."),
    # accounts, sessions, lockout, request limits (security)
    "security.pin_min_length": Setting(6, "Fewest digits in a PIN (a secret of digits only)."),
    "security.password_min_length": Setting(10, "Fewest characters in a password (any secret that is not all digits)."),
    "security.login_free_failures": Setting(5, "Wrong PINs/passwords allowed before the account is locked out."),
    "security.login_backoff_seconds": Setting(30.0, "First lockout, in seconds; it doubles with every further wrong attempt."),
    "security.login_backoff_max_seconds": Setting(900.0, "Longest lockout, in seconds."),
    "security.session_max_hours": Setting(12.0, "A tablet session ends after this many hours even when in use."),
    "security.auto_lock_minutes": Setting(0, "Lock the kit (drop the data key) after this many minutes with no signed-in person active; 0 never auto-locks."),
    "security.token_days": Setting(365, "Default lifetime of a bearer token in days (`fieldkit token create --days`); 0 means no expiry."),
    "security.max_body_kb": Setting(1024, "Largest request body, in KiB, for endpoints that do not declare a larger one (uploads do)."),
    "security.audit_sync_minutes": Setting(15.0, "Send new audit events to the hospital (as an SR document, by STOW-RS) this often, in minutes; 0 only with `fieldkit audit sync`."),
    # power and heat policy, hardware profile (provisioning and hardware)
    "power.enabled": Setting(True, "Slow down non-urgent work when the battery is low or the box is hot."),
    "power.battery_low_percent": Setting(25.0, "On battery below this charge (%), analyse fewer cine frames and defer bulk image sync."),
    "power.battery_critical_percent": Setting(10.0, "On battery below this charge (%), also pause inference for non-urgent patients."),
    "power.low_battery_frame_stride": Setting(2, "On low battery analyse every Nth cine frame (doubled when critical)."),
    "power.temperature_limit_c": Setting(0.0, "Pause non-urgent inference at or above this temperature (°C); 0 means the hardware profile's limit."),
    "power.probe_interval_seconds": Setting(10.0, "How often the battery and temperature sensors are read, in seconds."),
    "power.fake_probe_file": Setting("", "Testing only: a JSON file whose keys (battery_percent, on_battery, temperature_c, ...) replace sensor readings."),
    "hardware.profile": Setting("generic-x86-2c4g", "Hardware profile name (a file in hardware/): expected cores, memory, disk, temperature limit."),
    "hardware.profiles_dir": Setting("", "Folder of hardware profile files; empty means the profiles installed with the kit."),
    "onboarding.kit_url": Setting("", "Address tablets use to reach the kit, shown in the onboarding QR code (e.g. https://fieldkit.lan:8443/); empty: the address the page was opened with."),
    # hospital endpoint and sync (sync)
    "hospital.url": Setting("", "DICOMweb root of the hospital PACS (e.g. https://pacs.example/dicom-web); empty disables sync."),
    "hospital.auth": Setting("none", "Authentication to the hospital: none, basic, bearer or client-cert."),
    "hospital.username": Setting("", "User name for HTTP Basic authentication."),
    "hospital.password_file": Setting("", "File holding the Basic password (owner-only permissions; relative paths are under the data dir)."),
    "hospital.token_file": Setting("", "File holding the bearer token (owner-only permissions; relative paths are under the data dir)."),
    "hospital.client_cert": Setting("", "PEM client certificate for client-cert authentication."),
    "hospital.client_key": Setting("", "PEM private key of the client certificate (if not inside client_cert)."),
    "hospital.ca_bundle": Setting("", "PEM bundle of CAs to trust for the hospital's TLS certificate; empty means the system store."),
    "hospital.connect_timeout_seconds": Setting(10.0, "Give up connecting to the hospital after this many seconds."),
    "hospital.read_timeout_seconds": Setting(60.0, "Give up on a hospital that stops answering for this many seconds."),
    "sync.enabled": Setting(True, "Run the sync worker in `fieldkit serve` (needs hospital.url)."),
    "sync.bandwidth_kbps": Setting(0, "Cap on upload rate in kilobits/s, to leave room on a shared link; 0 means no cap."),
    "sync.metered": Setting(False, "Metered link: send triage, identity and findings only, until images are allowed."),
    "sync.allow_images": Setting(False, "On a metered link, send images too (`fieldkit hospital set --allow-images`)."),
    "sync.windows": Setting([], "Time windows (local, \"HH:MM-HH:MM\") in which sync may send; empty means any time."),
    "sync.transcode": Setting("auto", "Lossless compression on the wire: auto, jpeg-ls, jpeg2000, rle or none. Lossy is never used."),
    "sync.batch_max_kb": Setting(256, "Small instances are grouped into one STOW-RS request up to this many KiB."),
    "sync.batch_max_count": Setting(32, "Most instances in one STOW-RS request."),
    "sync.backoff_max_seconds": Setting(300.0, "Longest wait between attempts while the hospital is unreachable."),
    "sync.retention_days": Setting(0, "Keep local copies this many days after the hospital confirmed them, then purge pixel data (keeping a tombstone); 0 keeps them forever."),
    # on-device AI (inference)
    "inference.enabled": Setting(True, "Run the inference worker in `fieldkit serve`."),
    "inference.threads": Setting(1, "onnxruntime intra-op threads per model: the CPU budget of inference, so the web server and the receiver stay responsive."),
    "inference.model_dirs": Setting([], "Extra directories of signed model bundles; the bundled models/ and DIR/models are always searched."),
    "inference.trusted_keys": Setting(["ed25519:Txpd1eFnbBEHInXzEn+vmbBixB2SAIAaretkltpAEkY="], "Ed25519 public keys (\"ed25519:<base64>\") whose signatures on model bundles are trusted; the default is the project's key for the bundled reference models."),
    "inference.max_frames": Setting(120, "Most frames of one cine analysed; longer cines are sampled evenly (recorded in the finding)."),
    "inference.time_budget_seconds": Setting(60.0, "Time budget of one job; frames not reached by then are skipped (recorded in the finding)."),
    "inference.batch_size": Setting(16, "Frames per onnxruntime call."),
    "inference.yield_to_ingest_ms": Setting(300, "Inference waits while a burst of captures is arriving (two or more, each within this many ms of the last), so a probe is received at full speed; 0 turns this off."),
    "inference.max_ingest_delay_seconds": Setting(2.0, "Longest inference waits for a burst of captures at a time; it then works at least as long before it yields again, so findings keep coming during a continuous import."),
    "inference.commit_group": Setting(8, "Findings, reports and acknowledgements of up to this many jobs are stored in one durable write (one fsync); none waits more than 0.25 s for the rest of its group."),
    "inference.lease_seconds": Setting(300, "How long a leased infer job is held before another attempt may take it."),
    # backups (fieldkit backup / restore)
    "backup.path": Setting("", "Directory for scheduled backups (e.g. a mounted USB stick); empty turns scheduled backups off. Restoring one needs the kit passphrase."),
    "backup.every_hours": Setting(24.0, "Hours between scheduled backups to backup.path; each copies only what is new."),
    # tablet UI (live updates)
    "ui.live_max_streams": Setting(0, "Most live-update streams open at once (each holds an HTTPS worker thread); 0 means http.threads minus 4. Tablets over the limit poll instead."),
    "ui.live_heartbeat_seconds": Setting(10, "Seconds between keep-alive lines on an idle live-update stream."),
    "ui.live_max_seconds": Setting(300, "A live-update stream is closed after this many seconds; the tablet reconnects and resumes after the last event it had."),
}


class Config:
    """Read-only view of the settings, with defaults filled in."""

    def __init__(self, values: dict[str, Any] | None = None):
        merged = {name: s.default for name, s in SETTINGS.items()}
        for name, value in (values or {}).items():
            if name not in SETTINGS:
                raise ConfigError(f"unknown setting {name!r} (see `fieldkit.toml` comments for the list)")
            merged[name] = _coerce(name, value)
        self._values = merged

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise ConfigError(f"unknown setting {name!r}") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def with_overrides(self, **dotted: Any) -> "Config":
        """A copy with some settings replaced; keys use '__' for '.' (http__port=0)."""
        values = dict(self._values)
        values.update({k.replace("__", "."): v for k, v in dotted.items()})
        return Config(values)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @property
    def issuer_of_patient_id(self) -> str:
        return self["kit.issuer_of_patient_id"] or f"FIELDKIT-{self['kit.id'] or 'KIT'}"

    @classmethod
    def load(cls, path: Path) -> "Config":
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} is missing (run `fieldkit init` first)") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        return cls(_flatten(raw))


def _flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _coerce(name: str, value: Any) -> Any:
    default = SETTINGS[name].default
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
    else:
        return value
    raise ConfigError(f"setting {name} must be {type(default).__name__}, got {value!r}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def render_toml(values: dict[str, Any] | None = None) -> str:
    """Every setting, grouped by table, each with its help line and default."""
    values = values or {}
    lines = ["# fieldkit configuration. Every setting is listed with its default;",
             "# change a value and restart `fieldkit serve`.", ""]
    current = None
    for name, setting in SETTINGS.items():
        table, key = name.split(".", 1)
        if table != current:
            lines += ["", f"[{table}]"]
            current = table
        lines.append(f"# {setting.help} (default: {_toml_value(setting.default)})")
        lines.append(f"{key} = {_toml_value(values.get(name, setting.default))}")
    return "\n".join(lines).lstrip() + "\n"


def settings_markdown() -> str:
    """The settings table of the README (regenerate with `make docs`)."""
    rows = ["| setting | default | what it does |", "|---|---|---|"]
    for name, setting in SETTINGS.items():
        rows.append(f"| `{name}` | `{_toml_value(setting.default)}` | {setting.help.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_markdown())
