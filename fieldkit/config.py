"""The kit's settings: every one has a default, a type, a help line and what values it allows.

`DIR/fieldkit.toml` holds the values an operator changed; anything missing takes its default.
`render_toml()` writes a file with every setting documented, which is what `fieldkit init`
puts in a new data dir. A test fails when a setting is not documented in the README.

What a setting allows is a few optional fields on `Setting` (a range for numbers, a list of
choices, or a `Rule` for text and for each element of a list), checked when the config is
built, so every command that loads `fieldkit.toml` refuses a bad value with one message and
exit code 2 (`ConfigError`). Plain dataclass fields rather than a schema library: the kinds
are few (range, choice, text rule), and the same fields also write the README's "allowed"
column and the comments in `fieldkit.toml`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
import tomllib
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from .errors import ConfigError, FieldkitError

CONFIG_FILE = "fieldkit.toml"  # the settings, in the data dir


@dataclass(frozen=True)
class Rule:
    """A check for a text value (or for each element of a list setting); `allowed` tells
    people what passes, in error messages, the README and `fieldkit.toml`."""

    allowed: str
    ok: Callable[[str], bool]


@dataclass(frozen=True)
class Setting:
    default: Any
    help: str
    _: KW_ONLY
    min: float | None = None      # numbers: lowest allowed value (inclusive)
    max: float | None = None      # numbers: highest allowed value (inclusive)
    above: float | None = None    # numbers: must be more than this (for "any positive time")
    choices: tuple = ()           # the only values allowed
    rule: Rule | None = None      # text: the value; lists: each element
    earlier_defaults: tuple = ()  # defaults of earlier releases: a kit whose file still holds one
    # (written there by `fieldkit init`, never chosen) follows the default instead

    def allowed(self) -> str:
        """What values pass, in words ("" when any value of the right type does)."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.rule is not None:
            return ("each: " if isinstance(self.default, list) else "") + self.rule.allowed
        low = f"> {_num(self.above)}" if self.above is not None else None
        if self.min is not None and self.max is not None:
            return f"{_num(self.min)} to {_num(self.max)}"
        if self.max is not None:
            return f"{low} and ≤ {_num(self.max)}" if low else f"≤ {_num(self.max)}"
        if self.min is not None:
            return f"≥ {_num(self.min)}"
        return low or ""

    def problem(self, value: Any) -> str | None:
        """None when `value` (already of the right type) is allowed, else what is allowed."""
        if self.choices:
            ok = value in self.choices
        elif self.rule is not None:
            values = value if isinstance(value, list) else [value]
            ok = all(isinstance(v, str) and self.rule.ok(v) for v in values)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                  and (self.above is None or value > self.above))
        else:
            ok = True
        return None if ok else self.allowed()

    @property
    def checked(self) -> bool:
        """Whether anything beyond the type is checked (a test wants it for every non-boolean)."""
        return bool(self.choices or self.rule or self.min is not None or self.max is not None
                    or self.above is not None)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _no_control(text: str) -> bool:
    return text.isprintable()


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _url(text: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        return False
    return (parts.scheme in schemes and bool(parts.hostname) and not parts.username
            and not parts.password and _no_control(text))


def _ed25519(text: str) -> bool:
    if not text.startswith("ed25519:"):
        return False
    try:
        return len(base64.b64decode(text[len("ed25519:"):], validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def move_destination(text: str) -> tuple[str, str, int] | None:
    """'AET@host:port' -> (AE title, host, port); None when it is not one."""
    m = re.fullmatch(r"(?P<ae>[ -\[\]-~]{1,16})@(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})",
                     text or "")
    if m is None or not m["ae"].strip() or not 1 <= int(m["port"]) <= 65535:
        return None
    return m["ae"].strip(), m["host"].strip("[]"), int(m["port"])


_HHMM = r"([01][0-9]|2[0-3]):[0-5][0-9]"

ADDRESS = Rule("an IP address (0.0.0.0 or :: for every interface, 127.0.0.1 for this box only)", is_ip)
AE_TITLE = Rule("an AE title: 1 to 16 characters, no backslash or control characters, not only spaces",
                lambda v: bool(re.fullmatch(r"[ -\[\]-~]{1,16}", v)) and bool(v.strip()))
MOVE_DESTINATION = Rule("'AET@host:port': an AE title, an IP address or host name, a port 1-65535",
                        lambda v: move_destination(v) is not None)
KIT_ID = Rule("empty, or letters, digits, '-', '_' and '.', at most 32",
              lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.-]{0,32}", v)))
UID_ROOT = Rule("a UID root: numbers joined by dots (e.g. 2.25), at most 24 characters",
                lambda v: len(v) <= 24 and bool(re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+", v)))
DICOM_TEXT = Rule("at most 64 characters, no backslash or control characters",
                  lambda v: len(v) <= 64 and "\\" not in v and _no_control(v))
TEXT = Rule("one line of text (no control characters)", _no_control)
PATH = Rule("a file or folder path, or empty (no control characters)", _no_control)
DIR_PATH = Rule("a folder path (no control characters)", lambda v: bool(v) and _no_control(v))
NAME = Rule("a name of letters, digits, '-', '_' and '.'",
            lambda v: bool(re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", v)))
HOSPITAL_URL = Rule("empty, or an https:// (or http://) URL with a host and no user:password in it",
                    lambda v: v == "" or _url(v, ("https", "http")))
KIT_URL = Rule("empty, or an https:// URL with a host", lambda v: v == "" or _url(v, ("https",)))
TIME_WINDOW = Rule('"HH:MM-HH:MM" (24-hour local time)', lambda v: bool(re.fullmatch(f"{_HHMM}-{_HHMM}", v)))
RETRIAGE_MINUTES = Rule('"<category>=<minutes>": red, yellow, green or grey, and 1 to 1440 minutes',
                        lambda v: bool(re.fullmatch(r"(red|yellow|green|grey)=([1-9][0-9]{0,3})", v))
                        and int(v.split("=")[1]) <= 1440)
ZONE_NAME = Rule("a zone name: 1 to 40 characters, one line", lambda v: 0 < len(v.strip()) <= 40 and _no_control(v))
ORIGIN = Rule('an origin, "https://host[:port]" (or http://) with no path, or "*" for any',
              lambda v: v == "*" or (_url(v, ("https", "http")) and urlsplit(v).path == ""
                                     and not urlsplit(v).query and not urlsplit(v).fragment and " " not in v))
PROXY_ADDRESS = Rule("the IP address a reverse proxy connects from", is_ip)
ED25519_KEY = Rule('"ed25519:<base64 of the 32-byte public key>"', _ed25519)

PORT = {"min": 0, "max": 65535}   # 0 picks a free port


# Dotted name -> Setting. The part before the first dot is the TOML table.
# The project's release keys for the bundled models, oldest first: each earlier default of
# `inference.trusted_keys` was the ones before it, so a kit still listing one follows the default.
RELEASE_KEYS = ("ed25519:pNGyLZmG+7OUf/gRKS7io+9LFLLYVejGRGI3xbmn9+E=",
                "ed25519:fNXErZy0s7FAg8/ygXurEKf2N8K8kNmvvLEiiGREIHg=",
                "ed25519:UmbnTWRj6UXVy2k1GLMFdIPuKbefeQk0s5JgI5wfKWU=",
                "ed25519:b/AGJ+3q/K0MqdXiSW15WJem/R3999pFswnyes/6UeQ=")

SETTINGS: dict[str, Setting] = {
    # kit identity
    "kit.id": Setting("", "Kit identifier, unique across a hospital's kits (set by `fieldkit init --kit-id`).", rule=KIT_ID),
    "kit.issuer_of_patient_id": Setting("", "Issuer of Patient ID stamped on every stored DICOM object (default: FIELDKIT-<kit.id>).", rule=DICOM_TEXT),
    "kit.uid_root": Setting("2.25", "UID root for objects the kit creates; 2.25 means UUID-derived UIDs.", rule=UID_ROOT),
    # web
    "http.bind": Setting("0.0.0.0", "Address the HTTPS server listens on (the kit's own Wi-Fi).", rule=ADDRESS),
    "http.port": Setting(8443, "HTTPS port for tablets, the API and DICOMweb.", **PORT),
    "http.threads": Setting(32, "Worker threads of the HTTPS server; each live-update stream holds one, so set this to the number of tablets plus 8.", min=1, max=1024),
    "http.max_request_mb": Setting(1024, "Largest request body accepted, in MiB (a long cine upload).", min=1),
    "http.session_idle_minutes": Setting(15, "A tablet session expires after this many idle minutes.", min=1),
    "http.handshake_timeout_s": Setting(5, "Seconds a new HTTPS connection has to finish its TLS handshake before it is closed (a client that connects and says nothing holds nothing longer).", min=1, max=300),
    "http.header_timeout_s": Setting(10, "Seconds a client has to send a complete request head (request line and headers) before the connection is closed; no worker thread waits for it.", min=1, max=600),
    "http.max_connections_per_address": Setting(32, "Most HTTPS connections open at once from one client address; one more is closed at once.", min=1, max=100000),
    "http.max_connections": Setting(256, "Most HTTPS connections open at once in all; when full, the oldest connection that has not yet sent a request is closed to make room, else the new one is refused.", min=1, max=100000),
    "http.cors_origins": Setting([], "Web origins whose pages may call DICOMweb and WADO-URI from a browser (CORS), e.g. a viewer served at https://viewer.lan; empty: none. With \"*\" any origin may, but never with cookies.", rule=ORIGIN),
    "http.trusted_proxies": Setting([], "Addresses of reverse proxies whose Forwarded (or X-Forwarded-Host/-Proto) header names the kit's public address in the links DICOMweb answers with; from anyone else those headers are ignored and links use onboarding.kit_url.", rule=PROXY_ADDRESS),
    # DIMSE receiver
    "dicom.port": Setting(11112, "DICOM C-STORE/C-ECHO port for handheld probes.", **PORT),
    "dicom.ae_title": Setting("FIELDKIT", "The kit's own AE title.", rule=AE_TITLE),
    "dicom.allow_any_ae": Setting(False, "Accept associations from any calling AE title (demo only)."),
    "dicom.allowed_ae_titles": Setting([], "Calling AE titles allowed to send when allow_any_ae is false.", rule=AE_TITLE),
    "dicom.max_object_mb": Setting(1024, "Largest DICOM object accepted, in MiB.", min=1),
    "dicom.max_associations": Setting(16, "Most DICOM associations received at once (per port); one more is refused with A-ASSOCIATE-RJ (transient), so the probe can retry.", min=1, max=1000),
    "dicom.idle_timeout_s": Setting(60, "Seconds an association may stay silent before it is aborted and its slot released.", min=1, max=86400),
    "dicom.associate_timeout_s": Setting(5.0, "A connection that has not asked for an association (A-ASSOCIATE-RQ) this many seconds after connecting is closed; until then it holds no association slot.", above=0, max=300),
    "dicom.max_connections_per_address": Setting(16, "Most connections open at once from one network address (per port); one more is closed at once, so one host cannot tie up the receiver.", min=1, max=10000),
    # ingest (DIMSE bind address, uploads, import)
    "dicom.bind": Setting("0.0.0.0", "Address the DIMSE receiver listens on (the kit's own Wi-Fi).", rule=ADDRESS),
    "dicom.tls_port": Setting(-1, "Port for DICOM over TLS with the kit's certificate (probes trust tls/ca.pem); -1 turns it off, 0 picks a free port.", min=-1, max=65535),
    "dicom.commitment_report_port": Setting(104, "Port the kit calls a probe on to send a storage commitment report when the probe's own association has ended (the address is the registered probe's host, else the one it called from).", min=1, max=65535),
    "dicom.qr_ae_titles": Setting([], "Calling AE titles of viewers and workstations allowed to query and retrieve (C-FIND, C-MOVE, C-GET); the AE titles of dicom.move_destinations may too. Anyone else, registered probes included, is refused.", rule=AE_TITLE),
    "dicom.move_destinations": Setting([], "Where C-MOVE may send, each 'AET@host:port' (a workstation's or PACS's storage SCP); any other move destination is refused (0xA801).", rule=MOVE_DESTINATION),
    # patients
    "patients.merge_undo_seconds": Setting(60.0, "A merge made on a tablet can be undone for this many seconds; nothing of it is sent to the hospital meanwhile.", min=0),
    # triage board: time, place and movement
    "triage.retriage_minutes": Setting(["red=15", "yellow=30", "green=60", "grey=30"], "How long after the last (re-)triage a patient of a category is due to be seen again; a card past it is flagged overdue. A category not listed is never flagged.", rule=RETRIAGE_MINUTES),
    "triage.zones": Setting(["Triage point", "Red area", "Yellow area", "Green area", "Casualty collection point", "Ambulance loading"], "The zones and collection points a patient can be placed in, as the tablets offer them.", rule=ZONE_NAME),
    "triage.tag_format": Setting("numeric", "What the kit's triage tags carry: 'numeric' (digits only: the tablets bring up the number keypad for the tag) or 'text' (letters too: the full keyboard). Either way a scanned or typed tag is taken as it is.", choices=("numeric", "text")),
    # worklist (the kit's Modality Worklist for probes)
    "worklist.max_items": Setting(500, "Most items one worklist query (C-FIND) returns; the answer says how many more matched.", min=1),
    "worklist.session_minutes": Setting(20.0, "A probe session (captures from one probe go to one patient) ends after this many minutes.", above=0),
    "worklist.procedure": Setting("POCUS eFAST / lung", "Procedure named on every worklist item (the probe shows it).", rule=DICOM_TEXT),
    "worklist.lean_answers": Setting(True, "Write worklist answers as ready-made DICOM messages (off: pynetdicom builds each one, slower; for a probe that cannot read them)."),
    "ingest.max_zip_members": Setting(10000, "Most files read from one uploaded zip bundle.", min=1),
    "ingest.max_zip_ratio": Setting(200, "A zip member that expands more than this many times its compressed size is refused (zip bomb).", min=1),
    # store
    "store.compact_min_mb": Setting(8, "The journal is compacted once it holds this many MiB of superseded records (0: as soon as any record is superseded, which costs disk writes).", min=0),
    "store.reserve_mb": Setting(8, "MiB kept preallocated at the end of the journal, so that acknowledgements, leases and operator actions are still recorded when the disk is full.", min=0),
    "store.warn_free_mb": Setting(10240, "Below this much free space (MiB) on the data dir's disk the board and device page warn and say what to do.", min=0),
    "store.refuse_free_mb": Setting(2048, "Below this much free space (MiB) new captures are refused (DIMSE 0xA700, HTTP 507) before the disk is full; reads and the rest keep working.", min=0),
    "store.scrub_days": Setting(7.0, "The background scrub reads and verifies every stored capture once in this many days, paced and at low priority (paused on low battery or heat); 0 turns it off.", min=0),
    # security
    "security.passphrase_min_length": Setting(12, "Shortest kit passphrase accepted.", min=8, max=1024),
    "security.scrypt_n": Setting(2**15, "scrypt cost (N) for deriving the passphrase key; recorded with the wrapped key.", choices=tuple(2**k for k in range(14, 21))),
    # accounts, sessions, lockout, request limits (security)
    "security.pin_min_length": Setting(6, "Fewest digits in a PIN (a secret of digits only).", min=4, max=64),
    "security.password_min_length": Setting(10, "Fewest characters in a password (any secret that is not all digits).", min=8, max=1024),
    "security.login_free_failures": Setting(5, "Wrong PINs/passwords allowed on one account from one address before that address must wait (other addresses are not affected).", min=1, max=1000),
    "security.login_backoff_seconds": Setting(30.0, "First wait, in seconds, for an address after its free wrong attempts on an account; it doubles with every further wrong attempt.", min=0),
    "security.login_backoff_max_seconds": Setting(900.0, "Longest wait, in seconds, for one address on one account.", min=0),
    "security.login_address_per_minute": Setting(20.0, "Sign-in attempts one address may make per minute (a short burst of a quarter of it, at least 3, is allowed).", above=0),
    "security.login_address_block_failures": Setting(10, "Wrong sign-ins from one address within 10 minutes that block the address.", min=1, max=100000),
    "security.login_address_block_seconds": Setting(300.0, "How long an address that kept guessing is blocked from signing in, in seconds.", min=0, max=86400),
    "security.login_account_per_minute": Setting(12.0, "Sign-in attempts per minute on one account from addresses with recent wrong attempts, all together (guessing from many addresses is slowed, never locked).", above=0),
    "security.login_suspect_per_minute": Setting(20.0, "Sign-in attempts per minute, kit-wide, from all addresses with recent wrong attempts together (a flood spends little Argon2 time; a clean address is never held back).", above=0),
    "security.login_audit_window_seconds": Setting(60.0, "Failed sign-ins of one address are audited as one event per this many seconds, with a count (the first one at once).", min=1, max=86400),
    "security.session_max_hours": Setting(12.0, "A tablet session ends after this many hours even when in use.", above=0),
    "security.auto_lock_minutes": Setting(0, "Lock the kit (drop the data key) after this many minutes with no signed-in person active; 0 never auto-locks.", min=0),
    "security.token_days": Setting(365, "Default lifetime of a bearer token in days (`fieldkit token create --days`); 0 means no expiry.", min=0),
    "security.max_body_kb": Setting(1024, "Largest request body, in KiB, for endpoints that do not declare a larger one (uploads do).", min=1),
    "security.audit_sync_minutes": Setting(15.0, "Send new audit events to the hospital (as an SR document, by STOW-RS) this often, in minutes; 0 only with `fieldkit audit sync`.", min=0),
    "security.tpm_tcti": Setting("device:/dev/tpmrm0", "How tpm2-tools reach the TPM that seals the device key (key mode tpm): `device:/dev/tpmrm0`, or `swtpm:host=H,port=N` for a software TPM.", rule=TEXT),
    # power and heat policy, hardware profile (provisioning and hardware)
    "power.enabled": Setting(True, "Slow down non-urgent work when the battery is low or the box is hot."),
    "power.battery_low_percent": Setting(25.0, "On battery below this charge (%), analyse fewer cine frames and defer bulk image sync.", min=0, max=100),
    "power.battery_critical_percent": Setting(10.0, "On battery below this charge (%), also pause inference for non-urgent patients.", min=0, max=100),
    "power.low_battery_frame_stride": Setting(2, "On low battery analyse every Nth cine frame (doubled when critical).", min=1, max=1000),
    "power.temperature_limit_c": Setting(0.0, "Pause non-urgent inference at or above this temperature (°C); 0 means the hardware profile's limit.", min=0, max=150),
    "power.probe_interval_seconds": Setting(10.0, "How often the battery and temperature sensors are read, in seconds.", min=0),
    "power.fake_probe_file": Setting("", "Testing only: a JSON file whose keys (battery_percent, on_battery, temperature_c, ...) replace sensor readings.", rule=PATH),
    "hardware.profile": Setting("generic-x86-2c4g", "Hardware profile name (a file in hardware/): expected cores, memory, disk, temperature limit.", rule=NAME),
    "hardware.profiles_dir": Setting("", "Folder of hardware profile files; empty means the profiles installed with the kit.", rule=PATH),
    "onboarding.kit_url": Setting("", "Address tablets use to reach the kit, shown in the onboarding QR code (e.g. https://fieldkit.lan:8443/); empty: the address the page was opened with.", rule=KIT_URL),
    # hospital endpoint and sync (sync)
    "hospital.url": Setting("", "DICOMweb root of the hospital PACS (e.g. https://pacs.example/dicom-web); empty disables sync.", rule=HOSPITAL_URL),
    "hospital.auth": Setting("none", "Authentication to the hospital: none, basic, bearer or client-cert.", choices=("none", "basic", "bearer", "client-cert")),
    "hospital.username": Setting("", "User name for HTTP Basic authentication.", rule=TEXT),
    "hospital.password_file": Setting("", "File holding the Basic password (owner-only permissions; relative paths are under the data dir).", rule=PATH),
    "hospital.token_file": Setting("", "File holding the bearer token (owner-only permissions; relative paths are under the data dir).", rule=PATH),
    "hospital.client_cert": Setting("", "PEM client certificate for client-cert authentication.", rule=PATH),
    "hospital.client_key": Setting("", "PEM private key of the client certificate (if not inside client_cert).", rule=PATH),
    "hospital.ca_bundle": Setting("", "PEM bundle of CAs to trust for the hospital's TLS certificate; empty means the system store.", rule=PATH),
    "hospital.connect_timeout_seconds": Setting(10.0, "Give up connecting to the hospital after this many seconds.", above=0),
    "hospital.read_timeout_seconds": Setting(60.0, "Give up on a hospital that stops answering for this many seconds.", above=0),
    "sync.enabled": Setting(True, "Run the sync worker in `fieldkit serve` (needs hospital.url)."),
    "sync.bandwidth_kbps": Setting(0, "Cap on upload rate in kilobits/s, to leave room on a shared link; 0 means no cap.", min=0),
    "sync.metered": Setting(False, "Metered link: send triage, identity and findings only, until images are allowed."),
    "sync.allow_images": Setting(False, "On a metered link, send images too (`fieldkit hospital set --allow-images`)."),
    "sync.windows": Setting([], "Time windows (local, \"HH:MM-HH:MM\") in which sync may send; empty means any time.", rule=TIME_WINDOW),
    "sync.transcode": Setting("auto", "Lossless compression on the wire: auto, jpeg-ls, jpeg2000, rle or none. Lossy is never used.", choices=("auto", "jpeg-ls", "jpeg2000", "rle", "none")),
    "sync.batch_max_kb": Setting(256, "Small instances are grouped into one STOW-RS request up to this many KiB.", min=1),
    "sync.batch_max_count": Setting(32, "Most instances in one STOW-RS request.", min=1),
    "sync.backoff_max_seconds": Setting(300.0, "Longest wait between attempts while the hospital is unreachable.", above=0),
    "sync.retention_days": Setting(0, "Keep local copies this many days after the hospital confirmed them, then purge pixel data (keeping a tombstone); 0 keeps them forever.", min=0),
    # on-device AI (inference)
    "inference.enabled": Setting(True, "Run the inference worker in `fieldkit serve`."),
    "inference.threads": Setting(1, "onnxruntime intra-op threads per model: the CPU budget of inference, so the web server and the receiver stay responsive.", min=1, max=256),
    "inference.model_dirs": Setting([], "Extra directories of signed model bundles; the bundled models/ and DIR/models are always searched.", rule=DIR_PATH),
    "inference.trusted_keys": Setting(list(RELEASE_KEYS), "Ed25519 public keys (\"ed25519:<base64>\") whose signatures on model bundles are trusted; the default is the project's four release keys for the bundled reference models (a kit that still lists an earlier default, the first key alone, the first two or the first three, trusts all four).", rule=ED25519_KEY,
                                     earlier_defaults=(list(RELEASE_KEYS[:1]), list(RELEASE_KEYS[:2]),
                                                       list(RELEASE_KEYS[:3]))),
    "inference.max_frames": Setting(120, "Most frames of one cine analysed; longer cines are sampled evenly (recorded in the finding).", min=1),
    "inference.time_budget_seconds": Setting(60.0, ("Time budget of one job; frames not reached by then are skipped (recorded in the finding). "
                                                 "It is checked as each batch ends, so the batch already handed to the models is still analysed."), above=0),
    "inference.batch_size": Setting(16, "Most frames per onnxruntime call (the view gate and the lung model take at most 4 at a time, so their frames are analysed while the next ones are read).", min=1, max=1024),
    "inference.orientation_marker": Setting(True, "Read the probe-orientation marker: a clip the scanner shows inverted top to bottom (its marker at the bottom) is read set upright, and the finding says so; false ignores the marker (such a clip then abstains as turned)."),
    "inference.yield_to_ingest_ms": Setting(300, "Inference waits while a burst of captures is arriving (two or more, each within this many ms of the last), so a probe is received at full speed; 0 turns this off.", min=0),
    "inference.max_ingest_delay_seconds": Setting(2.0, "Longest inference waits for a burst of captures at a time; it then works at least as long before it yields again, so findings keep coming during a continuous import.", min=0),
    "inference.commit_group": Setting(8, "Findings, reports and acknowledgements of up to this many jobs are stored in one durable write (one fsync); none waits more than 0.25 s for the rest of its group.", min=1, max=1000),
    "inference.lease_seconds": Setting(300, "How long a leased infer job is held before another attempt may take it.", min=1),
    # backups (fieldkit backup / restore)
    "backup.path": Setting("", "Directory for scheduled backups (e.g. a mounted USB stick); empty turns scheduled backups off. Restoring one needs the kit passphrase.", rule=PATH),
    "backup.every_hours": Setting(24.0, "Hours between scheduled backups to backup.path; each copies only what is new.", above=0),
    # tablet UI (live updates)
    "ui.live_max_streams": Setting(0, "Most live-update streams open at once (each holds an HTTPS worker thread); 0 means http.threads minus 4. Tablets over the limit poll instead.", min=0),
    "ui.live_heartbeat_seconds": Setting(10, "Seconds between keep-alive lines on an idle live-update stream.", min=1),
    "ui.live_max_seconds": Setting(300, "A live-update stream is closed after this many seconds; the tablet reconnects and resumes after the last event it had.", min=1),
    "ui.board_page_size": Setting(100, "Patient cards per page of the tablet board (Show more loads the next page); the counts on top are always the whole board's.", min=10, max=1000),
}


# Settings that must agree with each other: (a, b, what a user is told). Each holds when
# a <= b, or when either is off (see _cross_problems).
_AT_MOST = [
    ("power.battery_critical_percent", "power.battery_low_percent"),
    ("store.refuse_free_mb", "store.warn_free_mb"),
    ("security.login_backoff_seconds", "security.login_backoff_max_seconds"),
]
_PORTS = ("http.port", "dicom.port", "dicom.tls_port")


def _cross_problems(values: dict[str, Any]) -> list[str]:
    problems = [f"{a} = {_toml_value(values[a])} must not be above {b} = {_toml_value(values[b])}"
                for a, b in _AT_MOST if values[a] > values[b]]
    used: dict[int, str] = {}
    for name in _PORTS:
        port = values[name]
        if port > 0:  # 0 picks a free port, -1 is off
            if port in used:
                problems.append(f"{name} and {used[port]} are both {port}; each listener needs its own port")
            used.setdefault(port, name)
    return problems


def read_toml(path: Path, what: str, *, missing: str = "does not exist",
              error: type[FieldkitError] = ConfigError) -> dict:
    """A TOML file as a dict, or one `error` naming the file: missing, or not TOML."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {path} {missing}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from None


class Config:
    """Read-only view of the settings, with defaults filled in.

    Every value is checked against its setting (type, then range, choices or rule) and the
    settings against each other; all problems are reported in one ConfigError (exit 2).
    """

    def __init__(self, values: dict[str, Any] | None = None, *, check_values: bool = True):
        merged = {name: s.default for name, s in SETTINGS.items()}
        problems: list[str] = []
        for name, value in (values or {}).items():
            if name not in SETTINGS:
                raise ConfigError(f"unknown setting {name!r} (see `fieldkit.toml` comments for the list)")
            try:
                merged[name] = _coerce(name, value)
            except ConfigError as exc:
                problems.append(exc.message)
                continue
            if merged[name] in SETTINGS[name].earlier_defaults:
                merged[name] = SETTINGS[name].default
            allowed = SETTINGS[name].problem(merged[name]) if check_values else None
            if allowed:
                problems.append(f"{name} = {_shown(merged[name])} is not allowed; allowed: {allowed}")
        if check_values and not problems:
            problems += _cross_problems(merged)
        if problems:
            raise ConfigError(problems[0] if len(problems) == 1
                              else "bad settings:\n  - " + "\n  - ".join(problems))
        self._values = merged

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise ConfigError(f"unknown setting {name!r}") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def with_overrides(self, **dotted: Any) -> "Config":
        """A copy with some settings replaced; keys use '__' for '.' (http__port=0).

        For code and tests that set values directly: types are checked, ranges are not (a
        test may set a 0 MiB object cap on purpose). Everything read from `fieldkit.toml` or
        the command line goes through the full check.
        """
        values = dict(self._values)
        values.update({k.replace("__", "."): v for k, v in dotted.items()})
        return Config(values, check_values=False)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @property
    def issuer_of_patient_id(self) -> str:
        return self["kit.issuer_of_patient_id"] or f"FIELDKIT-{self['kit.id'] or 'KIT'}"

    @classmethod
    def load(cls, path: Path) -> "Config":
        raw = read_toml(path, "config file", missing="is missing (run `fieldkit init` first)")
        try:
            return cls(_flatten(raw))
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc.message}") from None


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
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
    else:
        return value
    kind = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text (in quotes)",
            list: "a list"}[type(default)]
    allowed = SETTINGS[name].allowed()
    raise ConfigError(f"{name} must be {kind}" + (f" ({allowed})" if allowed else "") + f", got {value!r}")


def _shown(value: Any) -> str:
    """A value for an error message: as TOML, with any user:password in a URL hidden."""
    return re.sub(r"(://)[^/@\s\"]*@", r"\1***@", _toml_value(value))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are TOML's; control characters never appear raw (nor in messages)
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
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
        allowed = setting.allowed()
        lines.append(f"# {setting.help} (default: {_toml_value(setting.default)}"
                     + (f"; allowed: {allowed})" if allowed else ")"))
        lines.append(f"{key} = {_toml_value(values.get(name, setting.default))}")
    return "\n".join(lines).lstrip() + "\n"


def settings_markdown() -> str:
    """The settings table of the README (regenerate with `make docs`)."""
    rows = ["| setting | default | allowed | what it does |", "|---|---|---|---|"]
    for name, setting in SETTINGS.items():
        rows.append(f"| `{name}` | `{_toml_value(setting.default)}` | {setting.allowed().replace('|', '/')} "
                    f"| {setting.help.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_markdown())
